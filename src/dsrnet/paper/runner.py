"""``dsrnet reproduce`` (the paper's Tables 2-4 and Fig. 2) and ``dsrnet ablate`` (DSRNet's design claims).

``reproduce --dataset D`` trains every network of the paper's comparison (:data:`dsrnet.models.PAPER_COMPARISON`)
with one recipe through :func:`dsrnet.train.train`, benchmarks each (:func:`dsrnet.bench.measure.benchmark_model`: inference,
fp32, batch of 128, the paper's "BatchSize=128" speed measure), evaluates DSRNet's confusion matrix
(:func:`dsrnet.infer.evaluate_checkpoint`) and writes, under ``--out-dir`` (default ``results/<dataset>``):

* ``table.md`` -- the paper's layout (rows Top1-error, Top3-error, time per batch of 128, parameters; one column per
  model), each cell "ours (paper)"; a details table; the command, hardware, versions, seed and date;
* ``table.csv``, ``summary.json`` -- the same numbers, machine-readable;
* ``params.png`` (Fig. 2), ``pareto.png`` (error vs latency, marker area ~ parameters), ``curves.png`` (test error
  and train loss per epoch of every model), ``confusion_dsrnet.png``;
* ``runs/<model>/`` -- each training run's folder (``config.yaml``, ``metrics.jsonl``, ``final.json``, ...) and its
  ``bench.json``.

Re-running is resumable: a model whose ``final.json`` exists (with the same settings) is not trained again, one with
only a ``checkpoint.pt`` continues from it, and a finished benchmark with the same settings is not repeated. The
tables cover every model of the comparison finished in the folder with the same settings, not only those of the
current call, so ``reproduce --models resnet50`` into a folder that already holds DSRNet keeps DSRNet's column.

Stem: ``--stem paper`` (default) is Table 1 and Section 4.2 as written (7x7 stride-2 conv at rate 3, then a stride-2
max-pool) for every model, on every dataset. The paper mentions no adaptation to 32x32 inputs (where this stem leaves
a 1x1 map at stage 4), and its CIFAR error rates (9-12 % top-1) are in the range such ImageNet-style stems reach;
``--stem cifar`` (3x3 stride-1 conv, no max-pool, for every model alike) is the usual CIFAR adaptation and costs
about 16x the MACs at 32 px.

:func:`report_finished` writes the same files from the finished runs a folder holds, training and timing nothing;
:func:`bench_models` times models as ``reproduce`` does without training them (both used by
:mod:`dsrnet.paper.assemble` for runs trained over several GPU calls).

``ablate`` trains DSRNet variants (:func:`ablation_variants`) on the same recipe and writes ``table.md``,
``table.csv``, ``summary.json`` and ``ablation.png`` (error vs latency, marker area ~ parameters) under ``--out-dir``
(default ``results/<dataset>/ablate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dsrnet.bench.measure import (
    DEFAULT_REPEATS,
    DEFAULT_WARMUP,
    benchmark_model,
    environment,
    setup_differences,
)
from dsrnet.data import DATASETS, load_split
from dsrnet.device import resolve_device
from dsrnet.errors import DsrnetError, check_int
from dsrnet.infer import evaluate_checkpoint
from dsrnet.models import PAPER_COMPARISON, list_models, stem_variant
from dsrnet.paper.tables import Settings, write_ablation_report, write_reproduce_report
from dsrnet.report.markdown import read_json, read_jsonl
from dsrnet.run.atomic import atomic_write_bytes, atomic_write_json, plain
from dsrnet.run.rundir import RunDir
from dsrnet.train import LEGACY_DEFAULTS, RESUME_MUTABLE, TrainConfig, train

logger = logging.getLogger(__name__)
_log = logger.info

DATASET_CHOICES = ("cifar10", "cifar100", "stl10")


#: ``--quick``: a few real images per class and one epoch, enough to run every stage of the pipeline on a CPU.
QUICK = {"subset_per_class": 20, "test_subset_per_class": 10, "epochs": 1, "batch_size": 32}


QUICK_BENCH = {"warmup": 0, "repeats": 1}


@dataclass(frozen=True)
class Job:
    """One training run: the folder name under ``runs/``, the registered architecture and its kwargs."""

    key: str
    arch: str
    model_kwargs: dict = field(default_factory=dict)
    tests: str = ""


@dataclass(frozen=True)
class Variant:
    """An ablation of DSRNet: constructor kwargs and the claim of the paper it tests."""

    name: str
    kwargs: dict
    tests: str
    stem: str | None = None  # None: the run's --stem; else this stem (the stem ablation)


def ablation_variants(stem: str = "paper", image_size: int = 32) -> list[Variant]:
    """DSRNet-50 variants, each changing one design choice of Section 3 / Table 1 (see ``dsrnet.models.dsrnet``);
    ``image_size`` is the dataset's input side, which ``fit_dilation`` fits the rates to."""
    other = "cifar" if stem == "paper" else "paper"
    return [
        Variant("dsrnet", {}, "baseline: stem rate 3, rate 2 on downsampling blocks, in-stage rates (1,2,3)"),
        Variant(
            "no_dilation",
            {"stem_dilation": 1, "down_dilation": 1, "block_dilations": [1]},
            "dilation helps at all (Section 3): every rate 1",
        ),
        Variant(
            "fit_dilation",
            {"fit_dilation_to": image_size},
            "'appropriate dilated rate' (Section 3): each rate capped to the feature map it reads",
        ),
        Variant(
            "no_stem_dilation",
            {"stem_dilation": 1},
            "rate 3 in the first conv 'preserves more initial semantic information' (Section 3): rate 1 there",
        ),
        Variant(
            "no_down_dilation",
            {"down_dilation": 1},
            "rate 2 on downsampling 'compensates the information loss' (Section 3): rate 1 there",
        ),
        Variant(
            "no_block_dilation",
            {"block_dilations": [1]},
            "rates added 'dynamically' in the residual blocks 'fuse more image features' (Section 3): rate 1 there",
        ),
        Variant("rates_2", {"block_dilations": [2]}, "schedule: constant in-stage rate 2 (gridding risk)"),
        Variant("rates_1_2_5", {"block_dilations": [1, 2, 5]}, "schedule: hybrid-dilated (1,2,5)"),
        Variant(
            "stride_1x1", {"stride_on": "1x1"}, "stride on the 1x1 conv as Table 1 is written (not on the dw)"
        ),
        Variant("full_3x3", {"separable": False}, "depthwise-separable vs a full 3x3 conv (Fig. 1)"),
        Variant(f"stem_{other}", {}, f"{other} stem instead of the {stem} stem", stem=other),
    ]


