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


def test_a_failing_form_costs_only_its_own_rows_and_the_alarm_still_stops_the_step(fused_gpu, tmp_path, monkeypatch):
    """A new kernel failing on its first GPU run (the TMA form, say) aborted its whole step: the forms after it in
    the same step were never timed."""
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))
    timed = []

    def time_form(bench, stem, size, b, batch, form, graphs):
        if form == "dsrnet_fused_tma":
            raise RuntimeError("Triton Error [CUDA]: an illegal instruction was encountered")
        timed.append(form)

    monkeypatch.setattr(fused_gpu, "time_inference_form", time_form)
    forms = ("resnet50_compiled", "dsrnet_fused_tma", "dsrnet_fused_sweep")
    bench.step("inference", 0, fused_gpu.step_inference, bench, "cifar", 32, 1024, forms, True)
    assert timed == ["resnet50_compiled", "dsrnet_fused_sweep"]
    (error,) = bench.results["errors"]
    assert error["step"].endswith(": dsrnet_fused_tma") and "illegal instruction" in error["error"]
    # A fault that leaves the CUDA context unusable ends the step (the forms after it would each fail with it).
    monkeypatch.setattr(fused_gpu, "cuda_context_usable", lambda bench: False)
    timed.clear()
    bench.step("inference, context lost", 0, fused_gpu.step_inference, bench, "cifar", 32, 1024, forms, True)
    assert timed == ["resnet50_compiled"] and bench.results["errors"][-1]["step"] == "inference, context lost"
    assert bench.results["errors"][-2]["step"].endswith(": dsrnet_fused_tma")  # the form that faulted, by name
    assert len(bench.results["errors"]) == 3
    bench.alarm_fired = True  # the budget's alarm surfacing as a form's error is the budget stop, not a failed form
    with pytest.raises(fused_gpu.BudgetExceeded):
        bench.step("inference again", 0, fused_gpu.step_inference, bench, "cifar", 32, 1024, forms, True)
    assert len(bench.results["errors"]) == 3


def test_only_that_matches_no_step_is_refused_before_anything_runs(fused_gpu, tmp_path, capsys):
    """A mistyped --only used to run the environment and ceilings steps only and exit 0: a wasted GPU call."""
    out = tmp_path / "out"
    assert fused_gpu.main(["--dry-run", "--out", str(out), "--budget-s", "60", "--only", "inference cifar/32 b1024 fused"]) == 2
    err = capsys.readouterr().err
    assert "--only inference cifar/32 b1024 fused matches no step; fix:" in err
    assert "inference cifar/32 b1024 (+cudagraph): fused, fused block, fused auto, eager, resnet50 compiled" in err
    assert not out.exists()
    assert fused_gpu.main(["--dry-run", "--out", str(out), "--budget-s", "60", "--only", " ; "]) == 2
    assert "--only names no step" in capsys.readouterr().err and not out.exists()


def _planned_steps(fused_gpu, monkeypatch, tmp_path, *args):
    """The (step, estimate) pairs main() hands to Bench.step on a (pretended) GPU, running none of them."""
    started = []
    monkeypatch.setattr(fused_gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused_gpu.Bench, "step", lambda self, name, estimate, fn, *a: started.append((name, estimate)))
    monkeypatch.setattr(fused_gpu.Bench, "start_alarm", lambda self: None)
    monkeypatch.setattr(fused_gpu.Bench, "save", lambda self: None)
    monkeypatch.setattr(fused_gpu.os, "_exit", lambda rc: None)
    assert fused_gpu.main(["--out", str(tmp_path), "--budget-s", "300", *args]) == 0
    return started


def test_a_step_named_by_only_starts_whatever_its_estimate(fused_gpu, monkeypatch, tmp_path):
    """A second GPU call of 180 s naming the 200-s training step used to skip it at once and return nothing; named
    steps now start, and the budget stop keeps the rows they finished."""
    step = "training 32px b512: resnet50 compiled, dsrnet compiled + triton dw"
    started = dict(_planned_steps(fused_gpu, monkeypatch, tmp_path, "--only", step))
    assert [name for name in started if name.startswith("training")] == [next(n for n in started if step in n)]
    assert all(estimate == 0 for estimate in started.values())
    full = _planned_steps(fused_gpu, monkeypatch, tmp_path / "full")
    assert dict(full)[next(n for n in dict(full) if step in n)] >= 100  # the whole plan still gates on estimates
    names = [name for name, _ in full]  # the never-measured training target comes before batch 128
    assert names.index(next(n for n in names if step in n)) < names.index("inference cifar/32 b128 (+cudagraph)")


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


