"""``benchmarks/kernel_shapes.py`` rehearsed on a CPU: its ``--dry-run`` (Triton's interpreter, tiny widths)
in a fresh process, as the GPU machine would run it, and a run whose budget ends early. The block shapes it
reports are checked against the eager network's own blocks, derived here independently with forward hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

import dsrnet
from dsrnet.models.dsrnet import DSRBlock
from tests.conftest import REPO

pytest.importorskip("triton")

SCRIPT = REPO / "benchmarks" / "kernel_shapes.py"
FILES = ["log.txt", "results.json", "results.md"]


def _run(out, *extra) -> subprocess.CompletedProcess:
    # A fresh process: Triton must see TRITON_INTERPRET=1 before it is first imported.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}
    env.pop("DSRNET_DISABLE_TRITON", None)
    env.pop("DSRNET_TRITON_AUTOTUNE", None)
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel_shapes")
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def _eager_shapes(model_name: str, image: int, model_kwargs: dict) -> Counter:
    """(cin, h, w, width, cout, ho, wo, dilation, shortcut) of every DSRBlock, from an eager forward pass."""
    model = dsrnet.create_model(model_name, num_classes=10, **model_kwargs).eval()
    seen = []

    def hook(block, args, out):
        (_, cin, h, w), (_, cout, ho, wo) = args[0].shape, out.shape
        shortcut = "identity" if block.downsample is None else "downsample"
        seen.append((cin, h, w, block.conv_dw.in_channels, cout, ho, wo, block.conv_dw.dilation[0], shortcut))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DSRBlock)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, image, image))
    for h in hooks:
        h.remove()
    return Counter(seen)


def test_dry_run_writes_three_files_and_no_errors(dry_run):
    out, res = dry_run
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert res["dry_run"] is True and res["errors"] == [] and res["skipped"] == []
    assert res["ceilings"]["copy_bandwidth_GBps"] > 0 and res["ceilings"]["bf16_matmul_TFLOPs"] > 0
    md = (out / "results.md").read_text()
    assert "DRY RUN" in md and "## cifar/8: dsrnet50_cifar, 16 blocks, 14 distinct shapes" in md
    assert "### fused dw_pw_block (block)" in md and "### pw1 triton pointwise_conv (pw1)" in md


@pytest.mark.parametrize("net", ["cifar/8", "paper/32"])
def test_shapes_are_the_networks_blocks(dry_run, net):
    _, res = dry_run
    info = res["networks"][net]
    expected = _eager_shapes(info["model"], info["image"], info["model_kwargs"])
    got = Counter()
    for s in info["shapes"]:
        key = (
            s["cin"],
            s["h"],
            s["w"],
            s["width"],
            s["cout"],
            s["ho"],
            s["wo"],
            s["dilation"],
            s["shortcut"],
        )
        got[key] += s["count"]
        assert s["count"] == len(s["blocks"])
    assert got == expected
    assert info["blocks"] == sum(expected.values()) == 16  # DSRNet-50: 3 + 4 + 6 + 3
    # distinct = what the fused kernels see differently; the dilation cycle (1, 2, 3) repeats in layer3 only
    assert info["distinct_shapes"] == len(expected) == 14
    assert sorted(s["count"] for s in info["shapes"])[-2:] == [2, 2]
    assert sum(s["count"] for s in info["pw1_shapes"]) == 16


def test_rows_time_the_same_math_through_the_kernels(dry_run):
    _, res = dry_run
    rows = [r for r in res["rows"] if r["network"] == "cifar/8"]
    timed = {r["shape_id"] for r in rows if r["impl"] == "fused dw_pw_block"}
    shapes = {s["id"]: s for s in res["networks"]["cifar/8"]["shapes"]}
    assert len(timed) == 3  # the dry run's --max-shapes: one of each shortcut kind / stride
    assert {(shapes[i]["shortcut"], shapes[i]["stride_dw"]) for i in timed} == {
        ("downsample", 1), ("identity", 1), ("downsample", 2)
    }  # fmt: skip
    impls = Counter(r["impl"] for r in rows)
    for impl in ("fused dw_pw_block", "split dwconv2d + pointwise_conv", "split dwconv2d", "torch eager",
                 "torch dw conv2d + relu", "pw1 triton pointwise_conv", "pw1 torch conv2d",
                 "split pointwise_conv + shortcut", "torch 1x1 + shortcut + relu", "whole dsr_block",
                 "torch eager whole block", "chain pointwise_chain", "split + next pw1",
                 "torch eager block + next 1x1"):  # fmt: skip
        assert impls[impl] == 3, impl
    # kind tma: each 1x1 GEMM it can take, pointer-based and through TMA back to back (the second 1x1 only with an
    # identity shortcut); at the dry run's 16-channel maps a TMA copy can read the tensors and the TMA kernel ran
    assert impls["pw1 pointwise_conv (TMA)"] == impls["pw1 pointwise_conv (pointer)"] == 3
    assert impls["split pointwise_conv + shortcut (TMA)"] == impls["split pointwise_conv + shortcut (pointer)"] == 1
    assert any(r["tma_launches"] for r in rows if r["impl"].endswith("(TMA)"))
    # The downsample shortcut is a second GEMM into the pointwise tile: no kernel (nor row) of its own.
    assert impls["split pointwise_conv downsample"] == impls["torch 1x1 downsample"] == 0
    assert impls["torch compiled"] == 1
    for r in rows:
        assert r["ms"] > 0 and r["floor_ms"] > 0 and r["x_floor"] > 0 and r["ideal_bytes"] > 0, r
        if "max_rel_diff" in r:  # Triton vs PyTorch, both bf16: the kernels ran (not the fallback), same math
            assert r["backend"] == "triton" and r["max_rel_diff"] < 0.05, r
        if r["impl"] in ("fused dw_pw_block", "pw1 triton pointwise_conv", "split dwconv2d", "whole dsr_block",
                         "chain pointwise_chain"):  # fmt: skip
            assert r["config"], r  # the config the autotuner used
    # the ideal traffic and FLOPs of an identity block: y1 and the shortcut read, the output written, weights
    ident = next(
        r
        for r in rows
        if r["impl"] == "fused dw_pw_block" and shapes[r["shape_id"]]["shortcut"] == "identity"
    )
    s, n = shapes[ident["shape_id"]], ident["batch"]
    px = n * s["ho"] * s["wo"]
    assert ident["ideal_bytes"] == 2 * (
        s["width"] * px + 2 * s["cout"] * px + 10 * s["width"] + (s["width"] + 1) * s["cout"]
    )
    assert ident["flops"] == 2 * px * (9 * s["width"] + s["width"] * s["cout"])
    # the whole block at its floor: its input read once (here Cin = Cout, no stride), its output written once
    whole = next(r for r in rows if r["impl"] == "whole dsr_block" and r["shape_id"] == ident["shape_id"])
    weights = (s["cin"] + 1) * s["width"] + 10 * s["width"] + (s["width"] + 1) * s["cout"]
    assert whole["ideal_bytes"] == 2 * (2 * s["cout"] * px + weights)
    assert whole["flops"] == ident["flops"] + 2 * px * s["cin"] * s["width"]


def test_budget_end_still_writes_what_was_measured(tmp_path):
    # the last 30 s of a budget are kept for writing, so 23 s leaves none: the alarm stops the first step
    proc = _run(tmp_path, "--budget-s", "23", "--kinds", "fused,pw1,torch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == FILES
    assert res["skipped"] and res["errors"] == []
    assert not any(r["impl"].startswith("split") for r in res["rows"])  # --kinds
    assert "## Skipped steps / errors" in (tmp_path / "results.md").read_text()


@pytest.fixture
def ks(monkeypatch):
    """The script as a module, in this process."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first: undone afterwards
    spec = importlib.util.spec_from_file_location("kernel_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernel_shapes", module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_watchdog_writes_this_scripts_files_and_ends_the_process(tmp_path, monkeypatch, ks):
    """kernel_shapes had no watchdog: a compile stuck past the deadline ran until the device call's own limit. Its
    hard stop writes this script's results (not fused_gpu's) and exits."""
    import argparse

    exits = []
    monkeypatch.setattr(ks.fused_gpu.os, "_exit", exits.append)
    bench = ks.ShapeBench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=0.0, dtype="fp32", batch=2))
    bench.current_step = "a compile stuck in C"
    bench.start_watchdog().join(timeout=10)
    assert exits == [3]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["errors"][-1]["step"] == "watchdog" and "rows" in saved and "HARD STOP" in (tmp_path / "log.txt").read_text()


