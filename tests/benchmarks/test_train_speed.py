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


def test_the_verdict_takes_the_fastest_sound_arm_only_where_it_beats_the_recipe_by_more_than_noise():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    ts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ts)

    def arm(name, epoch_s, flags="", loss=1.0, status=0, epochs=4, first=None):
        return {"arm": name, "flags": flags, "status": status, "epoch_s": epoch_s, "epochs_done": epochs,
                "first_epoch_s": epoch_s if first is None else first, "final_train_loss": loss}  # fmt: skip

    def verdict(arms, epochs=10):
        return ts.verdict(arms, epochs)

    graphs = "--dwconv triton --compile-mode reduce-overhead"
    speedup, advice = verdict([arm("fast", 4.0), arm("fast+triton_dw+cudagraphs", 2.0, graphs),
                               arm("fast+cudagraphs", 1.0, "--compile-mode reduce-overhead", loss=float("nan")),
                               arm("fast+triton_dw", 1.5, "--dwconv triton", epochs=2)])  # fmt: skip
    assert speedup == {"fast": 1.0, "fast+triton_dw+cudagraphs": 2.0, "fast+cudagraphs": 4.0, "fast+triton_dw": 2.667}
    assert advice.endswith("set `dwconv: triton`, `compile_mode: reduce-overhead`")  # NaN and cut-short arms lose
    assert "keep fast.yaml" in verdict([arm("fast", 4.0), arm("fast+triton_dw", 3.9, "--dwconv triton")])[1]
    assert "no verdict" in verdict([arm("fast", None, status=1), arm("fast+triton_dw", 3.0, "--dwconv triton")])[1]
    assert "no verdict" in verdict([arm("fast", 4.0, loss=None), arm("fast+triton_dw", 3.0, "--dwconv triton")])[1]
    assert verdict([arm("fast", 4.0), arm("fast+cl", 2.0, "--channels-last --dwconv triton")])[1].endswith(
        "set its flags `--channels-last --dwconv triton`")  # a flag without a value: the flags as given
    # Twice as fast per epoch after a first epoch of 60 s (autotuning): over a 10-epoch run 4 x 10 = 40 s against
    # 60 + 9 x 2 = 78 s, slower; over 100 epochs 400 s against 258 s, faster.
    tuned = [arm("fast", 4.0), arm("fast+triton_dw+max-autotune", 2.0, "--compile-mode max-autotune", first=60.0)]
    assert verdict(tuned, 10)[0]["fast+triton_dw+max-autotune"] == round(40 / 78, 3)
    assert "keep fast.yaml" in verdict(tuned, 10)[1] and "max-autotune" in verdict(tuned, 100)[1]
    md = ts.markdown({"command": "x", "environment": {}, "elapsed_s": 1, "budget_s": 2, "dry_run": False,
                      "recipe_epochs": 10, "skipped": [],
                      "arms": [arm("fast", 4.0), arm("fast+triton_dw", 2.0, "--dwconv triton")]})  # fmt: skip
    assert "| fast+triton_dw | 0 | 4 | 2.0 | 2.0 | 20.0 | 2.0 |" in md and "set `dwconv: triton`" in md
    assert ts.recipe_epochs() == 40  # fast.yaml's


def test_each_arm_starts_with_compile_caches_of_its_own(tmp_path, monkeypatch):
    """The verdict counts each arm's first epoch (its compilation and autotuning): an arm after another must not
    find the kernels and autotuning that one paid for in a shared cache."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    ts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ts)
    seen = []

    def fake_run(cmd, env, **kwargs):
        seen.append((env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ts.subprocess, "run", fake_run)
    args = argparse.Namespace(dry_run=False, epochs=2, out=tmp_path)
    stale = tmp_path / "runs" / "b-inductor"
    stale.mkdir(parents=True)
    (stale / "kernel").write_text("from an earlier run")
    for name in ("a", "b"):
        ts.run_arm(args, name, [], tmp_path, 60.0)
    assert len({d for pair in seen for d in pair}) == 4 and all(name in seen[i][0] for i, name in enumerate("ab"))
    assert not stale.exists()  # emptied before the arm starts