def test_a_skipped_step_is_in_the_files_at_once(fused_gpu, tmp_path):
    """2026-11-27's H200 call was killed in a step that outran the budget: its files showed nothing after the last
    finished step, so the skips before it were lost. A skip (and a start) now writes them."""
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))
    bench.step("too big", 10**6, lambda: None)
    assert "SKIP too big" in (tmp_path / "log.txt").read_text()
    assert "too big" in (tmp_path / "results.md").read_text()


def test_the_watchdog_writes_what_was_measured_and_ends_the_process_at_the_budget(fused_gpu, tmp_path, monkeypatch):
    """The alarm cannot stop a step stuck outside Python; the watchdog thread ends the run at the budget's end
    with the files written, instead of the device call's limit killing it with nothing."""
    exits = []
    monkeypatch.setattr(fused_gpu.os, "_exit", exits.append)
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=0.0))
    row = {"form": "dsrnet_eager", "stem": "cifar", "image": 16, "batch": 2, "images_per_s": 1.0}
    bench.results["inference"].append(row)
    bench.current_step = "a step stuck in C"
    bench.start_watchdog().join(timeout=10)
    assert exits == [3]
    assert "HARD STOP" in (tmp_path / "log.txt").read_text()
    import json

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["inference"] == [row]
    assert saved["errors"][-1]["step"] == "watchdog"
    assert saved["skipped"] == [{"step": "a step stuck in C", "reason": "hard stop at the end of the budget during "
                                 "the step"}]  # fmt: skip
    assert not list(tmp_path.glob("*.tmp"))


def test_gradient_errors_are_measured_against_the_exact_gradients(fused_gpu):
    import torch

    exact = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([[0.5, 0.0]])}
    same = fused_gpu.grad_errors({k: v.clone() for k, v in exact.items()}, exact)
    assert same["grad_norm_rel_err"] == 0 and same["max_rel_grad_diff"] == 0
    off = fused_gpu.grad_errors({"a": exact["a"], "b": torch.tensor([[0.5, 0.25]])}, exact)
    assert off["worst_param"] == "b" and off["max_rel_grad_diff"] == pytest.approx(0.5)
    assert off["grad_norm_rel_err"] == pytest.approx(0.25 / (1 + 4 + 0.25) ** 0.5)


def test_fused_forms_name_their_mode_and_older_rows_keep_their_meaning(fused_gpu):
    """``dsrnet_fused`` times fuse()'s default; rows of the run before the default became split called the
    one-kernel mode ``dsrnet_fused`` and carry no ``fuse_mode``."""
    from dsrnet.models.fused import DEFAULT_FUSE_MODE

    assert fused_gpu.fuse_mode("dsrnet_fused") == DEFAULT_FUSE_MODE == "split"
    assert fused_gpu.fuse_mode("dsrnet_fused_onekernel+cudagraph") == "fused"
    assert fused_gpu.fuse_mode("dsrnet_fused", {"form": "dsrnet_fused"}) == "fused"
    assert fused_gpu.fuse_mode("dsrnet_fused", {"form": "dsrnet_fused", "fuse_mode": "split"}) == "split"
    assert fused_gpu.fuse_mode("dsrnet_fused_auto", {"form": "dsrnet_fused_auto"}) == "auto"
    assert fused_gpu.fuse_mode("dsrnet_fused_block+cudagraph") == "block"


