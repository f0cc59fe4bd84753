"""The Triton kernels (run by Triton's CPU interpreter) and their PyTorch fallback against torch's own convs."""

from __future__ import annotations  # noqa: I001 (interp must be imported before anything imports Triton)

from tests.kernels import interp  # first: sets TRITON_INTERPRET=1 before anything imports Triton

import pytest
import torch
import torch.nn.functional as F

from dsrnet.errors import DsrnetError
from dsrnet.kernels import ops

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(not interp.READY, reason=interp.SKIP_REASON)

RATES_STRIDES = [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)]  # (dilation, stride)


interpreter = interp.interpreter  # autouse: Triton interpreter, one thread


def _close(actual, expected, rel):
    """max |a - e| <= rel * max |e| (+ a tiny floor for all-zero tensors)."""
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    assert err <= rel * scale + 1e-6, f"max abs diff {err:.3g} vs scale {scale:.3g} (rel tol {rel})"


def _dw_inputs(dtype, c=20, h=7, w=9, n=1, channels_last=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, 3, 3, generator=g).to(dtype)
    bias = torch.randn(c, generator=g).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize(("dilation", "stride"), RATES_STRIDES)
def test_dwconv2d_forward_and_both_backward_passes_match_conv2d(dilation, stride):
    # 20 channels (not a multiple of the 16-wide interpreter block), odd 7x9 map, batch 1.
    x, weight, bias = (t.requires_grad_() for t in _dw_inputs(torch.float32))
    assert ops.triton_usable(x)
    y = ops.dwconv2d(x, weight, bias, stride, dilation, True)
    ref = F.relu(F.conv2d(x, weight, bias, stride, dilation, dilation, 20))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref, 1e-4)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(y, (x, weight, bias), grad)
    want = torch.autograd.grad(ref, (x, weight, bias), grad)
    for name, a, e in zip(("input", "weight", "bias"), got, want, strict=True):
        assert a.shape == e.shape, name
        _close(a, e, 1e-4)


@pytest.mark.parametrize(("dilation", "stride"), [(3, 1), (2, 2)])
def test_dwconv2d_bf16_within_bf16_tolerance(dilation, stride):
    x, weight, _ = (t.requires_grad_() for t in _dw_inputs(torch.bfloat16, c=33, h=6, w=5, n=2))
    y = ops.dwconv2d(x, weight, None, stride, dilation, False)
    assert y.dtype == torch.bfloat16
    x32, w32 = (t.detach().float().requires_grad_() for t in (x, weight))
    ref = F.conv2d(x32, w32, None, stride, dilation, dilation, 33)
    _close(y, ref, 2e-2)
    grad = torch.randn(ref.shape).to(torch.bfloat16)
    gx, gw = torch.autograd.grad(y, (x, weight), grad)
    rx, rw = torch.autograd.grad(ref, (x32, w32), grad.float())
    assert gx.dtype == gw.dtype == torch.bfloat16
    _close(gx, rx, 2e-2)
    _close(gw, rw, 2e-2)


#: dw_fwd's sliding-row form under the interpreter: strips shorter than the map (ROWS 2 and 3 of 7 rows), column
#: blocks of 16 across image boundaries (2 images x 9 columns), each row-loop form.
SLIDING = {"rows 2, plain loads": {"ROWS": 2}, "rows 3, pipelined": {"ROWS": 3, "ROW_STAGES": 3},
           "rows 2, prefetched": {"ROWS": 2, "PREFETCH": True}}


@pytest.fixture(params=list(SLIDING))
def sliding_rows(request, monkeypatch):
    from dsrnet.kernels import _triton as tk

    monkeypatch.setattr(tk.dw_fwd, "interp_config", tk._cfg(BLOCK_P=16, BLOCK_C=16, **SLIDING[request.param]))
    monkeypatch.setattr(tk.dw_fwd, "_built", {})
    return request.param


@pytest.mark.parametrize(("dilation", "stride"), RATES_STRIDES)
def test_dwconv2d_as_sliding_rows_matches_conv2d(dilation, stride, sliding_rows, monkeypatch):
    # Where the stride does not divide the dilation the same config runs as a pixel tile; the input gradient of a
    # stride-1 conv is the forward kernel over the reversed taps (the strided one keeps its own kernel).
    from dsrnet.kernels import _triton as tk

    grids = []
    grid_of = ops._dw_fwd_grid
    monkeypatch.setattr(ops, "_dw_fwd_grid", lambda *a: grids.append(a) or grid_of(*a))
    if stride == 1:
        monkeypatch.setattr(ops, "_run_dw_bwd_input", None)  # would raise if called
    x, weight, bias = (t.requires_grad_() for t in _dw_inputs(torch.float32, n=2))
    y = ops.dwconv2d(x, weight, bias, stride, dilation, True)
    ref = F.relu(F.conv2d(x, weight, bias, stride, dilation, dilation, 20))
    _close(y, ref, 1e-4)
    grad = torch.randn_like(ref)
    for a, e in zip(torch.autograd.grad(y, (x, weight, bias), grad), torch.autograd.grad(ref, (x, weight, bias), grad),
                    strict=True):  # fmt: skip
        _close(a, e, 1e-4)
    assert len(grids) == (2 if stride == 1 else 1)
    assert tk.slides(tk.dw_fwd.interp_config.kwargs["ROWS"], stride, dilation) == (dilation % stride == 0)


def test_sliding_rows_with_the_batchnorm_prologue_in_bf16(sliding_rows):
    x, weight, _ = _dw_inputs(torch.bfloat16, c=33, h=6, w=5, n=3)
    centre, scale, shift = _affine_inputs(33)
    for stride, dilation in ((1, 2), (2, 2)):
        y = ops.dwconv2d_affine_relu(x, centre, scale, shift, weight, stride, dilation)
        ref = F.conv2d(_bn_relu(x.float(), centre, scale, shift), weight.float(), None, stride, dilation, dilation, 33)
        _close(y, ref, 2e-2)


@pytest.mark.parametrize(("dilation", "stride"), RATES_STRIDES)
@pytest.mark.parametrize("affine", [False, True])
def test_weight_gradient_as_sliding_rows_matches_conv2d(dilation, stride, affine, monkeypatch):
    # 16 images x 9 columns of 3 rows: column chunks of 32-48 pairs ending inside a 64-pair block, which must stop
    # there, and (rate 3) 9 programs where pixel tiles would want 7; where the stride does not divide
    # the dilation a sliding-row config runs as pixel tiles (tested above with the default interpreter config).
    from dsrnet.kernels import _triton as tk

    monkeypatch.setattr(tk.dw_bwd_weight, "interp_config", tk._cfg(BLOCK_P=64, BLOCK_C=16, ROWS=1))
    monkeypatch.setattr(tk.dw_bwd_weight, "_built", {})
    x, weight, _ = _dw_inputs(torch.float32, n=16, h=3)
    weight.requires_grad_()
    packed = ops._pack_affine(x, *_affine_inputs()) if affine else None
    a = _bn_relu(x, *_affine_inputs()) if affine else x
    ref = F.conv2d(a, weight, None, stride, dilation, dilation, 20)
    grad = torch.randn_like(ref)
    (want,) = torch.autograd.grad(ref, weight, grad)
    _close(ops.dwconv2d_grad_weight(grad, x, stride, dilation, packed), want, 1e-4)


@pytest.mark.parametrize(("n", "hw", "c", "stride", "dilation"), [
    (1024, 32, 64, 1, 1), (512, 32, 64, 1, 3), (128, 16, 128, 1, 1), (512, 8, 256, 2, 2), (128, 4, 512, 1, 2),
    (512, 16, 128, 2, 1), (3, 7, 20, 1, 3)])  # fmt: skip
def test_weight_gradient_work_is_spread_over_its_programs_in_either_form(n, hw, c, stride, dilation):
    # DSRNet-50's shapes at its batch sizes (GPU granule) and a small one: the same programs for both forms, every
    # pixel and every (image, column) pair of every residue class owned by one, and no program left without work
    # where there is enough of it (but the few of a count rounded up to whole residue classes).
    from dsrnet.kernels import _triton as tk

    ho = wo = ops._out_size(hw, stride)
    programs, pix, cols = ops._weight_grad_split(n, ho, wo, c, stride, dilation, 256)
    classes = dilation // stride if tk.slides(1, stride, dilation) else 1
    assert programs % classes == 0 and pix % 256 == 0 and cols % 16 == 0
    assert (programs - classes) * pix < n * ho * wo <= programs * pix  # (rounded up to whole classes)
    chunks = programs // classes
    assert n * wo <= chunks * cols and (n * wo < 16 * chunks or (chunks - 1) * cols < n * wo)


