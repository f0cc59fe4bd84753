"""``dsrnet plot``: figures and a summary table of a few ``dsrnet train`` run folders, for a report.

What a run folder holds is :class:`~dsrnet.run.rundir.RunDir`'s business (``metrics.jsonl``: one JSON row per
epoch; ``final.json``: the FINAL epoch's metrics once the run ended; ``config.yaml``; ``eval/`` from
``dsrnet eval``). The summary always reports the final epoch, never the best one: the paper's protocol has no
validation split, so picking the best test epoch would tune on the test set. A run that has not ended reports its
last logged epoch, marked as such.

Every input is read and checked before the first file is written, and every file is written atomically, so a bad
run folder leaves ``out_dir`` as it was.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsrnet.errors import DsrnetError
from dsrnet.report.markdown import fmt, labelled, markdown_table, write_csv
from dsrnet.run.atomic import atomic_write_text
from dsrnet.run.rundir import RunDir

logger = logging.getLogger(__name__)

#: ``status`` of a run: its ``final.json`` says it ended its schedule / a deadline cut it short; no ``final.json``
#: and a process holds its lock / no process does (killed or interrupted; ``dsrnet train --resume`` continues it).
FINISHED, STOPPED_EARLY, RUNNING, INTERRUPTED = "finished", "stopped early", "running", "interrupted"

#: Columns of ``summary.csv`` (``summary.md`` shows the same runs, formatted).
SUMMARY_FIELDS = (
    "label", "model", "model_kwargs", "dataset", "recipe", "epochs_done", "epochs", "status", "top1_error",
    "top3_error", "errors_from", "ema_decay", "raw_top1_error", "train_time_s", "s_per_epoch", "params", "device",
    "precision", "batch_size", "lr", "seed", "train_images", "test_images", "torch", "path",
)  # fmt: skip

#: Columns of ``seeds.csv``: one row per group of finished runs that differ only by their seed.
SEED_FIELDS = (
    "group", "model", "model_kwargs", "dataset", "recipe", "epochs", "n", "seeds", "top1_error_mean", "top1_error_std",
    "top1_error_min", "top1_error_max", "top3_error_mean", "top3_error_std", "test_images", "labels",
)  # fmt: skip
#: Settings that say where and how a run was controlled, not what it trained: runs that differ only in these and
#: their seed are repeats of one experiment (device, precision, compile and the like are NOT here: a seed group
#: keeps one setup).
_RUN_CONTROLS = frozenset({"seed", "out_dir", "resume", "deadline", "data_dir", "download", "progress",
                           "tensorboard", "checkpoint_every"})  # fmt: skip

_FIX_RUN = "fix: pass the --out-dir of a `dsrnet train` run"


@dataclass
class Run:
    """One run folder as read for a report. ``final`` is ``final.json`` when it describes the logged epochs (a
    stopped-early run being resumed still has the old one: then it is ``None`` and the last row counts)."""

    label: str
    path: Path
    rows: list[dict]
    config: dict
    final: dict | None
    status: str
    confusion: tuple[list[str], list[list[int]]] | None = field(default=None, repr=False)
    confusion_epoch: int | None = None  # the checkpoint epoch `dsrnet eval` scored (eval/metrics.json)

    @property
    def last(self) -> dict:
        return self.rows[-1]


def read_metrics(path: Path) -> list[dict]:
    """The epoch rows of a ``metrics.jsonl``, strictly: a line that is not a JSON object with an integer ``epoch``
    is an error naming the file and line (the trainer writes the file atomically, so a bad line is damage, not
    a run caught mid-write)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DsrnetError(f"{path} is not UTF-8 text (damaged); fix: repair or delete it, or leave the run "
                          f"out") from None  # fmt: skip
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DsrnetError(
                f"{path} line {number} is not valid JSON ({err.msg}); fix: repair or remove that line, or leave "
                f"the run out"
            ) from None
        if not isinstance(row, dict) or isinstance(row.get("epoch"), bool) or not isinstance(row.get("epoch"), int):
            raise DsrnetError(
                f"{path} line {number} is not an epoch row (a JSON object with an integer \"epoch\"); fix: repair "
                f"or remove that line, or leave the run out"
            )
        rows.append(row)
    if not rows:
        raise DsrnetError(f"{path} is empty: the run has not finished an epoch yet; fix: wait for its first epoch, "
                          f"or leave the run out")  # fmt: skip
    return rows


