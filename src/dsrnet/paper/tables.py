"""The paper's tables, measured: Tables 2-4 in the paper's layout (ours beside the paper's numbers), the details
table, the ablation table, and every file and figure a ``reproduce``/``ablate`` folder holds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsrnet.bench.measure import environment, environment_line
from dsrnet.report import plots
from dsrnet.report.markdown import display_name, fmt, labelled, markdown_table, read_json, write_csv
from dsrnet.run.atomic import atomic_write_json, atomic_write_text

PAPER_TABLE = {"cifar10": "Table 2", "cifar100": "Table 3", "stl10": "Table 4"}


@dataclass
class Settings:
    """What every job of one ``reproduce``/``ablate`` call shares (validated before any work starts)."""

    dataset: str
    out: Path
    train: dict  # TrainConfig overrides, shared by all jobs
    bench: dict  # benchmark_model kwargs, shared by all jobs
    command: str
    quick: bool
    #: A report of saved timings (``--report-only``): the bench settings the caller asked for; the others are
    #: taken from the saved timings. ``None``: every bench setting is this call's (it times what it reports).
    bench_given: frozenset[str] | None = None


def _environment(s: Settings, rows: list[dict]) -> dict:
    """The environment the timings were taken in (saved with the first benchmark), plus the command."""
    saved = read_json(rows[0]["run"] / "bench.json").get("env") if rows else None
    env = dict(saved or environment(s.bench["device"]))
    env["command"] = s.command
    return env


def _paper(dataset: str, name: str) -> dict:
    from dsrnet.models import PAPER_RESULTS

    return PAPER_RESULTS.get(dataset, {}).get(name.removesuffix("_cifar"), {})


def _pct(v: float | None) -> str:
    return fmt(v, 2, "%")


#: Marks the errors of a run that stopped early (a time limit): they are not a complete run's.
EARLY = "‡"


def _err(final: dict, key: str) -> str:
    """An error cell of ``final``, marked :data:`EARLY` when the run stopped before its last epoch."""
    return _pct(final.get(key)) + (EARLY if final.get("stopped_early") else "")


def _epochs(final: dict) -> str:
    done = final.get("epochs_done", final["epochs"])
    return f"{done}/{final['epochs']}{EARLY}" if final.get("stopped_early") else str(final["epochs"])


def _early_note(rows: list[dict]) -> list[str]:
    early = [r for r in rows if r["final"].get("stopped_early")]
    if not early:
        return []
    runs = ", ".join(f"{display_name(r['job'].key)} after {_epochs(r['final']).rstrip(EARLY)} epochs" for r in early)
    return [f"{EARLY} Stopped early (a time limit): {runs}. Their errors are those of an unfinished schedule, not "
            "comparable with complete runs; rerun without the limit (or `--resume` them) for a result."]  # fmt: skip


def _kwargs(r: dict) -> dict:
    return dict(r["job"].model_kwargs or r["final"].get("model_kwargs") or {})


def _column(r: dict) -> str:
    """The model's name, with the arguments it was built with when they are not its defaults (a narrowed DSRNet
    is not the paper's network)."""
    return labelled(display_name(r["job"].key), _kwargs(r))


def _papers_setting(rows: list[dict], batch_size: int) -> tuple[bool, bool]:
    """``(described, papers_timing)``: the DSRNet of ``rows`` is the paper's network as described (no other
    arguments); and every row was timed in the paper's setting (its stem, fp32, a batch of 128), so that the
    paper's times may stand beside ours."""
    ref = next((r for r in rows if r["job"].key.startswith("dsrnet")), None)
    described = ref is None or not _kwargs(ref)
    papers_timing = (described and batch_size == 128 and not any(r["job"].arch.endswith("_cifar") for r in rows)
                     and all(r["bench"].get("precision", "fp32") == "fp32" for r in rows))  # fmt: skip
    return described, papers_timing