def test_the_summary_compares_whole_blocks_across_fuse_modes(monkeypatch):
    """Per shape: block (one kernel) vs split and fused (each with the first 1x1's pw1 row added) vs PyTorch; the
    fastest, its time x count, and how far it is from the whole block's floor."""
    import importlib.util

    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first: undone afterwards
    spec = importlib.util.spec_from_file_location("kernel_shapes", SCRIPT)
    ks = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "kernel_shapes", ks)  # its dataclasses look their module up there
    spec.loader.exec_module(ks)
    shape = {"id": "c00", "label": "L", "count": 2, "cin": 4, "h": 8, "w": 8, "width": 4, "stride_1x1": 1}
    pw1 = ks.pw1_label((4, 8, 8, 4, 1))
    rows = [
        {"shape_id": "c00", "impl": "whole dsr_block", "part": "whole", "shape": "L", "ms": 1.0, "floor_ms": 0.5},
        {"shape_id": "c00", "impl": "split dwconv2d + pointwise_conv", "part": "block", "shape": "L", "ms": 0.3},
        {"shape_id": "c00", "impl": "fused dw_pw_block", "part": "block", "shape": "L", "ms": 0.9},
        {"shape_id": "c00", "impl": "torch eager whole block", "part": "whole", "shape": "L", "ms": 2.0},
        {"shape_id": "p0", "impl": "pw1 triton pointwise_conv", "part": "pw1", "shape": pw1, "ms": 0.2},
    ]
    table = ks._summary({"shapes": [shape]}, rows)
    header, _, row = table.strip().splitlines()[-3:]
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | "), strict=True))
    assert cells["block_ms"] == "1" and cells["split_ms"] == "0.5" and cells["fused_ms"] == "1.1"
    assert cells["fastest"] == "split" and cells["fastest_total_ms"] == "1" and cells["x_torch"] == "4"
    assert cells["x_floor"] == "1" and cells["share_%"] == "100"