def finished_run(config: TrainConfig) -> bool:
    """True if ``config.out_dir`` holds a finished run with the same settings; a finished run with other settings
    is an error, since a table would then mix recipes (:meth:`RunDir.check_compatible`)."""
    run = RunDir(config.out_dir)
    run.check_final_readable()
    if not run.finished:
        return False
    run.check_compatible(config.to_dict(), RESUME_MUTABLE, LEGACY_DEFAULTS)
    return True


def train_or_skip(config: TrainConfig, *, log: Callable[[str], None] = _log) -> dict:
    """Train ``config`` unless its run folder already holds a finished run with the same settings; an unfinished
    run (a checkpoint, no ``final.json``) is resumed."""
    run = RunDir(config.out_dir)
    if finished_run(config):
        log(f"skip {config.model}: finished run in {run.path}")
        return read_json(run.final)
    if run.resumable:
        log(f"resume {config.model} from {run.checkpoint}")
        config.resume = "auto"
    return train(config)


def bench_or_skip(job: Job, run: Path, request: dict, *, log: Callable[[str], None] = _log) -> dict:
    """Benchmark ``job`` (inference latency per batch etc.) into ``run/bench.json`` unless already done alike."""
    path = run / "bench.json"
    env = environment(request["device"])  # before the timing: its load average is what the timing met
    if path.is_file():
        saved = read_json(path)
        if plain(saved.get("request")) == plain(request):
            # A timing of another machine, software or thread count is not reused: one table, one setup.
            changed = setup_differences(saved.get("env") or {}, env)
            if not changed:
                log(f"skip bench of {job.key}: {path}")
                return saved["row"]
            log(f"re-time {job.key}: its saved timing had another setup ({'; '.join(changed)})")
    row = benchmark_model(job.arch, model_kwargs=job.model_kwargs or None, **request)
    row["model"] = job.key
    log(
        f"bench {job.key}: {row['latency_ms']:.1f} ms per batch of {request['batch_size']} on {row['device']}"
    )
    atomic_write_json(path, {"request": request, "row": row, "env": env})
    return row