def paper_layout_table(rows: list[dict], dataset: str, batch_size: int = 128) -> str:
    """Tables 2-4 layout: one column per model, each cell "ours (paper)". The paper's times and time ratios stand
    beside ours only where ours measure the paper's setting (its stem, fp32, a batch of 128, DSRNet as described),
    its parameter count beside a DSRNet as described (either stem: they differ by the stem conv, ~8k weights):
    "–" otherwise, as ``dsrnet bench`` does."""
    from dsrnet.models import PAPER_DSRNET_PARAMS

    ref = next((r for r in rows if r["job"].key.startswith("dsrnet")), None)
    described, papers_timing = _papers_setting(rows, batch_size)
    ref_paper = _paper(dataset, ref["job"].key) if ref and papers_timing else {}
    headers = [""] + [_column(r) for r in rows]
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
        lines[0].append(f"{_err(f, 'top1_error')} ({_pct(p.get('top1_error'))})")
        lines[1].append(f"{_err(f, 'top3_error')} ({_pct(p.get('top3_error'))})")
        lines[2].append(f"{b['latency_ms']:.1f} ({fmt(p.get('paper_time') if papers_timing else None, 3)})")
        ours_rel = b["latency_ms"] / ref["bench"]["latency_ms"] if ref else None
        paper_rel = (
            p["paper_time"] / ref_paper["paper_time"]
            if p.get("paper_time") and ref_paper.get("paper_time")
            else None
        )
        lines[3].append(f"{fmt(ours_rel, 2, 'x')} ({fmt(paper_rel, 2, 'x')})")
        paper_params = (
            PAPER_DSRNET_PARAMS / 1e6 if r["job"].key.removesuffix("_cifar") == "dsrnet50" and not _kwargs(r) else None
        )
        lines[4].append(f"{b['params'] / 1e6:.2f} ({fmt(paper_params, 1)})")
    return markdown_table(headers, lines, align="l" + "r" * len(rows))


def details_table(rows: list[dict]) -> str:
    # Runs assembled from several GPU calls may come from different cards: then each row names its own, and its
    # training seconds compare only with rows of the same card.
    per_device = len({r["final"].get("device") for r in rows}) > 1
    headers = ["model", "arch", "top-1 err", "top-3 err", "top-5 err", "ms/batch (median)", "IQR ms", "images/s",
               "params (M)", "GMACs/img", "epochs", "train s", "s/epoch", *(["trained on"] if per_device else [])]  # fmt: skip
    body = []
    for r in rows:
        f, b = r["final"], r["bench"]
        body.append([
            _column(r), r["job"].arch, _err(f, "top1_error"), _err(f, "top3_error"),
            _err(f, "top5_error"), f"{b['latency_ms']:.1f}", f"{b['latency_p25_ms']:.1f}–{b['latency_p75_ms']:.1f}",
            f"{b['images_per_s']:.0f}", f"{b['params'] / 1e6:.2f}", f"{b['gmacs_per_image']:.3f}", _epochs(f),
            f"{f['train_time_s']:.0f}", f"{f['s_per_epoch']:.1f}", *([str(f.get("device"))] if per_device else []),
        ])  # fmt: skip
    return markdown_table(headers, body, align="ll" + "r" * (len(headers) - 2))


def _settings_lines(s: Settings, rows: list[dict], env: dict) -> list[str]:
    f = rows[0]["final"] if rows else {}
    devices = list(dict.fromkeys(str(r["final"].get("device")) for r in rows)) or ["?"]
    device = (f"device {devices[0]}" if len(devices) == 1 else
              f"devices {', '.join(devices)} (see \"trained on\": train s and s/epoch compare only on one card)")  # fmt: skip
    lines = [
        f"Command: `{s.command}`",
        f"Training: recipe {f.get('recipe')}, {f.get('epochs')} epochs, batch {f.get('batch_size')}, "
        f"{f.get('train_images')} train / {f.get('test_images')} test images, {f.get('precision')}, seed "
        f"{f.get('seed')}, {device}; errors are the final epoch's, on the test images above; "
        f"{sum(r['final']['train_time_s'] + r['final'].get('eval_time_s', 0.0) for r in rows):.0f} s of training "
        "and per-epoch evaluation in all.",
        f"Timing: `dsrnet bench` method, inference, {s.bench['precision']}, batch {s.bench['batch_size']}, "
        f"{s.bench['image_size']} px, median of {rows[0]['bench']['repeats'] if rows else '?'} timed calls after "
        f"{rows[0]['bench']['warmup'] if rows else '?'} warm-up call(s) on {env['device']}.",
        f"Environment: {environment_line(env)}.",
    ]
    return lines