def _read_final(run: RunDir) -> dict | None:
    if not run.final.is_file():
        return None
    try:
        final = json.loads(run.final.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DsrnetError(f"{run.final} is not valid JSON ({err}); fix: repair it, or delete it (the summary then "
                          f"reports the last logged epoch)") from None  # fmt: skip
    if not isinstance(final, dict):
        raise DsrnetError(f"{run.final} is not a JSON object; fix: repair it, or delete it")
    return final


def _read_confusion(path: Path) -> tuple[list[str], list[list[int]]] | None:
    """``eval/confusion.csv`` (header: a corner cell, then the classes; one row per true class). A file that is not
    such a matrix is skipped with a warning: the confusion figure is an extra, not a reason to fail."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            table = list(csv.reader(fh))
        classes = table[0][1:]
        counts = [[int(v) for v in row[1:]] for row in table[1:]]
        if not classes or len(counts) != len(classes) or any(len(r) != len(classes) for r in counts):
            raise ValueError(f"{len(counts)} rows for {len(classes)} classes")
    except (OSError, ValueError, IndexError) as err:
        logger.warning(f"{path}: not a confusion matrix ({err}); its figure is left out")
        return None
    return classes, counts


def load_run(path: str | os.PathLike, label: str) -> Run:
    """Read and check one run folder (see the module docstring); a :class:`DsrnetError` names what is wrong."""
    run = RunDir(path)
    if not run.path.exists():
        raise DsrnetError(f"run folder {run.path} does not exist; {_FIX_RUN}")
    if not run.path.is_dir():
        raise DsrnetError(f"{run.path} is not a folder; {_FIX_RUN}")
    if not run.metrics.is_file():
        raise DsrnetError(f"{run.path} has no {run.metrics.name}, so it is not a run folder (or no epoch has "
                          f"finished yet); {_FIX_RUN}")  # fmt: skip
    rows = read_metrics(run.metrics)
    final = _read_final(run)
    if final is not None and final.get("epochs_done", rows[-1]["epoch"]) != rows[-1]["epoch"]:
        final = None  # left by a stopped-early run that is being resumed: the logged epochs went on past it
    if final is not None:
        status = STOPPED_EARLY if final.get("stopped_early") else FINISHED
    else:
        status = RUNNING if run.in_use else INTERRUPTED
    confusion_csv = run.eval / "confusion.csv"
    confusion = _read_confusion(confusion_csv) if confusion_csv.is_file() else None
    epoch = None
    if confusion is not None:
        try:
            epoch = json.loads((run.eval / "metrics.json").read_text(encoding="utf-8")).get("epoch")
        except (OSError, ValueError, AttributeError):
            epoch = None
    return Run(label, run.path, rows, run.saved_config(), final, status, confusion, epoch)


def default_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The run folders' names; names that clash get their parent folders prepended (``a/dsrnet50``,
    ``b/dsrnet50``) until they differ, and the same folder given twice gets ``-2``, ``-3``, ..."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    distinct = list(dict.fromkeys(absolute))
    parts = [p.parts[1:] or (str(p),) for p in distinct]  # without the root: "/a" is "a", not "//a"
    depth = [1] * len(parts)

    def label(i: int) -> str:
        return "/".join(parts[i][-depth[i]:])

    while True:
        labels = [label(i) for i in range(len(parts))]
        clashing = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            break
        for i in clashing:
            depth[i] += 1
    return _numbered([labels[distinct.index(p)] for p in absolute])


def _numbered(names: Sequence[str]) -> list[str]:
    """``names`` with the second, third, ... copy of a name suffixed ``-2``, ``-3``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _check_labels(labels: Sequence[str], n_runs: int) -> list[str]:
    labels = [str(lab) for lab in labels]
    if len(labels) != n_runs:
        raise DsrnetError(f"--labels gives {len(labels)} label(s) for {n_runs} run(s); fix: give one label per run, "
                          f"in the order of the runs")  # fmt: skip
    for lab in labels:
        if not lab.strip():
            raise DsrnetError("--labels has an empty label; fix: give every run a non-empty label")
        if labels.count(lab) > 1:
            raise DsrnetError(f"--labels gives {lab!r} to {labels.count(lab)} runs; fix: give each run its own label")
    return labels


def summary_row(run: Run) -> dict[str, Any]:
    """One run as a row of ``summary.csv``: final-epoch errors from ``final.json``; for a run without one, the last
    logged epoch's (``errors_from`` says which)."""
    final, cfg, last = run.final or {}, run.config, run.last
    if run.final is not None:
        top1, top3, raw_top1 = final.get("top1_error"), final.get("top3_error"), final.get("raw_top1_error")
        train_time, s_per_epoch = final.get("train_time_s"), final.get("s_per_epoch")
        errors_from = "final.json"
    else:
        scored = next((r for r in reversed(run.rows) if "test_top1_error" in r), {})  # eval_every skips epochs
        top1, top3 = scored.get("test_top1_error"), scored.get("test_top3_error")
        raw_top1 = scored.get("raw_test_top1_error")
        times = [r["epoch_time_s"] for r in run.rows if isinstance(r.get("epoch_time_s"), (int, float))]
        train_time = float(sum(times)) if len(times) == len(run.rows) else None
        s_per_epoch = train_time / len(times) if train_time is not None else None
        errors_from = f"last logged epoch ({run.status}, not a final result)"
        if scored is not last:
            errors_from = (f"epoch {scored['epoch']}, the last scored ({run.status}, not a final result)" if scored
                           else f"no epoch scored yet ({run.status})")  # fmt: skip
    return {
        "label": run.label,
        "model": final.get("model", cfg.get("model")),
        "model_kwargs": final.get("model_kwargs", cfg.get("model_kwargs")) or None,
        "dataset": final.get("dataset", cfg.get("dataset")),
        "recipe": final.get("recipe", cfg.get("recipe")),
        "epochs_done": final.get("epochs_done", last["epoch"]),
        "epochs": final.get("epochs", cfg.get("epochs")),
        "status": run.status,
        "top1_error": top1,
        "top3_error": top3,
        "errors_from": errors_from,
        # a run that reports a weight average: its decay, and the trained weights' own top-1 error
        "ema_decay": final.get("ema_decay", cfg.get("ema_decay")) or None,
        "raw_top1_error": raw_top1,
        "train_time_s": train_time,
        "s_per_epoch": s_per_epoch,
        "params": final.get("params"),
        "device": final.get("device", cfg.get("device")),
        # what makes two runs comparable (or not): a bf16 GPU run beside an fp32 CPU one, another batch or seed
        "precision": final.get("precision", cfg.get("precision")),
        "batch_size": final.get("batch_size", cfg.get("batch_size")),
        "lr": final.get("lr", cfg.get("lr")),
        "seed": final.get("seed", cfg.get("seed")),
        # a test subset is drawn by the seed: two seeds' errors are then on different images
        "train_images": final.get("train_images"),
        "test_images": final.get("test_images"),
        "torch": final.get("torch"),
        "path": str(run.path),
    }


def seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """The finished runs that differ only by their seed (and by :data:`_RUN_CONTROLS`), two or more distinct seeds
    per group, in the order the runs were given. A second run of a seed a group already has (a rerun) is left out
    of it, with a warning: each seed counts once."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.status != FINISHED or not r.config or r.config.get("seed") is None:
            continue
        key = json.dumps({k: v for k, v in r.config.items() if k not in _RUN_CONTROLS}, sort_keys=True, default=str)
        group = groups.setdefault(key, [])
        twin = next((other for other in group if other.config["seed"] == r.config["seed"]), None)
        if twin is not None:
            logger.warning(f"{r.path} repeats seed {r.config['seed']} of {twin.path} (same settings): the seed "
                           f"statistics count that seed once, from {twin.path}")  # fmt: skip
            continue
        group.append(r)
    return [g for g in groups.values() if len(g) >= 2]


def _group_labels(groups: Sequence[Sequence[Run]]) -> list[str]:
    """A legend label per seed group: the model (and its arguments), plus the settings in which the groups differ
    (recipe, epochs, lr, ...), so that groups of one model keep a band each."""
    configs = [{k: v for k, v in g[0].config.items() if k not in (*_RUN_CONTROLS, "seed", "model", "model_kwargs")}
               for g in groups]  # fmt: skip
    differing = sorted({k for c in configs for k in c if any(c.get(k) != other.get(k) for other in configs)})
    labels = []
    for g, config in zip(groups, configs, strict=True):
        label = labelled(g[0].config.get("model") or "run", g[0].config.get("model_kwargs") or {})
        if differing:
            label += " (" + ", ".join(f"{k}={config.get(k)}" for k in differing) + ")"
        labels.append(label)
    return _numbered(labels)


def seed_row(group: Sequence[Run]) -> dict[str, Any]:
    """One experiment over several seeds: mean, sample standard deviation (n - 1), min and max of the FINAL
    epochs' errors."""
    import statistics

    rows = [summary_row(r) for r in group]
    first = rows[0]  # (the group's runs share these)
    out: dict[str, Any] = {
        **{k: first[k] for k in ("model", "model_kwargs", "dataset", "recipe", "epochs")},
        "n": len(rows), "seeds": [r["seed"] for r in rows],
        "test_images": sorted({r["test_images"] for r in rows if r["test_images"] is not None}) or None,
        "labels": [r["label"] for r in rows],
    }  # fmt: skip
    for metric in ("top1_error", "top3_error"):
        values = [r[metric] for r in rows if isinstance(r[metric], int | float)]
        if len(values) == len(rows):
            out[f"{metric}_mean"] = statistics.fmean(values)
            out[f"{metric}_std"] = statistics.stdev(values)
            out[f"{metric}_min"], out[f"{metric}_max"] = min(values), max(values)
    return out


def _seeds_markdown(groups: Sequence[dict[str, Any]]) -> str:
    table = [
        [g.get("group") or labelled(g["model"], g["model_kwargs"] or {}), g["dataset"] or fmt(None),
         g["recipe"] or fmt(None),
         fmt(g["epochs"]), str(g["n"]), ", ".join(map(str, g["seeds"])),
         f"{fmt(g.get('top1_error_mean'))} ± {fmt(g.get('top1_error_std'))}",
         f"{fmt(g.get('top1_error_min'))}–{fmt(g.get('top1_error_max'))}",
         f"{fmt(g.get('top3_error_mean'))} ± {fmt(g.get('top3_error_std'))}"]
        for g in groups
    ]  # fmt: skip
    headers = ["Model (settings the groups differ in)", "Dataset", "Recipe", "Epochs", "n", "Seeds", "Top-1 err. (%) mean ± std", "Top-1 min–max",
               "Top-3 err. (%) mean ± std"]  # fmt: skip
    note = ("Runs that differ only by their seed, finished: the mean and the sample standard deviation (n - 1) of "
            "their FINAL-epoch errors (seeds.csv). With `--test-subset-per-class` each seed is scored on other test "
            "images, so the spread includes the test sample's.")  # fmt: skip
    return f"## Across seeds\n\n{markdown_table(headers, table, align='llllrlrrr')}\n{note}\n\n"


def summary_markdown(rows: Sequence[dict[str, Any]], title: str, seeds: Sequence[dict[str, Any]] = ()) -> str:
    """``summary.md``: the rows of :func:`summary_row` as a table, with what the numbers are; and ``seeds`` (rows
    of :func:`seed_row`) as a second table."""
    marked = "†"
    table = []
    for r in rows:
        mark = "" if r["errors_from"] == "final.json" else marked
        params = fmt(r["params"] / 1e6, 2) if isinstance(r["params"], (int, float)) else fmt(None)
        model = labelled(r["model"], r["model_kwargs"] or {}) if r["model"] else fmt(None)
        table.append([
            r["label"], model, r["dataset"] or fmt(None), r["recipe"] or fmt(None), fmt(r["seed"]),
            f"{r['epochs_done']}/{fmt(r['epochs'])}", r["status"],
            fmt(r["top1_error"]) + mark, fmt(r["top3_error"]) + mark, fmt(r["test_images"]),
            fmt(r["train_time_s"], 0), fmt(r["s_per_epoch"], 1), params, r["device"] or fmt(None),
        ])  # fmt: skip
    headers = ["Run", "Model", "Dataset", "Recipe", "Seed", "Epochs", "Status", "Top-1 err. (%)", "Top-3 err. (%)",
               "Test images", "Train time (s)", "s/epoch", "Params (M)", "Device"]  # fmt: skip
    notes = [
        "Errors are the FINAL epoch's test errors (`final.json`), never the best epoch's.",
        "Train time: the sum of the epochs' training times (evaluation not included).",
    ]
    if any(r["errors_from"] != "final.json" for r in rows):
        notes.append(f"{marked} the run has not ended (status running / interrupted): the errors of its last scored "
                     f"epoch (`errors_from` in summary.csv), not a final result.")  # fmt: skip
    averaged = [r for r in rows if r["raw_top1_error"] is not None]
    if averaged:
        notes.append("Runs with a weight average (`ema_decay`) report the average; their trained weights' top-1 "
                     "error: " + ", ".join(f"{r['label']} {fmt(r['raw_top1_error'])}" for r in averaged) + ".")
    if any(r["status"] == STOPPED_EARLY for r in rows):
        notes.append("stopped early: a deadline cut the learning-rate schedule short, so the run is not a "
                     "full-schedule result (`dsrnet train --resume` without a deadline completes it).")  # fmt: skip
    runs = "\n".join(f"- {r['label']}: `{r['path']}`" for r in rows)
    return (
        f"# {title}\n\n{markdown_table(headers, table, align='lllllllrrrrrrl')}\n"
        + "".join(f"{n}\n\n" for n in notes)
        + (_seeds_markdown(seeds) if seeds else "")
        + f"Run folders:\n\n{runs}\n"
    )


def _legend(run: Run) -> str:
    if run.status == FINISHED:
        return run.label
    epochs = (run.final or {}).get("epochs", run.config.get("epochs"))
    return f"{run.label} ({run.status}, {run.last['epoch']}/{fmt(epochs)} epochs)"


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "run"


def plot_runs(
    runs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Figures and a summary of the run folders ``runs`` in ``out_dir``; returns the files written (their names also
    go to the hidden :data:`PLOT_MANIFEST`, so that a rerun replaces or removes plot's own files only):

    - ``curves.png``: test top-1 error and train loss per epoch of every run;
    - ``lr.png``: the learning rate per epoch (when the runs logged it);
    - ``confusion_<label>.png``: for each run with an ``eval/confusion.csv`` (``dsrnet eval``);
    - ``summary.md`` / ``summary.csv``: one row per run (:func:`summary_row`); where finished runs differ only by
      their seed, ``summary.md`` also aggregates them (mean ± std, min–max, n), ``seeds.csv`` holds those rows and
      ``curves_seeds.png`` draws each group's mean test error per epoch with its min-max band.

    ``labels`` default to the folder names (:func:`default_labels`). Every run is read and checked before anything
    is written."""
    from dsrnet.report.plots import plot_confusion, plot_curves, plot_lr

    if not runs:
        raise DsrnetError("no run folders given; fix: pass one or more folders written by `dsrnet train`")
    labels = _check_labels(labels, len(runs)) if labels is not None else default_labels(runs)
    out = Path(out_dir).expanduser()
    RunDir(out).check_writable()  # before anything is read or written, as bench and eval do
    loaded = [load_run(path, label) for path, label in zip(runs, labels, strict=True)]
    owned = _plot_files(out)  # what an earlier `dsrnet plot` wrote there: replaced, or removed if not rewritten
    groups = seed_groups(loaded)
    names = _numbered([_file_name(r.label) for r in loaded])  # distinct even if two labels map to one name
    planned = ["curves.png", "lr.png", "curves_seeds.png", "summary.md", "summary.csv", "seeds.csv",
               *(f"confusion_{n}.png" for r, n in zip(loaded, names, strict=True) if r.confusion is not None)]
    foreign = [n for n in planned if (out / n).exists() and n not in owned]
    if foreign:  # e.g. a `dsrnet reproduce` folder's curves.png: nothing is lost
        raise DsrnetError(f"{out} holds {', '.join(foreign)}, which `dsrnet plot` did not write; fix: pass another "
                          f"--out-dir (or move those files)")  # fmt: skip
    # Listed before the first is written: a call stopped half-way leaves files its rerun knows as its own.
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PLOT_MANIFEST, json.dumps(sorted(owned | set(planned)), indent=1) + "\n")

    # A run that did not complete its schedule says so in the figures' legends, not only in summary.md.
    curves = {_legend(r): r.rows for r in loaded}
    written = [plot_curves(curves, out / "curves.png", title=title or "Training curves", pretty_names=False)]
    if any(row.get("lr") is not None for r in loaded for row in r.rows):
        lr_title = f"{title}: learning rate per epoch" if title else "Learning rate per epoch"
        written.append(plot_lr(curves, out / "lr.png", title=lr_title))
    for r, name in zip(loaded, names, strict=True):
        if r.confusion is not None:
            import numpy as np

            classes, counts = r.confusion
            title_ = f"{r.label}: confusion matrix (dsrnet eval)"
            if r.confusion_epoch is not None and r.confusion_epoch != r.last["epoch"]:
                title_ = f"{r.label}: confusion matrix at epoch {r.confusion_epoch}, not the last ({r.last['epoch']})"
                logger.warning(f"{r.path / 'eval'} scored epoch {r.confusion_epoch}; the run's last is "
                               f"{r.last['epoch']}: rerun `dsrnet eval` for the final model's matrix")  # fmt: skip
            written.append(plot_confusion(np.array(counts), classes, out / f"confusion_{name}.png", title_))
    rows = [summary_row(r) for r in loaded]
    group_labels = _group_labels(groups)
    seeds = [{**seed_row(g), "group": label} for g, label in zip(groups, group_labels, strict=True)]
    if groups:
        from dsrnet.report.plots import plot_seed_bands

        bands = {label: [r.rows for r in g] for label, g in zip(group_labels, groups, strict=True)}
        bands_title = f"{title}: across seeds" if title else "Test top-1 error across seeds"
        written.append(plot_seed_bands(bands, out / "curves_seeds.png", title=bands_title))
    written.append(atomic_write_text(out / "summary.md", summary_markdown(rows, title or "Training runs", seeds)))
    written.append(write_csv(out / "summary.csv", rows, SUMMARY_FIELDS))
    if seeds:
        written.append(write_csv(out / "seeds.csv", seeds, SEED_FIELDS))
    # An earlier call's figures this one did not rewrite (a run's confusion matrix, lr.png, seeds.csv) would sit
    # beside a summary without them: removed, and only those.
    for name in sorted(owned - {p.name for p in written}):
        (out / name).unlink(missing_ok=True)
    atomic_write_text(out / PLOT_MANIFEST, json.dumps(sorted(p.name for p in written), indent=1) + "\n")
    return written


#: The files ``dsrnet plot`` wrote in its --out-dir, so that a rerun replaces or removes those and no others.
PLOT_MANIFEST = ".dsrnet-plot.json"


def _plot_files(out: Path) -> set[str]:
    """The names of the files an earlier :func:`plot_runs` wrote in ``out`` (its manifest; a folder it wrote before
    it kept one: its summary.md beside the figures, and no report of `dsrnet reproduce`)."""
    try:
        listed = json.loads((out / PLOT_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        listed = None
    except (OSError, ValueError) as err:
        raise DsrnetError(f"{out / PLOT_MANIFEST} is unreadable ({err}); fix: delete it, or pass another "
                          f"--out-dir") from None  # fmt: skip
    if listed is None:
        if not (out / "summary.md").is_file() or (out / "table.md").exists():
            return set()
        listed = [p.name for p in out.iterdir()]
    # only names plot writes, in this folder: a doctored manifest cannot send a rerun's clean-up elsewhere
    return {n for n in listed if isinstance(n, str) and _PLOT_FILE.fullmatch(n) and (out / n).is_file()}


_PLOT_FILE = re.compile(r"(curves|lr|curves_seeds)\.png|summary\.(md|csv)|seeds\.csv|confusion_[^/\\]+\.png")
