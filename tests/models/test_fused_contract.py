"""A fused model (``dsrnet.fuse``) as timm, torchvision and the exporters take it, where its kernels do not run
(their PyTorch fallbacks: no Triton interpreter needed, so these run once, in this process): loading checkpoints,
tracing and exporting, norms it folds or refuses, timm's training switches; and the dependent-launch options that
reach the kernels. The kernels themselves: ``tests/models/test_fused.py`` and ``tests/kernels``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.errors import DsrnetError
from dsrnet.models.dsrnet import DSRNet
from tests.models._fused_helpers import TINY, _rel_err, _tiny


def test_auto_mode_traces_with_torch_jit_and_torch_fx_as_split(monkeypatch):
    """A trace records one graph for any input, with no shape to key a measurement by: auto traces as split."""
    from torchvision.models.feature_extraction import create_feature_extractor

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    model = _tiny()
    fused = dsrnet.fuse(model, mode="auto")
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = model(x)
        assert _rel_err(torch.jit.trace(fused, x)(x), want) < 1e-4
        with pytest.warns(UserWarning, match="for inference only"):  # it traces the train() graph too
            extractor = create_feature_extractor(fused, {"layer2": "c3"})
        assert _rel_err(extractor(x)["c3"], model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]) < 1e-4


@pytest.mark.parametrize("factory", ["timm", "dsrnet"])
def test_a_fused_model_loads_the_eager_models_checkpoint_or_its_own_whichever_builder_loads_it(tmp_path, factory):
    """timm loads ``checkpoint_path`` after its builder has fused the model, dsrnet before fusing: either way a
    training checkpoint (the eager state dict) and a fused model's own state dict give the same fused model."""
    timm = pytest.importorskip("timm")
    create = timm.create_model if factory == "timm" else dsrnet.create_model
    kw = {k: v for k, v in TINY.items() if k != "num_classes"}
    eager = _tiny()
    torch.save(eager.state_dict(), tmp_path / "eager.pth")
    torch.save(dsrnet.fuse(eager).state_dict(), tmp_path / "fused.pth")
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = eager(x)
        for name in ("eager.pth", "fused.pth"):
            model = create("dsrnet50_cifar", num_classes=10, fused=True, checkpoint_path=str(tmp_path / name), **kw)
            assert isinstance(model, dsrnet.models.fused.FusedDSRNet) and _rel_err(model(x), want) < 1e-4, name


def test_an_eager_state_dict_folds_into_a_fused_model_in_its_own_mode_and_dtype_and_must_be_whole():
    eager, other = _tiny(), _tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    fused = dsrnet.fuse(other, mode="chain").to(torch.bfloat16)
    fused.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert fused.stem.w_packed.dtype == torch.bfloat16 and isinstance(fused.layer1, dsrnet.models.fused.FusedStage)
        assert _rel_err(fused(x).float(), eager(x)) < 3e-2  # bf16 rounding; `other`'s weights are 0.1 off
    assert not any("layout" in k for k in fused.state_dict())  # the eager layout is no part of its state
    partial = {k: v for k, v in eager.state_dict().items() if "layer4" not in k}
    with pytest.raises(RuntimeError, match="Missing key"):
        fused.load_state_dict(partial, strict=False)  # folding needs every BatchNorm


def test_a_fused_model_takes_timms_training_switches_and_groups_its_parameters_like_dsrnet():
    """timm's train script and optimizer factory call these on any model; only a new head trains here."""
    pytest.importorskip("timm")
    fused = dsrnet.fuse(_tiny())
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        before = fused(x)
        fused.set_grad_checkpointing(True)
        assert fused.grad_checkpointing and torch.equal(fused(x), before)
    from timm.models._manipulate import group_with_matcher

    def groups(model):  # over the state dict: the fused body's weights are buffers
        return group_with_matcher(model.state_dict().items(), model.group_matcher())

    eager_groups, fused_groups = groups(_tiny()), groups(fused)
    assert len(fused_groups) == len(eager_groups) == 2 + sum(TINY["layers"])  # stem, each block, the head
    first = next(iter(fused_groups.values()))
    assert first and all(k.startswith("stem") for k in first)
    fused.reset_classifier(5)
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(fused, "sgd", lr=0.1, layer_decay=0.65)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 5 * fused.num_features + 5