def _title(s: Settings, title: str) -> list[str]:
    quick = ["**A --quick run: a check of the pipeline on a few images and epochs, not a result.**"]
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
        "not depend on the time unit (they do on the device and software, named below). The paper's times are "
        "shown only where ours measure its setting (its stem, fp32, batch 128, DSRNet as described), its parameter "
        "count beside a DSRNet as described; the paper states only DSRNet's (2.19e7, Fig. 2).",
        paper_table,
        details_table(rows),
        *_early_note(rows),
        *_settings_lines(s, rows, env),
    ]
    out = s.out
    files = [atomic_write_text(out / "table.md", "\n\n".join(md) + "\n")]
    described, papers_timing = _papers_setting(rows, s.bench["batch_size"])
    csv_rows = []
    for r in rows:
        f, b, p = r["final"], r["bench"], _paper(s.dataset, r["job"].key)
        csv_rows.append({
            "model": r["job"].key, "arch": r["job"].arch, "model_kwargs": json.dumps(_kwargs(r), sort_keys=True),
            "quick": s.quick, "top1_error": f["top1_error"],
            "top3_error": f["top3_error"], "top5_error": f.get("top5_error"), "latency_ms": b["latency_ms"],
            "latency_p25_ms": b["latency_p25_ms"], "latency_p75_ms": b["latency_p75_ms"],
            "images_per_s": b["images_per_s"], "params": b["params"], "gmacs_per_image": b["gmacs_per_image"],
            "epochs": f["epochs"], "epochs_done": f.get("epochs_done", f["epochs"]),
            "stopped_early": bool(f.get("stopped_early")), "recipe": f["recipe"], "train_time_s": f["train_time_s"],
            "seed": f["seed"], "paper_top1_error": p.get("top1_error"), "paper_top3_error": p.get("top3_error"),
            "paper_time": p.get("paper_time") if papers_timing else None,  # as the markdown: its setting only
        })  # fmt: skip
    files.append(write_csv(out / "table.csv", csv_rows))
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
    files.append(atomic_write_json(out / "summary.json", summary))
    files.append(
        plots.plot_params(
            {r["job"].key: r["bench"]["params"] for r in rows},
            out / "params.png",
            paper_dsrnet=PAPER_DSRNET_PARAMS if described else None,  # not beside a narrowed DSRNet
            labels={r["job"].key: _column(r) for r in rows},
            title=f"Parameters per model, {s.dataset} head (paper Fig. 2)",
        )
    )
    points = [
        {"label": _column(r) + (EARLY if r["final"].get("stopped_early") else ""),
         "latency_ms": r["bench"]["latency_ms"], "error": r["final"]["top1_error"], "params": r["bench"]["params"],
         "paper_error": _paper(s.dataset, r["job"].key).get("top1_error")}
        for r in rows
    ]  # fmt: skip
    files.append(
        plots.plot_tradeoff(
            points, out / "pareto.png", title=f"{s.dataset}: top-1 error vs time per batch of "
            f"{s.bench['batch_size']} ({env['device']})",
            xlabel=f"ms per batch of {s.bench['batch_size']} (inference, {s.bench['precision']})",
        )
    )  # fmt: skip
    files.append(
        plots.plot_curves(
            {_column(r) + (EARLY if r["final"].get("stopped_early") else ""): r["metrics"] for r in rows},
            out / "curves.png",
            title=f"{s.dataset}: training curves",
            pretty_names=False,  # already display names, with their arguments and the stopped-early mark
        )
    )
    return files, paper_table


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
            _err(f, "top1_error"), fmt(delta, 2, " pp"), _err(f, "top3_error"), f"{b['latency_ms']:.1f}",
            fmt(rel, 2, "x"), f"{b['params'] / 1e6:.2f}", f"{b['gmacs_per_image']:.3f}",
        ])  # fmt: skip
        csv_rows.append({
            "variant": job.key, "tests": job.tests, "arch": job.arch, "model_kwargs": job.model_kwargs,
            "top1_error": f["top1_error"], "top3_error": f["top3_error"], "delta_top1_vs_dsrnet": delta,
            "latency_ms": b["latency_ms"], "rel_latency": rel, "params": b["params"],
            "gmacs_per_image": b["gmacs_per_image"], "epochs": f["epochs"],
            "epochs_done": f.get("epochs_done", f["epochs"]), "stopped_early": bool(f.get("stopped_early")),
            "seed": f["seed"],
        })  # fmt: skip
    md = [
        *_title(s, f"# {s.dataset}: DSRNet ablations"),
        "Each variant changes one design choice of DSRNet-50 (Section 3, Fig. 1, Table 1) and is trained with the "
        "same recipe and seed. One seed per variant: differences smaller than the seed-to-seed spread are noise.",
        markdown_table(headers, body, align="llll" + "r" * 7),
        *_early_note(rows),
        *_settings_lines(s, rows, env),
    ]
    out = s.out
    files = [atomic_write_text(out / "table.md", "\n\n".join(md) + "\n")]
    files.append(write_csv(out / "table.csv", csv_rows))
    files.append(
        atomic_write_json(
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
        plots.plot_tradeoff(
            points, out / "ablation.png", title=f"{s.dataset}: DSRNet ablations (marker area ~ parameters)",
            xlabel=f"ms per batch of {s.bench['batch_size']} (inference, {s.bench['precision']}, {env['device']})",
        )
    )  # fmt: skip
    return files
