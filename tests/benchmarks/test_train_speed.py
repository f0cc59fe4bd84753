"""``benchmarks/train_speed.py --dry-run``: each arm is a real ``dsrnet train`` process on the synthetic data it
writes (CPU, tiny model, the Triton arm through the PyTorch fallback), and only the three result files land in
``--out`` (a GPU call brings back at most eight files)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "train_speed.py"


def test_dry_run_trains_each_arm_and_reports_its_epochs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(work),
           "--arms", "fast,fast+triton_dw+cudagraphs"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.json", "results.md"]
    results = json.loads((out / "results.json").read_text())
    assert [a["arm"] for a in results["arms"]] == ["fast", "fast+triton_dw+cudagraphs"] and results["skipped"] == []
    for arm in results["arms"]:
        assert arm["status"] == 0 and arm["epochs_done"] == 2 and arm["epoch_s"] > 0
        assert [r["epoch"] for r in arm["metrics"]] == [1, 2] and math.isfinite(arm["final_train_loss"])
    assert (work / "data" / "cifar10" / "train.npz").is_file() and (work / "runs" / "fast" / "final.json").is_file()
    log = (out / "log.txt").read_text()
    assert "--dwconv triton" in log and "--compile-mode" not in log  # a CPU run cannot compile: the mode is dropped


def test_an_unknown_arm_is_refused_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "o"), "--arms", "nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "unknown arm(s) nope" in proc.stderr and not (tmp_path / "o").exists()
