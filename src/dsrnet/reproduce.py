"""``dsrnet reproduce`` (the paper's Tables 2-4 and Fig. 2) and ``dsrnet ablate`` (DSRNet's design claims).

``reproduce --dataset D`` trains every network of the paper's comparison (:data:`dsrnet.models.PAPER_COMPARISON`)
with one recipe through :func:`dsrnet.engine.train`, benchmarks each (:func:`dsrnet.bench.benchmark_model`: inference,
fp32, batch of 128, the paper's "BatchSize=128" speed measure), evaluates DSRNet's confusion matrix
(:func:`dsrnet.engine.evaluate_checkpoint`) and writes, under ``--out`` (default ``results/<dataset>``):

* ``table.md`` -- the paper's layout (rows Top1-error, Top3-error, time per batch of 128, parameters; one column per
  model), each cell "ours (paper)"; a details table; the command, hardware, versions, seed and date;
* ``table.csv``, ``summary.json`` -- the same numbers, machine-readable;
* ``params.png`` (Fig. 2), ``pareto.png`` (error vs latency, marker area ~ parameters), ``curves.png`` (test error
  and train loss per epoch of every model), ``confusion_dsrnet.png``;
* ``runs/<model>/`` -- each training run's folder (``config.yaml``, ``metrics.jsonl``, ``final.json``, ...) and its
  ``bench.json``.

Re-running is resumable: a model whose ``final.json`` exists (with the same settings) is not trained again, one with
only a ``checkpoint.pt`` continues from it, and a finished benchmark with the same settings is not repeated.

Stem: ``--stem paper`` (default) is Table 1 and Section 4.2 as written (7x7 stride-2 conv at rate 3, then a stride-2
max-pool) for every model, on every dataset. The paper mentions no adaptation to 32x32 inputs (where this stem leaves
a 1x1 map at stage 4), and its CIFAR error rates (9-12 % top-1) are in the range such ImageNet-style stems reach;
``--stem cifar`` (3x3 stride-1 conv, no max-pool, for every model alike) is the usual CIFAR adaptation and costs
about 16x the MACs at 32 px.

``ablate`` trains DSRNet variants (:func:`ablation_variants`) on the same recipe and writes ``table.md``,
``table.csv``, ``summary.json`` and ``ablation.png`` (error vs latency, marker area ~ parameters) under ``--out``
(default ``results/<dataset>/ablate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dsrnet import bench, report
from dsrnet.device import resolve_device
from dsrnet.errors import DsrnetError

DATASET_CHOICES = ("cifar10", "cifar100", "stl10")
#: ``--quick``: a few real images per class and one epoch, enough to run every stage of the pipeline on a CPU.
QUICK = {"subset_per_class": 20, "test_subset_per_class": 10, "epochs": 1, "batch_size": 32}
QUICK_BENCH = {"warmup": 0, "repeats": 1}
PAPER_TABLE = {"cifar10": "Table 2", "cifar100": "Table 3", "stl10": "Table 4"}


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


def ablation_variants(stem: str = "paper") -> list[Variant]:
    """DSRNet-50 variants, each changing one design choice of Section 3 / Table 1 (see ``dsrnet.models.dsrnet``)."""
    other = "cifar" if stem == "paper" else "paper"
    return [
        Variant("dsrnet", {}, "baseline: stem rate 3, rate 2 on downsampling blocks, in-stage rates (1,2,3)"),
        Variant(
            "no_dilation",
            {"stem_dilation": 1, "down_dilation": 1, "block_dilations": [1]},
            "dilation helps at all (Section 3): every rate 1",
        ),
        Variant(
            "no_down_dilation",
            {"down_dilation": 1},
            "rate 2 on downsampling 'compensates the information loss' (Section 3): rate 1 there",
        ),
        Variant("rates_2", {"block_dilations": [2]}, "schedule: constant in-stage rate 2 (gridding risk)"),
        Variant("rates_1_2_5", {"block_dilations": [1, 2, 5]}, "schedule: hybrid-dilated (1,2,5)"),
        Variant(
            "stride_1x1", {"stride_on": "1x1"}, "stride on the 1x1 conv as Table 1 is written (not on the dw)"
        ),
        Variant("full_3x3", {"separable": False}, "depthwise-separable vs a full 3x3 conv (Fig. 1)"),
        Variant(f"stem_{other}", {}, f"{other} stem instead of the {stem} stem", stem=other),
    ]


# --------------------------------------------------------------------------------------------------- running


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _differences(saved: dict, wanted: dict, ignore: frozenset[str]) -> list[str]:
    return [
        f"{key}={report.plain(saved.get(key))!r} (asked {report.plain(value)!r})"
        for key, value in wanted.items()
        if key not in ignore and report.plain(saved.get(key)) != report.plain(value)
    ]


def finished_run(config) -> bool:
    """True if ``config.out_dir`` holds a finished run (``final.json``) with the same settings; a finished run with
    other settings is an error, since a table would then mix recipes."""
    from dsrnet import engine

    run = Path(config.out_dir)
    if not (run / "final.json").is_file():
        return False
    saved_path = run / "config.yaml"
    saved = engine.load_config_file(saved_path) if saved_path.is_file() else {}
    diff = _differences(saved, config.to_dict(), engine.RESUME_MUTABLE)
    if diff:
        raise DsrnetError(
            f"{run} holds a finished run with other settings: {'; '.join(diff[:3])}; fix: pass another --out, "
            f"or delete {run} to train it again"
        )
    return True


def train_or_skip(config, *, log: Callable[[str], None] = _log) -> dict:
    """Train ``config`` unless its run folder already holds a finished run with the same settings; an unfinished
    run (a checkpoint, no ``final.json``) is resumed."""
    from dsrnet import engine

    run = Path(config.out_dir)
    if finished_run(config):
        log(f"skip {config.model}: finished run in {run}")
        return report.read_json(run / "final.json")
    if (run / "checkpoint.pt").is_file():
        log(f"resume {config.model} from {run / 'checkpoint.pt'}")
        config.resume = "auto"
    return engine.train(config)


def bench_or_skip(job: Job, run: Path, request: dict, *, log: Callable[[str], None] = _log) -> dict:
    """Benchmark ``job`` (inference latency per batch etc.) into ``run/bench.json`` unless already done alike."""
    path = run / "bench.json"
    if path.is_file():
        saved = report.read_json(path)
        if report.plain(saved.get("request")) == report.plain(request):
            log(f"skip bench of {job.key}: {path}")
            return saved["row"]
    env = bench.environment(request["device"])  # before the timing: its load average is what the timing met
    row = bench.benchmark_model(job.arch, model_kwargs=job.model_kwargs or None, **request)
    row["model"] = job.key
    log(
        f"bench {job.key}: {row['latency_ms']:.1f} ms per batch of {request['batch_size']} on {row['device']}"
    )
    report.write_json(path, {"request": request, "row": row, "env": env})
    return row


@dataclass
class Settings:
    """What every job of one ``reproduce``/``ablate`` call shares (validated before any work starts)."""

    dataset: str
    out: Path
    train: dict  # TrainConfig overrides, shared by all jobs
    bench: dict  # benchmark_model kwargs, shared by all jobs
    command: str
    quick: bool


def _configs(jobs: Sequence[Job], s: Settings) -> list:
    from dsrnet.engine import TrainConfig

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


def run_jobs(jobs: Sequence[Job], s: Settings, *, log: Callable[[str], None] = _log) -> list[dict]:
    """Train (or skip), then benchmark (or skip) every job; returns one row per job with both results."""
    from dsrnet import data

    # Every check before the first (long) run starts: settings, finished runs that would clash, the data.
    configs = _configs(jobs, s)
    for cfg in configs:
        finished_run(cfg)
    data.load_split(s.dataset, "test", s.train.get("data_dir"))
    finals = []
    for i, (job, cfg) in enumerate(zip(jobs, configs, strict=True)):
        log(f"[{i + 1}/{len(jobs)}] {job.key} ({job.arch})")
        t0 = time.perf_counter()
        finals.append(train_or_skip(cfg, log=log))
        log(f"[{i + 1}/{len(jobs)}] {job.key} done in {time.perf_counter() - t0:.0f} s")
    rows = []
    for job, cfg, final in zip(jobs, configs, finals, strict=True):
        run = Path(cfg.out_dir)
        b = bench_or_skip(job, run, s.bench, log=log)
        metrics = report.read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
        rows.append({"job": job, "final": final, "bench": b, "metrics": metrics, "run": run})
    return rows


def _environment(s: Settings, rows: list[dict]) -> dict:
    """The environment the timings were taken in (saved with the first benchmark), plus the command."""
    saved = report.read_json(rows[0]["run"] / "bench.json").get("env") if rows else None
    env = dict(saved or bench.environment(s.bench["device"]))
    env["command"] = s.command
    return env


# ---------------------------------------------------------------------------------------------- reproduce


def _paper(dataset: str, name: str) -> dict:
    from dsrnet.models import PAPER_RESULTS

    return PAPER_RESULTS.get(dataset, {}).get(name.removesuffix("_cifar"), {})


def _pct(v: float | None) -> str:
    return report.fmt(v, 2, "%")


def paper_layout_table(rows: list[dict], dataset: str, batch_size: int = 128) -> str:
    """Tables 2-4 layout: one column per model, each cell "ours (paper)"."""
    from dsrnet.models import PAPER_DSRNET_PARAMS

    ref = next((r for r in rows if r["job"].key.startswith("dsrnet")), None)
    ref_paper = _paper(dataset, ref["job"].key) if ref else {}
    headers = [""] + [report.display_name(r["job"].key) for r in rows]
    lines: list[list[str]] = [
        ["Top1-error, ours (paper)"],
        ["Top3-error, ours (paper)"],
        [f'ms per batch of {batch_size}, ours (paper\'s "fps/ms" for 128, as printed)'],
        ["time ÷ DSRNet's, ours (paper)"],
        ["params (M), ours (paper)"],
    ]
    for r in rows:
        p = _paper(dataset, r["job"].key)
        b, f = r["bench"], r["final"]
        lines[0].append(f"{_pct(f['top1_error'])} ({_pct(p.get('top1_error'))})")
        lines[1].append(f"{_pct(f['top3_error'])} ({_pct(p.get('top3_error'))})")
        lines[2].append(f"{b['latency_ms']:.1f} ({report.fmt(p.get('paper_time'), 3)})")
        ours_rel = b["latency_ms"] / ref["bench"]["latency_ms"] if ref else None
        paper_rel = (
            p["paper_time"] / ref_paper["paper_time"]
            if p.get("paper_time") and ref_paper.get("paper_time")
            else None
        )
        lines[3].append(f"{report.fmt(ours_rel, 2, 'x')} ({report.fmt(paper_rel, 2, 'x')})")
        paper_params = (
            PAPER_DSRNET_PARAMS / 1e6 if r["job"].key.removesuffix("_cifar") == "dsrnet50" else None
        )
        lines[4].append(f"{b['params'] / 1e6:.2f} ({report.fmt(paper_params, 1)})")
    return report.markdown_table(headers, lines, align="l" + "r" * len(rows))


def details_table(rows: list[dict]) -> str:
    headers = ["model", "arch", "top-1 err", "top-3 err", "top-5 err", "ms/batch (median)", "IQR ms", "images/s",
               "params (M)", "GMACs/img", "epochs", "train s", "s/epoch"]  # fmt: skip
    body = []
    for r in rows:
        f, b = r["final"], r["bench"]
        body.append([
            report.display_name(r["job"].key), r["job"].arch, _pct(f["top1_error"]), _pct(f["top3_error"]),
            _pct(f.get("top5_error")), f"{b['latency_ms']:.1f}", f"{b['latency_p25_ms']:.1f}–{b['latency_p75_ms']:.1f}",
            f"{b['images_per_s']:.0f}", f"{b['params'] / 1e6:.2f}", f"{b['gmacs_per_image']:.3f}", f["epochs"],
            f"{f['train_time_s']:.0f}", f"{f['s_per_epoch']:.1f}",
        ])  # fmt: skip
    return report.markdown_table(headers, body, align="ll" + "r" * 11)


def _settings_lines(s: Settings, rows: list[dict], env: dict) -> list[str]:
    f = rows[0]["final"] if rows else {}
    lines = [
        f"Command: `{s.command}`",
        f"Training: recipe {f.get('recipe')}, {f.get('epochs')} epochs, batch {f.get('batch_size')}, "
        f"{f.get('train_images')} train / {f.get('test_images')} test images, {f.get('precision')}, seed "
        f"{f.get('seed')}, device {f.get('device')}; errors are the final epoch's, on the test images above; "
        f"{sum(r['final']['train_time_s'] + r['final'].get('eval_time_s', 0.0) for r in rows):.0f} s of training "
        "and per-epoch evaluation in all.",
        f"Timing: `dsrnet bench` method, inference, {s.bench['precision']}, batch {s.bench['batch_size']}, "
        f"{s.bench['image_size']} px, median of {rows[0]['bench']['repeats'] if rows else '?'} timed calls after "
        f"{rows[0]['bench']['warmup'] if rows else '?'} warm-up call(s) on {env['device']}.",
        f"Environment: {bench.environment_line(env)}.",
    ]
    return lines


def _title(s: Settings, title: str) -> list[str]:
    quick = ["**A --quick run: a check of the pipeline on a few images for one epoch, not a result.**"]
    return [title, *(quick if s.quick else [])]


def write_reproduce_report(rows: list[dict], s: Settings) -> tuple[list[Path], str]:
    """Write every table and figure; returns the files and the paper-layout table (for the terminal)."""
    from dsrnet.models import PAPER_DSRNET_PARAMS

    env = _environment(s, rows)
    table = PAPER_TABLE[s.dataset]
    paper_table = paper_layout_table(rows, s.dataset, s.bench["batch_size"])
    md = [
        *_title(s, f"# {s.dataset}: the paper's {table}, measured"),
        f"Each cell: ours (the paper's {table}). The paper's time row is labelled \"fps/ms\"; its text gives other "
        'values (e.g. DSRNet 0.019 s on CIFAR-10), so compare the ratios in the "time ÷ DSRNet\'s" row, which do '
        "not depend on the unit or the hardware. The paper states only DSRNet's parameter count (2.19e7, Fig. 2).",
        paper_table,
        details_table(rows),
        *_settings_lines(s, rows, env),
    ]
    out = s.out
    files = [report.write_text(out / "table.md", "\n\n".join(md) + "\n")]
    csv_rows = []
    for r in rows:
        f, b, p = r["final"], r["bench"], _paper(s.dataset, r["job"].key)
        csv_rows.append({
            "model": r["job"].key, "arch": r["job"].arch, "top1_error": f["top1_error"],
            "top3_error": f["top3_error"], "top5_error": f.get("top5_error"), "latency_ms": b["latency_ms"],
            "latency_p25_ms": b["latency_p25_ms"], "latency_p75_ms": b["latency_p75_ms"],
            "images_per_s": b["images_per_s"], "params": b["params"], "gmacs_per_image": b["gmacs_per_image"],
            "epochs": f["epochs"], "recipe": f["recipe"], "train_time_s": f["train_time_s"], "seed": f["seed"],
            "paper_top1_error": p.get("top1_error"), "paper_top3_error": p.get("top3_error"),
            "paper_time": p.get("paper_time"),
        })  # fmt: skip
    files.append(report.write_csv(out / "table.csv", csv_rows))
    summary = {
        "dataset": s.dataset,
        "command": s.command,
        "quick": s.quick,
        "env": env,
        "train_settings": s.train,
        "bench_settings": s.bench,
        "seed": s.train.get("seed", 0),
        "models": [
            {
                "model": r["job"].key,
                "arch": r["job"].arch,
                "final": r["final"],
                "bench": r["bench"],
                "paper": _paper(s.dataset, r["job"].key),
                "run_dir": str(r["run"]),
            }
            for r in rows
        ],  # fmt: skip
        "paper_dsrnet_params": PAPER_DSRNET_PARAMS,
    }
    files.append(report.write_json(out / "summary.json", summary))
    files.append(
        report.plot_params(
            {r["job"].key: r["bench"]["params"] for r in rows},
            out / "params.png",
            paper_dsrnet=PAPER_DSRNET_PARAMS,
            title=f"Parameters per model, {s.dataset} head (paper Fig. 2)",
        )
    )
    points = [
        {"label": report.display_name(r["job"].key), "latency_ms": r["bench"]["latency_ms"],
         "error": r["final"]["top1_error"], "params": r["bench"]["params"]}
        for r in rows
    ]  # fmt: skip
    files.append(
        report.plot_tradeoff(
            points, out / "pareto.png", title=f"{s.dataset}: top-1 error vs time per batch of "
            f"{s.bench['batch_size']} ({env['device']})",
            xlabel=f"ms per batch of {s.bench['batch_size']} (inference, {s.bench['precision']})",
        )
    )  # fmt: skip
    files.append(
        report.plot_curves(
            {r["job"].key: r["metrics"] for r in rows},
            out / "curves.png",
            title=f"{s.dataset}: training curves",
        )
    )
    return files, paper_table


def dsrnet_confusion(rows: list[dict], s: Settings, *, log: Callable[[str], None] = _log) -> Path | None:
    """Evaluate DSRNet's checkpoint with :func:`dsrnet.engine.evaluate_checkpoint` (which draws the confusion
    matrix) and copy its ``confusion.png`` to ``confusion_dsrnet.png``."""
    from dsrnet import engine

    row = next((r for r in rows if r["job"].key.startswith("dsrnet")), None)
    if row is None:
        return None
    run, eval_dir = row["run"], row["run"] / "eval"
    done = eval_dir / "metrics.json"
    if not done.is_file() or done.stat().st_mtime < (run / "final.json").stat().st_mtime:
        metrics = engine.evaluate_checkpoint(
            run / "checkpoint.pt",
            data_dir=s.train.get("data_dir"),
            device=s.train.get("device", "auto"),
            test_subset_per_class=s.train.get("test_subset_per_class"),
            out_dir=eval_dir,
        )
        log(f"evaluated {row['job'].key}: top-1 error {metrics['top1_error']:.2f}% -> {eval_dir}")
    else:
        log(f"skip eval of {row['job'].key}: {done}")
    return report.write_bytes(s.out / "confusion_dsrnet.png", (eval_dir / "confusion.png").read_bytes())


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
    from dsrnet.models import PAPER_COMPARISON, stem_variant

    models = list(models or PAPER_COMPARISON)
    _check_models(models)
    s = _settings(dataset, out, train, bench_settings, quick, command, default_out=Path("results") / dataset)
    jobs = []
    for name in models:
        arch = stem_variant(name, stem)
        kwargs = dict(model_kwargs or {}) if arch.startswith("dsrnet") else {}
        jobs.append(Job(key=arch, arch=arch, model_kwargs=kwargs))
    rows = run_jobs(jobs, s, log=log)
    confusion = dsrnet_confusion(rows, s, log=log)
    files, paper_table = write_reproduce_report(rows, s)
    if confusion is not None:
        files.append(confusion)
    return {"rows": rows, "files": files, "table": paper_table}


# --------------------------------------------------------------------------------------------------- ablate


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
    log: Callable[[str], None] = _log,
) -> dict:
    """Library entry of ``dsrnet ablate``: train and time each variant; table + error/latency/params plot."""
    from dsrnet.models import stem_variant

    all_variants = {v.name: v for v in ablation_variants(stem)}
    names = list(variants or all_variants)
    unknown = [n for n in names if n not in all_variants]
    if unknown:
        raise DsrnetError(
            f"unknown ablation variant(s) {', '.join(unknown)}: choose from {', '.join(all_variants)}"
        )
    s = _settings(
        dataset, out, train, bench_settings, quick, command, default_out=Path("results") / dataset / "ablate"
    )
    jobs = []
    for name in names:
        v = all_variants[name]
        jobs.append(
            Job(key=name, arch=stem_variant("dsrnet50", v.stem or stem),
                model_kwargs={**(model_kwargs or {}), **v.kwargs}, tests=v.tests)
        )  # fmt: skip
    rows = run_jobs(jobs, s, log=log)
    return {"rows": rows, "files": write_ablation_report(rows, s)}


def write_ablation_report(rows: list[dict], s: Settings) -> list[Path]:
    env = _environment(s, rows)
    base = next((r for r in rows if r["job"].key == "dsrnet"), None)
    headers = ["variant", "what it tests", "arch", "changed kwargs", "top-1 err", "Δ top-1 vs dsrnet",
               "top-3 err", "ms/batch (median)", "× dsrnet time", "params (M)", "GMACs/img"]  # fmt: skip
    body, csv_rows = [], []
    for r in rows:
        f, b, job = r["final"], r["bench"], r["job"]
        delta = f["top1_error"] - base["final"]["top1_error"] if base else None
        rel = b["latency_ms"] / base["bench"]["latency_ms"] if base else None
        body.append([
            job.key, job.tests, job.arch, json.dumps(job.model_kwargs) if job.model_kwargs else "–",
            _pct(f["top1_error"]), report.fmt(delta, 2, " pp"), _pct(f["top3_error"]), f"{b['latency_ms']:.1f}",
            report.fmt(rel, 2, "x"), f"{b['params'] / 1e6:.2f}", f"{b['gmacs_per_image']:.3f}",
        ])  # fmt: skip
        csv_rows.append({
            "variant": job.key, "tests": job.tests, "arch": job.arch, "model_kwargs": job.model_kwargs,
            "top1_error": f["top1_error"], "top3_error": f["top3_error"], "delta_top1_vs_dsrnet": delta,
            "latency_ms": b["latency_ms"], "rel_latency": rel, "params": b["params"],
            "gmacs_per_image": b["gmacs_per_image"], "epochs": f["epochs"], "seed": f["seed"],
        })  # fmt: skip
    md = [
        *_title(s, f"# {s.dataset}: DSRNet ablations"),
        "Each variant changes one design choice of DSRNet-50 (Section 3, Fig. 1, Table 1) and is trained with the "
        "same recipe and seed. One seed per variant: differences smaller than the seed-to-seed spread are noise.",
        report.markdown_table(headers, body, align="llll" + "r" * 7),
        *_settings_lines(s, rows, env),
    ]
    out = s.out
    files = [report.write_text(out / "table.md", "\n\n".join(md) + "\n")]
    files.append(report.write_csv(out / "table.csv", csv_rows))
    files.append(
        report.write_json(
            out / "summary.json",
            {"dataset": s.dataset, "command": s.command, "quick": s.quick, "env": env, "train_settings": s.train,
             "bench_settings": s.bench, "variants": csv_rows,
             "finals": {r["job"].key: r["final"] for r in rows}},
        )
    )  # fmt: skip
    points = [
        {"label": r["job"].key, "latency_ms": r["bench"]["latency_ms"], "error": r["final"]["top1_error"],
         "params": r["bench"]["params"], "highlight": r["job"].key == "dsrnet"}
        for r in rows
    ]  # fmt: skip
    files.append(
        report.plot_tradeoff(
            points, out / "ablation.png", title=f"{s.dataset}: DSRNet ablations (marker area ~ parameters)",
            xlabel=f"ms per batch of {s.bench['batch_size']} (inference, {s.bench['precision']}, {env['device']})",
        )
    )  # fmt: skip
    return files


# ------------------------------------------------------------------------------------------------ settings


def _check_models(models: Sequence[str]) -> None:
    from dsrnet.models import list_models

    known = set(list_models())
    unknown = [m for m in models if m not in known]
    if unknown:
        raise DsrnetError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}")


def _settings(dataset, out, train, bench_settings, quick, command, *, default_out: Path) -> Settings:
    from dsrnet.data import DATASETS

    if dataset not in DATASETS:
        raise DsrnetError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    train = {k: v for k, v in (train or {}).items() if v is not None}
    bench_settings = {k: v for k, v in (bench_settings or {}).items() if v is not None}
    if quick:
        train = {**QUICK, **train}
        bench_settings = {**QUICK_BENCH, **bench_settings}
        if out is None:
            default_out = Path("results") / "quick" / default_out.relative_to("results")
    train.setdefault("progress", False)
    train.setdefault("tensorboard", False)  # results/ keeps tables and figures, not event files
    device = resolve_device(train.get("device", "auto"))
    bench_defaults = {
        "image_size": DATASETS[dataset].image_size,
        "batch_size": 128,
        "device": str(device),
        "precision": "fp32",
        "num_classes": DATASETS[dataset].num_classes,
        "warmup": bench.DEFAULT_WARMUP[device.type],
        "repeats": bench.DEFAULT_REPEATS[device.type],
    }
    bench_settings = {**bench_defaults, **bench_settings}
    bench_settings["device"] = str(resolve_device(bench_settings["device"]))
    bench._check_positive("bench batch size", bench_settings["batch_size"])
    bench._check_positive("bench repeats", bench_settings["repeats"])
    bench._check_positive("bench warmup", bench_settings["warmup"], 0)
    return Settings(
        dataset=dataset, out=Path(out) if out is not None else default_out, train=train, bench=bench_settings,
        command=command, quick=quick,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------------ CLI


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASET_CHOICES, help="dataset of Table 2 (cifar10), 3 "
                   "(cifar100) or 4 (stl10)")  # fmt: skip
    p.add_argument(
        "--recipe", choices=("paper", "fast"), default="paper", help="training recipe (dsrnet train)"
    )
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument(
        "--stem",
        choices=("paper", "cifar"),
        default="paper",
        help="stem of every model: paper = Table 1 (7x7/2 conv + max-pool), cifar = 3x3/1 conv",
    )
    p.add_argument(
        "--data-dir", default=None, help="datasets folder (default: $DSRNET_DATA or ~/.cache/dsrnet/data)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (training and timing)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="training precision (default: the recipe's; timing is always fp32)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="training seed (also picks the --subset-per-class images)"
    )
    p.add_argument("--subset-per-class", type=int, default=None, help="train on this many images per class")
    p.add_argument(
        "--test-subset-per-class", type=int, default=None, help="test on this many images per class"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"tiny end-to-end run: {QUICK['subset_per_class']} train / {QUICK['test_subset_per_class']} "
        f"test images per class, {QUICK['epochs']} epoch, batch {QUICK['batch_size']}, one timed call; "
        "writes under results/quick/ unless --out is given",
    )
    p.add_argument("--out", default=None, help="output folder (default: results/<dataset>[/ablate])")
    p.add_argument(
        "--bench-batch-size", type=int, default=None, help="timed batch size (default: 128, the paper's)"
    )
    p.add_argument(
        "--bench-warmup", type=int, default=None, help="untimed calls (default: bench's per device)"
    )
    p.add_argument(
        "--bench-repeats", type=int, default=None, help="timed calls (default: bench's per device)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--model-kwargs",
        default=None,
        metavar="JSON",
        help="extra DSRNet constructor arguments (JSON object), e.g. tiny widths for a smoke test",
    )
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")


def add_parser(sub) -> None:
    from dsrnet.models import PAPER_COMPARISON

    p = sub.add_parser(
        "reproduce",
        help="train, time and tabulate the paper's comparison (Tables 2-4, Fig. 2)",
        description="Train every model of the paper's comparison with one recipe, time it, and write the paper's "
        "table (ours beside the paper's numbers), CSV, JSON and figures to results/<dataset>/. Resumable.",
        formatter_class=bench.HelpFormatter,
    )
    _common_args(p)
    p.add_argument("--models", nargs="+", default=list(PAPER_COMPARISON), metavar="NAME",
                   help="subset of the comparison (or any registered model)")  # fmt: skip
    p.set_defaults(func=_cli_reproduce)

    names = [v.name for v in ablation_variants("paper")] + ["stem_paper"]
    a = sub.add_parser(
        "ablate",
        help="DSRNet variants that test the paper's design claims (dilation, stride, separable, stem)",
        description="Train DSRNet-50 variants on one recipe and tabulate error, latency and parameters. Variants: "
        + "; ".join(f"{v.name} = {v.tests}" for v in ablation_variants("paper")),
        formatter_class=bench.HelpFormatter,
    )
    _common_args(a)
    a.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help=f"subset of: {', '.join(names)} (stem_cifar with --stem paper, stem_paper with --stem "
                   "cifar; default: all)")  # fmt: skip
    a.set_defaults(func=_cli_ablate)


def _train_overrides(args: argparse.Namespace) -> dict:
    return {
        "recipe": args.recipe,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "data_dir": args.data_dir,
        "device": args.device,
        "precision": args.precision,
        "seed": args.seed,
        "subset_per_class": args.subset_per_class,
        "test_subset_per_class": args.test_subset_per_class,
        "progress": args.progress,
    }


def _bench_overrides(args: argparse.Namespace) -> dict:
    return {"batch_size": args.bench_batch_size, "warmup": args.bench_warmup, "repeats": args.bench_repeats}


def _prepare(args: argparse.Namespace) -> dict:
    if args.threads is not None:
        torch.set_num_threads(bench._check_positive("--threads", args.threads))
    return {
        "stem": args.stem,
        "out": args.out,
        "train": _train_overrides(args),
        "bench_settings": _bench_overrides(args),
        "model_kwargs": bench.parse_model_kwargs(args.model_kwargs),
        "quick": args.quick,
        "command": bench.command_line(args),
    }


def _finish(result: dict) -> int:
    for path in result["files"]:
        print(f"wrote {path}")
    return 0


def _cli_reproduce(args: argparse.Namespace) -> int:
    result = reproduce(args.dataset, models=args.models, **_prepare(args))
    print(result["table"])
    return _finish(result)


def _cli_ablate(args: argparse.Namespace) -> int:
    return _finish(ablate(args.dataset, variants=args.variants, **_prepare(args)))