def test_an_eager_state_dict_follows_a_new_head_or_pruning_and_the_kept_layout_holds_no_hooks(tmp_path):
    eager, hooked = _tiny(), _tiny()
    hooked.layer1[0].register_forward_hook(lambda *args: None)  # moves to the fused block; not kept in the layout
    fused = dsrnet.fuse(hooked)
    fused.layer1[0]._forward_hooks.clear()
    torch.save(fused, tmp_path / "whole.pt")  # a lambda kept anywhere in it would not pickle
    five = DSRNet(stem="cifar", **{**TINY, "num_classes": 5}).eval()
    fused.reset_classifier(5)
    fused.load_state_dict(five.state_dict())  # the eager model with the same new head
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert _rel_err(fused(x), five(x)) < 1e-4
        pruned = dsrnet.fuse(_tiny())
        pruned.prune_intermediate_layers(2)
        eager.prune_intermediate_layers(2)
        pruned.load_state_dict(eager.state_dict())
        assert _rel_err(pruned.forward_features(x), eager.forward_features(x)) < 1e-4


@pytest.mark.parametrize("assign", [False, True])
def test_an_eager_state_dict_into_a_model_fused_in_bf16_is_folded_in_fp32_and_rounded_once(assign):
    eager = _tiny()
    fused = dsrnet.fuse(_tiny().to(torch.bfloat16))
    fused.load_state_dict(eager.state_dict(), assign=assign)
    want = dsrnet.fuse(eager).to(torch.bfloat16).state_dict()
    got = fused.state_dict()
    assert all(torch.equal(v, want[k]) and v.dtype == want[k].dtype for k, v in got.items())


def test_fuse_folds_plain_batchnorm_only_and_looks_at_the_folded_parts_alone():
    timm = pytest.importorskip("timm")
    from torchvision.ops import FrozenBatchNorm2d

    model = DSRNet(stem="cifar", **TINY, norm_layer=timm.layers.BatchNormAct2d).eval()  # a ReLU inside each norm
    with pytest.raises(DsrnetError, match=r"is a BatchNormAct2d, but fuse\(\) folds plain BatchNorm"):
        dsrnet.fuse(model)
    x = torch.randn(2, 3, 9, 9)
    from functools import partial

    # torchvision's frozen BatchNorm by class and by timm's name; timm's, with an identity activation
    for norm in (FrozenBatchNorm2d, "frozenbatchnorm2d", partial(timm.layers.FrozenBatchNormAct2d, apply_act=False)):
        frozen = DSRNet(stem="cifar", **TINY, norm_layer=norm).eval()
        with torch.no_grad():
            assert _rel_err(dsrnet.fuse(frozen)(x), frozen(x)) < 1e-4, norm
    headed = _tiny()
    headed.fc = nn.Sequential(OrderedDict(bn1=nn.LayerNorm(headed.num_features), fc=headed.fc))  # not folded
    with torch.no_grad():
        assert _rel_err(dsrnet.fuse(headed)(x), headed(x)) < 1e-4
    with pytest.raises(DsrnetError, match="norm_layer='nope' is not a norm timm knows"):
        DSRNet(**TINY, norm_layer="nope")