def test_traffic_model_puts_the_one_kernel_block_at_the_floor_and_split_above_it(fused_gpu):
    """The roofline's modelled bytes: ``block`` reads each block's input once and writes its output once (the
    floor), ``fused`` also writes and rereads the first 1x1's output and rereads the input for the shortcut, and
    ``split`` the depthwise output on top."""
    import torch

    import dsrnet

    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10).eval()
    x = torch.randn(1, 3, 16, 16)
    by_mode = {m: fused_gpu.traffic_per_image(dsrnet.fuse(model, mode=m), x) for m in ("block", "fused", "split")}
    floor = by_mode["block"]["floor"]
    assert {t["floor"] for t in by_mode.values()} == {floor}
    # block's own bytes = the blocks' floor + the modules outside the blocks (the cifar stem's identity max-pool
    # reads and writes the stem's 16x16x64 map, the pool reads the last map: ~180 KB in fp32 at 16 px, 5 %)
    assert 0 <= by_mode["block"]["own"] - floor < 0.06 * floor
    assert by_mode["block"]["own"] < by_mode["fused"]["own"] < by_mode["split"]["own"]
    # chain: split less the input reads of the blocks whose first 1x1 the previous block's kernel computed (every
    # block but the stem's next and layer4's: 512 wide, two kernels) and less the depthwise output written and
    # read back in layer1-2 (64 and 128 wide: in the chain kernel), fp32
    chain = fused_gpu.traffic_per_image(dsrnet.fuse(model, mode="chain"), x)
    linked = 3 * 256 * 16 * 16 + 4 * 512 * 8 * 8 + 5 * 1024 * 4 * 4
    depthwise = 2 * (3 * 64 * 16 * 16 + 4 * 128 * 8 * 8)
    assert chain["floor"] == floor and by_mode["split"]["own"] - chain["own"] == 4 * (linked + depthwise)
    assert by_mode["block"]["own"] < chain["own"] < by_mode["fused"]["own"]
    # the _nodw form (every depthwise conv its own kernel): chain with split's depthwise traffic
    assert fused_gpu._nodw_traffic(model, x)["own"] == chain["own"] + 4 * depthwise


