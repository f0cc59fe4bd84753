"""Tables and result files for ``dsrnet bench``, ``reproduce`` and ``ablate``: markdown, CSV, JSON(L).

Every file is written atomically (:mod:`dsrnet.run.atomic`), so an interrupted run never leaves a half-written table
that a later, resumed run would take for a finished one.
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

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write_text

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


def labelled(name: str, model_kwargs: dict | None) -> str:
    """``name`` with the arguments the model was built with when they are not its defaults, as compact JSON (a
    narrowed DSRNet is not the paper's network): ``'DSRNet {"widths":[8,8,8,8]}'``."""
    return f"{name} {json.dumps(model_kwargs, separators=(',', ':'))}" if model_kwargs else name


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


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a damaged one (not JSON, not UTF-8) is one DsrnetError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise DsrnetError(f"{path} is damaged ({type(err).__name__}: {str(err)[:80]}); fix: repair it, or delete it "
                          f"(and rerun what wrote it)") from None  # fmt: skip


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn LAST line (a run killed mid-write) is ignored, a bad line before it is a
    DsrnetError (it would silently cut the rows short)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [(number, line.strip()) for number, line in enumerate(fh, 1) if line.strip()]
    except UnicodeDecodeError:
        raise DsrnetError(f"{path} is not UTF-8 text (damaged); fix: repair or delete it") from None
    rows = []
    for i, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DsrnetError(f"{path}: line {number} is not valid JSON; fix: repair or remove that line") from None
    return rows


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table. ``align``: one of ``l``/``r``/``c`` per column (default: first left, rest right)."""
    if align is not None and len(align) != len(headers):  # GitHub does not render a table whose rows disagree
        raise ValueError(f"align has {len(align)} letters for {len(headers)} columns")
    headers = [str(h) for h in headers]
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    for row in rows:
        # a "|" inside a cell (a user's run label) would start a new column: escaped, as GitHub markdown reads it
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines) + "\n"


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """Number formatting for tables; ``None``/NaN print as an en dash (no value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"
