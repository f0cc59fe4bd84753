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


def _webp_test_copy(folder, images, labels, *, damage_sum=False):
    """A CIFAR-10 WebP copy holding only a test split, as the project's data folder lays it out: mosaics of 50
    columns of 32x32 tiles (row-major), labels.json, SHA256SUMS, and that folder's own decode.py."""
    import hashlib
    import json
    import shutil

    from PIL import Image

    from tests.conftest import shared_decoder

    decoder = shared_decoder("the CIFAR-10 WebP copy's decoder is not at")
    folder.mkdir()
    shutil.copy(decoder, folder / "decode.py")
    mosaic = images.reshape(-1, 50, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 50 * 32, 3)
    Image.fromarray(mosaic).save(folder / "test_00.webp", lossless=True)
    (folder / "labels.json").write_text(json.dumps({"test": labels.tolist()}))
    sums = {key: hashlib.sha256(a.tobytes()).hexdigest() for key, a in (("images", images), ("labels", labels))}
    if damage_sum:
        sums["images"] = "0" * 64
    (folder / "SHA256SUMS").write_text("".join(f"{h}  test/{key}\n" for key, h in sums.items()))


def test_the_test_split_alone_decodes_from_the_webp_copy_checked_against_its_sums(fused_gpu, tmp_path):
    """A fused_gpu call carries only the test split (~17 MB) beside the repository instead of staging all of
    CIFAR-10 over three calls: decoded pixel-exact into --data-dir, and a damaged copy is refused."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=100).astype(np.int64)
    _webp_test_copy(tmp_path / "c10", images, labels)
    out = fused_gpu.decode_test_split(tmp_path / "c10", tmp_path / "data")
    assert out == tmp_path / "data" / "cifar10" / "test.npz"
    with np.load(out) as got:
        assert np.array_equal(got["images"], images) and np.array_equal(got["labels"], labels)

    _webp_test_copy(tmp_path / "bad", images, labels, damage_sum=True)
    with pytest.raises(ValueError, match="test/images does not match SHA256SUMS"):
        fused_gpu.decode_test_split(tmp_path / "bad", tmp_path / "data2")
    assert not (tmp_path / "data2" / "cifar10" / "test.npz").exists()