@pytest.mark.parametrize("kind", ["whole", "pw1"])
def test_a_budget_stop_inside_a_kind_lists_its_shapes_not_run(tmp_path, monkeypatch, ks, kind):
    """The budget stop in the middle of a kind's shapes lists every shape of that kind not started (pw1: each first
    1x1 shape once), as it lists the later steps, so results.md says what is missing."""
    import argparse

    bench = ks.ShapeBench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0, dtype="fp32", batch=2))
    models: dict = {}
    ks.step_shapes(bench, "cifar", "dsrnet50_cifar", 32, models)
    (net,) = models
    started = []

    def timed_step(kind_, name, fn, *args):
        started.append(name)
        if len(started) == 2:
            raise ks.BudgetExceeded

    monkeypatch.setattr(bench, "timed_step", timed_step)
    with pytest.raises(ks.BudgetExceeded):
        ks.run_kind(bench, kind, net, models, None)
    entries = models[net][1]
    total = len({e["shape"].pw1_key() for e in entries}) if kind == "pw1" else len(entries)
    skipped = [s["step"] for s in bench.results["skipped"]]
    assert len(started) + len(skipped) == total and not set(started) & set(skipped)
    assert all(s.startswith(f"{kind} {net} ") for s in skipped)


def test_the_sweep_widens_the_two_hot_kernels_and_reports_what_the_extra_configs_gain(monkeypatch, ks):
    """The 1x1 GEMMs took 82 % of the split form's GPU time (H200, 2026-11-27): --sweep autotunes them and the
    depthwise kernel over SWEEP_CONFIGS too, and a table sets each shape's best library config against the best."""
    tk = ks.ops._tk
    for name in tk.SWEEP_CONFIGS:  # widened for this test only
        lazy = getattr(tk, name)
        monkeypatch.setattr(lazy, "configs", list(lazy.configs))
        monkeypatch.setattr(lazy, "_built", {(False, True): "a tuner built before the sweep"})
    library = {name: len(getattr(tk, name).configs) for name in tk.SWEEP_CONFIGS}
    sweep = ks.widen_configs()
    for name, extra in tk.SWEEP_CONFIGS.items():
        lazy = getattr(tk, name)
        assert lazy.configs[library[name]:] == extra and lazy._built == {}  # rebuilt with them on the next launch
        assert len(sweep[name]["library"]) == library[name] and len(sweep[name]["extra"]) == len(extra)
    lib, extra = sweep["pw_gemm"]["library"][0], sweep["pw_gemm"]["extra"][0]
    rows = [
        {"network": "cifar/32", "shape_id": "c00", "shape": "L", "impl": "split pointwise_conv + shortcut",
         "tuning_ms": {lib: 0.30, extra: 0.20}},
        {"network": "cifar/32", "shape_id": "c01", "shape": "M", "impl": "split pointwise_conv + shortcut",
         "tuning_ms": {lib: 0.10, extra: 0.40}},
        {"network": "cifar/32", "shape_id": "c00", "shape": "L", "impl": "torch eager", "tuning_ms": None},
    ]  # fmt: skip
    got = ks.sweep_rows({"sweep": sweep, "rows": rows})
    assert [(r["shape_id"], r["best_config"], r["library_config"], r["gain"]) for r in got] == [
        ("c00", extra, lib, 1.5), ("c01", lib, lib, 1.0)]
    md = ks.render_markdown({"command": "x", "dry_run": False, "budget_s": 1, "dtype": "bf16", "batch": 1,
                             "networks": {}, "rows": rows, "skipped": [], "errors": [], "sweep": sweep})  # fmt: skip
    assert "## Config sweep (--sweep)" in md and "| 1.5 |" in md
    # In fp32 the larger GEMM tiles need more than sm_90's shared memory per program: left out, not timed as inf.
    for name in tk.SWEEP_CONFIGS:
        lazy = getattr(tk, name)
        monkeypatch.setattr(lazy, "configs", list(lazy.configs[: library[name]]))
    fp32 = ks.widen_configs(torch.float32)
    assert fp32["pw_gemm"]["left_out"] and not fp32["dw_fwd"]["left_out"] and not sweep["pw_gemm"]["left_out"]
    assert len(fp32["pw_gemm"]["extra"]) + len(fp32["pw_gemm"]["left_out"]) == len(tk.SWEEP_CONFIGS["pw_gemm"])
    assert all(tk.fits_shared_memory(c, 4) for c in tk.pw_gemm.configs[library["pw_gemm"]:])
    # The library's own undo (fused_gpu's *_sweep forms widen for one form, then restore)
    widened = tk.widen_configs(2)
    tk.pw_gemm._built[(False, True)] = "a tuner built with the extra configs"
    tk.restore_configs(widened)
    for name in tk.SWEEP_CONFIGS:
        lazy = getattr(tk, name)
        assert len(lazy.configs) == library[name] + len(fp32[name]["extra"]) and lazy._built == {}
