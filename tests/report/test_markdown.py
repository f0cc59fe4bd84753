"""Tables and result files: markdown layout, number formatting, CSV cells, torn JSON lines."""

from __future__ import annotations

import csv

import pytest

from dsrnet.errors import DsrnetError
from dsrnet.report.markdown import display_name, fmt, markdown_table, read_jsonl, write_csv


def test_markdown_table_and_fmt():
    md = markdown_table(["model", "err"], [["DSRNet", fmt(9.2, 2, "%")], ["x", fmt(None)]])
    assert md.splitlines() == ["| model | err |", "| :-- | --: |", "| DSRNet | 9.20% |", "| x | – |"]
    assert fmt(float("nan")) == "–" and fmt(3) == "3"


def test_display_names():
    assert display_name("resnext50_32x4d_cifar") == "ResNeXt50 (cifar stem)"
    assert display_name("dsrnet50") == "DSRNet" and display_name("other") == "other"


def test_csv_cells_and_torn_jsonl(tmp_path):
    write_csv(tmp_path / "t.csv", [{"a": 1, "b": [1, 2]}, {"a": None, "c": {"k": 1}}])
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"a": "1", "b": "[1, 2]", "c": ""}, {"a": "", "b": "", "c": '{"k": 1}'}]
    (tmp_path / "m.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_jsonl(tmp_path / "m.jsonl") == [{"epoch": 1}, {"epoch": 2}]
    # A bad line before the last is damage, named by its line in the file: it silently cut the rows short.
    (tmp_path / "m.jsonl").write_text('{"epoch": 1}\n\n\n{"epoch": 2\n{"epoch": 3}\n')
    with pytest.raises(DsrnetError, match=r"m\.jsonl: line 4 is not valid JSON"):
        read_jsonl(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="align has 2 letters for 3 columns"):
        markdown_table(["a", "b", "c"], [[1, 2, 3]], align="lr")