def test_fused_gpu_checks_each_depthwise_config_by_itself_and_flags_a_broken_one(tmp_path, monkeypatch):
    # benchmarks/fused_gpu.py's step (its dry run: one tile and one sliding-row config per kernel, each run by the
    # interpreter as its one config); a sliding-row launch grid one column block short must show as not ok.
    import argparse
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("fused_gpu", REPO / "benchmarks" / "fused_gpu.py")
    fused_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fused_gpu)
    grid_of = ops._dw_fwd_grid

    def short_grid(*args):
        grid = grid_of(*args)
        return lambda meta: (grid(meta)[0] - (1 if meta.get("ROWS") else 0), grid(meta)[1])

    monkeypatch.setattr(ops, "_dw_fwd_grid", short_grid)
    weight_grad = ops.dwconv2d_grad_weight  # and a weight gradient with the prologue that comes out NaN: not ok
    monkeypatch.setattr(ops, "dwconv2d_grad_weight", lambda g, x, s, d, affine=None: weight_grad(g, x, s, d, affine)
                        * (float("nan") if affine is not None else 1.0))  # fmt: skip
    bench = fused_gpu.Bench(argparse.Namespace(dry_run=True, out=str(tmp_path), budget_s=600.0))
    tk = ops._tk
    library = {k: (getattr(tk, k).configs, getattr(tk, k).interp_config) for k in ("dw_fwd", "dw_bwd_weight")}
    fused_gpu.step_depthwise_configs(bench)
    assert {k: (getattr(tk, k).configs, getattr(tk, k).interp_config) for k in library} == library  # offered back
    rows = {r["case"].split(" config ")[0] + (" rows" if "ROWS" in r["case"] else ""): r
            for r in bench.results["correctness"]}  # fmt: skip
    assert {k: r["ok"] for k, r in rows.items()} == {
        "dw_fwd": True, "dw_fwd rows": False, "dw_bwd_weight": False, "dw_bwd_weight rows": False,
        "dw_bwd_input": True}  # fmt: skip
    assert not rows["dw_fwd rows"]["max_rel_err"] <= 0.1 and rows["dw_fwd"]["max_rel_err"] < 2e-2  # (NaN: unwritten)
    assert rows["dw_bwd_weight"]["worst"].endswith("grad_weight_bn_relu")  # the NaN, whatever the other errors
    # the dtypes a row's cases ran in: only the forward's include the inference form's bf16
    assert {k: r["dtype"] for k, r in rows.items()} == {
        "dw_fwd": "float32, bfloat16", "dw_fwd rows": "float32, bfloat16", "dw_bwd_weight": "float32",
        "dw_bwd_weight rows": "float32", "dw_bwd_input": "float32"}  # fmt: skip


def test_a_kernel_offered_other_configs_is_rebuilt_with_them_and_gets_its_own_back_even_after_an_error():
    lazy = ops._tk.dw_fwd
    own, interp = lazy.configs, lazy.interp_config
    lazy._built[(True, True)] = "a tuner built with the library's configs"
    with pytest.raises(RuntimeError), lazy.offering(own[:1], own[0]):
        assert lazy.configs == own[:1] and lazy.interp_config is own[0] and lazy._built == {}
        lazy._built[(True, True)] = "a tuner built with the offered config"
        raise RuntimeError("a check that fails mid-way")
    assert lazy.configs == own and lazy.interp_config is interp and lazy._built == {}
    assert lazy.swap_configs(own[1:2]) == (own, interp) and lazy.configs == own[1:2] and lazy.interp_config is interp
    lazy.swap_configs(own)
    assert lazy.configs == own


def test_sliding_row_grid_covers_every_class_and_strip_and_configs_are_pruned_where_they_would_not_slide():
    from dsrnet.kernels import _triton as tk

    meta = {"BLOCK_P": 16, "BLOCK_C": 16, "ROWS": 2}
    # 2 images x 9 columns in 2 blocks; rate 3: 3 classes of <= 3 rows in 2 strips each; 20 channels in 2 blocks
    assert ops._dw_fwd_grid(2, 20, 7, 9, 1, 3)(meta) == (2 * 3 * 2, 2)
    assert ops._dw_fwd_grid(2, 20, 4, 5, 2, 2)(meta) == (1 * 1 * 2, 2)  # stride 2, rate 2: one class
    assert ops._dw_fwd_grid(2, 20, 4, 5, 2, 3)(meta) == (3, 2)  # rate 3 at stride 2: pixel tiles (40 pixels)
    assert ops._dw_fwd_grid(2, 20, 7, 9, 1, 3)({**meta, "ROWS": 0}) == (8, 2)
    configs = [tk._cfg(BLOCK_P=16, BLOCK_C=16), tk._cfg(BLOCK_P=16, BLOCK_C=16, ROWS=8)]
    assert tk._rows_fit(configs, {}, STRIDE=2, DIL=2) == configs
    assert tk._rows_fit(configs, {}, STRIDE=2, DIL=3) == configs[:1]
    assert tk.dw_bwd_weight.prune is tk.dw_fwd.prune is tk._rows_fit


def _affine_inputs(c=20):
    """Per-channel centre/scale/shift that make the ReLU cut a good part of each channel (negative scales too)."""
    g = torch.Generator().manual_seed(1)
    return 0.3 * torch.randn(c, generator=g), torch.randn(c, generator=g), 0.5 * torch.randn(c, generator=g)


def _bn_relu(x, centre, scale, shift):
    view = (1, -1, 1, 1)
    return F.relu((x - centre.view(view)) * scale.view(view) + shift.view(view))


