"""``dsrnet.fuse`` (inference form) and ``dsrnet.use_triton_dwconv`` (training form) against the eager DSRNet.

The Triton kernels run in Triton's CPU interpreter (see ``tests/kernels/interp.py``) on tiny networks.
"""

from __future__ import annotations  # noqa: I001 (interp must be imported before anything imports Triton)

from tests.kernels import interp

import contextlib
import copy
import math
import os
import subprocess
import sys
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.errors import DsrnetError
from dsrnet.models.dsrnet import DSRBlock, DSRNet
from tests.conftest import REPO
from tests.models._fused_helpers import TINY, _rel_err, _tiny

pytest.importorskip("triton")
needs_interpreter = pytest.mark.skipif(not interp.READY, reason=interp.SKIP_REASON)

# layers=(1, 2, 1, 1) gives every block kind: stage-1 block with a channel-changing shortcut, an identity block
# (rate 1), and downsampling blocks (rate 2, stride 2) in stages 2-4.
interpreter = interp.interpreter  # autouse: Triton interpreter, one thread


@needs_interpreter
@pytest.mark.parametrize(
    ("stem", "stride_on", "separable", "mode", "size"),
    [
        ("cifar", "dw", True, "fused", 9),
        ("cifar", "1x1", True, "fused", 9),
        ("cifar", "dw", True, "split", 9),
        ("cifar", "dw", True, "block", 9),
        ("cifar", "1x1", True, "block", 9),
        ("cifar", "dw", True, "chain", 9),
        ("cifar", "1x1", True, "chain", 9),
        ("paper", "dw", True, "fused", 19),
        ("cifar", "dw", False, "fused", 9),
    ],
)
def test_fused_model_matches_the_eager_model(stem, stride_on, separable, mode, size):
    model = _tiny(stem, stride_on=stride_on, separable=separable)
    fused = dsrnet.fuse(model, mode=mode)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _rel_err(fused.forward_features(x), model.forward_features(x)) < 1e-4
        assert _rel_err(fused(x), model(x)) < 1e-4
    assert not fused.training


@needs_interpreter
def test_chain_mode_computes_each_next_first_1x1_in_the_last_kernel_and_a_hooked_block_runs_as_itself(monkeypatch):
    """mode="chain": each block's last kernel (pointwise_chain) runs its depthwise conv, second 1x1 and shortcut,
    and every block but the model's last hands the next its first 1x1's output (1 + 2 + 1 + 1 links within the
    stages here, 3 across them); a block with a forward hook runs as itself (``block(x)``), unchained on both
    sides, and its hook sees the block's own output. The numbers are split's."""
    from dsrnet.kernels import ops

    model = _tiny(layers=(2, 3, 2, 2), block_dilations=(1, 2, 3))
    fused = dsrnet.fuse(model, mode="chain")
    assert all(type(getattr(fused, f"layer{i}")).__name__ == "FusedStage" for i in (1, 2, 3, 4))
    assert type(dsrnet.fuse(model, mode="split").layer1).__name__ == "Sequential"
    calls, real = [], ops.pointwise_chain

    def spy(x, *args):
        calls.append("link" if args[5] is not None else "last")
        return real(x, *args)

    monkeypatch.setattr(ops, "pointwise_chain", spy)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model.forward_features(x)
        assert _rel_err(fused.forward_features(x), want) < 1e-4
        assert calls.count("link") == 8 and calls.count("last") == 1
        seen = []
        handle = fused.layer2[1].register_forward_hook(lambda mod, inp, out: seen.append(out))
        calls.clear()
        out = fused.forward_features(x)
        assert _rel_err(out, want) < 1e-4
        assert calls.count("link") == 6 and calls.count("last") == 3  # layer2's links into and out of block 1 dropped
        assert len(seen) == 1 and _rel_err(seen[0], model.layer2[1](model.layer2[0](model.layer1(
            model.act1(model.bn1(model.conv1(x))))))) < 1e-4  # fmt: skip
        handle.remove()
        fused.layer3.register_forward_hook(lambda mod, inp, out: seen.append(out))  # a hooked stage: called as itself
        calls.clear()
        assert _rel_err(fused.forward_features(x), want) < 1e-4 and len(seen) == 2
        assert calls.count("link") == 6  # the links into and out of layer3 dropped, its own link kept


@needs_interpreter
def test_chain_mode_in_a_backbone_global_hooks_other_modules_and_an_empty_batch(monkeypatch):
    """fuse(mode="chain") of a module built on DSRNet parts (torchvision's BackboneWithFPN) chains its stages too;
    global module hooks (FlopCounterMode's) see every block; a stage holding another module runs it as itself; an
    empty batch gives empty outputs."""
    from torch.nn.modules.module import register_module_forward_hook

    from dsrnet.kernels import ops

    calls, real = [], ops.pointwise_chain
    monkeypatch.setattr(ops, "pointwise_chain", lambda x, *a: calls.append(a[5] is not None) or real(x, *a))
    torch.manual_seed(0)
    backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=8, layers=(2, 2, 1, 1), widths=(4, 8, 8, 8))
    backbone.eval()
    fused = dsrnet.fuse(backbone, mode="chain")
    assert type(fused.body.layer1).__name__ == "FusedStage"
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        want = backbone(x)
        got = fused(x)
        assert all(_rel_err(got[k], want[k]) < 1e-4 for k in want) and calls.count(True) == 2
        seen = []
        handle = register_module_forward_hook(lambda mod, inp, out: seen.append(type(mod).__name__))
        try:
            calls.clear()
            fused(x)
        finally:
            handle.remove()
        assert seen.count("FusedDSRBlock") == 6 and True not in calls
        fused.body.layer2.append(nn.Identity())
        assert all(_rel_err(fused(x)[k], want[k]) < 1e-4 for k in want)
        # a stage built from named children keeps their names (and its state_dict keys) as a FusedStage
        named = nn.Sequential(OrderedDict(first=backbone.body.layer1[0], second=backbone.body.layer1[1]))
        holder = nn.Sequential(OrderedDict(conv1=backbone.body.conv1, bn1=backbone.body.bn1,
                                           act1=backbone.body.act1, layer1=named))  # fmt: skip
        fused_holder = dsrnet.fuse(holder, mode="chain")
        assert type(fused_holder.layer1).__name__ == "FusedStage"
        assert {k.split(".")[1] for k in fused_holder.state_dict() if k.startswith("layer1.")} == {"first", "second"}
        assert _rel_err(fused_holder(x), holder(x)) < 1e-4
        plain = dsrnet.fuse(_tiny(), mode="chain")
        assert plain.forward_features(torch.randn(0, 3, 9, 9)).shape == (0, 64, 2, 2)