def _configs(jobs: Sequence[Job], s: Settings) -> list[TrainConfig]:
    return [
        TrainConfig.from_recipe(
            model=job.arch,
            dataset=s.dataset,
            model_kwargs=dict(job.model_kwargs),
            out_dir=str(s.out / "runs" / job.key),
            **s.train,
        )
        for job in jobs
    ]


#: How to pass a training setting that has no flag (runs older than a recipe field ran with its legacy value).
_SETTINGS_HOW = " (flags, or a --config YAML file for fields without one, e.g. zero_init_residual: false)"


def _differ(why: list[str]) -> str:
    """The differences :func:`_finished_alike` collected, for an error line (empty when there are none)."""
    text = "; ".join(why)
    if len(text) > 400:  # cut at a word, and say so
        text = text[:400].rsplit(" ", 1)[0] + " ..."
    return f" (finished runs differ: {text})" if why else ""


def _finished_alike(job: Job, s: Settings, why: list[str] | None = None) -> bool:
    """``job`` already finished and benchmarked in ``s.out`` with the same settings; else False, and a finished
    run's difference from these settings is appended to ``why``."""
    cfg = _configs([job], s)[0]
    run = RunDir(cfg.out_dir)
    run.check_final_readable()  # a damaged final.json left the run out of the table without a word
    if not (run.finished and (run.path / "bench.json").is_file()):
        return False
    try:
        run.check_compatible(cfg.to_dict(), RESUME_MUTABLE, LEGACY_DEFAULTS)
    except DsrnetError as err:
        if why is not None:
            why.append(f"{job.key}: {str(err).split('; fix:')[0]}")
        return False
    return True


def run_jobs(jobs: Sequence[Job], s: Settings, *, log: Callable[[str], None] = _log) -> list[dict]:
    """Train (or skip), then benchmark (or skip) every job; returns one row per job with both results."""
    # Every check before the first (long) run starts: settings, finished runs that would clash, the data.
    configs = _configs(jobs, s)
    for cfg in configs:
        finished_run(cfg)
    load_split(s.dataset, "test", s.train.get("data_dir"), download=bool(s.train.get("download")))
    finals = []
    for i, (job, cfg) in enumerate(zip(jobs, configs, strict=True)):
        log(f"[{i + 1}/{len(jobs)}] {job.key} ({job.arch})")
        t0 = time.perf_counter()
        finals.append(train_or_skip(cfg, log=log))
        log(f"[{i + 1}/{len(jobs)}] {job.key} done in {time.perf_counter() - t0:.0f} s")
    rows = []
    for job, cfg, final in zip(jobs, configs, finals, strict=True):
        run = RunDir(cfg.out_dir)
        rows.append(_report_row(job, run, final, bench_or_skip(job, run.path, s.bench, log=log)))
    return rows


def _report_row(job: Job, run: RunDir, final: dict, bench: dict) -> dict:
    """One model's row of the report: its final metrics, timing, per-epoch metrics and folder."""
    metrics = read_jsonl(run.metrics) if run.metrics.is_file() else []
    return {"job": job, "final": final, "bench": bench, "metrics": metrics, "run": run.path}