@pytest.mark.parametrize("mode", ["split", "fused", "block", "chain", "auto"])
def test_a_fused_model_traced_or_exported_where_no_kernel_runs_holds_only_torch_ops_and_loads_without_dsrnet(
        monkeypatch, tmp_path, mode):  # fmt: skip
    """On a CPU without Triton's interpreter the ops are their PyTorch fallbacks: a trace or export records those
    aten ops, not ``dsrnet::`` ops, so the file loads in a process that never imports dsrnet (and converts to
    ONNX); a gradient still meets the op's clear error, and ``torch.compile`` still sees the op."""
    from dsrnet.kernels import ops

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # as a CPU without the interpreter
    fused = dsrnet.fuse(_tiny(), mode=mode)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = fused(x)
        traced = torch.jit.trace(fused, x)
        exported = torch.export.export(fused, (x,), strict=False)  # (Dynamo's strict export keeps the op)
    assert "dsrnet::" not in str(traced.inlined_graph) and "dsrnet" not in str(exported.graph)
    # a dynamic batch: the op's fake kernel puts no bound on it (the fallbacks' shape checks would)
    dynamic = torch.export.export(fused, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},), strict=False)
    with torch.no_grad():
        assert _rel_err(dynamic.module()(torch.cat([x] * 8)), torch.cat([ref] * 8)) < 1e-6
    if mode == "split":  # (once: a process takes ~2 s) the files load in a process that never imports dsrnet
        traced.save(tmp_path / "fused.pt")
        torch.export.save(exported, tmp_path / "fused.pt2")
        code = (f"import sys, torch; x = torch.load({str(tmp_path / 'x.pt')!r}); "
                f"a = torch.jit.load({str(tmp_path / 'fused.pt')!r})(x); "
                f"b = torch.export.load({str(tmp_path / 'fused.pt2')!r}).module()(x); "
                f"assert not any(m.startswith('dsrnet') for m in sys.modules); torch.save((a, b), {str(tmp_path / 'y.pt')!r})")  # fmt: skip
        torch.save(x, tmp_path / "x.pt")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        for y in torch.load(tmp_path / "y.pt"):
            assert _rel_err(y, ref) < 1e-6
        pytest.importorskip("onnx")  # TorchScript's ONNX exporter (torch < 2.9's default) takes the traced aten ops
        torch.onnx.export(fused, (x,), tmp_path / "fused.onnx", dynamo=False)
        assert (tmp_path / "fused.onnx").stat().st_size > 0
    with pytest.raises(DsrnetError, match="has no backward pass"):
        fused(x.clone().requires_grad_()).sum().backward()  # the op, as anywhere
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    with torch.no_grad():
        assert torch.equal(torch.compile(fused, backend=backend, fullgraph=True)(x), ref)
    assert any("dsrnet" in g for g in graphs)  # inductor calls the op as it is
    assert ops._fallback_only(x, ())
    monkeypatch.setattr(ops, "_DIRECT_DEVICES", ("cuda", "cpu"))  # as a GPU: its kernels could run, the op stays
    assert not ops._fallback_only(x, ())


def test_dependent_launch_options_come_in_pairs_and_only_for_a_hopper_or_later_gpu(monkeypatch):
    pytest.importorskip("triton")
    from dsrnet.kernels import ops

    class OnGpu:
        is_cuda, device = True, torch.device("cuda", 0)

    capability, check = {"major": 9}, ops._has_dependent_launch.__wrapped__  # (the latter uncached)
    monkeypatch.setattr(ops, "_has_dependent_launch", lambda device: capability["major"] >= 9)
    monkeypatch.setattr(ops._tk, "interpreting", lambda: False)
    assert ops._dependent_launch(OnGpu()) == {}  # off by default until a GPU times it
    monkeypatch.setattr(ops, "PDL", True)
    assert ops._dependent_launch(OnGpu()) == {"GDC": True, "launch_pdl": True}
    assert ops._dependent_launch(torch.zeros(1)) == {}  # the CPU interpreter cannot run the wait
    capability["major"] = 8
    assert ops._dependent_launch(OnGpu()) == {}  # an A100 has no griddepcontrol
    capability["major"] = 9
    monkeypatch.setattr(ops._tk, "interpreting", lambda: True)
    assert ops._dependent_launch(OnGpu()) == {}  # the interpreter with CUDA tensors cannot run it either
    # the capability test itself: NVIDIA 9.0 and later; ROCm numbers its GPUs 9.x too (no griddepcontrol there)
    for hip, major, want in ((None, 9, True), (None, 10, True), (None, 8, False), ("6.2", 9, False)):
        monkeypatch.setattr(torch.version, "hip", hip)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, major=major: (major, 0))
        assert check(OnGpu.device) is want, (hip, major)


def test_every_kernel_that_can_be_launched_early_waits_in_its_first_statement():
    """A kernel launched with ``launch_pdl`` may run while the previous kernel still writes its input (or reads
    memory the allocator has since given this kernel's output): nothing may touch memory before the wait."""
    pytest.importorskip("triton")
    import ast
    import inspect
    import textwrap

    from dsrnet.kernels import _triton as tk

    kernels = [v for v in vars(tk).values() if isinstance(v, tk._LazyKernel)]
    waiting = [k for k in kernels if "GDC" in inspect.signature(k.fn).parameters]
    assert {k.fn.__name__ for k in waiting} == {"_dw_fwd", "_pw_gemm", "_pw_gemm_tma", "_pw_chain", "_dw_pw",
                                                "_dsr_block", "_direct_conv"}  # fmt: skip
    for k in waiting:
        body = ast.parse(textwrap.dedent(inspect.getsource(k.fn))).body[0].body
        first = body[0].value
        assert isinstance(first, ast.Call) and first.func.id == "_dependent_launch", k.fn.__name__
        assert [a.id for a in first.args] == ["GDC"]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch without oneDNN: every GEMM a matmul")