@pytest.mark.parametrize(("dilation", "stride"), RATES_STRIDES)
def test_dwconv2d_affine_relu_matches_bn_relu_then_conv2d_forward_and_backward(dilation, stride):
    # The preceding BatchNorm (as its centred affine map) and ReLU in the dw kernel's prologue: all 5 gradients.
    x, weight, _ = _dw_inputs(torch.float32)
    leaves = tuple(t.requires_grad_() for t in (x, *_affine_inputs(), weight))
    y = ops.dwconv2d_affine_relu(*leaves, stride, dilation)
    a = _bn_relu(*leaves[:4])
    ref = F.conv2d(a, weight, None, stride, dilation, dilation, 20)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert 0.2 < (a == 0).float().mean() < 0.8  # the ReLU matters, and padding must stay 0, not relu(shift)
    _close(y, ref, 1e-4)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(y, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for name, g, e in zip(("input", "centre", "scale", "shift", "weight"), got, want, strict=True):
        assert g.shape == e.shape, name
        _close(g, e, 1e-4)


def test_dwconv2d_affine_relu_bf16_within_bf16_tolerance():
    x, weight, _ = _dw_inputs(torch.bfloat16, c=33, h=6, w=5, n=2)
    leaves = tuple(t.requires_grad_() for t in (x, *_affine_inputs(33), weight))
    grad = torch.randn(2, 33, 3, 3).to(torch.bfloat16)
    y = ops.dwconv2d_affine_relu(*leaves, 2, 3)
    got = torch.autograd.grad(y, leaves, grad)
    assert y.dtype == got[0].dtype == got[4].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    x32, w32 = (t.detach().float().requires_grad_() for t in (x, weight))
    ref = F.conv2d(_bn_relu(x32, *leaves[1:4]), w32, None, 2, 3, 3, 33)
    _close(y, ref, 2e-2)
    want = torch.autograd.grad(ref, (x32, *leaves[1:4], w32), grad.float())
    for g, e in zip(got, want, strict=True):
        _close(g, e, 2e-2)


def test_dwconv2d_affine_relu_fallback_gives_the_same_numbers(monkeypatch):
    x, weight, _ = _dw_inputs(torch.float32, n=2)
    leaves = tuple(t.requires_grad_() for t in (x, *_affine_inputs(), weight))
    grad = torch.randn(2, 20, 4, 5)
    runs = []
    for interpret in (True, False):
        if not interpret:
            monkeypatch.delenv("TRITON_INTERPRET")
        assert ops.triton_usable(x) is interpret
        y = ops.dwconv2d_affine_relu(*leaves, 2, 1)
        runs.append((y, *torch.autograd.grad(y, leaves, grad)))
    for a, b in zip(*runs, strict=True):
        _close(a, b, 1e-5)
    centre, scale, shift = _affine_inputs()
    with pytest.raises(DsrnetError, match=r"centre, scale and shift of shape \[20\]"):
        ops.dwconv2d_affine_relu(x, centre, scale[:3], shift, weight, 1, 1)


def test_affine_grad_input_sums_survive_autotuning_configs_of_other_block_sizes(monkeypatch):
    # On a GPU the autotuner first runs every config on the same buffers, then the winner once more. The partial
    # sums of d scale / d shift have one row per pixel block: the winner (larger blocks, fewer rows) must not add
    # up rows that a smaller-block config wrote while it was timed.
    import triton

    from dsrnet.kernels import _triton as tk

    lazy = tk.dw_bwd_input
    timings = iter([2.0, 1.0])  # the 16-pixel config runs first; the 64-pixel one is "faster" and wins
    configs = [tk._cfg(BLOCK_P=16, BLOCK_C=16), tk._cfg(BLOCK_P=64, BLOCK_C=16)]
    tuner = triton.autotune(configs=configs, key=lazy.key, reset_to_zero=lazy.reset_to_zero,
                            do_bench=lambda call, quantiles: (call(), [next(timings)] * 3)[1])  # fmt: skip
    monkeypatch.setitem(lazy._built, (True, True), tuner(triton.jit(lazy.fn)))
    x, weight, _ = _dw_inputs(torch.float32, n=2, h=9, w=9)
    affine = torch.stack(_affine_inputs())
    grad = torch.randn(2, 20, 9, 9)
    got = ops.dwconv2d_affine_relu_grad_input(grad, x, affine, weight, 1, 2)
    assert next(timings, None) is None  # both configs were timed
    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    want = ops.dwconv2d_affine_relu_grad_input(grad, x, affine, weight, 1, 2)
    for a, b in zip(got, want, strict=True):
        _close(a, b, 1e-5)


def test_autotuning_times_each_config_briefly_and_keeps_the_picks_on_disk(monkeypatch):
    """A fused DSRNet-50's first call at batch 1024 took ~74 s after precompiling, ~20 s of it timing ~150 configs
    at Triton's default budgets (H200, 2026-11-27): the autotuner times with shorter ones and keeps its picks on
    disk, where the installed Triton offers those options (the real one here does; an older one gets neither)."""
    import triton
    import triton.testing

    from dsrnet.kernels import _triton as tk

    seen = {}

    def fake_autotune(configs, key, reset_to_zero=None, prune_configs_by=None, do_bench=None,
                      cache_results=False):  # 3.6/3.8's options  # fmt: skip
        seen.update(do_bench=do_bench, cache_results=cache_results, prune=prune_configs_by)
        return lambda fn: fn

    monkeypatch.setattr(tk.triton, "autotune", fake_autotune)
    lazy = tk._LazyKernel(tk._dw_fwd, [tk._DW_INTERP], ["TUNE_SIZE"], tk._DW_INTERP)
    lazy.build()
    assert seen["do_bench"] is tk._time_config and seen["cache_results"] is True and seen["prune"] is None
    tk._LazyKernel(tk._pw_gemm, [tk._GEMM_INTERP], ["K"], tk._GEMM_INTERP, prune=tk._persistent_fits).build()
    assert seen["prune"] == {"early_config_prune": tk._persistent_fits}
    timed = {}
    monkeypatch.setattr(triton.testing, "do_bench", lambda call, **kw: timed.update(kw) or [1.0, 0.9, 1.1])
    assert tk._time_config(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.9, 1.1]
    assert timed == {"warmup": tk.AUTOTUNE_WARMUP_MS, "rep": tk.AUTOTUNE_REP_MS, "quantiles": (0.5, 0.2, 0.8)}
    assert tk.AUTOTUNE_WARMUP_MS + tk.AUTOTUNE_REP_MS < 25 + 100  # shorter than Triton's defaults
    monkeypatch.undo()
    assert set(tk._autotune_options()) == {"do_bench", "cache_results"}  # the installed Triton (3.8; 3.6 too)

    def older_autotune(configs, key, reset_to_zero=None, prune_configs_by=None):
        seen.clear()
        seen.update(reset_to_zero=reset_to_zero)
        return lambda fn: fn

    monkeypatch.setattr(tk.triton, "autotune", older_autotune)
    assert tk._autotune_options() == {}
    tk._LazyKernel(tk._dw_fwd, [tk._DW_INTERP], ["TUNE_SIZE"], tk._DW_INTERP).build()  # neither option offered
    assert seen == {"reset_to_zero": None}

@pytest.mark.parametrize("layout", ["taps-major view", "unevenly spaced taps"])
def test_depthwise_kernels_read_the_weight_in_place_whatever_its_strides(layout):
    """The kernels read a depthwise weight through its strides (no copy per call, which cost two copy kernels per
    layer and training step): a taps-major [9, C] viewed as [C, 1, 3, 3] (a fused model's buffer) is read in
    place, a weight whose taps are not evenly spaced is copied first; both give conv2d's numbers, forward and
    input gradient."""
    x, weight, _ = _dw_inputs(torch.float32)
    if layout == "taps-major view":
        w = weight.reshape(20, 9).t().contiguous().t().reshape(20, 1, 3, 3)
        assert w.stride() != weight.stride() and ops._tap_strides(w)[0] is w
    else:
        w = torch.zeros(20, 1, 5, 5)
        w[:, :, ::2, ::2] = weight
        w = w[:, :, ::2, ::2]  # tap strides 10 (rows) and 2 (columns)
        assert ops._tap_strides(w)[0] is not w
    _close(ops.dwconv2d(x, w, None, 1, 2, False), F.conv2d(x, weight, None, 1, 2, 2, 20), 1e-5)
    grad = torch.randn(1, 20, 7, 9)
    want = torch.nn.grad.conv2d_input(x.shape, weight, grad, 1, 2, 2, 20)
    _close(ops.dwconv2d_grad_input(grad, w, 7, 9, 1, 2), want, 1e-5)

def test_dwconv2d_accepts_contiguous_nchw_input():
    x, weight, bias = _dw_inputs(torch.float32, channels_last=False)
    _close(ops.dwconv2d(x, weight, bias, 1, 2, False), F.conv2d(x, weight, bias, 1, 2, 2, 20), 1e-4)


def test_dwconv2d_rejects_a_non_depthwise_weight():
    x, weight, bias = _dw_inputs(torch.float32)
    with pytest.raises(DsrnetError, match=r"weight \[C, 1, 3, 3\]"):
        ops.dwconv2d(x, weight[:5], None, 1, 1, False)


#: The sweep's options as the interpreter's config: the residual tile loaded before the GEMM instead of after it
#: (R_FIRST); persistent programs looping over tiles with the whole K in one step (PER_SM: 2 programs on the
#: interpreter's one "SM", each several tiles; BLOCK_K 32 >= the test's K of 20).
_PW_OPTIONS = {"library": None, "r_first": {"BLOCK_K": 16, "R_FIRST": True},
               "persistent": {"BLOCK_K": 32, "PER_SM": 2}, "persistent r_first": {"BLOCK_K": 32, "PER_SM": 2,
                                                                                   "R_FIRST": True}}  # fmt: skip


@pytest.mark.parametrize("option", list(_PW_OPTIONS))
@pytest.mark.parametrize(("stride", "residual", "relu"), [(1, True, True), (2, False, False)])
def test_pointwise_conv_matches_conv2d(stride, residual, relu, option, monkeypatch):
    if _PW_OPTIONS[option]:
        from dsrnet.kernels import _triton as tk

        monkeypatch.setattr(tk.pw_gemm, "interp_config", tk._cfg(BLOCK_M=16, BLOCK_N=16, **_PW_OPTIONS[option]))
        monkeypatch.setattr(tk.pw_gemm, "_built", {})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 20, 5, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 20, 1, 1, generator=g)
    b = torch.randn(24, generator=g)
    ref = F.conv2d(x, w, b, stride)
    res = torch.randn(ref.shape, generator=g) if residual else None
    if residual:
        ref = ref + res
    if relu:
        ref = F.relu(ref)
    _close(ops.pointwise_conv(x, w[:, :, 0, 0].t().contiguous(), b, res, stride, relu), ref, 1e-4)