def dsrnet_confusion(rows: list[dict], s: Settings, *, log: Callable[[str], None] = _log) -> Path | None:
    """Evaluate DSRNet's checkpoint with :func:`dsrnet.infer.evaluate_checkpoint` (which draws the confusion
    matrix) and copy its ``confusion.png`` to ``confusion_dsrnet.png``."""
    row = next((r for r in rows if r["job"].key.startswith("dsrnet")), None)
    if row is None:
        return None
    run = RunDir(row["run"])
    eval_dir = run.eval
    done = eval_dir / "metrics.json"
    if not run.checkpoint.is_file():
        # A finished run brought back without its checkpoint (e.g. a GPU campaign's return, assembled by
        # dsrnet.paper.assemble): nothing to evaluate; an evaluation saved with it is used, else no figure.
        if not (eval_dir / "confusion.png").is_file():
            log(f"skip confusion matrix of {row['job'].key}: {run.path} holds no checkpoint")
            return None
        log(f"confusion matrix of {row['job'].key}: the saved {eval_dir / 'confusion.png'} (no checkpoint)")
    elif not done.is_file() or done.stat().st_mtime < run.final.stat().st_mtime:
        metrics = evaluate_checkpoint(
            run.checkpoint,
            data_dir=s.train.get("data_dir"),
            device=s.train.get("device", "auto"),
            test_subset_per_class=s.train.get("test_subset_per_class"),
            out_dir=eval_dir,
        )
        log(f"evaluated {row['job'].key}: top-1 error {metrics['top1_error']:.2f}% -> {eval_dir}")
    else:
        log(f"skip eval of {row['job'].key}: {done}")
    return atomic_write_bytes(s.out / "confusion_dsrnet.png", (eval_dir / "confusion.png").read_bytes())


def reproduce(
    dataset: str,
    *,
    models: Sequence[str] | None = None,
    stem: str = "paper",
    out: str | Path | None = None,
    train: dict | None = None,
    bench_settings: dict | None = None,
    model_kwargs: dict | None = None,
    quick: bool = False,
    command: str = "",
    log: Callable[[str], None] = _log,
) -> dict:
    """Library entry of ``dsrnet reproduce`` (see the module docstring). Returns ``{"rows", "files"}``."""
    models = list(models or PAPER_COMPARISON)
    _check_models(models, stem)
    s = _settings(dataset, out, train, bench_settings, quick, command, default_out=Path("results") / dataset)
    jobs = [_comparison_job(name, stem, model_kwargs) for name in models]
    asked = {j.key for j in jobs}
    earlier = [j for j in _finished_comparison(s, stem, model_kwargs) if j.key not in asked]
    if earlier:
        log(f"tables also include the finished runs of {', '.join(j.key for j in earlier)} in {s.out}")
    jobs = _in_paper_order(jobs + earlier, stem)
    rows = run_jobs(jobs, s, log=log)
    return _reproduce_report(rows, s, log=log)


def _comparison_job(name: str, stem: str, model_kwargs: dict | None) -> Job:
    """The job ``reproduce`` runs for ``name``: its ``stem`` variant; ``model_kwargs`` go to DSRNet only."""
    arch = stem_variant(name, stem)
    kwargs = dict(model_kwargs or {}) if arch.startswith("dsrnet") else {}
    return Job(key=arch, arch=arch, model_kwargs=kwargs)