def test_rerender_adds_the_roofline_of_a_run_cut_short(fused_gpu, tmp_path, capsys):
    """A run killed before its reserve step has timings but no per-image counts; --rerender counts them on the CPU
    (shapes only) and rewrites the tables, leaving the run's log alone."""
    import json

    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))
    bench.results["ceilings"] = {"copy_bandwidth_GBps": 1000.0, "bf16_matmul_TFLOPs": 100.0}
    bench.results["inference"] = [
        {"form": "dsrnet_fused", "stem": "cifar", "image": 16, "batch": 2, "images_per_s": 1000.0},
        {"form": "dsrnet_fused_split", "stem": "cifar", "image": 16, "batch": 2, "images_per_s": 2000.0},
        {"form": "dsrnet_fused_auto", "fuse_mode": "auto", "stem": "cifar", "image": 16, "batch": 2,
         "images_per_s": 2000.0, "auto_picks": {"split": 1, "block": 2}},
    ]
    bench.results["training"] = [{"form": f, "image": 16, "batch": 2, "images_per_s": 100.0}
                                 for f in ("resnet50_compiled", "dsrnet_compiled_triton_dw")]  # fmt: skip
    bench.save()
    (tmp_path / "log.txt").write_text("the run's own log\n")
    assert fused_gpu.main(["--rerender", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["per_image"]) == {"cifar/16"} and len(saved["roofline"]) == 3
    one, split, auto = saved["roofline"]
    # the legacy dsrnet_fused row is the one-kernel mode, which writes no depthwise output: less traffic
    assert one["modelled_mb_per_image"] < split["modelled_mb_per_image"]
    # auto's traffic depends on its picks on the GPU: its floor fraction only
    assert auto["modelled_mb_per_image"] is None and auto["floor_bandwidth_fraction"] == split["floor_bandwidth_fraction"]
    assert "--rerender" in saved["rerendered"] and "## Roofline" in (tmp_path / "results.md").read_text()
    # the training step's FLOPs (forward + backward: about 3x the forward's) and the matmul-rate fraction they reach
    per = saved["per_image"]["cifar/16"]
    for net in ("dsrnet", "resnet50"):
        assert 2.5 < per[f"{net}_train_flops"] / per[f"{net}_flops"] < 3.2
    train_table = (tmp_path / "results.md").read_text().split("## Training step")[1].split("##")[0]
    fraction = round(per["resnet50_train_flops"] * 100.0 / 100e12, 4)  # FLOPs x 100 images/s / 100 TFLOP/s
    assert "compute_fraction" in train_table and f"| {fraction:.4g} |" in train_table
    assert (tmp_path / "log.txt").read_text() == "the run's own log\n"

    # per-image counts of the version before split's traffic was modelled: recounted, not a KeyError
    saved["per_image"]["cifar/16"] = {"dsrnet_fused_bytes": {"floor": 1, "own": 1}}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert fused_gpu.main(["--rerender", str(tmp_path)]) == 0
    assert "dsrnet_fused_bytes_by_mode" in json.loads((tmp_path / "results.json").read_text())["per_image"]["cifar/16"]

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{}")
    assert fused_gpu.main(["--rerender", str(tmp_path / "bad")]) == 2
    assert "is not a fused_gpu.py results.json" in capsys.readouterr().err


def test_the_block_probe_runs_the_new_kernel_in_a_process_of_its_own(fused_gpu, tmp_path, monkeypatch):
    """A fault in a kernel never run on a GPU (an illegal address) poisons the CUDA context of the process: the
    one-kernel block runs first in a child, and if that fails, every block form is skipped and the rest runs."""
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))
    fused_gpu.step_block_probe(bench)
    assert not bench.block_unsafe and bench.results["errors"] == []
    rows = {r["dtype"]: r for r in bench.results["correctness"]}
    assert set(rows) == {"float32", "bfloat16"}
    for dtype, tol in (("float32", 1e-4), ("bfloat16", 5e-2)):  # through the interpreter, against eager fp32
        assert rows[dtype]["max_abs_logit_diff"] <= tol * rows[dtype]["max_abs_logit"] + 1e-6, rows

    monkeypatch.setattr(fused_gpu, "BLOCK_PROBE", "import sys; sys.exit('illegal memory access')")
    failed = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path / "f"), budget_s=600.0))
    fused_gpu.step_block_probe(failed)
    assert failed.block_unsafe and "illegal memory access" in failed.results["errors"][0]["error"]
    assert failed.skips_block("inference cifar/16 b2: dsrnet_fused_block")
    assert failed.skips_block("inference cifar/16 b2: dsrnet_fused_auto")  # auto times the block kernel too
    assert not failed.skips_block("inference cifar/16 b2: dsrnet_fused")
    assert [r["step"] for r in failed.results["skipped"]] == ["inference cifar/16 b2: dsrnet_fused_block",
                                                              "inference cifar/16 b2: dsrnet_fused_auto"]
    assert {r["reason"] for r in failed.results["skipped"]} == {"the block kernel probe failed (errors)"}


def test_training_flops_count_a_depthwise_convs_weight_gradient_as_such(fused_gpu):
    """torch's FlopCounterMode counts a grouped conv's weight gradient as a dense conv's (64x here): the training
    roofline's counter divides it by the groups, so a conv's backward is twice its forward, grouped or not."""
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    def counts(conv):
        x = torch.randn(2, conv.in_channels, 8, 8, requires_grad=True)
        mapping = {torch.ops.aten.convolution_backward: fused_gpu._grouped_conv_backward_flop}
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            conv(x).sum().backward()
        flops = counter.get_flop_counts()["Global"]
        return flops[torch.ops.aten.convolution], flops[torch.ops.aten.convolution_backward]

    for groups in (1, 4, 64):
        fwd, bwd = counts(nn.Conv2d(64, 64, 3, padding=2, dilation=2, groups=groups, bias=False))
        assert bwd == 2 * fwd, groups


