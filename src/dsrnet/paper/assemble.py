"""A ``reproduce`` results folder assembled from runs trained elsewhere (the GPU campaign of
``benchmarks/gpu_campaign.py``), with no training and no timing here.

A GPU session returns few, small files, so a campaign trains the paper's comparison over several calls: the
``dsrnet`` stage returns DSRNet's run folder (``final.json``, ``config.yaml``, ``metrics.jsonl``), each ``baselines``
call returns one bundle, ``runs.json`` (:func:`write_bundle`): every run file of the models it trained, verbatim, and
the ``bench.json`` of every model it timed. A ``baselines`` call times DSRNet (and the other models of the comparison)
too, with the reproduce runner's own method and settings (:func:`dsrnet.paper.runner.bench_models`), so that one call
on one card holds the time-per-batch column of the whole table: the paper's speed comparison is only fair between
timings taken on one card in one process (the same clocks, driver and load).

:func:`assemble` turns such returns into a folder ``dsrnet reproduce`` would have written: ``runs/<arch>/{config.yaml,
final.json,metrics.jsonl,bench.json}`` and, through :func:`dsrnet.paper.runner.report_finished` (the same writer as
``reproduce``), ``table.md``, ``table.csv``, ``summary.json`` and the figures; plus ``assembled.json`` (where each
file came from). It refuses, with one line saying why, to put together runs trained with other settings (recipe,
epochs, seed, ... or stem), runs stopped early, a model trained in two sources, or timings from different calls or
cards: every row's timing comes from ONE call (by default the newest call that timed every trained model).

"Finished", as ``reproduce`` decides it (:meth:`dsrnet.run.rundir.RunDir.finished`, ``_finished_alike``): a
``final.json`` not stopped early, a ``config.yaml`` with the same settings (fields of
:data:`~dsrnet.train.RESUME_MUTABLE` aside) and a ``bench.json``. The returns carry no ``checkpoint.pt`` (the weights
come back once, from the ``dsrnet`` stage, as shards), so an assembled run cannot be resumed or evaluated again; a
later ``dsrnet reproduce`` with the same settings into the folder skips it and draws DSRNet's confusion matrix only
from an evaluation saved with it (``dsrnet_eval``). In ``config.yaml`` the campaign's ``deadline`` (a past wall-clock
time that would stop ``dsrnet train --config`` at once) is reset to null and ``out_dir`` (a temp folder of the GPU
machine) set to the run's folder here; both are resume-mutable, and the returned originals stay where they were.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write_json, atomic_write_text, plain
from dsrnet.run.rundir import differences

logger = logging.getLogger(__name__)

BUNDLE_NAME = "runs.json"
BUNDLE_FORMAT = "dsrnet-campaign-runs"
BUNDLE_VERSION = 1
#: The files of a run folder a bundle carries (the checkpoint stays behind: see the module docstring).
RUN_FILES = ("final.json", "config.yaml", "metrics.jsonl", "bench.json")
TRAINED_FILES = ("final.json", "config.yaml", "metrics.jsonl")
EVAL_FILES = ("metrics.json", "confusion.png", "confusion.csv", "per_class.csv")


# ------------------------------------------------------------------------------------------------------ bundles


def write_bundle(path: str | Path, runs: dict[str, str | Path], header: dict) -> Path:
    """``runs.json``: ``header`` (``call_id`` at least) and, for each ``arch -> run folder``, the text of every
    file of :data:`RUN_FILES` the folder holds, byte for byte."""
    if not header.get("call_id"):
        raise DsrnetError("a campaign bundle needs a call_id; fix: pass one in the header")
    files = {}
    for arch, folder in runs.items():
        held = {name: (Path(folder) / name).read_text() for name in RUN_FILES if (Path(folder) / name).is_file()}
        if held:
            files[arch] = held
    bundle = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **header, "runs": files}
    return atomic_write_json(path, bundle)


def read_bundle(path: str | Path) -> dict:
    path = Path(path)
    try:
        bundle = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DsrnetError(f"{path} is not a readable campaign bundle ({err}); fix: pass the folder a baselines "
                          "call returned") from None  # fmt: skip
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise DsrnetError(f"{path} is not a campaign bundle (format {BUNDLE_FORMAT!r}); fix: pass the folder a "
                          "baselines call returned")  # fmt: skip
    if bundle.get("version") != BUNDLE_VERSION or not bundle.get("call_id"):
        raise DsrnetError(f"{path}: bundle version {bundle.get('version')!r} or call_id missing; fix: use a bundle "
                          f"of version {BUNDLE_VERSION} (re-run the call with this checkout)")  # fmt: skip
    runs = bundle.get("runs")
    well_formed = isinstance(runs, dict) and all(
        isinstance(files, dict) and all(isinstance(name, str) and isinstance(text, str) for name, text in files.items())
        for files in runs.values()
    )  # fmt: skip
    if not well_formed:
        raise DsrnetError(f"{path} is damaged (its runs are not files of text per model); fix: pass the runs.json "
                          "the baselines call returned")  # fmt: skip
    return bundle


# ---------------------------------------------------------------------------------------------------- gathering


@dataclass
class Trained:
    arch: str
    origin: str
    files: dict  # name -> text, TRAINED_FILES
    config: dict
    final: dict


@dataclass
class Call:
    call_id: str
    origin: str
    started: str
    device_name: str | None
    dry_run: bool
    benches: dict = field(default_factory=dict)  # arch -> bench.json text


def _load_yaml(text: str, origin: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise DsrnetError(f"{origin}: config.yaml is not valid YAML; fix: restore the returned file") from None
    if not isinstance(value, dict) or not value.get("model"):
        raise DsrnetError(f"{origin}: config.yaml names no model; fix: restore the returned file")
    return value


def _trained(files: dict, origin: str) -> Trained:
    missing = [n for n in TRAINED_FILES if n not in files]
    if missing:
        raise DsrnetError(f"{origin} lacks {', '.join(missing)}; fix: pass the complete returned run")
    config = _load_yaml(files["config.yaml"], origin)
    try:
        final = json.loads(files["final.json"])
    except ValueError:
        raise DsrnetError(f"{origin}: final.json is not valid JSON; fix: restore the returned file") from None
    if not isinstance(final, dict):
        raise DsrnetError(f"{origin}: final.json is not a run's final.json (a JSON object); fix: restore the "
                          "returned file")  # fmt: skip
    arch = config["model"]
    if final.get("model") != arch:
        raise DsrnetError(f"{origin}: final.json is of {final.get('model')!r}, config.yaml of {arch!r}; fix: pass "
                          "the files of one run")  # fmt: skip
    if final.get("stopped_early") or final.get("epochs_done", final.get("epochs")) != final.get("epochs"):
        raise DsrnetError(f"{origin}: {arch} stopped early ({final.get('epochs_done')} of {final.get('epochs')} "
                          "epochs, a truncated schedule); fix: train it again with a schedule that fits")  # fmt: skip
    return Trained(arch, origin, {n: files[n] for n in TRAINED_FILES}, config, final)


def gather(sources: Sequence[str | Path]) -> tuple[dict[str, Trained], dict[str, Call]]:
    """Every trained run and every call's timings in ``sources``: folders returned by the ``dsrnet`` stage (a run
    folder) or by a ``baselines`` call (``runs.json``)."""
    trained: dict[str, Trained] = {}
    calls: dict[str, Call] = {}

    def add(t: Trained) -> None:
        if t.arch in trained:
            raise DsrnetError(f"{t.arch} was trained in both {trained[t.arch].origin} and {t.origin}; fix: pass "
                              "only one of them")  # fmt: skip
        trained[t.arch] = t

    for source in sources:
        path = Path(source)
        if (path / BUNDLE_NAME).is_file() and (path / "final.json").is_file():  # one would be silently dropped
            raise DsrnetError(f"{path} holds both {BUNDLE_NAME} (a baselines call) and final.json (a dsrnet stage "
                              "run); fix: keep each call's returned files in a folder of their own")  # fmt: skip
        if (path / BUNDLE_NAME).is_file():
            bundle = read_bundle(path / BUNDLE_NAME)
            call_id = bundle["call_id"]
            if call_id in calls:
                raise DsrnetError(f"call {call_id} passed twice ({calls[call_id].origin} and {path}); fix: pass it "
                                  "once")  # fmt: skip
            call = Call(call_id, str(path), bundle.get("started", ""), bundle.get("device_name"),
                        bool(bundle.get("dry_run")))  # fmt: skip
            for arch, files in bundle["runs"].items():
                if "final.json" in files:
                    add(_trained(files, f"{path / BUNDLE_NAME} [{arch}]"))
                if "bench.json" in files:
                    call.benches[arch] = files["bench.json"]
            calls[call_id] = call
        elif (path / "final.json").is_file():
            add(_trained({n: (path / n).read_text() for n in TRAINED_FILES if (path / n).is_file()}, str(path)))
            if (path / "bench.json").is_file():
                logger.info("%s: its bench.json is not used (no call id); timings come from one baselines call",
                            path)  # fmt: skip
        else:
            raise DsrnetError(f"{path} holds neither {BUNDLE_NAME} (a baselines call) nor final.json (a dsrnet "
                              "stage run); fix: pass the folders the GPU calls returned")  # fmt: skip
    if not trained:
        raise DsrnetError("no trained run in the sources; fix: pass the dsrnet stage's folder and/or baselines "
                          "returns")  # fmt: skip
    return trained, calls


# ----------------------------------------------------------------------------------------------------- checking


def _per_run_fields() -> frozenset:
    from dsrnet.train import RESUME_MUTABLE

    return RESUME_MUTABLE | {"model", "model_kwargs"}


def check_one_recipe(trained: dict[str, Trained]) -> tuple[dict, str]:
    """All runs share every training setting except where and how they ran (resume-mutable fields) and the
    network; all use one stem. Returns the shared settings (as ``reproduce``'s ``train``) and the stem."""
    from dsrnet.train import LEGACY_DEFAULTS

    runs = sorted(trained.values(), key=lambda t: (not t.arch.startswith("dsrnet"), t.arch))
    ref = runs[0]
    ignore = _per_run_fields()
    for t in runs[1:]:
        diff = differences({**LEGACY_DEFAULTS, **t.config}, {**LEGACY_DEFAULTS, **ref.config}, ignore)
        if diff:
            raise DsrnetError(
                f"cannot put {t.arch} ({t.origin}) in one table with {ref.arch} ({ref.origin}): "
                f"{'; '.join(diff[:3])}; fix: train every model with one recipe (gpu_campaign.py --stage baselines "
                f"--like the dsrnet stage's config.yaml)"
            )
    stems = {"cifar" if a.endswith("_cifar") else "paper" for a in trained}
    if len(stems) > 1:
        raise DsrnetError(f"the runs mix stems ({', '.join(sorted(trained))}); fix: assemble one stem's runs only")
    stem = stems.pop()
    from dsrnet.models import PAPER_COMPARISON, stem_variant

    comparison = {stem_variant(n, stem) for n in PAPER_COMPARISON}
    stray = sorted(set(trained) - comparison)
    if stray:
        raise DsrnetError(f"{', '.join(stray)} not in the paper's comparison ({', '.join(sorted(comparison))}); "
                          "fix: leave it out")  # fmt: skip
    shared = {k: v for k, v in ref.config.items() if k not in ignore | {"dataset"}}
    return shared, stem


def pick_call(trained: dict[str, Trained], calls: dict[str, Call], bench_call: str | None = None) -> Call:
    """The one call whose timings cover every trained model: ``bench_call`` or else the newest such call."""
    need = set(trained)
    if bench_call is not None:
        if bench_call not in calls:
            raise DsrnetError(f"no call {bench_call!r} in the sources (calls: {', '.join(calls) or 'none'}); fix: "
                              "pass its returned folder")  # fmt: skip
        covering = [calls[bench_call]]
    else:
        covering = sorted((c for c in calls.values() if need <= set(c.benches)), key=lambda c: c.started)
    if not covering or not need <= set(covering[-1].benches):
        timed = "; ".join(f"{c.call_id}: {', '.join(sorted(c.benches)) or 'nothing'}" for c in calls.values())
        raise DsrnetError(
            f"no single call timed all of {', '.join(sorted(need))} (timings of different calls or cards are not "
            f"compared; {timed or 'no baselines call given'}); fix: run gpu_campaign.py --stage baselines, which "
            "times every model of the comparison in its call, and pass its folder"
        )
    return covering[-1]


def check_benches(trained: dict[str, Trained], call: Call) -> tuple[dict[str, dict], dict]:
    """Each trained model's ``bench.json`` of ``call``, checked: one request, one card, the run's network."""
    benches, requests, cards = {}, {}, set()
    for arch, t in trained.items():
        try:
            bench = json.loads(call.benches[arch])
            row, request, env = bench["row"], bench["request"], bench.get("env") or {}
            if not all(isinstance(x, dict) for x in (row, request, env)):
                raise TypeError("not objects")
        except (ValueError, KeyError, TypeError):
            raise DsrnetError(f"{call.origin}: bench.json of {arch} is malformed; fix: restore the returned "
                              "file") from None  # fmt: skip
        if row.get("arch") != arch or plain(row.get("model_kwargs") or {}) != plain(t.config.get("model_kwargs") or
                                                                                    {}):  # fmt: skip
            raise DsrnetError(
                f"{call.origin}: the timing of {arch} is of {row.get('arch')} with model_kwargs "
                f"{row.get('model_kwargs') or {}}, the run of {t.config.get('model_kwargs') or {}} ({t.origin}); "
                "fix: pass a baselines call made with the dsrnet stage's settings (a dry run's timings are not a "
                "real run's)"
            )
        benches[arch], requests[arch] = bench, plain(request)
        cards.add((env.get("device_name"), row.get("device")))
    if len({json.dumps(r, sort_keys=True) for r in requests.values()}) > 1 or len(cards) > 1:
        raise DsrnetError(f"{call.origin}: the timings were taken with different settings or cards "
                          f"({sorted(cards, key=str)}); fix: time every model in one call")  # fmt: skip
    return benches, next(iter(requests.values()))


# ----------------------------------------------------------------------------------------------------- assembly


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _check_out(out: Path, archs: set[str], trained: dict[str, Trained]) -> None:
    """``out`` may be new or an earlier assembly of the same runs (re-assembling is idempotent); it must not hold
    a run that is not part of this assembly (its row would join the table with another call's timing) nor another
    run of a model assembled now."""
    runs = out / "runs"
    if not runs.is_dir():
        return
    for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
        if folder.name not in archs:
            raise DsrnetError(f"{folder} is not part of this assembly; fix: pass its source too, or another "
                              "--out-dir")  # fmt: skip
        final = folder / "final.json"
        if (folder / "checkpoint.pt").exists() or (final.is_file() and final.read_text() !=
                                                   trained[folder.name].files["final.json"]):  # fmt: skip
            raise DsrnetError(f"{folder} holds another run of {folder.name}; fix: pass another --out-dir, or "
                              f"delete {folder}")  # fmt: skip


def _write_config(text: str, run_dir: Path) -> str:
    """The returned config with its resume-mutable ``deadline`` reset and ``out_dir`` set to ``run_dir``."""
    import yaml

    config = yaml.safe_load(text)
    config["deadline"] = None
    config["out_dir"] = str(run_dir)
    return yaml.safe_dump(config, sort_keys=False)


#: How far an evaluation's top-1 may be from the run's own final epoch and still be of its weights (fp16 file,
#: another card or engine: a few hundredths of a point on the shipped weights; other weights: points).
EVAL_TOLERANCE_PP = 0.5


def _check_eval(src: Path, dsrnet) -> None:
    """``src`` is a ``dsrnet eval`` folder of the assembled DSRNet's weights: its files, model and dataset, and a
    top-1 within :data:`EVAL_TOLERANCE_PP` of the run's final epoch on the full test set (an evaluation of other
    weights drew their confusion matrix beside this run)."""
    from dsrnet.report.markdown import read_json

    if not (src / "metrics.json").is_file() or not (src / "confusion.png").is_file():
        raise DsrnetError(f"{src} is not an evaluation folder (metrics.json, confusion.png); fix: pass the folder "
                          "`dsrnet eval --out-dir` wrote")  # fmt: skip
    metrics, final = read_json(src / "metrics.json"), json.loads(dsrnet.files["final.json"])
    if not isinstance(metrics, dict):
        raise DsrnetError(f"{src / 'metrics.json'} is not a `dsrnet eval` metrics file; fix: pass the folder "
                          "`dsrnet eval --out-dir` wrote")  # fmt: skip
    ours = (final.get("model"), final.get("dataset"), final.get("test_images"))
    theirs = (metrics.get("model"), metrics.get("dataset"), metrics.get("test_images"))
    def top1(m: dict) -> float | None:
        value = m.get("top1", None if m.get("top1_error") is None else 100.0 - m["top1_error"])
        return value if isinstance(value, int | float) else None

    theirs_top1, run_top1 = top1(metrics), top1(final)
    if ours != theirs or None in (theirs_top1, run_top1) or abs(theirs_top1 - run_top1) > EVAL_TOLERANCE_PP:
        raise DsrnetError(
            f"{src} is not an evaluation of this DSRNet run (model, dataset, test images {theirs} vs {ours}; top-1 "
            f"{theirs_top1} vs the run's final {run_top1}); fix: pass `dsrnet eval` of the weights this run produced"
        )


def assemble(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    bench_call: str | None = None,
    dsrnet_eval: str | Path | None = None,
    command: str = "",
    log: Callable[[str], None] = logger.info,
) -> dict:
    """Write ``out`` as ``dsrnet reproduce`` would have from the runs and timings in ``sources`` (see the module
    docstring). Returns :func:`dsrnet.paper.runner.report_finished`'s ``{"rows", "files", "table"}`` and
    ``"assembled"`` (the provenance written to ``out/assembled.json``)."""
    from dsrnet.paper import runner

    out = Path(out)
    trained, calls = gather(sources)
    train, stem = check_one_recipe(trained)
    call = pick_call(trained, calls, bench_call)
    benches, request = check_benches(trained, call)
    dataset = {t.config.get("dataset", "cifar10") for t in trained.values()}.pop()
    _check_out(out, set(trained), trained)
    dsrnet = next((t for t in trained.values() if t.arch.startswith("dsrnet")), None)
    if dsrnet_eval is not None and dsrnet is None:
        raise DsrnetError("--dsrnet-eval given but no DSRNet run is assembled; fix: pass the dsrnet stage's folder")
    if dsrnet_eval is not None:  # checked before anything is written
        _check_eval(Path(dsrnet_eval), dsrnet)
    for arch, t in trained.items():
        run_dir = out / "runs" / arch
        atomic_write_text(run_dir / "config.yaml", _write_config(t.files["config.yaml"], run_dir))
        atomic_write_text(run_dir / "metrics.jsonl", t.files["metrics.jsonl"])
        atomic_write_text(run_dir / "bench.json", call.benches[arch])
        atomic_write_text(run_dir / "final.json", t.files["final.json"])  # last: "finished" once all is there
    eval_origin = None
    if dsrnet_eval is not None:
        src = Path(dsrnet_eval)
        dest = out / "runs" / dsrnet.arch / "eval"
        dest.mkdir(parents=True, exist_ok=True)
        for name in EVAL_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
        eval_origin = {"from": str(src), "checkpoint": json.loads((src / "metrics.json").read_text()).get("checkpoint")}
    provenance = {
        "command": command,
        "trained": {a: {"from": t.origin, "sha256": {n: _sha256(x) for n, x in t.files.items()}}
                    for a, t in sorted(trained.items())},  # fmt: skip
        "timings": {"call_id": call.call_id, "from": call.origin, "started": call.started,
                    "device_name": call.device_name, "request": request,
                    "sha256": {a: _sha256(call.benches[a]) for a in sorted(trained)}},  # fmt: skip
        "calls_given": sorted(calls),
        "config_changes": "deadline -> null, out_dir -> the run's folder here (resume-mutable fields)",
        "dsrnet_eval": eval_origin,
        "dry_run": call.dry_run,
    }
    atomic_write_json(out / "assembled.json", provenance)
    log(f"assembled {', '.join(sorted(trained))} into {out} (timings of call {call.call_id} on "
        f"{call.device_name or request.get('device')})")  # fmt: skip
    model_kwargs = dsrnet.config.get("model_kwargs") if dsrnet else None
    result = runner.report_finished(dataset, stem=stem, out=out, train=train, bench_settings=request,
                                    model_kwargs=model_kwargs, quick=call.dry_run, command=command, log=log)  # fmt: skip
    shown = {r["job"].key for r in result["rows"]}
    if shown != set(trained):  # the runner's own rule must see every assembled run as finished
        raise DsrnetError(f"reproduce does not recognise {', '.join(sorted(set(trained) - shown))} in {out} as "
                          "finished; fix: report this as a bug")  # fmt: skip
    result["assembled"] = provenance
    return result