def test_chain_mode_traces_with_torch_fx_for_a_feature_extractor(monkeypatch):
    """torchvision's create_feature_extractor symbolically traces the fused model: chain's device rule (split where
    its tiles would not fill the GPU) has no device to read there and keeps the chain kernels."""
    from torchvision.models.feature_extraction import create_feature_extractor

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the same custom ops on any machine
    model = _tiny()
    with pytest.warns(UserWarning, match="for inference only"):  # it traces the train() graph too
        extractor = create_feature_extractor(dsrnet.fuse(model, mode="chain"), {"layer2": "c3", "layer4": "c5"})
    x = torch.randn(1, 3, 9, 9)
    assert any("pointwise_chain" in str(node.target) for node in extractor.graph.nodes)
    with torch.no_grad():
        got = extractor(x)
        want = model.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
        assert _rel_err(got["c3"], want[0]) < 1e-4 and _rel_err(got["c5"], want[1]) < 1e-4


@needs_interpreter
@pytest.mark.parametrize(("dw_in_kernel", "resident"), [(0, False), (0, True), (128, False)])
def test_chain_mode_with_and_without_the_depthwise_conv_in_its_kernel_gives_splits_numbers(monkeypatch, dw_in_kernel,
                                                                                          resident):  # fmt: skip
    """ops.CHAIN_DW_MAX_WIDTH = 0 runs each depthwise conv as its own kernel (a benchmark's comparison; the chain
    kernel then reads the depthwise output, ``resident``: the tile's rows once for every chunk); all forms match
    split in bf16 too (rates 1-3, stride 2 openers, downsample shortcuts)."""
    from dsrnet.kernels import _triton as tk
    from dsrnet.kernels import ops

    monkeypatch.setattr(ops, "CHAIN_DW_MAX_WIDTH", dw_in_kernel)
    if resident:
        monkeypatch.setattr(tk.pw_chain, "interp_config", tk._cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, RESIDENT=True))
        monkeypatch.setattr(tk.pw_chain, "_built", {})
    dw_launches = []
    real_dw = ops._dwconv2d
    monkeypatch.setattr(ops, "_dwconv2d", lambda *a: dw_launches.append(1) or real_dw(*a))
    model = _tiny(layers=(2, 2, 2, 1), block_dilations=(3, 1, 2))
    x = torch.randn(1, 3, 11, 11)
    with torch.no_grad():
        split = dsrnet.fuse(model, mode="split").to(torch.bfloat16).forward_features(x.to(torch.bfloat16))
        dw_launches.clear()
        chain = dsrnet.fuse(model, mode="chain").to(torch.bfloat16).forward_features(x.to(torch.bfloat16))
    assert _rel_err(chain, split) < 2e-2
    assert len(dw_launches) == (7 if dw_in_kernel == 0 else 0)


def test_fuse_defaults_to_split_the_mode_measured_fastest_and_create_model_follows():
    """An H200 (bf16, batch 1024, 32 px) ran split in 7.16 ms and the one-kernel dw + pw kernel in 10.63: the
    default is split, for fuse() and for create_model(..., fused=True) alike."""
    model = _tiny()
    blocks = [b for stage in (1, 2, 3, 4) for b in getattr(dsrnet.fuse(model), f"layer{stage}")]
    assert blocks and {b.mode for b in blocks} == {"split"}
    built = dsrnet.create_model("dsrnet50_cifar", num_classes=10, fused=True)
    assert {b.mode for b in built.layer4} == {"split"}
    assert {b.mode for b in dsrnet.fuse(model, mode="fused").layer4} == {"fused"}


def _spy_dsr_block(monkeypatch) -> list[tuple[int, ...]]:
    """Record the input shape of every ``ops.dsr_block`` call (the one-kernel block mode), then run it."""
    from dsrnet.kernels import ops

    calls, real = [], ops.dsr_block

    def spy(x, *args):
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(ops, "dsr_block", spy)
    return calls


@needs_interpreter
def test_auto_mode_keeps_the_faster_mode_per_block_shape_measuring_each_shape_once(monkeypatch):
    from dsrnet.models import fused as fused_module

    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    calls = _spy_dsr_block(monkeypatch)
    timed = []

    def fake_ms(fn, device):  # runs the candidate once; the one-kernel block "wins" on wide maps only
        before = len(calls)
        fn()
        ran_block = len(calls) > before
        timed.append("block" if ran_block else "split")
        if not ran_block:
            return 1.0
        return 0.5 if calls[-1][-1] >= 8 else 2.0

    monkeypatch.setattr(fused_module, "_median_ms", fake_ms)
    model = _tiny()
    auto = dsrnet.fuse(model, mode="auto")
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert _rel_err(auto(x), model(x)) < 1e-4
        rows = fused_module.auto_choices()
        # one measurement (split, then block) per distinct block shape: layer2's two blocks differ (the first
        # downsamples), so 5 blocks give 5 shapes; a second call measures nothing
        assert len(rows) == 5 and timed == ["split", "block"] * 5
        picked = {row["input"]: row["mode"] for row in rows}
        assert picked[(2, 4, 9, 9)] == "block" and picked[(2, 16, 9, 9)] == "block"  # layer1; layer2's first
        assert {m for shape, m in picked.items() if shape[-1] < 8} == {"split"}
        assert {row["split_ms"] for row in rows} == {1.0} and all(row["dtype"] == "torch.float32" for row in rows)
        calls.clear()
        assert _rel_err(auto(x), model(x)) < 1e-4
    assert len(timed) == 10 and calls == [(2, 4, 9, 9), (2, 16, 9, 9)]
    assert auto.layer1[0].mode == "auto"  # the choice is per input shape, not fixed at fuse()
    with torch.no_grad():  # layer1 at 2 x 9 x 8 = 144 pixels: the bucket of 162 (256), measured; 4 x 9 x 9: a new one
        auto.layer1(torch.randn(2, 4, 9, 8))
        assert len(timed) == 10
        auto.layer1(torch.randn(4, 4, 9, 9))
    assert len(timed) == 12 and [row["pixel_bucket"] for row in fused_module.auto_choices()][-1] == 512


@needs_interpreter
def test_auto_mode_falls_back_to_split_with_a_warning_when_block_fails(monkeypatch):
    from dsrnet.kernels import ops
    from dsrnet.models import fused as fused_module

    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    monkeypatch.setattr(fused_module, "AUTO_WARMUP", 0)
    monkeypatch.setattr(fused_module, "AUTO_REPEATS", 1)

    def broken(*args):
        raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(ops, "dsr_block", broken)
    model = _tiny(layers=(1, 1, 1, 1))
    auto = dsrnet.fuse(model, mode="auto")
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad(), pytest.warns(UserWarning, match="block failed .*shared memory.*using split"):
        assert _rel_err(auto(x), model(x)) < 1e-4
    rows = fused_module.auto_choices()
    assert rows and all(r["mode"] == "split" and r["block_ms"] is None and r["split_ms"] > 0 for r in rows)


