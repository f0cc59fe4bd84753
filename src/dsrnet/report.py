"""Tables and figures for ``dsrnet bench``, ``dsrnet reproduce`` and ``dsrnet ablate``.

Every output is written atomically (:func:`dsrnet.checkpoint.atomic_write`: temporary file, fsync, ``os.replace``), so an interrupted run
never leaves a half-written table or PNG that a later, resumed run would take for a finished one. Figures are drawn
on a bare :class:`matplotlib.figure.Figure` (Agg canvas), so no pyplot state or display is involved.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dsrnet.checkpoint import atomic_write, atomic_write_bytes, atomic_write_text

#: Pretty names used in the paper's tables (Tables 2-4 write "ResNext"; the networks are ResNeXt).
DISPLAY_NAMES = {
    "dsrnet50": "DSRNet",
    "dsrnet101": "DSRNet-101",
    "resnet50": "ResNet50",
    "resnet101": "ResNet101",
    "resnext50_32x4d": "ResNeXt50",
    "resnext101_32x8d": "ResNeXt101",
    "mobilenet_v2": "MobileNetV2",
}


def display_name(name: str) -> str:
    """``"resnext50_32x4d_cifar"`` -> ``"ResNeXt50 (cifar stem)"``; unknown names are returned as they are."""
    base = name.removesuffix("_cifar")
    pretty = DISPLAY_NAMES.get(base, base)
    return f"{pretty} (cifar stem)" if name.endswith("_cifar") else pretty


# ------------------------------------------------------------------------------------------------ atomic writes


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(path, text)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_bytes(path, data)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    if isinstance(obj, (tuple, set)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None
) -> Path:
    """``rows`` as CSV; ``fields`` defaults to the union of the rows' keys in first-seen order."""
    if fields is None:
        fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in fields})
    return atomic_write_text(path, buf.getvalue())


def plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, numpy scalars -> numbers), for comparing settings."""
    return json.loads(json.dumps(obj, default=json_default))


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a run killed mid-write) is ignored."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ------------------------------------------------------------------------------------------------------ tables


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table. ``align``: one of ``l``/``r``/``c`` per column (default: first left, rest right)."""
    headers = [str(h) for h in headers]
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """Number formatting for tables; ``None``/NaN print as an en dash (no value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


# ----------------------------------------------------------------------------------------------------- figures


def _figure(figsize=(7.0, 4.5), ncols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def plot_params(
    params: Mapping[str, int], path: str | os.PathLike, *, paper_dsrnet: float | None = None, title: str = ""
) -> Path:
    """Fig. 2 of the paper: parameters per model, with the paper's stated DSRNet count drawn beside ours."""
    fig, ax = _figure()
    names = list(params)
    values = [params[n] / 1e6 for n in names]
    colors = ["tab:red" if n.startswith("dsrnet") else "tab:blue" for n in names]
    bars = ax.bar([display_name(n) for n in names], values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.1f}M" for v in values], fontsize=8)
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
    left out (e.g. a model not benchmarked yet)."""
    pts = [p for p in points if p.get("latency_ms") is not None and p.get("error") is not None]
    fig, ax = _figure()
    if pts:
        max_params = max(p.get("params") or 1 for p in pts)
        for p in pts:
            size = 60 + 600 * (p.get("params") or 0) / max_params
            color = "tab:red" if str(p["label"]).startswith("DSRNet") or p.get("highlight") else "tab:blue"
            ax.scatter(p["latency_ms"], p["error"], s=size, alpha=0.6, color=color, edgecolors="k")
            ax.annotate(
                f"{p['label']}\n{(p.get('params') or 0) / 1e6:.1f}M",
                (p["latency_ms"], p["error"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=7,
            )
        front = pareto_front([(p["latency_ms"], p["error"]) for p in pts])
        if len(front) > 1:  # one point that beats all others on both axes is no line to draw
            ax.plot(
                [pts[i]["latency_ms"] for i in front],
                [pts[i]["error"] for i in front],
                "k--",
                lw=1,
                label="Pareto front",
            )
            ax.legend(loc="best", fontsize=8)
        ax.margins(0.2)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def plot_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, *, title: str
) -> Path:
    """Training curves of several runs from their ``metrics.jsonl`` rows: test top-1 error and train loss per epoch."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax_err, ax_loss) = _figure(figsize=(11.0, 4.5), ncols=2)
    for name, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        marker = "o" if len(rows) < 20 else None
        ax_err.plot(epochs, [r.get("test_top1_error") for r in rows], marker=marker, label=display_name(name))
        ax_loss.plot(epochs, [r.get("train_loss") for r in rows], marker=marker, label=display_name(name))
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("test top-1 error (%)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    for ax in (ax_err, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)