def test_auto_picks_count_the_shapes_of_the_form_measured_not_every_measurement(fused_gpu, monkeypatch):
    """``auto_picks`` of a ``fuse(mode="auto")`` row: the measured choices of the block shapes and input buckets its
    blocks met, not those another input size (or an earlier model) left in the same process."""
    import torch

    import dsrnet
    from dsrnet.models import fused

    tiny = {"layers": (1, 1, 1, 1), "widths": (4, 8, 8, 16)}
    model = dsrnet.fuse(dsrnet.create_model("dsrnet50_cifar", num_classes=10, **tiny).eval(), mode="auto")
    picks = fused_gpu.AutoPicks(model)
    with picks, torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    model(torch.randn(2, 3, 32, 32))  # after the context: not this form's
    assert len(picks.keys) == 4 and picks.counts() == {"split": 0, "block": 0}  # nothing measured on a CPU
    monkeypatch.setattr(fused, "_AUTO_CHOICES", {})
    for i, (geometry, bucket, dtype, device) in enumerate(sorted(picks.keys, key=repr)):
        for b in (bucket, bucket * 4):  # this form's bucket, and another input size's
            row = {"block_shape": geometry, "pixel_bucket": b, "dtype": dtype, "device": device}
            fused._AUTO_CHOICES[(geometry, b)] = {**row, "mode": "block" if i % 2 == 0 else "split"}
    assert picks.counts() == {"split": 2, "block": 2}


def test_a_training_row_says_how_busy_the_gpu_kept_during_the_step(fused_gpu, tmp_path, monkeypatch):
    """The H200 run of 2026-11-27 timed DSRNet's training step at 46 ms with ~20 ms of kernels in its profile: the
    row now carries the profile's kernel time per step and its share of the step, which says "host-bound"."""
    args = argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0, compile_backend="eager")
    bench = fused_gpu.Bench(args)
    monkeypatch.setattr(fused_gpu, "time_ms", lambda bench, fn, warmup, repeats: {
        "median_ms": 8.0, "p25_ms": 7.0, "p75_ms": 9.0, "repeats": repeats})
    profiled = []
    monkeypatch.setattr(fused_gpu, "profile_top10", lambda bench, label, fn, calls: profiled.append(label) or 2.0)
    bench.current_step = "training"
    fused_gpu.step_training(bench, ("resnet50_compiled", "resnet50_compiled_cudagraphs", "resnet50_compiled_autotune"))
    plain, graphed, tuned = bench.results["training"]
    assert plain["gpu_kernel_ms_per_step"] == 2.0 and plain["gpu_busy_fraction"] == 0.25
    # CUDA-graph replays (max-autotune's too) are not profiled
    assert "gpu_busy_fraction" not in graphed and "gpu_busy_fraction" not in tuned and len(profiled) == 1
    assert {r["step"] for r in bench.results["training"]} == {"training"}  # what decision_rows pairs rows by


def test_a_python_profile_of_a_failing_call_is_written_and_the_profiler_stopped(fused_gpu, tmp_path):
    """The fused forms' first call (compiling, autotuning: the riskiest of a run) is profiled: when it raises, the
    profile so far is kept and the profiler is off, so the run's later profiles and timings are not disturbed."""
    import cProfile

    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))

    def broken():
        raise RuntimeError("a kernel failed to compile")

    with pytest.raises(RuntimeError, match="failed to compile"):
        fused_gpu.python_profile(bench, "first call", broken, calls=2)
    assert "first call, 2 calls, host Python by own time (cProfile) (ended early: 0 of 2 calls finished)" in (
        bench.profiles[-1])
    other = cProfile.Profile()
    other.enable()  # on Python >= 3.12 this raises while another profiler is still on
    other.disable()
    fused_gpu.python_profile(bench, "next", lambda: None, calls=1)
    assert bench.profiles[-1].startswith("== next, 1 calls, host Python by own time (cProfile) ==")