@needs_interpreter
def test_auto_mode_never_picks_a_block_kernel_whose_output_differs_from_split(monkeypatch):
    from dsrnet.kernels import ops
    from dsrnet.models import fused as fused_module

    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    monkeypatch.setattr(fused_module, "AUTO_WARMUP", 0)
    monkeypatch.setattr(fused_module, "AUTO_REPEATS", 1)
    real = ops.dsr_block

    def stale_tile(x, *args):  # what a missed barrier would give: one pixel's outputs from another tile
        out = real(x, *args).clone()
        out[0, :, 0, 0] = out[-1, :, -1, -1] + 1.0
        return out

    monkeypatch.setattr(ops, "dsr_block", stale_tile)
    monkeypatch.setattr(fused_module, "_median_ms", lambda fn, device: 0.1 if fn() is not None else 0.0)
    model = _tiny(layers=(1, 1, 1, 1))
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad(), pytest.warns(UserWarning, match="block's output differs from split's"):
        assert _rel_err(dsrnet.fuse(model, mode="auto")(x), model(x)) < 1e-4
    rows = fused_module.auto_choices()
    assert rows and all(r["mode"] == "split" and r["block_ms"] is None and r["block_max_rel_diff"] > 0.05
                        for r in rows)  # fmt: skip

    monkeypatch.setattr(ops, "dsr_block", real)  # the real kernel agrees with split to rounding
    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    with torch.no_grad():
        dsrnet.fuse(model, mode="auto")(x)
    assert all(r["block_max_rel_diff"] < 1e-5 and r["block_ms"] == 0.1 for r in fused_module.auto_choices())


@needs_interpreter
def test_auto_mode_in_a_precompile_pass_compiles_every_candidate_and_decides_nothing(monkeypatch):
    from dsrnet.kernels import _triton, ops
    from dsrnet.models import fused as fused_module

    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    monkeypatch.setattr(fused_module, "_median_ms", lambda fn, device: pytest.fail("timed a precompile pass"))
    launched = []
    monkeypatch.setattr(ops, "dsr_block", lambda x, *args: launched.append("block") or torch.empty(0))
    monkeypatch.setattr(_triton, "_PRECOMPILE", _triton.Precompile())  # what precompile() sets for its pass
    auto = dsrnet.fuse(_tiny(layers=(1, 1, 1, 1)), mode="auto")
    with torch.no_grad():
        out = auto.layer1(torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last))
    assert launched == ["block"] and out.shape == (1, 16, 5, 5)  # block launched, split's output returned
    assert fused_module.auto_choices() == []