def _finished_comparison(s: Settings, stem: str, model_kwargs: dict | None, why: list[str] | None = None,
                         models: Sequence[str] | None = None) -> list[Job]:  # fmt: skip
    """The models that ``s.out`` holds finished and benchmarked with ``s``'s settings: those of ``models``, or of
    the comparison and every other registered model with a run folder of this stem there (``reproduce --models``
    takes any); the differences of the other finished runs go to ``why``."""
    names = list(models or PAPER_COMPARISON)
    if models is None:
        known, runs = set(list_models()), s.out / "runs"
        folders = sorted(d.name for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else []
        names += [f for f in folders if f in known and stem_variant(f, stem) == f
                  and f not in {stem_variant(n, stem) for n in names}]  # fmt: skip
    jobs = [_comparison_job(n, stem, model_kwargs) for n in names]
    return [j for j in jobs if _finished_alike(j, s, why)]


def _in_paper_order(jobs: list[Job], stem: str) -> list[Job]:
    order = {stem_variant(n, stem): i for i, n in enumerate(PAPER_COMPARISON)}
    return sorted(jobs, key=lambda j: order.get(j.key, len(order)))


def _reproduce_report(rows: list[dict], s: Settings, *, log: Callable[[str], None] = _log) -> dict:
    confusion = dsrnet_confusion(rows, s, log=log)
    files, paper_table = write_reproduce_report(rows, s)
    if confusion is not None:
        files.append(confusion)
    return {"rows": rows, "files": files, "table": paper_table}


def report_finished(
    dataset: str,
    *,
    stem: str = "paper",
    out: str | Path,
    train: dict | None = None,
    bench_settings: dict | None = None,
    model_kwargs: dict | None = None,
    quick: bool = False,
    command: str = "",
    models: Sequence[str] | None = None,
    log: Callable[[str], None] = _log,
) -> dict:
    """``reproduce``'s tables and figures from the runs ``out`` already holds finished and benchmarked with these
    settings (the rule ``reproduce`` skips them by), without training or benchmarking anything: those of
    ``models``, each of which must be there, or all of them. A finished run timed with other bench settings is an
    error: one table, one timing method."""
    s = _settings(dataset, out, train, bench_settings, quick, command, default_out=Path("results") / dataset,
                  timing_here=False)  # fmt: skip
    why: list[str] = []
    if models is not None:
        _check_models(models, stem)
    jobs = _finished_comparison(s, stem, model_kwargs, why, models)
    missing = [stem_variant(m, stem) for m in models or () if stem_variant(m, stem) not in {j.key for j in jobs}]
    if missing:
        raise DsrnetError(
            f"{s.out} holds no finished, benchmarked run of {', '.join(missing)} with these settings{_differ(why)}; "
            f"fix: drop them from --models, pass the settings they were trained with{_SETTINGS_HOW}, or run `dsrnet "
            f"reproduce` for them first"
        )
    if not jobs:
        raise DsrnetError(
            f"{s.out} holds no finished, benchmarked run of the comparison with these settings{_differ(why)}; fix: pass "
            f"the settings the runs were trained with{_SETTINGS_HOW}, or run `dsrnet reproduce` first"
        )
    return _reproduce_report(_saved_rows(_in_paper_order(jobs, stem), s), s, log=log)


def _saved_rows(jobs: Sequence[Job], s: Settings) -> list[dict]:
    """The report rows of finished, timed runs, from their files alone (nothing trained or timed)."""
    rows, first = [], None
    for job in jobs:
        run = RunDir(s.out / "runs" / job.key)
        path = run.path / "bench.json"
        saved = read_json(path)
        if s.bench_given is not None and first is None:  # what the report was not asked to check: as saved
            s.bench.update({k: v for k, v in (saved.get("request") or {}).items() if k not in s.bench_given})
        if plain(saved.get("request")) != plain(s.bench):
            raise DsrnetError(
                f"{path} was timed with other settings ({saved.get('request')}, asked "
                f"{s.bench}); fix: pass the bench settings it was timed with, or delete it to time it again"
            )
        # One table, one setup (as bench_or_skip re-times a saved timing of another machine): the report names
        # the first row's machine for all of them.
        env = saved.get("env") or {}
        changed = setup_differences(first[1], env) if first else []
        if changed:
            raise DsrnetError(
                f"{path} was timed on another setup than {first[0]} ({'; '.join(changed)}); fix: time both on one "
                f"machine (delete it and run `dsrnet reproduce` there, without --report-only)"
            )
        first = first or (path, env)
        rows.append(_report_row(job, run, read_json(run.final), saved["row"]))
    return rows


def bench_models(
    dataset: str,
    models: Sequence[str],
    *,
    stem: str = "paper",
    out: str | Path,
    train: dict | None = None,
    bench_settings: dict | None = None,
    model_kwargs: dict | None = None,
    quick: bool = False,
    log: Callable[[str], None] = _log,
) -> list[dict]:
    """Time ``models`` exactly as ``reproduce`` times its runs (:func:`bench_or_skip`, the same settings, into
    ``out/runs/<arch>/bench.json``) without training them: the timings of models trained elsewhere, measured on
    the card and in the call that times the others (the timing depends on the architecture, not the weights)."""
    _check_models(list(models), stem)
    s = _settings(dataset, out, train, bench_settings, quick, "", default_out=Path("results") / dataset)
    rows = []
    for name in models:
        job = _comparison_job(name, stem, model_kwargs)
        rows.append(bench_or_skip(job, s.out / "runs" / job.key, s.bench, log=log))
    return rows


def ablate(
    dataset: str,
    *,
    variants: Sequence[str] | None = None,
    stem: str = "paper",
    out: str | Path | None = None,
    train: dict | None = None,
    bench_settings: dict | None = None,
    model_kwargs: dict | None = None,
    quick: bool = False,
    command: str = "",
    report_only: bool = False,
    log: Callable[[str], None] = _log,
) -> dict:
    """Library entry of ``dsrnet ablate``: train and time each variant; table + error/latency/params plot. With
    ``report_only`` nothing is trained or timed: the table and figure are rewritten from the variants' finished,
    timed runs in ``out`` (every variant asked must have one, with these settings)."""
    all_variants = {v.name: v for v in ablation_variants(stem, DATASETS[dataset].image_size)}
    names = list(variants or all_variants)
    _check_once("--variants", names)
    unknown = [n for n in names if n not in all_variants]
    if unknown:
        raise DsrnetError(
            f"unknown ablation variant(s) {', '.join(unknown)}; fix: choose from {', '.join(all_variants)}"
        )
    s = _settings(
        dataset, out, train, bench_settings, quick, command, default_out=Path("results") / dataset / "ablate",
        timing_here=not report_only,
    )
    def clash(v) -> list[str]:  # arguments the variant is defined by and --model-kwargs sets otherwise
        return sorted(k for k in v.kwargs if k in (model_kwargs or {}) and model_kwargs[k] != v.kwargs[k])

    def job(v) -> Job:
        return Job(key=v.name, arch=stem_variant("dsrnet50", v.stem or stem),
                   model_kwargs={**(model_kwargs or {}), **v.kwargs}, tests=v.tests)  # fmt: skip

    jobs = []
    for name in names:
        v = all_variants[name]
        if clash(v):  # the variant is defined by those arguments: the user's would be silently replaced
            raise DsrnetError(
                f"variant {name} sets {', '.join(f'{k}={v.kwargs[k]!r}' for k in clash(v))}, and --model-kwargs sets "
                f"{', '.join(f'{k}={model_kwargs[k]!r}' for k in clash(v))}; fix: drop {', '.join(clash(v))} from "
                f"--model-kwargs, or the variant"
            )
        jobs.append(job(v))
    # As reproduce keeps the finished columns: the variants this folder already holds finished and timed with these
    # settings stay in the table (a rerun with --variants X replaced the whole table, baseline included, with X).
    earlier = [job(v) for n, v in all_variants.items() if n not in names and not clash(v)]
    earlier = [j for j in earlier if _finished_alike(j, s)]
    if earlier:
        log(f"tables also include the finished variants {', '.join(j.key for j in earlier)} in {s.out}")
        order = list(all_variants)
        jobs = sorted(jobs + earlier, key=lambda j: order.index(j.key))
    if report_only:
        why: list[str] = []
        missing = [j.key for j in jobs if not _finished_alike(j, s, why)]
        if missing:
            raise DsrnetError(
                f"{s.out} holds no finished, timed run of {', '.join(missing)} with these settings{_differ(why)}; fix: pass "
                f"the settings the runs were trained with{_SETTINGS_HOW}, --variants the ones it holds, or run `dsrnet "
                f"ablate` first"
            )
        rows = _saved_rows(jobs, s)
    else:
        rows = run_jobs(jobs, s, log=log)
    return {"rows": rows, "files": write_ablation_report(rows, s)}


def _check_once(what: str, names: Sequence[str]) -> None:
    """One column (or row) per name: a name given twice gave two identical columns."""
    twice = sorted({n for n in names if list(names).count(n) > 1})
    if twice:
        raise DsrnetError(f"{what} names {', '.join(twice)} more than once; fix: name each once")


def _check_models(models: Sequence[str], stem: str | None = None) -> None:
    _check_once("--models", models)
    known = set(list_models())
    unknown = [m for m in models if m not in known]
    if unknown:
        raise DsrnetError(f"unknown model(s) {', '.join(unknown)}; fix: choose from {', '.join(sorted(known))}")
    other = [m for m in models if stem == "paper" and m.endswith("_cifar")]
    if other:  # else the paper-stem model would be trained instead, silently
        bases = " ".join(m.removesuffix("_cifar") for m in models)
        raise DsrnetError(f"{', '.join(other)} has the cifar stem, but --stem is paper; fix: --stem cifar --models "
                          f"{bases}")  # fmt: skip


def _settings(
    dataset, out, train, bench_settings, quick, command, *, default_out: Path, timing_here: bool = True
) -> Settings:
    """``timing_here=False``: nothing is timed in this process (a report of saved timings), so no device is
    resolved here and the bench settings not given are taken from the saved timings (e.g. ``cuda`` with its
    warm-up and repeats on a machine without a GPU)."""
    if dataset not in DATASETS:
        raise DsrnetError(f"unknown dataset {dataset!r}; fix: choose one of {', '.join(DATASETS)}")
    train = {k: v for k, v in (train or {}).items() if v is not None}
    bench_settings = {k: v for k, v in (bench_settings or {}).items() if v is not None}
    given = None if timing_here else frozenset(bench_settings)
    if quick:
        train = {**QUICK, **train}
        bench_settings = {**QUICK_BENCH, **bench_settings}
        if out is None:
            default_out = Path("results") / "quick" / default_out.relative_to("results")
    train.setdefault("progress", False)
    train.setdefault("tensorboard", False)  # results/ keeps tables and figures, not event files
    device = str(train.get("device", "auto"))
    device = str(resolve_device(device)) if timing_here else device  # a report needs no device it names
    kind = "cpu" if device == "auto" else device.split(":")[0]
    bench_defaults = {
        "image_size": DATASETS[dataset].image_size,
        "batch_size": 128,
        "device": device,
        "precision": "fp32",
        "num_classes": DATASETS[dataset].num_classes,
        "warmup": DEFAULT_WARMUP.get(kind, DEFAULT_WARMUP["cpu"]),
        "repeats": DEFAULT_REPEATS.get(kind, DEFAULT_REPEATS["cpu"]),
    }
    bench_settings = {**bench_defaults, **bench_settings}
    if timing_here:
        bench_settings["device"] = str(resolve_device(bench_settings["device"]))
    check_int("bench batch size", bench_settings["batch_size"])
    check_int("bench repeats", bench_settings["repeats"])
    check_int("bench warmup", bench_settings["warmup"], 0)
    out = Path(out) if out is not None else default_out
    RunDir(out).check_writable()  # before any training
    return Settings(
        dataset=dataset, out=out, train=train, bench=bench_settings,
        command=command, quick=quick, bench_given=given,
    )  # fmt: skip