def _offset_by_one(x: torch.Tensor) -> torch.Tensor:
    """``x``'s values as a dense channels-last tensor whose data starts one element past an aligned address."""
    n, c, h, w = x.shape
    flat = torch.empty(1 + x.numel(), dtype=x.dtype)
    view = flat[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    view.copy_(x)
    assert view.is_contiguous(memory_format=torch.channels_last) and view.data_ptr() % 16 != 0
    return view


def _spy_kernels(monkeypatch, *names):
    """Counts the launches of ``_tk``'s kernels ``names`` (each still runs)."""
    from dsrnet.kernels import _triton as tk

    launches = {name: 0 for name in names}

    class Spy:
        def __init__(self, name):
            self.name, self.lazy = name, getattr(tk, name)

        def __getitem__(self, grid):
            launches[self.name] += 1
            return self.lazy[grid]

    for name in names:
        monkeypatch.setattr(tk, name, Spy(name))
    return launches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("residual", "relu"), [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("persistent", [True, False])
def test_pointwise_conv_through_tma_descriptors_matches_conv2d(dtype, residual, relu, persistent, monkeypatch):
    """ops.GEMM_TMA: tiles moved by tensor descriptors (out-of-bounds rows and columns: 2x5x7 = 70 pixels, K = 24
    and N = 40 against 16-wide tiles), persistent programs looping over tiles (the interpreter's config) or one
    tile each; the pointer-based kernel wherever a TMA copy cannot read the tensors."""
    from dsrnet.kernels import _triton as tk

    if not persistent:
        monkeypatch.setattr(tk.pw_gemm_tma, "interp_config", tk._cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16))
        monkeypatch.setattr(tk.pw_gemm_tma, "_built", {})
    monkeypatch.setattr(ops, "GEMM_TMA", True)
    launches = _spy_kernels(monkeypatch, "pw_gemm_tma", "pw_gemm")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 24, 5, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    w_kn = torch.randn(24, 40, generator=g).to(dtype)
    b = torch.randn(40, generator=g)
    res = torch.randn(2, 40, 5, 7, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x.float(), w_kn.float().t()[:, :, None, None], b) + (res.float() if residual else 0)
    ref = F.relu(ref) if relu else ref
    y = ops.pointwise_conv(x, w_kn, b, res if residual else None, 1, relu)
    assert launches == {"pw_gemm_tma": 1, "pw_gemm": 0}
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref, 2e-2)
    # What a TMA copy cannot read (or the kernel does not do) goes to the pointer-based kernel, same numbers.
    for args in ((x.float(), w_kn.float(), b, None, 1, relu),  # fp32
                 (x, w_kn, b, None, 2, relu),  # strided
                 (x[:, :20].contiguous(memory_format=torch.channels_last), w_kn[:20], b, None, 1, relu),  # rows of
                 # 40 bytes: not 16-byte aligned
                 (_offset_by_one(x), w_kn, b, None, 1, relu),  # dense rows, but 2 bytes past an aligned address
                 (x[:, :, :, 1:], w_kn, b, None, 1, relu)):  # fmt: skip  # a view: pixels not dense rows
        launches.update(pw_gemm_tma=0, pw_gemm=0)
        y = ops.pointwise_conv(*args)
        assert launches == {"pw_gemm_tma": 0, "pw_gemm": 1}
        want = F.conv2d(args[0].float(), args[1].float().t()[:, :, None, None], b, args[4])
        _close(y, F.relu(want) if relu else want, 2e-2)
    launches.update(pw_gemm_tma=0, pw_gemm=0)
    plain = F.conv2d(x.float(), w_kn.float().t()[:, :, None, None], b)
    _close(ops.pointwise_conv(x.contiguous(), w_kn, b, None, 1, False), plain, 2e-2)
    assert launches == {"pw_gemm_tma": 1, "pw_gemm": 0}  # NCHW: the channels-last copy both kernels would read
    monkeypatch.setattr(ops, "GEMM_TMA", False)  # off (the default): the pointer-based kernel
    launches.update(pw_gemm_tma=0, pw_gemm=0)
    ops.pointwise_conv(x, w_kn, b, None, 1, relu)
    assert launches == {"pw_gemm_tma": 0, "pw_gemm": 1}


def test_persistent_gemm_configs_only_where_one_step_covers_k_and_no_downsample_gemm():
    from dsrnet.kernels import _triton as tk

    tiled = tk._cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64)
    persistent = [tk._cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=bk, PER_SM=2) for bk in (64, 128)]
    configs = [tiled, *persistent]
    assert tk._persistent_fits(configs, {"K": 64}, RES=1) == configs
    assert tk._persistent_fits(configs, {"K": 128}, RES=0) == [tiled, persistent[1]]
    assert tk._persistent_fits(configs, {"K": 256}, RES=1) == [tiled]
    assert tk._persistent_fits(configs, {"K": 64}, RES=2) == [tiled]  # the downsample GEMM has its own K loop


def test_chain_configs_are_pruned_to_those_that_compiled_without_spilling():
    from dsrnet.kernels import _triton as tk

    def kept(k, **kwargs):
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, bool(c.kwargs.get("RESIDENT")))
                for c in tk._chain_fits(tk._CHAIN_CONFIGS, {"K": k}, **kwargs)]  # fmt: skip

    everything = kept(64, DW=False, BLOCK_KW=64, CHAIN=True, BLOCK_W=64)
    assert len(everything) == len(tk._CHAIN_CONFIGS)  # layer1's widths without the depthwise conv: all fit
    layer1 = kept(64, DW=True, BLOCK_KW=64, CHAIN=True, BLOCK_W=64)
    assert (64, 64, 8, True) not in layer1 and len(layer1) == len(tk._CHAIN_CONFIGS) - 1
    layer2 = kept(128, DW=True, BLOCK_KW=128, CHAIN=True, BLOCK_W=128)  # a 128-wide depthwise tile
    assert layer2 == [(64, 128, 8, False), (64, 64, 8, False), (32, 64, 4, False)]
    layer3 = kept(256, DW=False, BLOCK_KW=256, CHAIN=True, BLOCK_W=256)  # a 256-wide next 1x1
    assert (64, 64, 4, False) not in layer3 and (32, 128, 4, False) not in layer3 and (64, 64, 8, True) in layer3
    assert (64, 64, 8, True) not in kept(1024, DW=False, BLOCK_KW=1024, CHAIN=False, BLOCK_W=16)
    assert (64, 64, 8, True) not in kept(512, DW=False, BLOCK_KW=512, CHAIN=True, BLOCK_W=128)  # shared memory
    assert (64, 64, 8, True) in kept(512, DW=False, BLOCK_KW=512, CHAIN=False, BLOCK_W=16)


def test_gemm_grid_caps_a_persistent_config_at_its_programs_per_sm():
    grid = ops._gemm_grid(1000, 256, sms=132)
    assert grid({"BLOCK_M": 64, "BLOCK_N": 128}) == (16 * 2,)
    assert grid({"BLOCK_M": 64, "BLOCK_N": 128, "PER_SM": 0}) == (32,)
    assert ops._gemm_grid(100_000, 256, sms=132)({"BLOCK_M": 64, "BLOCK_N": 128, "PER_SM": 3}) == (396,)


def _pw_ref(x, w_kn, bias, residual=None):
    y = F.conv2d(x.float(), w_kn.t()[:, :, None, None].float(), bias.float())
    return F.relu(y if residual is None else y + residual.float())