@needs_interpreter
def test_auto_mode_under_torch_compile_matches_eager():
    model = _tiny(layers=(1, 1, 1, 1))
    compiled = torch.compile(dsrnet.fuse(model, mode="auto"), backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        assert _rel_err(compiled(x), model(x)) < 1e-4


def test_auto_mode_without_triton_runs_split_and_times_nothing(monkeypatch):
    from dsrnet.models import fused as fused_module

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    monkeypatch.setattr(fused_module, "_AUTO_CHOICES", {})
    monkeypatch.setattr(fused_module, "_median_ms", lambda fn, device: pytest.fail("timed without the kernels"))
    calls = _spy_dsr_block(monkeypatch)
    model = _tiny()
    with torch.no_grad():
        x = torch.randn(2, 3, 9, 9)
        assert _rel_err(dsrnet.fuse(model, mode="auto")(x), model(x)) < 1e-4
    assert calls == [] and fused_module.auto_choices() == []


def test_auto_timer_takes_the_median_of_the_repeats_after_warm_up(monkeypatch):
    from dsrnet.models import fused as fused_module

    monkeypatch.setattr(fused_module, "AUTO_WARMUP", 2)
    monkeypatch.setattr(fused_module, "AUTO_REPEATS", 3)
    calls = []
    ms = fused_module._median_ms(lambda: calls.append(1), torch.device("cpu"))
    assert len(calls) == 2 + 3 and 0 <= ms < 50


def test_auto_timer_on_a_gpu_counts_kernel_time_not_launch_cost(monkeypatch):
    """On a GPU each sample queues its calls behind a GPU sleep, so the host's launch cost is hidden (timed from an
    idle GPU, split's three launches made it look 1.4-2.9x slower than in the model, and auto picked block wrongly);
    a sample whose sleep ended before its calls were queued is taken again with a longer sleep."""
    from dsrnet.models import fused as fused_module

    log = []
    slept_through = iter([True])  # the first sample's sleep ends too early; then the host keeps ahead

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            log.append("record")

        def query(self):
            return next(slept_through, False)

        def synchronize(self):
            log.append("sync")

        def elapsed_time(self, end):
            return 6.0  # ms for the sample's calls together

    monkeypatch.setattr(fused_module, "AUTO_WARMUP", 1)
    monkeypatch.setattr(fused_module, "AUTO_REPEATS", 2)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: log.append(f"sleep {cycles}"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("device sync"))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    ms = fused_module._median_ms(lambda: log.append("call"), torch.device("cuda"))
    lead = fused_module.AUTO_HOST_LEAD_CYCLES
    calls = ["call"] * fused_module.AUTO_CALLS_PER_SAMPLE

    def sample(cycles):
        return [f"sleep {cycles}", "record", *calls, "record", "sync"]

    assert log == ["call", "device sync", *sample(lead), *sample(2 * lead), *sample(2 * lead)]
    assert ms == pytest.approx(6.0 / fused_module.AUTO_CALLS_PER_SAMPLE)


def test_auto_timer_on_a_gpu_stops_lengthening_its_lead_at_the_cap(monkeypatch):
    """A host that never gets ahead of the GPU (every sleep ends before the calls are queued): the lead doubles
    AUTO_LEAD_DOUBLINGS times, then samples are kept at the capped lead and the timer returns."""
    from dsrnet.models import fused as fused_module

    sleeps = []

    class AlwaysDone:
        def __init__(self, enable_timing):
            pass

        def record(self):
            pass

        def query(self):
            return True

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 3.0

    monkeypatch.setattr(fused_module, "AUTO_WARMUP", 0)
    monkeypatch.setattr(fused_module, "AUTO_REPEATS", 2)
    monkeypatch.setattr(torch.cuda, "Event", AlwaysDone)

    def sleep(cycles):
        sleeps.append(cycles)
        assert len(sleeps) < 20, "the lead never stopped lengthening"

    monkeypatch.setattr(torch.cuda, "_sleep", sleep)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    fused_module._median_ms(lambda: None, torch.device("cuda"))
    lead, doublings = fused_module.AUTO_HOST_LEAD_CYCLES, fused_module.AUTO_LEAD_DOUBLINGS
    assert sleeps == [lead * 2**k for k in range(doublings)] + [lead * 2**doublings] * 2


@needs_interpreter
@pytest.mark.parametrize("mode", ["split", "block", "chain"])
def test_fused_model_in_bf16_stays_within_bf16_tolerance(mode):
    model = _tiny(block_dilations=(3, 1, 2))
    fused = dsrnet.fuse(model, mode=mode).to(torch.bfloat16)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        out = fused.forward_features(x.to(torch.bfloat16))
        assert out.dtype == torch.bfloat16
        assert _rel_err(out, model.forward_features(x)) < 3e-2  # four blocks of bf16 rounding


@needs_interpreter
def test_fused_model_with_tma_gemms_stays_within_bf16_tolerance(monkeypatch):
    """ops.GEMM_TMA (benchmarks/fused_gpu.py's dsrnet_fused_tma form): every stride-1 1x1 without a downsample
    GEMM through tensor descriptors, in a model whose channel counts a TMA copy can read (multiples of 8)."""
    from dsrnet.kernels import _triton as tk
    from dsrnet.kernels import ops

    model = _tiny(widths=(8, 8, 16, 16), block_dilations=(3, 1, 2))
    fused = dsrnet.fuse(model).to(torch.bfloat16)
    launched = []
    monkeypatch.setattr(ops, "GEMM_TMA", True)
    lazy = tk.pw_gemm_tma
    monkeypatch.setattr(tk, "pw_gemm_tma", type("Spy", (), {"__getitem__": lambda self, g: launched.append(1)
                                                             or lazy[g]})())  # fmt: skip
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        out = fused.forward_features(x.to(torch.bfloat16))
    # every first 1x1 but the strided one, and each identity block's second 1x1 (the downsample blocks' are GEMMs
    # with the shortcut in the tile)
    assert len(launched) == 5 + 1
    assert _rel_err(out, model.forward_features(x)) < 3e-2


@needs_interpreter
@pytest.mark.parametrize("mode", ["split", "block", "chain"])
def test_fused_model_without_interpreter_uses_the_fallback_with_the_same_numbers(monkeypatch, mode):
    model = _tiny()
    fused = dsrnet.fuse(model, mode=mode)
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        triton_out = fused(x)
        monkeypatch.delenv("TRITON_INTERPRET")
        assert not dsrnet.kernels.triton_usable(x)
        fallback_out = fused(x)
    assert _rel_err(fallback_out, triton_out) < 1e-5


@needs_interpreter
@pytest.mark.parametrize("bn_relu", [False, True])
def test_training_step_with_triton_dwconv_gives_the_eager_gradients(bn_relu):
    # bn_relu: each block's first BatchNorm (batch statistics) and ReLU inside its depthwise kernel: the same
    # gradients (through the statistics too), the same running statistics, the same eval outputs.
    torch.manual_seed(0)
    eager = DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=10)
    triton_model = dsrnet.use_triton_dwconv(copy.deepcopy(eager), bn_relu=bn_relu)
    swapped = [m for m in triton_model.modules() if type(m).__name__ == "TritonDepthwiseConv2d"]
    fused_bn = [m for m in triton_model.modules() if type(m).__name__ == "BNReLUIntoDepthwiseBlock"]
    assert len(swapped) == 4 and len(fused_bn) == (4 if bn_relu else 0)
    assert list(triton_model.state_dict()) == list(eager.state_dict())
    x, y = torch.randn(2, 3, 12, 12), torch.tensor([1, 7])  # 2x2 maps in stage 4: BN stays well-conditioned
    exact = copy.deepcopy(eager).double()  # the referee where fp32 rounding alone exceeds the tolerance
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, triton_model)]
    for model, inputs in ((eager, x), (triton_model, x), (exact, x.double())):
        model.train()
        nn.functional.cross_entropy(model(inputs), y).backward()
    for (name, p_eager), p_triton, p_exact in zip(eager.named_parameters(), triton_model.parameters(),
                                                  exact.parameters(), strict=True):  # fmt: skip
        assert p_triton.grad is not None, name
        err = (p_triton.grad - p_eager.grad).abs().max().item()
        if err > 1e-4 * p_eager.grad.abs().max().item() + 1e-7:
            # An ill-conditioned sum (e.g. a BatchNorm scale's gradient of ~1e-5 from terms of ~1e-3), where eager
            # fp32 itself is ~1e-7 off (torch 2.11's CPU conv): the kernels must then be at least as exact.
            triton_off = (p_triton.grad.double() - p_exact.grad).abs().max().item()
            eager_off = (p_eager.grad.double() - p_exact.grad).abs().max().item()
            assert triton_off <= eager_off, f"{name}: {err} from eager; vs float64 {triton_off} > eager's {eager_off}"
    for opt in opts:
        opt.step()
    for p_eager, p_triton in zip(eager.parameters(), triton_model.parameters(), strict=True):
        torch.testing.assert_close(p_triton, p_eager, rtol=1e-4, atol=1e-6)
    for (name, b_eager), b_triton in zip(eager.named_buffers(), triton_model.buffers(), strict=True):
        torch.testing.assert_close(b_triton, b_eager, rtol=1e-5, atol=1e-6, msg=name)  # running statistics
    with torch.no_grad():
        torch.testing.assert_close(triton_model.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-5)


@needs_interpreter
def test_bn_relu_form_under_torch_compile_matches_eager():
    # What torch.compile sees in training: var_mean, the running-statistics update, the custom op and its backward.
    torch.manual_seed(0)
    eager = DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=10).train()
    model = dsrnet.use_triton_dwconv(copy.deepcopy(eager), bn_relu=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x, y = torch.randn(2, 3, 12, 12), torch.tensor([1, 7])
    for net in (eager, compiled):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, p_eager), p_model in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p_model.grad, p_eager.grad, rtol=1e-4, atol=1e-6, msg=name)
    for (name, b_eager), b_model in zip(eager.named_buffers(), model.buffers(), strict=True):
        torch.testing.assert_close(b_model, b_eager, rtol=1e-5, atol=1e-6, msg=name)


def test_bn_relu_form_refuses_what_it_cannot_fuse(cifar10_dir, tmp_path, monkeypatch):
    import dsrnet.train.config as config
    from dsrnet.train import TrainConfig, train

    with monkeypatch.context() as m:  # sync_bn needs CUDA: the config is checked as on a GPU machine
        m.setattr(config, "resolve_device", lambda device: torch.device("cuda"))
        with pytest.raises(DsrnetError, match="sync_bn would average across processes; fix: drop --sync-bn"):
            TrainConfig(model="dsrnet50_cifar", dwconv="triton_bn_relu", sync_bn=True)
    # MobileNetV2 has depthwise convs but no DSR block: asked for the BatchNorm fusion, it says so.
    cfg = TrainConfig(model="mobilenet_v2_cifar", dataset="cifar10", data_dir=str(cifar10_dir), device="cpu",
                      epochs=1, subset_per_class=2, test_subset_per_class=1, batch_size=10, dwconv="triton_bn_relu",
                      out_dir=str(tmp_path / "run"), progress=False, tensorboard=False)  # fmt: skip
    with pytest.raises(DsrnetError, match="no DSR block whose BatchNorm"):
        train(cfg)
    # A block whose BatchNorm keeps no running statistics keeps its own forward (only the conv is swapped).
    model = DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=10)
    model.layer1[0].bn1 = nn.BatchNorm2d(4, track_running_stats=False)
    dsrnet.use_triton_dwconv(model, bn_relu=True)
    assert [type(b).__name__ for b in (model.layer1[0], model.layer2[0])] == ["DSRBlock", "BNReLUIntoDepthwiseBlock"]