def test_kernel_time_by_kind_sums_every_kernel_of_a_profile_per_call(fused_gpu):
    """The top-10 table of a training step covered ~40 % of its kernel time; the kinds cover all of it."""
    kernels = [
        ("_dw_bwd_weight", 100.0, 32), ("_dw_fwd", 80.0, 32), ("_pw_gemm", 50.0, 10),
        ("sm90_xmma_wgrad_indexed_implicit_gemm_bf16bf16", 60.0, 22),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32", 40.0, 10),
        ("triton_red_fused__native_batch_norm_legit_functional_9", 30.0, 8),
        ("triton_poi_fused_add_threshold_backward_57", 10.0, 1),
        ("triton_poi_fused__native_batch_norm_legit_functional_add_convolution_9", 10.0, 1),  # inductor's, not cuDNN's
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", 10.0, 4),
        ("some_new_kernel", 10.0, 2),
    ]  # fmt: skip
    kinds = fused_gpu.kernel_time_by_kind(kernels, calls=2)
    assert list(kinds)[0] == "dsrnet depthwise (Triton)" and kinds["dsrnet depthwise (Triton)"] == {
        "ms": 0.09, "share_pct": 45.0, "kernels": 32}
    assert kinds["convolution: weight gradient (cuDNN)"]["ms"] == 0.03
    assert kinds["convolution: forward (cuDNN)"]["kernels"] == 5 and kinds["convolution: forward (cuDNN)"]["ms"] == 0.02
    assert kinds["inductor: fused elementwise (BatchNorm apply, ReLU, ...)"] == {"ms": 0.01, "share_pct": 5.0, "kernels": 1}
    assert kinds["inductor: fused reductions (BatchNorm statistics, ...)"]["ms"] == 0.015
    assert kinds["optimiser (foreach / multi-tensor)"]["kernels"] == 2 and kinds["other"]["ms"] == 0.005
    assert sum(v["share_pct"] for v in kinds.values()) == pytest.approx(100, abs=0.2)


def test_sweep_nodw_tma_and_tiles_forms_change_the_library_while_they_run_and_restore_it_after(fused_gpu):
    from dsrnet.kernels import ops

    tk = ops._tk
    library = {name: list(getattr(tk, name).configs) for name in tk.SWEEP_CONFIGS}
    with fused_gpu.form_settings("dsrnet_fused") as picks:  # the default form records its depthwise picks
        assert set(picks()) == {"dw_fwd"} and tk.pw_gemm.configs == library["pw_gemm"]
    with pytest.raises(RuntimeError), fused_gpu.form_settings("dsrnet_fused_sweep+cudagraph") as picks:
        assert tk.pw_gemm.configs[len(library["pw_gemm"]):] == tk.SWEEP_CONFIGS["pw_gemm"]  # all fit in bf16
        assert set(picks()) == set(tk.SWEEP_CONFIGS)
        raise RuntimeError("a form that fails mid-way")
    assert {name: getattr(tk, name).configs for name in tk.SWEEP_CONFIGS} == library
    assert fused_gpu.fuse_mode("dsrnet_fused_sweep") == "split"
    with fused_gpu.form_settings("dsrnet_fused_chain_nodw+cudagraph") as picks:
        assert picks is None and ops.CHAIN_DW_MAX_WIDTH == 0
    assert ops.CHAIN_DW_MAX_WIDTH == 128 and fused_gpu.fuse_mode("dsrnet_fused_chain_nodw") == "chain"
    with pytest.raises(RuntimeError), fused_gpu.form_settings("dsrnet_fused_tma+cudagraph") as picks:
        assert ops.GEMM_TMA is True and set(picks()) == {"pw_gemm_tma"}
        raise RuntimeError("a form that fails mid-way")
    assert ops.GEMM_TMA is False and fused_gpu.fuse_mode("dsrnet_fused_tma") == "split"
    sliding = {lazy: list(lazy.configs) for lazy in (tk.dw_fwd, tk.dw_bwd_weight)}
    with pytest.raises(RuntimeError), fused_gpu.form_settings("dsrnet_fused_tiles+cudagraph") as picks:
        for lazy, configs in sliding.items():
            assert lazy.configs == [c for c in configs if not c.kwargs.get("ROWS")] != configs
        raise RuntimeError("a form that fails mid-way")
    assert {lazy: lazy.configs for lazy in sliding} == sliding and fused_gpu.fuse_mode("dsrnet_fused_tiles") == "split"
    with pytest.raises(RuntimeError), fused_gpu.form_settings("dsrnet_fused_chain_pdl+cudagraph"):
        assert ops.PDL is True
        raise RuntimeError("a form that fails mid-way")
    assert ops.PDL is False and fused_gpu.fuse_mode("dsrnet_fused_chain_pdl") == "chain"
    assert fused_gpu.fuse_mode("dsrnet_fused_pdl") == "split"


