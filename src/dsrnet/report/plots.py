"""Figures for ``dsrnet reproduce``, ``ablate`` and ``eval``: Fig. 2 (parameters), error vs time, training curves,
confusion matrices.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas), so no pyplot state or display is
involved, and written atomically (:mod:`dsrnet.run.atomic`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsrnet.report.markdown import display_name
from dsrnet.run.atomic import atomic_write


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))


def _figure(figsize=(7.0, 4.5), ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_params(
    params: Mapping[str, int], path: str | os.PathLike, *, paper_dsrnet: float | None = None, title: str = "",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Fig. 2 of the paper: parameters per model (keyed by model name; ``labels`` replaces a name's
    :func:`display_name`), with the paper's stated DSRNet count drawn beside ours."""
    fig, ax = _figure()
    names = list(params)
    values = [params[n] / 1e6 for n in names]
    colors = ["tab:red" if n.startswith("dsrnet") else "tab:blue" for n in names]
    bars = ax.bar([(labels or {}).get(n) or display_name(n) for n in names], values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.1f}M" if v >= 0.1 else f"{v * 1e3:.0f}k" for v in values], fontsize=8)
    if paper_dsrnet is not None:
        ax.axhline(paper_dsrnet / 1e6, color="tab:red", linestyle="--", linewidth=1)
        ax.text(
            -0.4, paper_dsrnet / 1e6, f"paper's DSRNet: {paper_dsrnet / 1e6:.1f}M", color="tab:red", ha="left",
            va="bottom", fontsize=8,
        )  # fmt: skip
    ax.set_ylabel("parameters (millions)")
    ax.set_title(title or "Parameters per model (paper Fig. 2)")
    ax.tick_params(axis="x", labelrotation=20)
    return save_figure(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _near(a: Mapping[str, Any], b: Mapping[str, Any], pts: Sequence[Mapping[str, Any]]) -> bool:
    """Whether two trade-off points lie within 4 % of the plotted spread of each other on both axes (the time in
    ratio, as it may be drawn on a log axis), where their two-line labels would overlap."""
    times, errors = [p["latency_ms"] for p in pts], [p["error"] for p in pts]
    time_span = math.log(max(times) / min(times)) if min(times) > 0 else max(times) - min(times)
    close_time = (abs(math.log(a["latency_ms"] / b["latency_ms"])) if min(times) > 0
                  else abs(a["latency_ms"] - b["latency_ms"])) <= 0.04 * (time_span or 1.0)  # fmt: skip
    return close_time and abs(a["error"] - b["error"]) <= 0.04 * ((max(errors) - min(errors)) or 1.0)


def plot_tradeoff(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str = "latency per batch of 128 (ms)",
    ylabel: str = "top-1 error (%)",
) -> Path:
    """Error vs latency, marker area proportional to parameters, Pareto front dashed.

    ``points``: dicts with ``label``, ``latency_ms``, ``error`` and ``params``; points with a missing value are
    left out (e.g. a model not benchmarked yet). A point's optional ``paper_error`` (the paper's number for that
    model) is drawn as a hollow marker at the same time (the paper's time unit is unclear), joined by a dotted line."""
    pts = [p for p in points if p.get("latency_ms") is not None and p.get("error") is not None]
    fig, ax = _figure()
    if pts:
        max_params = max(p.get("params") or 1 for p in pts)
        for i, p in enumerate(pts):
            size = 60 + 600 * (p.get("params") or 0) / max_params
            color = "tab:red" if str(p["label"]).startswith("DSRNet") or p.get("highlight") else "tab:blue"
            ax.scatter(p["latency_ms"], p["error"], s=size, alpha=0.6, color=color, edgecolors="k")
            # Labels of points that (nearly) coincide are stacked instead of printed over each other.
            below = sum(_near(q, p, pts) for q in pts[:i])
            ax.annotate(
                f"{p['label']}\n{(p.get('params') or 0) / 1e6:.1f}M",
                (p["latency_ms"], p["error"]),
                textcoords="offset points",
                xytext=(6, 6 + 20 * below),
                fontsize=7,
            )
        paper = [p for p in pts if p.get("paper_error") is not None]
        for i, p in enumerate(paper):
            ax.plot([p["latency_ms"]] * 2, [p["error"], p["paper_error"]], ":", color="0.5", lw=1)
            ax.scatter(p["latency_ms"], p["paper_error"], s=40, facecolors="none", edgecolors="k",
                       label="the paper's error (at our time)" if i == 0 else None)  # fmt: skip
        front = pareto_front([(p["latency_ms"], p["error"]) for p in pts])
        if len(front) > 1:  # one point that beats all others on both axes is no line to draw
            ax.plot(
                [pts[i]["latency_ms"] for i in front],
                [pts[i]["error"] for i in front],
                "k--",
                lw=1,
                label="Pareto front",
            )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        ax.margins(0.2)
        lat = [p["latency_ms"] for p in pts]
        if min(lat) > 0 and max(lat) / min(lat) > 4:  # e.g. one variant 10x slower: a linear axis crams the rest
            ax.set_xscale("log")
            xlabel += ", log scale"
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def _epoch_ticks(ax, curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Whole epochs on the x axis; with only one or two epochs logged, those epochs themselves (MaxNLocator falls
    back to fractional ticks on so short a span)."""
    from matplotlib.ticker import MaxNLocator

    epochs = sorted({row["epoch"] for rows in curves.values() for row in rows if "epoch" in row})
    if epochs and epochs[-1] - epochs[0] < 2:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _line_style(i: int) -> str:
    """Run ``i``'s line style: matplotlib's colour cycle repeats after 10 runs, so each further ten get the next
    style (dashes stay for the EMA runs' raw-weight lines)."""
    return ("-", "-.", ":")[(i // 10) % 3]


def plot_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str,
    pretty_names: bool = True,
) -> Path:
    """Training curves of several runs from their ``metrics.jsonl`` rows: test top-1 error and train loss per epoch;
    a run that reports a weight average (``ema_decay``) also gets its trained weights' error, dashed.

    ``pretty_names``: legend entries through :func:`display_name` (model names); ``False`` keeps them verbatim
    (labels a user chose)."""
    fig, (ax_err, ax_loss) = _figure(figsize=(11.0, 4.5), ncols=2)
    for i, (name, rows) in enumerate(curves.items()):
        epochs = [r["epoch"] for r in rows]
        scored = [r for r in rows if "test_top1_error" in r]  # eval_every: not every epoch is scored
        marker = "o" if len(rows) < 20 else None
        label = display_name(name) if pretty_names else name
        style = _line_style(i)
        (line,) = ax_err.plot([r["epoch"] for r in scored], [r["test_top1_error"] for r in scored],
                              marker="o" if len(scored) < 20 else None, label=label, linestyle=style)  # fmt: skip
        if any("raw_test_top1_error" in r for r in rows):  # a run reporting its weight average (ema_decay)
            ax_err.plot([r["epoch"] for r in scored], [r.get("raw_test_top1_error") for r in scored], linestyle="--",
                        color=line.get_color(), label=f"{label} (without EMA)")  # fmt: skip
        ax_loss.plot(epochs, [r.get("train_loss") for r in rows], marker=marker, label=label, linestyle=style)
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("test top-1 error (%)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    for ax in (ax_err, ax_loss):
        _epoch_ticks(ax, curves)
        ax.grid(True, alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_seed_bands(
    groups: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: str | os.PathLike, *, title: str
) -> Path:
    """Test top-1 error per epoch of each group of runs that differ only by their seed (``metrics.jsonl`` rows of
    each run): the mean over the runs that scored the epoch as a line, their min-max as a band, n in the legend."""
    import statistics

    fig, ax = _figure()
    for i, (name, runs) in enumerate(groups.items()):
        by_epoch: dict[int, list[float]] = {}
        for rows in runs:
            for r in rows:
                if "test_top1_error" in r:
                    by_epoch.setdefault(r["epoch"], []).append(r["test_top1_error"])
        epochs = sorted(by_epoch)
        (line,) = ax.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], linestyle=_line_style(i),
                          label=f"{name} (mean of {len(runs)} seeds)")  # fmt: skip
        ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                        color=line.get_color(), alpha=0.2, linewidth=0, label=f"{name}: min-max")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 error (%)")
    _epoch_ticks(ax, {str(i): rows for runs in groups.values() for i, rows in enumerate(runs)})
    ax.grid(True, alpha=0.3)
    if groups:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_lr(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, *, title: str) -> Path:
    """The learning rate per epoch (``metrics.jsonl``'s ``lr``: the rate at the epoch's first step) of several runs:
    shows warm-up, decay, and a schedule a deadline cut short (its rate never reached the end)."""
    fig, ax = _figure()
    for i, (name, rows) in enumerate(curves.items()):
        rows = [r for r in rows if r.get("lr") is not None]
        ax.plot([r["epoch"] for r in rows], [r["lr"] for r in rows], marker="o" if len(rows) < 20 else None,
                label=name, linestyle=_line_style(i))  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate (at the epoch's first step)")
    _epoch_ticks(ax, curves)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_confusion(conf: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figures alone

    n = len(classes)
    rows = np.maximum(conf.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.45 * n, 24)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(100.0 * conf / rows, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of true class")
    if n <= 20:  # with more classes the labels are unreadable; the CSV has them
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(conf[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if conf[i, j] > 0.5 * rows[i, 0] else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