@pytest.mark.parametrize("resident", [False, True])
@pytest.mark.parametrize("ds_stride", [None, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_chain_gives_the_block_output_and_the_next_blocks_first_1x1(ds_stride, dtype, resident,
                                                                            monkeypatch):  # fmt: skip
    """mode="chain"'s kernel: y = relu(pw(x) + b + shortcut) and m = relu(pw(y) + b1) from one tile (odd channel
    counts: masked N, K and W tails; an identity or a downsample shortcut at stride 1 or 2); ``resident``: the
    autotune option that loads the tile's rows of x once for every chunk of outputs."""
    if resident:
        from dsrnet.kernels import _triton as tk

        monkeypatch.setattr(tk.pw_chain, "interp_config", tk._cfg(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, RESIDENT=True))
        monkeypatch.setattr(tk.pw_chain, "_built", {})
    g = torch.Generator().manual_seed(3)
    k = 40 if resident else 13  # resident: K past BLOCK_K (16), one dot over the whole K against the K loop's
    x = torch.randn(2, k, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(k, 40, generator=g) / 4, torch.randn(40, generator=g)
    w1, b1 = torch.randn(40, 20, generator=g) / 6, torch.randn(20, generator=g)
    if ds_stride is None:
        shortcut, w_ds, ds_stride, residual = torch.randn(2, 40, 5, 6, generator=g), None, 1, None
    else:
        shortcut = torch.randn(2, 17, 5 * ds_stride, 6 * ds_stride, generator=g).contiguous(
            memory_format=torch.channels_last)  # fmt: skip
        w_ds = torch.randn(17, 40, generator=g) / 4
        residual = F.conv2d(shortcut, w_ds.t()[:, :, None, None], stride=ds_stride)
    want_y = _pw_ref(x.to(dtype), w.to(dtype), b, shortcut if residual is None else residual)
    y, m = ops.pointwise_chain(x.to(dtype), w, b, shortcut.to(dtype), w_ds, ds_stride, w1, b1)
    assert y.dtype == m.dtype == dtype and m.shape == (2, 20, 5, 6)
    assert m.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    _close(y.float(), want_y, tol)
    _close(m.float(), _pw_ref(y, w1.to(dtype), b1), tol)  # from y as written (the bf16 values split would read)


@pytest.mark.parametrize(("stride", "dilation", "ds_stride", "chain"), [(1, 3, None, True), (2, 2, 2, True),
                                                                     (1, 1, 1, False)])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_chain_with_the_depthwise_conv_in_its_kernel(stride, dilation, ds_stride, chain, dtype):
    """``w_dw``: the kernel computes relu(dw(x) + b_dw) for its pixels once and feeds every output chunk's GEMM with
    it (odd sizes, 19 channels: a masked depthwise tile; stride 2 with the downsample shortcut); without
    ``w1_next`` the next 1x1's output has no channels."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 19, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w_dw, b_dw = torch.randn(19, 1, 3, 3, generator=g) / 3, torch.randn(19, generator=g)
    w, b = torch.randn(19, 40, generator=g) / 4, torch.randn(40, generator=g)
    w1, b1 = (torch.randn(40, 24, generator=g) / 6, torch.randn(24, generator=g)) if chain else (None, None)
    ho, wo = -(-7 // stride), -(-9 // stride)
    if ds_stride is None:
        shortcut, w_ds, ds_stride, residual = torch.randn(2, 40, ho, wo, generator=g), None, 1, None
    else:
        shortcut = torch.randn(2, 11, ho * ds_stride, wo * ds_stride, generator=g)
        w_ds = torch.randn(11, 40, generator=g) / 4
        residual = F.conv2d(shortcut.to(dtype).float(), w_ds.to(dtype).float()[:, :, None, None].transpose(0, 1),
                            stride=ds_stride)  # fmt: skip
    mid = F.relu(F.conv2d(x.to(dtype).float(), w_dw.to(dtype).float(), b_dw, stride, dilation, dilation, 19))
    want_y = _pw_ref(mid.to(dtype), w.to(dtype), b, shortcut.to(dtype) if residual is None else residual)
    y, m = ops.pointwise_chain(x.to(dtype), w, b, shortcut.to(dtype), w_ds, ds_stride, w1, b1, ops.pack_taps(w_dw),
                               b_dw, stride, dilation)  # fmt: skip
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    _close(y.float(), want_y, tol)
    if chain:
        _close(m.float(), _pw_ref(y, w1.to(dtype), b1), tol)
    else:
        assert m.shape == (2, 0, ho, wo)


def test_pointwise_chain_wider_than_its_tile_runs_two_kernels_and_bad_weights_are_one_line(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 8, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    w, b, shortcut = torch.randn(8, 16, generator=g), torch.randn(16, generator=g), torch.randn(1, 16, 3, 3)
    w1, b1 = torch.randn(16, 24, generator=g), torch.randn(24, generator=g)
    one = ops.pointwise_chain(x, w, b, shortcut, None, 1, w1, b1)
    monkeypatch.setattr(ops, "CHAIN_MAX_WIDTH", 16)
    two = ops.pointwise_chain(x, w, b, shortcut, None, 1, w1, b1)
    for got, want in zip(two, one, strict=True):
        _close(got, want, 1e-5)
    with pytest.raises(DsrnetError, match=r"pointwise_chain wants w1_next \[16, Wn\]"):
        ops.pointwise_chain(x, w, b, shortcut, None, 1, w1[:8], b1)
    with pytest.raises(DsrnetError, match="wants a shortcut"):
        ops.pointwise_chain(x, w, b, None, None, 1, w1, b1)
    with pytest.raises(DsrnetError, match="w1_next and b1_next go together"):
        ops.pointwise_chain(x, w, b, shortcut, None, 1, w1, None)
    with pytest.raises(DsrnetError, match="w_dw without b_dw; fix: pass the depthwise bias"):
        ops.pointwise_chain(x, w, b, shortcut, None, 1, w1, b1, torch.randn(9, 8), None)


@pytest.mark.parametrize("ds_stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_conv_with_the_downsample_gemm_in_its_tile(ds_stride, dtype):
    """``w_ds``: the residual is a block's input, read every ``ds_stride`` pixels and multiplied by ``w_ds`` into the
    same accumulator (odd channel counts: masked K and N tails)."""
    g = torch.Generator().manual_seed(2)
    block_in = torch.randn(2, 19, 6, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w_ds = torch.randn(24, 19, 1, 1, generator=g)
    ho, wo = -(-6 // ds_stride), -(-7 // ds_stride)
    y2 = torch.randn(2, 13, ho, wo, generator=g).contiguous(memory_format=torch.channels_last)
    w_pw = torch.randn(24, 13, 1, 1, generator=g)
    b_pw, b_ds = torch.randn(24, generator=g), torch.randn(24, generator=g)
    ref = F.relu(F.conv2d(y2, w_pw, b_pw) + F.conv2d(block_in, w_ds, b_ds, ds_stride))
    kn = lambda w: w[:, :, 0, 0].t().contiguous().to(dtype)  # noqa: E731
    got = ops.pointwise_conv(y2.to(dtype), kn(w_pw), b_pw + b_ds, block_in.to(dtype), 1, True, kn(w_ds), ds_stride)
    assert got.shape == ref.shape and got.is_contiguous(memory_format=torch.channels_last)
    _close(got, ref, 1e-4 if dtype == torch.float32 else 2e-2)


def _block_reference(x, w_dw, b_dw, w_pw, b_pw, shortcut, w_ds, b_ds, stride, dilation, ds_stride):
    c = x.shape[1]
    y = F.relu(F.conv2d(x, w_dw, b_dw, stride, dilation, dilation, c))
    y = F.conv2d(y, w_pw, b_pw)
    if shortcut is not None:
        y = y + (shortcut if w_ds is None else F.conv2d(shortcut, w_ds, b_ds, ds_stride))
    return F.relu(y)


@pytest.mark.parametrize(
    ("dilation", "stride", "shortcut", "dtype"),
    [
        (1, 1, "identity", torch.float32),
        (3, 1, "none", torch.float32),
        (2, 2, "downsample", torch.float32),  # stride_on="dw": the shortcut conv is strided too
        (1, 1, "downsample-strided", torch.float32),  # stride_on="1x1": dw unstrided, shortcut strided
        (2, 1, "downsample", torch.float32),  # first block of stage 1: channel change, no stride
        (2, 2, "downsample", torch.bfloat16),
        (3, 1, "identity", torch.bfloat16),
        (1, 1, "identity", torch.float16),
        # an fp32 shortcut and downsample weights beside fp16 activations: tl.dot got an fp32 tile against fp16
        (2, 2, "downsample-fp32", torch.float16),
    ],
)
def test_dw_pw_block_matches_unfused_convs(dilation, stride, shortcut, dtype):
    g = torch.Generator().manual_seed(2)
    n, c, cin, cout, h, w = 1, 20, 12, 36, 7, 9
    ds_stride = 2 if shortcut == "downsample-strided" else stride
    x = torch.randn(n, c, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    w_dw, b_dw = torch.randn(c, 1, 3, 3, generator=g), torch.randn(c, generator=g)
    w_pw, b_pw = torch.randn(cout, c, 1, 1, generator=g) / 4, torch.randn(cout, generator=g)
    w_ds, b_ds = torch.randn(cout, cin, 1, 1, generator=g) / 3, torch.randn(cout, generator=g)
    sc, wds_kn, bias = None, None, b_pw
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    if shortcut == "identity":
        sc = torch.randn(n, cout, ho, wo, generator=g).contiguous(memory_format=torch.channels_last)
    elif shortcut.startswith("downsample"):
        sh = h if ds_stride == stride else h * 2 - 1  # a pre-conv1 map that the shortcut reads with its stride
        sw = w if ds_stride == stride else w * 2 - 1
        sc = torch.randn(n, cin, sh, sw, generator=g).contiguous(memory_format=torch.channels_last)
        wds_kn, bias = w_ds[:, :, 0, 0].t().contiguous(), b_pw + b_ds
    ref = _block_reference(x, w_dw, b_dw, w_pw, b_pw, sc, None if wds_kn is None else w_ds, b_ds,
                           stride, dilation, ds_stride)  # fmt: skip
    cast = (lambda t, to=dtype: None if t is None else t.to(to))  # noqa: E731
    sc_dtype = torch.float32 if shortcut.endswith("fp32") else dtype
    y = ops.dw_pw_block(
        cast(x), cast(ops.pack_taps(w_dw)), cast(b_dw), cast(w_pw[:, :, 0, 0].t().contiguous()), cast(bias),
        cast(sc, sc_dtype), cast(wds_kn, sc_dtype), stride, dilation, ds_stride,
    )  # fmt: skip
    assert y.shape == ref.shape and y.dtype == dtype
    _close(y, ref, {torch.float32: 1e-4, torch.float16: 5e-3}.get(dtype, 2e-2))


def _whole_block_inputs(n, cin, c, cout, h, w, shortcut, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).contiguous(memory_format=torch.channels_last)
    w1, b1 = torch.randn(c, cin, 1, 1, generator=g) / 3, torch.randn(c, generator=g) / 2
    w_dw, b_dw = torch.randn(c, 1, 3, 3, generator=g) / 2, torch.randn(c, generator=g) / 2
    w_pw, b_pw = torch.randn(cout, c, 1, 1, generator=g) / 4, torch.randn(cout, generator=g)
    w_ds = torch.randn(cout, cin, 1, 1, generator=g) / 3 if shortcut == "downsample" else None
    b_ds = torch.randn(cout, generator=g) if shortcut == "downsample" else None
    return x, w1, b1, w_dw, b_dw, w_pw, b_pw, w_ds, b_ds


@pytest.mark.parametrize(
    ("n", "h", "w", "stride_1x1", "stride", "dilation", "shortcut", "dtype"),
    [
        (1, 7, 9, 1, 1, 1, "identity", torch.float32),  # odd map; 16-pixel tiles split rows
        (3, 5, 4, 1, 1, 3, "identity", torch.float32),  # tiles span images; rate 3 reaches past a 5x4 map
        (2, 9, 7, 1, 2, 2, "downsample", torch.float32),  # stride_on="dw": a downsampling block
        (2, 8, 6, 2, 1, 1, "downsample", torch.float32),  # stride_on="1x1": the first 1x1 strided
        (1, 6, 6, 1, 1, 2, "downsample", torch.float32),  # first block of stage 1: channels change, no stride
        (2, 3, 3, 1, 2, 3, "downsample", torch.float32),  # a tiny map: one output row per image
        (2, 9, 7, 1, 2, 2, "downsample", torch.bfloat16),
        (3, 5, 4, 1, 1, 1, "identity", torch.float16),
    ],
)
def test_dsr_block_matches_the_unfused_block(n, h, w, stride_1x1, stride, dilation, shortcut, dtype):
    cin, c = 12, 20
    cout = cin if shortcut == "identity" else 36
    x, w1, b1, w_dw, b_dw, w_pw, b_pw, w_ds, b_ds = _whole_block_inputs(n, cin, c, cout, h, w, shortcut)
    y1 = F.relu(F.conv2d(x, w1, b1, stride_1x1))
    ref = _block_reference(y1, w_dw, b_dw, w_pw, b_pw, x, w_ds, b_ds, stride, dilation, stride * stride_1x1)
    kn = (lambda conv: conv[:, :, 0, 0].t().contiguous())  # noqa: E731
    bias = b_pw if w_ds is None else b_pw + b_ds
    args = [x, kn(w1), b1, ops.pack_taps(w_dw), b_dw, kn(w_pw), bias, None if w_ds is None else kn(w_ds)]
    y = ops.dsr_block(*(None if t is None else t.to(dtype) for t in args), stride_1x1, stride, dilation,
                      stride * stride_1x1)  # fmt: skip
    assert y.shape == ref.shape and y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref, {torch.float32: 1e-4, torch.float16: 5e-3}.get(dtype, 2e-2))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dsr_block_scratch_holds_every_tile_s_tap_rows(stride, dilation):
    """A program's first scratch slot holds ``halo_rows`` rows of the depthwise input map: at least what the
    kernel's [lo, hi) spans for any tile (found here by brute force, as the kernel computes lo and hi), for maps
    smaller and larger than a tile, tiles crossing images, and every tile size the kernel is configured with."""
    from dsrnet.kernels import _triton as tk

    def spanned_rows(m, ho, wo, h1, tile):
        most = 0
        for first in range(0, m, tile):
            last = min(first + tile, m) - 1
            lo = (first // (ho * wo)) * h1 + max((first % (ho * wo)) // wo * stride - dilation, 0)
            hi = (last // (ho * wo)) * h1 + min((last % (ho * wo)) // wo * stride + dilation, h1 - 1) + 1
            most = max(most, hi - lo)
        return most

    tiles = {c.kwargs["TILE_M"] for c in tk._BLOCK_CONFIGS} | {16, 32}
    for h1 in (1, 3, 4, 7, 8, 16, 32, 33):
        ho = (h1 - 1) // stride + 1
        for tile in sorted(tiles):
            needed = spanned_rows(5 * ho * ho, ho, ho, h1, tile)
            assert needed <= tk.halo_rows(tile, ho, stride, dilation), (h1, tile)
    # and not wastefully more: 128-pixel tiles of a 32 x 32 map span 4 output rows (+ 1 halo row each side at rate 1,
    # stride 1); the bound allows for a tile that starts mid-row, and one row of slack
    if (stride, dilation) == (1, 1):
        assert spanned_rows(2 * 32 * 32, 32, 32, 32, 128) == 6 == tk.halo_rows(128, 32, 1, 1) - 2


def test_dsr_block_without_triton_installed_takes_the_fallback(monkeypatch):
    """No Triton at all (``dsrnet.kernels._triton`` not importable): the op sizes no scratch and runs PyTorch."""
    x, w1, b1, w_dw, b_dw, w_pw, b_pw, _, _ = _whole_block_inputs(1, 12, 20, 12, 5, 5, "identity")
    kn = (lambda conv: conv[:, :, 0, 0].t().contiguous())  # noqa: E731
    args = (x, kn(w1), b1, ops.pack_taps(w_dw), b_dw, kn(w_pw), b_pw, None, 1, 1, 2, 1)
    with_triton = ops.dsr_block(*args)
    monkeypatch.setattr(ops, "_tk", None)
    ops._block_scratch.cache_clear()  # (sized above, with Triton)
    _close(ops.dsr_block(*args), with_triton, 1e-5)


def test_dsr_block_rejects_mismatched_arguments():
    x, w1, b1, w_dw, b_dw, w_pw, b_pw, _, _ = _whole_block_inputs(1, 12, 20, 12, 5, 5, "identity")
    kn = (lambda conv: conv[:, :, 0, 0].t().contiguous())  # noqa: E731
    taps = ops.pack_taps(w_dw)
    with pytest.raises(DsrnetError, match=r"dsr_block wants x \[N, Cin, H, W\] and w1 \[Cin, C\], got \[1, 12, 5, 5\] "
                                          r"and \[20, 12\]"):  # fmt: skip
        ops.dsr_block(x, kn(w1).t(), b1, taps, b_dw, kn(w_pw), b_pw, None, 1, 1, 1, 1)
    with pytest.raises(DsrnetError, match=r"dsr_block wants b_dw of shape \[20\]"):
        ops.dsr_block(x, kn(w1), b1, taps, b_dw[:3], kn(w_pw), b_pw, None, 1, 1, 1, 1)
    with pytest.raises(DsrnetError, match=r"dsr_block without w_ds adds x itself \(identity shortcut\), so its output "
                                          r"\[1, 12, 3, 3\] must have x's shape \[1, 12, 5, 5\]; fix: pass w_ds"):
        ops.dsr_block(x, kn(w1), b1, taps, b_dw, kn(w_pw), b_pw, None, 1, 2, 1, 2)  # a stride needs a downsample


def test_fallback_without_interpreter_gives_the_same_numbers(monkeypatch):
    x, weight, bias = (t.requires_grad_() for t in _dw_inputs(torch.float32))
    grad = torch.randn(1, 20, 4, 5)
    y_triton = ops.dwconv2d(x, weight, bias, 2, 3, True)
    g_triton = torch.autograd.grad(y_triton, (x, weight, bias), grad)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not ops.triton_usable(x)
    y_fallback = ops.dwconv2d(x, weight, bias, 2, 3, True)
    g_fallback = torch.autograd.grad(y_fallback, (x, weight, bias), grad)
    assert y_fallback.is_contiguous(memory_format=torch.channels_last)
    _close(y_fallback, y_triton, 1e-5)
    for a, b in zip(g_fallback, g_triton, strict=True):
        _close(a, b, 1e-5)


def test_custom_op_registrations_pass_opcheck():
    # Schema, fake (meta) kernel, autograd registration and AOT dispatch: what torch.compile relies on.
    x, weight, bias = (t.requires_grad_() for t in _dw_inputs(torch.float32, c=5, h=4, w=3))
    torch.library.opcheck(torch.ops.dsrnet.dwconv2d.default, (x, weight, bias, 2, 2, True))
    g = torch.randn(1, 5, 4, 3)
    torch.library.opcheck(torch.ops.dsrnet.dwconv2d_grad_weight.default, (g, x.detach(), 1, 1))
    centre, scale, shift = (t.requires_grad_() for t in _affine_inputs(5))
    torch.library.opcheck(torch.ops.dsrnet.dwconv2d_affine_relu.default, (x, centre, scale, shift, weight, 1, 2))
    affine = torch.stack((centre, scale, shift)).detach()
    torch.library.opcheck(
        torch.ops.dsrnet.dwconv2d_affine_relu_grad_input.default, (g, x.detach(), affine, weight.detach(), 1, 1)
    )
    # The inference ops and the input gradient; NCHW inputs too (the fake kernels promise channels-last outputs).
    for xi in (x.detach(), x.detach().contiguous()):
        torch.library.opcheck(torch.ops.dsrnet.dwconv2d_grad_input.default, (g, weight.detach(), 4, 3, 1, 1))
        w_kn, b = torch.randn(5, 6), torch.randn(6)
        torch.library.opcheck(torch.ops.dsrnet.pointwise_conv.default, (xi, w_kn, b, None, 2, True))
        taps = ops.pack_taps(weight.detach())
        res = torch.randn(1, 6, 4, 3)
        torch.library.opcheck(torch.ops.dsrnet.dw_pw_block.default,
                              (xi, taps, torch.randn(5), w_kn, b, res, None, 1, 2, 1))  # fmt: skip
        torch.library.opcheck(torch.ops.dsrnet.dsr_block.default,
                              (xi, w_kn, b, ops.pack_taps(torch.randn(6, 1, 3, 3)), torch.randn(6),
                               torch.randn(6, 7), torch.randn(7), torch.randn(5, 7), 1, 2, 2, 2))  # fmt: skip
        # the chain kernel: with the depthwise conv and the next 1x1 (stride 2, downsample shortcut), and without
        w1, b1 = torch.randn(6, 3), torch.randn(3)
        torch.library.opcheck(torch.ops.dsrnet.pointwise_chain.default,
                              (xi, w_kn, b, torch.randn(1, 4, 4, 3), torch.randn(4, 6), 2, w1, b1, taps,
                               torch.randn(5), 2, 3))  # fmt: skip
        torch.library.opcheck(torch.ops.dsrnet.pointwise_chain.default,
                              (xi, w_kn, b, torch.randn(1, 6, 4, 3), None, 1, None, None))  # fmt: skip


def test_dwconv2d_under_torch_compile_matches_eager():
    x, weight, bias = (t.requires_grad_() for t in _dw_inputs(torch.float32, c=6, h=5, w=5))

    def f(x, weight, bias):
        return ops.dwconv2d(x, weight, bias, 1, 2, True).sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x, weight, bias), (x, weight, bias))
    want = torch.autograd.grad(f(x, weight, bias), (x, weight, bias))
    for a, b in zip(got, want, strict=True):
        _close(a, b, 1e-5)


def test_autotune_bucket_is_the_next_power_of_two():
    # A test set's last partial batch (784 of 1024 images) falls in the bucket its full batches were tuned for.
    assert ops._tune_size(784 * 16) == ops._tune_size(1024 * 16) == 16384
    assert [ops._tune_size(n) for n in (1, 2, 3, 4, 5, 1023, 1024, 1025)] == [1, 2, 4, 4, 8, 1024, 1024, 2048]


def test_fp32_kernels_follow_tf32_set_by_either_pytorch_api():
    # The new fp32_precision API made reading the legacy allow_tf32 flag raise: every fp32 fused call crashed.
    x = torch.randn(1, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(8, 4), torch.randn(4)
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert not ops._ieee(x)
        ops.pointwise_conv(x, w, b, None, 1, False)
        matmul.fp32_precision = "ieee"
        assert ops._ieee(x)
        _close(ops.pointwise_conv(x, w, b, None, 1, False), F.conv2d(x, w.t()[:, :, None, None], b), 1e-4)
    finally:
        matmul.fp32_precision = before


def test_strided_small_arguments_are_read_as_values_not_as_memory():
    # Bias / tap vectors that are views with a stride (e.g. t[::2]) were indexed as if contiguous.
    x, weight, _ = _dw_inputs(torch.float32)
    bias = torch.randn(40)[::2]
    _close(ops.dwconv2d(x, weight, bias, 1, 2, False), F.conv2d(x, weight, bias, 1, 2, 2, 20), 1e-4)
    w_pw, b_pw = torch.randn(20, 12), torch.randn(24)[::2]
    _close(ops.pointwise_conv(x, w_pw, b_pw, None, 1, False), F.conv2d(x, w_pw.t()[:, :, None, None], b_pw), 1e-4)
    taps = ops.pack_taps(weight).t().contiguous().t()  # [9, C] with strides (1, 9)
    b_dw = torch.randn(40)[::2]
    got = ops.dw_pw_block(x, taps, b_dw, w_pw, b_pw, None, None, 1, 1, 1)
    ref = F.relu(F.conv2d(F.relu(F.conv2d(x, weight, b_dw, 1, 1, 1, 20)), w_pw.t()[:, :, None, None], b_pw))
    _close(got, ref, 1e-4)


@pytest.mark.parametrize("triton", [True, False])
def test_arguments_of_the_wrong_shape_are_one_error_on_both_paths(triton, monkeypatch):
    if not triton:
        monkeypatch.delenv("TRITON_INTERPRET")
    x, weight, _ = _dw_inputs(torch.float32)
    w_pw, b = torch.randn(20, 12), torch.randn(12)
    with pytest.raises(DsrnetError, match=r"dwconv2d wants bias of shape \[20\], got \[7\]"):
        ops.dwconv2d(x, weight, torch.randn(7), 1, 1, False)
    with pytest.raises(DsrnetError, match=r"pointwise_conv wants x \[N, C, H, W\] and a weight \[C, Cout\]"):
        ops.pointwise_conv(x, torch.randn(19, 12), b, None, 1, False)
    with pytest.raises(DsrnetError, match=r"dw_pw_block wants x \[N, C, H, W\] .* got \[20, 7, 9\]"):
        ops.dw_pw_block(x[0], ops.pack_taps(weight), torch.randn(20), w_pw, b, None, None, 1, 1, 1)
    with pytest.raises(DsrnetError, match=r"wants the residual \(identity shortcut\) of shape \[1, 12, 7, 9\]"):
        ops.pointwise_conv(x, w_pw, b, torch.randn(1, 12, 7, 8), 1, False)
    with pytest.raises(DsrnetError, match=r"dw_pw_block wants b_dw of shape \[20\]"):
        ops.dw_pw_block(x, ops.pack_taps(weight), torch.randn(3), w_pw, b, None, None, 1, 1, 1)
    with pytest.raises(DsrnetError, match=r"the shortcut \[1, 5, 7, 9\] at stride 2 gives \[4, 5\], not the output's"):
        ops.dw_pw_block(x, ops.pack_taps(weight), torch.randn(20), w_pw, b, torch.randn(1, 5, 7, 9),
                        torch.randn(5, 12), 1, 1, 2)  # fmt: skip
    # the backward ops (public too): a gradient of another layer's shape was read out of bounds (garbage, 1e26)
    grad = torch.randn(1, 20, 7, 9).contiguous(memory_format=torch.channels_last)
    with pytest.raises(DsrnetError, match=r"dwconv2d_grad_weight wants grad of shape \[1, 20, 7, 9\], got \[1, 4"):
        ops.dwconv2d_grad_weight(grad[:, :4], x, 1, 1)
    with pytest.raises(DsrnetError, match=r"dwconv2d_grad_weight wants grad of shape \[2, 20, 7, 9\]"):
        ops.dwconv2d_grad_weight(grad, torch.cat([x, x]), 1, 1)
    with pytest.raises(DsrnetError, match=r"dwconv2d_grad_weight wants grad of shape \[1, 20, 4, 5\]"):
        ops.dwconv2d_grad_weight(grad, x, 2, 1)  # the stride-2 output is 4x5
    with pytest.raises(DsrnetError, match=r"dwconv2d_grad_input wants weight of shape \[20, 1, 3, 3\]"):
        ops.dwconv2d_grad_input(grad, weight[:4], 7, 9, 1, 1)
    with pytest.raises(DsrnetError, match=r"dwconv2d_grad_input wants grad of shape \[1, 20, 4, 5\]"):
        ops.dwconv2d_grad_input(grad, weight, 7, 9, 2, 1)
    with pytest.raises(DsrnetError, match=r"dwconv2d_affine_relu_grad_input wants affine of shape \[3, 20\]"):
        ops.dwconv2d_affine_relu_grad_input(grad, x, torch.randn(3, 2), weight, 1, 1)


def test_an_empty_batch_runs_on_the_fallback(monkeypatch):
    import dsrnet

    monkeypatch.delenv("TRITON_INTERPRET")
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, widths=(4, 8, 8, 16), layers=(1, 1, 1, 1)).eval()
    for mode in ("fused", "split"):
        with torch.inference_mode():
            assert dsrnet.fuse(model, mode=mode)(torch.randn(0, 3, 9, 9)).shape == (0, 10)


# (kernel, stride, dilation): DSRNet's cifar stem (3x3, stride 1, rates 1 and 3) and paper stem (7x7, stride 2)
STEM_GEOMETRIES = [(3, 1, 1), (3, 1, 3), (7, 2, 1), (7, 2, 3), (3, 2, 2)]


@pytest.mark.parametrize(("kernel", "stride", "dilation"), STEM_GEOMETRIES)
@pytest.mark.parametrize("channels_last", [True, False])
def test_direct_conv_matches_conv2d_bias_relu(kernel, stride, dilation, channels_last):
    # 20 outputs (not a multiple of the 16-wide interpreter block), odd 11x9 image, batch 1; padding = the model's
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 11, 9, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(20, 3, kernel, kernel, generator=g), torch.randn(20, generator=g)
    padding = dilation * (kernel - 1) // 2
    assert ops.triton_usable(x)
    y = ops.direct_conv(x, ops.pack_direct(weight), bias, kernel, stride, padding, dilation, True)
    ref = F.relu(F.conv2d(x, weight, bias, stride, padding, dilation))
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    _close(y, ref, 1e-4)
    no_relu = ops.direct_conv(x, ops.pack_direct(weight), bias, kernel, stride, padding, dilation, False)
    _close(no_relu, F.conv2d(x, weight, bias, stride, padding, dilation), 1e-4)
    assert (no_relu < 0).any()  # the ReLU switch is tested, not a no-op on all-positive outputs


def test_direct_conv_bf16_and_the_fallback_agree_with_conv2d(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x, weight, bias = torch.randn(2, 3, 8, 8, generator=g), torch.randn(16, 3, 3, 3, generator=g), torch.randn(16)
    ref = F.relu(F.conv2d(x, weight, bias, 1, 3, 3))
    got = ops.direct_conv(x.bfloat16(), ops.pack_direct(weight).bfloat16(), bias.bfloat16(), 3, 1, 3, 3, True)
    assert got.dtype == torch.bfloat16
    _close(got, ref, 2e-2)
    triton_out = ops.direct_conv(x, ops.pack_direct(weight), bias, 3, 1, 3, 3, True)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not ops.triton_usable(x)
    fallback = ops.direct_conv(x, ops.pack_direct(weight), bias, 3, 1, 3, 3, True)
    assert fallback.is_contiguous(memory_format=torch.channels_last)
    _close(fallback, triton_out, 1e-5)
    assert ops.direct_conv(x[:0], ops.pack_direct(weight), bias, 3, 1, 3, 3, True).shape == (0, 16, 8, 8)


def test_direct_conv_registration_passes_opcheck_and_bad_shapes_are_one_error():
    x, w, b = torch.randn(1, 3, 5, 4), torch.randn(27, 6), torch.randn(6)
    for xi in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.dsrnet.direct_conv.default, (xi, w, b, 3, 2, 1, 1, True))
    with pytest.raises(DsrnetError, match=r"direct_conv wants x \[N, C, H, W\] and a weight \[C \* 3\^2, Cout\]"):
        ops.direct_conv(x, torch.randn(26, 6), b, 3, 1, 1, 1, True)
    with pytest.raises(DsrnetError, match=r"direct_conv wants bias of shape \[6\], got \[5\]"):
        ops.direct_conv(x, w, torch.randn(5), 3, 1, 1, 1, True)


@pytest.mark.parametrize("cin", [1, 4])
def test_direct_conv_reads_any_channel_count_batch_and_strided_view(cin):
    # A model built with in_chans 1 or 4; batch 2 (the image offset); a view every other column (odd strides).
    g = torch.Generator().manual_seed(5)
    full = torch.randn(2, cin, 10, 18, generator=g)
    weight, bias = torch.randn(17, cin, 3, 3, generator=g), torch.randn(17, generator=g)
    for x in (full, full[:, :, :, ::2], full.contiguous(memory_format=torch.channels_last)[:, :, 1:, ::2]):
        got = ops.direct_conv(x, ops.pack_direct(weight), bias, 3, 2, 2, 2, False)
        _close(got, F.conv2d(x, weight, bias, 2, 2, 2), 1e-4)


def test_a_view_spanning_more_than_32_bit_offsets_is_copied_not_misread():
    """A small view of a huge tensor (every other image of a large batch) can span past 2**31 elements: the
    kernels' 32-bit offsets would wrap (a crash, or wrong reads on a GPU). Such views are copied first."""
    c, h, w, n = 16, 4, 4, 3
    s = 2**30 + 2**20  # the batch stride: under 2**31, but image 2 starts past it
    base = torch.empty(2 * s + h * w * c, dtype=torch.float16)  # ~4.3 GB of address space; only 3 images touched
    x = base.as_strided((n, c, h, w), (s, 1, w * c, c))
    src = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0)).half()
    x.copy_(src)
    assert ops.triton_usable(x) and ops._span(x) > 2**31
    weight, bias = torch.randn(c, 1, 3, 3).half(), torch.randn(c).half()
    y = ops.dwconv2d(x, weight, bias, 1, 1, False)
    _close(y, F.conv2d(src.float(), weight.float(), bias.float(), 1, 1, 1, c), 2e-2)
    del x, base