def test_a_cpu_runs_the_1x1_gemms_of_many_pixels_as_convolutions_with_the_matmuls_numbers(monkeypatch):
    """On a CPU the fallback runs a 1x1 GEMM of ``ops.CPU_CONV_MIN_PIXELS`` output pixels or more as a oneDNN
    convolution, fewer as a matmul: the same numbers either way, the weight as it is now (nothing kept between
    calls), a fresh channels-last output whatever the input's layout, and a trace records the matmul."""
    from dsrnet.kernels import ops

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # as a CPU without the interpreter
    routes = []
    real_route = ops._cpu_conv_route

    def spy(x, w_kn, stride):
        routes.append((x.shape[0] * ops._out_size(x.shape[2], stride) * ops._out_size(x.shape[3], stride),
                       real_route(x, w_kn, stride)))  # fmt: skip
        return routes[-1][1]

    monkeypatch.setattr(ops, "_cpu_conv_route", spy)
    fused = dsrnet.fuse(_tiny())
    x = torch.randn(4, 3, 9, 9)  # 324 pixels per map in the first stage, 16 in the last
    with torch.no_grad():
        y = fused(x)
        assert {conv for _, conv in routes} == {True, False}
        assert all(conv == (pixels >= ops.CPU_CONV_MIN_PIXELS) for pixels, conv in routes)
        with monkeypatch.context() as m:
            m.setattr(ops, "CPU_CONV_MIN_PIXELS", 10**9)  # every GEMM a matmul
            assert _rel_err(y, fused(x)) < 1e-5
        for name, buf in fused.named_buffers():
            if name.endswith("layer1.0.w1"):
                buf.data.mul_(-1)  # a write no version counter sees: the next call uses it
        changed = fused(x)
        assert _rel_err(changed, y) > 1e-3
        with monkeypatch.context() as m:
            m.setattr(ops, "CPU_CONV_MIN_PIXELS", 10**9)
            assert _rel_err(changed, fused(x)) < 1e-5
        routes.clear()
        torch.jit.trace(fused, x, check_trace=False)  # (its check reruns the module untraced)
        assert routes and not any(conv for _, conv in routes)
        # the op itself: an NCHW input at stride 2, bf16, and a GEMM without output channels
        inp = torch.randn(2, 16, 24, 24)
        w_kn, bias = torch.randn(16, 8), torch.randn(8)
        for dtype in (torch.float32, torch.bfloat16):
            out = ops.pointwise_conv(inp.to(dtype), w_kn, bias.to(dtype), None, 2, True)  # (an fp32 weight)
            want = torch.nn.functional.conv2d(inp, w_kn.t()[:, :, None, None], bias, stride=2).relu()
            assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
            assert _rel_err(out, want) < (1e-5 if dtype == torch.float32 else 2e-2)
        assert routes[-1] == (2 * 12 * 12, True)
        empty = ops.pointwise_conv(inp, torch.randn(16, 0), torch.randn(0), None, 1, True)
        assert empty.shape == (2, 0, 24, 24)
        no_input = ops.pointwise_conv(torch.randn(2, 0, 24, 24), torch.randn(0, 8), bias, None, 1, False)
        assert torch.equal(no_input, bias[None, :, None, None].expand(2, 8, 24, 24))
        # the threshold counts output pixels, rounded up at stride 2 (31 -> 16): 256 of them convolve, 225 do not
        for shape, stride, conv in (((1, 16, 16, 16), 1, True), ((1, 16, 15, 17), 1, False), ((1, 16, 31, 31), 2, True),
                                    ((1, 16, 29, 29), 2, False)):  # fmt: skip
            ops.pointwise_conv(torch.randn(shape), w_kn, bias, None, stride, True)
            assert routes[-1][1] is conv, (shape, stride)
        with torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):  # PyTorch's own CPU convolution: the matmul is faster
            ops.pointwise_conv(inp, w_kn, bias, None, 1, True)
            assert routes[-1][1] is False
        from torch.fx.experimental.proxy_tensor import make_fx

        graph = make_fx(lambda t: ops._pw_fallback(t, w_kn, 1))(inp)  # 1,152 pixels, traced: the matmul
        assert routes[-1][1] is False and "convolution" not in str(graph.graph)