def test_the_report_says_what_each_comparison_decides_and_calls_overlapping_timings_a_tie(fused_gpu):
    def row(form, ms, p25, p75, batch=1024, step="b1024", **extra):
        return {"form": form, "stem": "cifar", "image": 32, "batch": batch, "ms_per_batch": ms, "p25_ms": p25,
                "p75_ms": p75, "images_per_s": batch / ms * 1e3, "step": step, **extra}

    def trow(form, ms, p25, p75, step="autotune"):
        return {"form": form, "image": 32, "batch": 512, "ms_per_step": ms, "p25_ms": p25, "p75_ms": p75,
                "images_per_s": 512 / ms * 1e3, "step": step}

    def pick(c, rows, dtype="torch.bfloat16"):
        return {"key": {"C": str(c), "dtypes": [dtype] * 5}, "config": {"ROWS": rows, "BLOCK_P": 64}}

    sliding = {"dw_fwd": [pick(64, 4), pick(128, 0)]}
    later = {"dw_fwd": [pick(64, 4), pick(128, 0), pick(256, 0), pick(64, 4, "torch.float32")]}  # the tuner so far
    results = {
        "correctness": [{"case": "dw_fwd config ROWS=4 w4 s2", "ok": False}, {"case": "dw_fwd config X", "ok": True},
                        {"case": "fused split fp32"}],
        "inference": [
            row("dsrnet_fused", 6.0, 5.9, 6.1, autotune_picks=sliding), row("dsrnet_fused_tiles", 6.6, 6.5, 6.7),
            row("dsrnet_fused_chain", 5.0, 4.9, 5.1, precompile_recompiled=3),
            row("dsrnet_fused_chain+cudagraph", 5.0, 4.9, 5.1, precompile_recompiled=3),  # one form: one row
            row("dsrnet_fused_chain_nodw", 5.05, 5.0, 5.2),
            row("dsrnet_fused_tma", 6.3, 6.2, 6.4), row("dsrnet_fused+cudagraph", 5.8, 5.7, 5.9),
            row("dsrnet_fused_sweep+cudagraph", 5.75, 5.74, 5.76),  # apart, but only 0.9 % faster: a tie
            # batch 128: the dependent-launch step, then the same forms again in a later step
            row("dsrnet_fused", 5.0, 4.9, 5.1, batch=128, step="pdl", autotune_picks=later),
            row("dsrnet_fused_pdl", 4.0, 3.9, 4.1, batch=128, step="pdl"),  # host-bound without a graph: no verdict
            row("dsrnet_fused+cudagraph", 1.0, 0.99, 1.01, batch=128, step="pdl"),
            row("dsrnet_fused_pdl+cudagraph", 0.9, 0.89, 0.91, batch=128, step="pdl"),
            row("dsrnet_fused+cudagraph", 0.8, 0.79, 0.81, batch=128, step="later"),
        ],
        "training": [
            trow("dsrnet_compiled_triton_dw_cudagraphs", 21.3, 21.2, 21.4),
            trow("dsrnet_compiled_triton_dw_autotune", 17.0, 16.9, 17.1),
            trow("resnet50_compiled_cudagraphs", 22.7, 22.6, 22.8),
            trow("resnet50_compiled_autotune", 22.6, 22.5, 22.9),  # overlapping: a tie
            trow("dsrnet_compiled_triton_dw_cudagraphs", 15.0, 14.9, 15.1, step="later"),  # another step's row
            trow("resnet50_compiled_cudagraphs", 30.0, 29.9, 30.1, step="later"),
            trow("dsrnet_compiled_triton_dw_linear_cudagraphs", 16.0, 15.9, 16.1, step="later"),
            trow("dsrnet_compiled_triton_dw_autotune", 14.0, 13.9, 14.1, step="later"),
            trow("dsrnet_compiled_triton_dw_linear_autotune", 14.05, 13.95, 14.15, step="later"),  # a tie with 14.0
        ],
    }  # fmt: skip
    got = {(r["question"], r["compare"]): (r.get("verdict"), r.get("edit")) for r in fused_gpu.decision_rows(results)}
    steps = {(r["question"], r.get("step")): r["verdict"] for r in fused_gpu.decision_rows(results)}
    # timed in two steps, one verdict each, each row naming its step: 17.0 vs 21.3 ms, then 14.0 vs 15.0 ms
    assert steps[("dsrnet_compiled_triton_dw_autotune vs dsrnet_compiled_triton_dw_cudagraphs", "autotune")] == (
        steps[("dsrnet_compiled_triton_dw_autotune vs dsrnet_compiled_triton_dw_cudagraphs", "later")]) == "faster"
    faster, edit = got.pop(("dsrnet_compiled_triton_dw_autotune vs dsrnet_compiled_triton_dw_cudagraphs",
                            "training 32 px b512"))  # fmt: skip
    assert faster == "faster" and "compile_mode: max-autotune" in edit
    # the matmul form one change at a time: a tie with max-autotune on convs, faster than the shipped candidate
    assert got.pop(("dsrnet_compiled_triton_dw_linear_autotune vs dsrnet_compiled_triton_dw_autotune",
                    "training 32 px b512"))[0] == "tie"  # fmt: skip
    faster, edit = got.pop(("dsrnet_compiled_triton_dw_linear_autotune vs dsrnet_compiled_triton_dw_cudagraphs",
                            "training 32 px b512"))  # fmt: skip
    assert faster == "faster" and "`pointwise: matmul` (if the row above gains, else not)" in edit
    assert got.pop(("resnet50_compiled_autotune vs resnet50_compiled_cudagraphs", "training 32 px b512"))[0] == "tie"
    # the matmul form against its own step's row (15.0 ms), not the first step's 21.3
    assert got.pop(("dsrnet_compiled_triton_dw_linear_cudagraphs vs dsrnet_compiled_triton_dw_cudagraphs",
                    "training 32 px b512"))[1].startswith("as matmuls the 1x1 convs are slower")  # fmt: skip
    assert got.pop(("depthwise configs wrong on this GPU", "dw_fwd config ROWS=4 w4 s2"))[0] == "not ok"
    assert got.pop(("dsrnet_fused vs dsrnet_fused_tiles", "cifar/32 b1024"))[0] == "faster"
    assert got.pop(("dsrnet_fused_chain vs dsrnet_fused", "cifar/32 b1024")) == (
        "faster", 'DEFAULT_FUSE_MODE = "chain" (dsrnet.models)')
    assert got.pop(("dsrnet_fused_chain vs dsrnet_fused_chain_nodw", "cifar/32 b1024"))[0] == "tie"  # ranges overlap
    assert got.pop(("dsrnet_fused_tma vs dsrnet_fused", "cifar/32 b1024")) == ("slower", "keep ops.GEMM_TMA = False")
    assert got.pop(("dsrnet_fused_chain+cudagraph vs dsrnet_fused+cudagraph", "cifar/32 b1024"))[0] == "faster"
    assert got.pop(("dsrnet_fused_sweep+cudagraph vs dsrnet_fused+cudagraph", "cifar/32 b1024"))[0] == "tie"
    # against its own step's row (1.0 ms), not the later step's 0.8
    assert got.pop(("dsrnet_fused_pdl+cudagraph vs dsrnet_fused+cudagraph", "cifar/32 b128")) == (
        "faster", "ops.PDL = True")
    assert got.pop(("dw_fwd shapes (bf16) a sliding-row config won", "1 of 3")) == ("", "")  # each shape once
    assert got.pop(("dsrnet_fused_chain: kernels compiled again after precompiling", "3"))[0] == "not ok"
    assert got == {}
    md = fused_gpu.render_markdown({**results, "command": "x", "dry_run": False, "budget_s": 1, "per_image": {},
                                    "skipped": [], "errors": []})  # fmt: skip
    assert "## What these rows decide" in md and '| faster | DEFAULT_FUSE_MODE = "chain" (dsrnet.models) |' in md
    ratios = {line.split(" | ")[0].strip("| ") + f" {line.split(' | ')[2]}": line.split(" | ")[6]
              for line in md.splitlines() if line.startswith("| dsrnet_compiled_triton_dw_cudagraphs |")}
    assert ratios == {"dsrnet_compiled_triton_dw_cudagraphs 21.3": "1.066",  # 22.7 / 21.3: its own step's ResNet-50
                      "dsrnet_compiled_triton_dw_cudagraphs 15": "2"}  # 30.0 / 15.0, not the first step's 22.7