def test_bn_relu_block_whose_batchnorm_is_swapped_later_runs_that_batchnorm(monkeypatch):
    """The fusion was decided once, at the swap: a BatchNorm replaced afterwards (frozen for fine-tuning, or
    SyncBatchNorm) was bypassed (its batch statistics used) or crashed the forward."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    monkeypatch.delenv("TRITON_INTERPRET")  # module plumbing: the PyTorch fallback computes the same thing
    torch.manual_seed(0)
    model = dsrnet.use_triton_dwconv(DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8)), bn_relu=True)
    block = model.layer1[0]
    assert type(block).__name__ == "BNReLUIntoDepthwiseBlock"
    frozen = FrozenBatchNorm2d(4)
    frozen.running_mean.copy_(torch.randn(4))
    frozen.weight.copy_(torch.rand(4) + 0.5)
    block.bn1 = frozen
    x = torch.randn(2, 4, 6, 6)  # the stem's 4 channels
    model.train()
    with torch.no_grad():
        got = block(x)
        want = DSRBlock.forward(block, x)
    torch.testing.assert_close(got, want)


def test_bn_relu_dwconv_on_empty_and_one_value_batches_behaves_as_batchnorm(monkeypatch):
    """An empty batch turned the running statistics into NaN for good; one value per channel trained on zeros."""
    from dsrnet.models.fused import bn_relu_dwconv

    monkeypatch.delenv("TRITON_INTERPRET")
    bn, eager_bn = nn.BatchNorm2d(3).train(), nn.BatchNorm2d(3).train()
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
    empty = torch.randn(0, 3, 4, 4)
    assert bn_relu_dwconv(empty, bn, conv).shape == (0, 3, 4, 4)
    eager_bn(empty)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(eager_bn, name), msg=name)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        eager_bn(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn_relu_dwconv(torch.randn(1, 3, 1, 1), bn, conv)


@pytest.mark.parametrize("bn_relu", [False, True])
def test_fuse_accepts_a_model_already_using_triton_dwconv(monkeypatch, bn_relu):
    monkeypatch.delenv("TRITON_INTERPRET")  # the PyTorch fallback: this is about module plumbing, not kernels
    model = _tiny()
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        expected = dsrnet.fuse(model)(x)
        got = dsrnet.fuse(dsrnet.use_triton_dwconv(copy.deepcopy(model), bn_relu=bn_relu))(x)
    torch.testing.assert_close(got, expected)


def test_a_fused_backbone_gives_the_feature_maps_of_the_unfused_one(monkeypatch):
    """fuse() of a features_only model, the timm feature API of a fused classifier, and torchvision's
    IntermediateLayerGetter (which runs a backbone's children in order: the fused stem is one) all give the eager
    model's feature maps."""
    from torchvision.models._utils import IntermediateLayerGetter

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the kernels are tested above
    full = _tiny()
    backbone = DSRNet(stem="cifar", features_only=True, out_indices=(0, 2, 3), **TINY).eval()
    backbone.load_state_dict({k: v for k, v in full.state_dict().items() if k in backbone.state_dict()})
    fused_backbone = dsrnet.fuse(backbone)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = backbone(x)
        got = fused_backbone(x)
        assert [f.shape for f in got] == [f.shape for f in want] and len(got) == 3
        assert all(_rel_err(g, w) < 1e-4 for g, w in zip(got, want, strict=True))
        assert all(g.is_contiguous(memory_format=torch.channels_last) for g in got)
        assert fused_backbone.feature_info.channels() == backbone.feature_info.channels()
        assert fused_backbone.feature_info.module_name() == ["stem", "layer2", "layer3"]

        fused = dsrnet.fuse(full)
        final, feats = fused.forward_intermediates(x, indices=[0, 4])
        want_final, want_feats = full.forward_intermediates(x, indices=[0, 4])
        assert _rel_err(final, want_final) < 1e-4 and len(feats) == 2
        assert all(_rel_err(g, w) < 1e-4 for g, w in zip(feats, want_feats, strict=True))
        early = fused.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
        assert len(early) == 1 and _rel_err(early[0], want_feats[1]) < 1e-4
        with pytest.raises(DsrnetError, match="output_fmt"):
            fused.forward_intermediates(x, output_fmt="NHWC")

        getter = IntermediateLayerGetter(fused, return_layers={"stem": "0", "layer2": "1"})
        maps = getter(x)
        ref = full.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        assert list(maps) == ["0", "1"] and all(_rel_err(maps[k], r) < 1e-4 for k, r in zip("01", ref, strict=True))
    built = dsrnet.create_model("dsrnet50_cifar", num_classes=10, fused=True)
    assert built.pretrained_cfg["first_conv"] is None
    # what printing the model says: the stem's geometry, each block's channels, stride, rate and mode
    assert repr(built.stem) == "FusedStem(3 -> 64, kernel_size=3, stride=1, padding=3, dilation=3, + ReLU)"
    assert repr(built.layer2[0]) == "FusedDSRBlock(256 -> 128 -> 512, stride=2, dilation=2, mode='split')"


def test_fuse_rejects_what_it_cannot_fuse():
    with pytest.raises(DsrnetError, match="takes a DSRNet"):
        dsrnet.fuse(nn.Conv2d(3, 3, 1))
    with pytest.raises(DsrnetError, match="mode="):
        dsrnet.fuse(DSRNet(stem="cifar", **TINY), mode="fast")
    stateless = DSRNet(stem="cifar", **TINY)
    stateless.layer1[0].bn2 = nn.BatchNorm2d(stateless.layer1[0].bn2.num_features, track_running_stats=False)
    with pytest.raises(DsrnetError, match=r"BatchNorm layer1\.0\.bn2 keeps no running statistics .* cannot be folded"):
        dsrnet.fuse(stateless)


def test_a_fused_model_is_for_inference_only_and_works_as_a_frozen_backbone():
    """train() was accepted silently (the eval form ran on) and backward failed inside a kernel; with
    separable=False backward trained only some parameters. Now it stays in eval mode, says so once, and holds
    nothing trainable, so a parent module with a trainable head still trains."""
    for separable in (True, False):
        fused = dsrnet.fuse(DSRNet(stem="cifar", separable=separable, **TINY))
        with pytest.warns(UserWarning, match=r"fuse\(\)d DSRNet is for inference only and stays in eval mode"):
            assert fused.train() is fused
        assert not fused.training and fused.eval() is fused
        assert not any(p.requires_grad for p in fused.parameters())
        assert fused.in_chans == 3 and fused.default_cfg is fused.pretrained_cfg  # what timm's scripts read
    backbone = dsrnet.fuse(DSRNet(stem="cifar", **{**TINY, "num_classes": 0}))
    net = nn.Sequential(backbone, nn.Linear(backbone.num_features, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once already? no: a new model warns once, then never again
        with pytest.warns(UserWarning):
            net.train()
        net.train()
    head = net[1].weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    nn.functional.cross_entropy(net(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    assert not torch.equal(net[1].weight, head) and not backbone.training


@needs_interpreter
def test_create_model_fused_is_the_fused_form_of_the_same_weights(tmp_path):
    torch.manual_seed(0)
    kw = {k: v for k, v in TINY.items() if k != "num_classes"}
    eager = dsrnet.create_model("dsrnet50_cifar", num_classes=10, **kw).eval()
    from dsrnet.models.weights import save_weights

    path = save_weights(eager, tmp_path / "w.safetensors", metadata={"model": "dsrnet50_cifar", "num_classes": 10},
                        dtype=torch.float32)  # fmt: skip
    fused = dsrnet.create_model("dsrnet50_cifar", num_classes=10, fused=True, checkpoint_path=path, **kw)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert _rel_err(fused(x), eager(x)) < 1e-4
    with pytest.raises(DsrnetError, match="takes a DSRNet"):
        dsrnet.create_model("resnet50_cifar", num_classes=10, fused=True)


def test_import_dsrnet_does_not_import_the_kernels():
    code = "import sys, dsrnet; assert 'dsrnet.kernels' not in sys.modules; dsrnet.fuse; print('ok')"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_timm_builds_the_fused_form_too_and_a_fused_model_computes_in_its_own_dtype():
    """``timm.create_model(..., fused=True)`` passed ``fused`` on to the DSRNet constructor (TypeError). A bf16
    fused model given fp32 input ran every kernel in fp32 (they follow their input; autocast does not reach custom
    ops), then failed in its head: it now computes in its own dtype, as ``eval --backend fused --precision bf16``
    means it to."""
    timm = pytest.importorskip("timm")
    model = timm.create_model("dsrnet50_cifar", num_classes=10, fused=True)
    assert type(model).__name__ == "FusedDSRNet" and not model.training
    with pytest.raises(DsrnetError, match="fused must be True or False"):
        timm.create_model("dsrnet50_cifar", fused="block")
    eager = _tiny()
    fused = dsrnet.fuse(eager).to(torch.bfloat16)
    seen = []
    hook = fused.layer1[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    x = torch.randn(1, 3, 9, 9)
    with torch.no_grad():
        out = fused(x)
    hook.remove()
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    assert _rel_err(out, eager(x)) < 3e-2


@pytest.mark.parametrize("feature_cls", [None, "getter", "dict"])
def test_timm_features_only_fused_wraps_the_fused_form_in_timms_feature_class(monkeypatch, feature_cls):
    """``timm.create_model(..., features_only=True, fused=True)`` failed (fuse() was given timm's FeatureListNet): the
    fused form is now built from the trained weights and wrapped by timm's own builder, as the eager one is."""
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the kernels are tested above
    kwargs = {"features_only": True, "out_indices": (0, 1, 3), "pretrained": True}
    kwargs |= {} if feature_cls is None else {"feature_cls": feature_cls}
    eager = timm.create_model("dsrnet50_cifar", **kwargs).eval()
    fused = timm.create_model("dsrnet50_cifar", fused=True, **kwargs)
    assert type(fused).__name__ == type(eager).__name__
    assert fused.feature_info.channels() == eager.feature_info.channels() == [64, 256, 1024]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = eager(x), fused(x)
    if feature_cls == "dict":
        assert list(got) == list(want)
        want, got = list(want.values()), list(got.values())
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(_rel_err(g, w) < 1e-4 for g, w in zip(got, want, strict=True))
    if feature_cls == "dict":  # dsrnet.create_model hands timm's feature classes to timm: fused goes along
        built = dsrnet.create_model("dsrnet50_cifar", fused=True, **kwargs)
        assert type(built).__name__ == "FeatureDictNet"
        assert type(built.stem).__name__ == "FusedStem"


@pytest.mark.parametrize("mode", ["split", "fused", "block", "chain"])
def test_backward_through_a_fused_model_is_one_line_naming_the_fix(monkeypatch, mode):
    """Gradients into the fused model's input (a saliency map, an attack) have no kernels to run: the error names
    the op and the fix, where torch's default said only that no autograd formula was registered."""
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the same custom ops on any machine
    fused = dsrnet.fuse(_tiny(), mode=mode)
    x = torch.randn(1, 3, 9, 9, requires_grad=True)
    with pytest.raises(DsrnetError, match=r"dsrnet::\w+ has no backward pass: a fuse\(\)d DSRNet is for inference "
                                          r"only .*fix: take gradients through the unfused model"):
        fused(x).sum().backward()
    with torch.no_grad():
        assert fused(x).shape == (1, 10)  # the forward itself is unchanged


@pytest.mark.parametrize("mode", ["split", "chain"])
def test_forward_mode_ad_through_a_fused_model_is_one_line_naming_the_fix(monkeypatch, mode):
    """torch.func.jvp / forward_ad through a custom op dropped the tangent: the fused model returned a zero
    derivative without a word."""
    import torch.autograd.forward_ad as fwAD

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the same custom ops on any machine
    fused = dsrnet.fuse(_tiny(), mode=mode)
    x, t = torch.randn(1, 3, 9, 9), torch.randn(1, 3, 9, 9)
    message = r"dsrnet::\w+ has no forward-mode derivative .* fix: take the jvp through the unfused model"
    with pytest.raises(DsrnetError, match=message):
        torch.func.jvp(fused, (x,), (t,))
    with fwAD.dual_level(), pytest.raises(DsrnetError, match=message):
        fused(fwAD.make_dual(x, t))
    outside = fused(x)
    with fwAD.dual_level():  # a dual level open, but no tangent on the input: the forward runs as outside one
        torch.testing.assert_close(fused(x), outside)


@pytest.mark.parametrize("bn_relu", [False, True])
def test_training_forms_give_eager_derivatives_forward_mode_and_of_second_order(monkeypatch, bn_relu):
    """The Triton depthwise ops have no forward-mode formula (torch dropped the tangent: a zero jvp) and their
    gradient kernels no backward (a gradient penalty failed): forward-mode AD now runs PyTorch's ops, and a
    backward with create_graph=True differentiates the ops' PyTorch form."""
    import torch.autograd.forward_ad as fwAD

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the same custom ops on any machine
    torch.manual_seed(0)
    eager = DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=10).double()
    form = dsrnet.use_triton_dwconv(copy.deepcopy(eager), bn_relu=bn_relu)
    x, t = torch.randn(3, 3, 10, 10, dtype=torch.float64), torch.randn(3, 3, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        want = torch.func.jvp(eager.eval(), (x,), (t,))[1]
        got = torch.func.jvp(form.eval(), (x,), (t,))[1]
        # batched by vmap inside jvp, the tangent is looked at through the batching (unpack_dual has no rule)
        xs, ts = x.reshape(3, 1, 3, 10, 10), t.reshape(3, 1, 3, 10, 10)
        batched = torch.func.jvp(torch.func.vmap(form), (xs,), (ts,))[1]
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(batched.reshape(want.shape), want)
    for model in (eager, form):
        model.train()  # batch statistics: the bn_relu op's centre is a function of x (counted once, not twice)
    tangents = []
    with fwAD.dual_level():
        for model in (eager, form):
            tangents.append(fwAD.unpack_dual(model(fwAD.make_dual(x, t))).tangent)
    torch.testing.assert_close(tangents[1], tangents[0])

    def penalty_grads(model):  # a gradient penalty: the input gradient's norm, differentiated again
        xx = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xx).logsumexp(1).sum(), xx, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(model.parameters()))

    for name, a, b in zip([n for n, _ in eager.named_parameters()], penalty_grads(form), penalty_grads(eager),
                          strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, msg=name)


def test_a_fused_backbone_takes_a_new_head_and_prunes_as_the_eager_model(monkeypatch):
    """timm's classifier and pruning API on the fused form: reset_classifier gives a trainable head on the frozen
    fused features (a linear probe), and prune_intermediate_layers drops the stages after the last index, as timm's
    FeatureGetterNet asks it to (it ran every stage before)."""
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the kernels are tested above
    model = _tiny()
    fused = dsrnet.fuse(model).to(torch.bfloat16)
    fused.reset_classifier(5)
    assert fused.get_classifier() is fused.fc and fused.fc.weight.dtype == torch.bfloat16
    x = torch.randn(2, 3, 9, 9)
    fused(x).float().square().sum().backward()
    assert fused.fc.weight.grad is not None and fused.num_classes == 5
    assert all(p.grad is None for n, p in fused.named_parameters() if not n.startswith("fc."))

    pruned = dsrnet.fuse(model)
    assert pruned.prune_intermediate_layers([0, 2]) == [0, 2]
    assert len(pruned.layer3) == len(pruned.layer4) == 0 and pruned.num_features == model.feature_info[2]["num_chs"]
    with torch.no_grad():
        feats = pruned.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        want = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert all(_rel_err(g, w) < 1e-4 for g, w in zip(feats, want, strict=True))
    getter = timm.create_model("dsrnet50_cifar", features_only=True, fused=True, feature_cls="getter",
                               out_indices=(0, 1, 3))  # fmt: skip
    assert len(getter.model.layer4) == 0 and len(getter(torch.randn(1, 3, 32, 32))) == 3


def test_fuse_keeps_the_hooks_of_timms_feature_hook_net(monkeypatch):
    """fuse() of a FeatureHookNet silently dropped the stem's map: act1, where the wrapper's hook sat, was replaced
    by a fresh Identity. The hooks move to the modules that now give the same outputs; a hook on a module folded
    away (the stem's BatchNorm) is an error instead of a map that silently disappears."""
    pytest.importorskip("timm")
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    model = dsrnet.create_model("dsrnet50_cifar", features_only=True, feature_cls="hook", out_indices=(0, 2),
                                layers=(1, 2, 1, 1), widths=(4, 8, 8, 16)).eval()  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want, got = model(x), dsrnet.fuse(model)(x)
    assert [g.shape for g in got] == [w.shape for w in want] and len(got) == 2
    assert all(_rel_err(g, w) < 1e-4 for g, w in zip(got, want, strict=True))
    backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=8, layers=(1, 1, 1, 1), widths=(4, 8, 8, 8))
    seen = []  # a hook on a whole block moves to its fused form (the same input and output)
    backbone.body.layer1[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    dsrnet.fuse(backbone).eval()(torch.randn(1, 3, 16, 16))
    assert seen == [(1, 16, 16, 16)]
    backbone.body.bn1.register_forward_hook(lambda *args: None)
    with pytest.raises(DsrnetError, match="body.bn1 has a forward hook, but fuse.. folds it .*; fix: hook the stem's"):
        dsrnet.fuse(backbone)


def test_fuse_of_a_dsrnet_keeps_its_hooks_and_refuses_hooks_on_folded_parts(monkeypatch):
    """fuse() of a plain DSRNet dropped every forward hook (Grad-CAM, feature taps) without a word: hooks on the
    model, the stem's ReLU, stages and blocks now move to their fused forms (same outputs); one on a part folded
    into a kernel is an error, as for a module built on a DSRNet."""
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, layers=(1, 2, 1, 1), widths=(4, 8, 8, 16)).eval()
    seen = []
    for name in ("", "act1", "layer2", "layer3.0", "fc"):
        model.get_submodule(name).register_forward_hook(lambda m, args, out, name=name: seen.append((name, out.shape)))
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        model(x)
        want, seen[:] = list(seen), []
        dsrnet.fuse(model)(x)
    assert seen == want and len(want) == 5
    model.layer3[0].conv_dw.register_forward_hook(lambda *args: None)
    with pytest.raises(DsrnetError, match=r"layer3\.0\.conv_dw has a forward hook, but fuse.. folds it"):
        dsrnet.fuse(model)


@needs_interpreter
def test_auto_mode_under_fake_tensors_measures_nothing_and_fusing_twice_is_one_error():
    """Shape propagation / memory estimates run a model under FakeTensorMode: auto's first call timed the kernels
    and compared outputs on tensors without data (a DataDependentOutputException). It now takes the untimed rule
    and records nothing, as while tracing."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dsrnet.models import fused as fused_module

    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, widths=(4, 8, 8, 16), layers=(1, 1, 1, 1)).eval()
    auto = dsrnet.fuse(model, mode="auto")
    before = len(fused_module.auto_choices())
    with FakeTensorMode(allow_non_fake_inputs=True) as fake, torch.no_grad():
        assert auto(fake.from_tensor(torch.randn(2, 3, 32, 32))).shape == (2, 10)
    assert len(fused_module.auto_choices()) == before
    with pytest.raises(DsrnetError, match="FusedDSRNet is fused already; fix: use it as it is"):
        dsrnet.fuse(auto)


def test_fuse_of_an_fp64_model_folds_in_fp64(monkeypatch):
    """BatchNorm was always folded in fp32: an fp64 model's fused form agreed only to fp32's 5e-8."""
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    model = _tiny().double()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert _rel_err_fp64(dsrnet.fuse(model)(x), model(x)) < 1e-12
        backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=8, layers=(1, 1, 1, 1),
                                            widths=(4, 8, 8, 8)).double().eval()  # fmt: skip
        want, got = backbone(x), dsrnet.fuse(backbone)(x)
        assert max(_rel_err_fp64(got[k], want[k]) for k in want) < 1e-12


def _rel_err_fp64(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("bn_relu", [False, True])
def test_training_forms_keep_fp64_in_their_fallbacks(monkeypatch, bn_relu):
    """The bn_relu form computed an fp64 model's statistics and gradients in fp32 (1e-3 off in bn1.weight's
    gradient), and dwconv2d_grad_weight's fake kernel said fp32 where the op returned fp64."""
    from dsrnet.kernels import ops

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    torch.manual_seed(0)
    eager = DSRNet(stem="cifar", layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=10).double().train()
    form = dsrnet.use_triton_dwconv(copy.deepcopy(eager), bn_relu=bn_relu)
    x, y = torch.randn(3, 3, 11, 11, dtype=torch.float64), torch.tensor([1, 7, 3])
    for model in (eager, form):
        nn.functional.cross_entropy(model(x), y).backward()
    grads = dict(form.named_parameters())
    for name, p in eager.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    buffers = dict(form.named_buffers())
    for name, b in eager.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=1e-9, atol=1e-12, msg=name)
    g = torch.randn(1, 5, 4, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.dsrnet.dwconv2d_grad_weight.default, (g, torch.randn_like(g), 1, 1))
    assert ops.dwconv2d_grad_weight(g, torch.randn_like(g), 1, 1).dtype == torch.float64



def test_a_fused_forward_skips_the_dispatcher_only_where_nothing_traces_or_differentiates(monkeypatch):
    """ops.run calls an op's body directly (~21 us of host time less per launch on an H200's host) for a plain
    tensor with no gradient to carry and nothing tracing; otherwise the custom op, which torch.compile / export /
    jit.trace must see and whose autograd formula gives the fused model's clear error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dsrnet.kernels import ops
    from dsrnet.models.fused import FusedDSRBlock

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the routing is what is tested
    monkeypatch.setattr(ops, "_DIRECT_DEVICES", ("cuda", "cpu"))  # this CPU stands in for a GPU
    fused = dsrnet.fuse(_tiny())
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        ref = fused(x)
    direct = []

    def counted(body):
        return lambda *args: direct.append(1) or body(*args)

    monkeypatch.setattr(ops, "_BODIES", {op: counted(body) for op, body in ops._BODIES.items()})
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            assert torch.equal(fused(x), ref)
        assert len(direct) == 1 + 3 * sum(isinstance(m, FusedDSRBlock) for m in fused.modules())  # every launch
        direct.clear()
    assert torch.equal(fused(x), ref) and len(direct) > 0  # grad mode, but nothing requires grad: direct too
    direct.clear()
    with pytest.raises(DsrnetError, match="has no backward pass"):
        fused(x.clone().requires_grad_()).sum().backward()  # the op: its autograd formula names the fix
    block = next(m for m in fused.modules() if isinstance(m, FusedDSRBlock))
    block.w1.requires_grad_(True)  # a buffer made to require grad: the op too, and the same clear error
    with pytest.raises(DsrnetError, match="has no backward pass"):
        fused(x).sum().backward()
    block.w1.requires_grad_(False)
    assert direct == [1]  # the stem alone: nothing it gets carries a gradient
    direct.clear()
    # Tracers: each must see the op (a body run directly would put the fallback's aten ops, or on a GPU nothing at
    # all, into what they record).
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        graph = make_fx(fused)(x)
        assert any("dsrnet" in str(n.target) for n in graph.graph.nodes)
        with FlopCounterMode(display=False):
            fused(x)
        torch.func.functionalize(fused)(x)
        assert torch.equal(torch.compile(fused, backend="eager", fullgraph=True)(x), ref)
        torch.jit.trace(fused, x, check_trace=False)
    assert direct == []
    with FakeTensorMode():
        assert not ops._dispatch_free(torch.empty(1))  # torch.export's fake tensors: the op
    assert ops._dispatch_free(x) and not ops._dispatch_free(torch.empty(1, device="meta"))
    monkeypatch.setattr(ops, "_BODIES", {})  # a stand-in for an op (a test's spy) is called as given
    with torch.no_grad():
        assert torch.equal(fused(x), ref)


@needs_interpreter
@pytest.mark.parametrize("mode", ["split", "chain", "block", "fused"])
def test_with_dependent_launch_every_inference_kernel_waits_once_per_program_and_gives_the_same_numbers(
        monkeypatch, mode):  # fmt: skip
    """ops.PDL (untimed until a GPU run): every kernel of a fused forward is launched with ``launch_pdl`` and its
    wait and trigger (the interpreter runs Triton's griddepcontrol instructions as the stubs below), one of each per
    program, and the numbers do not change."""
    import triton.language.extra.cuda as cuda

    from dsrnet.kernels import _triton as tk
    from dsrnet.kernels import ops

    model = _tiny()
    x = torch.randn(2, 3, 9, 9)
    fused = dsrnet.fuse(model, mode=mode)
    with torch.no_grad():
        plain = fused(x)
    events, launches = [], []
    monkeypatch.setattr(cuda, "gdc_wait", lambda *a, **k: events.append("wait"))
    monkeypatch.setattr(cuda, "gdc_launch_dependents", lambda *a, **k: events.append("trigger"))
    monkeypatch.setattr(ops, "_dependent_launch", lambda t: launches.append(t.shape) or {"GDC": True, "launch_pdl": True})
    programs = []
    real_getitem = tk._LazyKernel.__getitem__

    def counting(self, grid):  # the programs each launch runs, from its grid and the interpreter's one config
        launch = real_getitem(self, grid)

        def run(*args, **kwargs):
            meta = {**self.interp_config.kwargs, **kwargs}
            g = grid(meta) if callable(grid) else grid
            programs.append((self.fn.__name__, kwargs.get("GDC", False), math.prod(g)))
            return launch(*args, **kwargs)

        return run

    monkeypatch.setattr(tk._LazyKernel, "__getitem__", counting)
    with torch.no_grad():
        got = fused(x)
    assert torch.equal(got, plain)
    assert launches and len(launches) == len(programs) and all(gdc for _, gdc, _ in programs)  # every launch
    total = sum(n for _, _, n in programs)
    assert events.count("wait") == events.count("trigger") == total
    assert events[:2] == ["wait", "trigger"]
