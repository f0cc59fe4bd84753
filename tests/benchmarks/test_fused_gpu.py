"""``benchmarks/fused_gpu.py``'s budgeted step runner (also kernel_shapes.py's), in this process: a step that fails
records an error and the run goes on, and the deadline alarm stops the run even where a C call turned the alarm's
exception into an error of its own (seen under Triton's interpreter: torch's argument parsing reported it as a
TypeError), so a budget stop is never reported as a broken form."""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from tests.conftest import REPO


@pytest.fixture
def fused_gpu():
    spec = importlib.util.spec_from_file_location("fused_gpu", REPO / "benchmarks" / "fused_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_step_is_an_error_and_an_alarm_surfacing_as_one_is_the_budget_stop(fused_gpu, tmp_path):
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))

    def broken():
        raise TypeError("a real bug")

    bench.step("broken form", 0, broken)  # recorded, not raised: the other steps still run
    assert [e["step"] for e in bench.results["errors"]] == ["broken form"] and bench.results["skipped"] == []

    def interrupted():
        bench.alarm_fired = True  # what the SIGALRM handler sets before it raises BudgetExceeded
        raise TypeError("expected a sequence of integers or a single integer, got '(16)'")

    with pytest.raises(fused_gpu.BudgetExceeded):
        bench.step("interrupted form", 0, interrupted)
    assert [e["step"] for e in bench.results["errors"]] == ["broken form"]
    skipped = bench.results["skipped"][-1]
    assert skipped["step"] == "interrupted form" and skipped["reason"] == "budget reached during the step"
    assert "TypeError: expected a sequence of integers" in skipped["surfaced_as"]


def test_only_that_matches_no_step_is_refused_before_anything_runs(fused_gpu, tmp_path, capsys):
    """A mistyped --only used to run the environment and ceilings steps only and exit 0: a wasted GPU call."""
    out = tmp_path / "out"
    assert fused_gpu.main(["--dry-run", "--out", str(out), "--budget-s", "60", "--only", "inference cifar/32 b1024 fused"]) == 2
    err = capsys.readouterr().err
    assert "--only inference cifar/32 b1024 fused matches no step; fix:" in err
    assert "inference cifar/32 b1024: fused, fused auto, fused split, eager, resnet50 compiled" in err
    assert not out.exists()
    assert fused_gpu.main(["--dry-run", "--out", str(out), "--budget-s", "60", "--only", " ; "]) == 2
    assert "--only names no step" in capsys.readouterr().err and not out.exists()
