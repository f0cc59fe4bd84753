"""``torch.library`` custom ops around the Triton kernels, with a plain-PyTorch fallback of the same math.

Every op takes and returns NCHW-shaped tensors; outputs are always allocated channels-last (NHWC in memory), which is
what the kernels write and what ``register_fake`` promises to ``torch.compile``. Which implementation runs is decided
per call (:func:`triton_usable`): the Triton kernel on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``); otherwise the fallback (``torch.nn.functional.conv2d`` and friends). Set
``DSRNET_DISABLE_TRITON=1`` to force the fallback, e.g. to compare the two.

Ops (namespace ``dsrnet``):

* ``dwconv2d(x, weight, bias, stride, dilation, relu)``: depthwise 3x3, padding = dilation; differentiable
  (backward = ``dwconv2d_grad_input`` + ``dwconv2d_grad_weight``, both Triton kernels too).
* ``dwconv2d_affine_relu(x, centre, scale, shift, weight, stride, dilation)``: the depthwise 3x3 of ``relu((x -
  centre) * scale + shift)`` (a BatchNorm with known statistics, then a ReLU, in the kernel's prologue);
  differentiable in all five tensors (backward = ``dwconv2d_affine_relu_grad_input`` + ``dwconv2d_grad_weight``
  with ``affine``).
* ``pointwise_conv(x, w_kn, bias, residual, stride, relu, w_ds=None, ds_stride=1)``: 1x1 conv with weight
  ``[Cin, Cout]`` (+ a residual, or with ``w_ds`` the block's strided 1x1 downsample of it); inference only.
* ``pointwise_chain(x, w_kn, bias, shortcut, w_ds, ds_stride, w1_next, b1_next, w_dw=None, b_dw=None, stride=1,
  dilation=1)``: ``pointwise_conv`` with a shortcut, and the next DSR block's first 1x1 + bias + ReLU of its
  output from the same tile: ``(y, m)``; with ``w_dw`` the block's depthwise conv of ``x`` first, in the same
  kernel; inference only (``fuse(mode="chain")``).
* ``dw_pw_block(x, w_dw, b_dw, w_pw, bias, shortcut, w_ds, stride, dilation, ds_stride)``: the fused second half of
  a folded DSR block (depthwise 3x3 + bias + ReLU -> 1x1 + bias + shortcut + ReLU); inference only.
* ``dsr_block(x, w1, b1, w_dw, b_dw, w_pw, bias, w_ds, stride_1x1, stride, dilation, ds_stride)``: a whole
  folded DSR block in one persistent kernel (first 1x1 -> depthwise 3x3 -> 1x1 + shortcut, each + bias + ReLU);
  inference only.
* ``direct_conv(x, w_packed, bias, kernel_size, stride, padding, dilation, relu)``: a KxK conv of an input with few
  channels (the stem) + bias + ReLU in one pass, weight ``[Cin * k * k, Cout]`` (:func:`pack_direct`); inference
  only.
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn.functional as F

from dsrnet.device import tf32_matmul
from dsrnet.errors import DsrnetError

try:  # Triton is optional: without it (or on a CPU without the interpreter) every op uses the fallback.
    from dsrnet.kernels import _triton as _tk
except ImportError:  # pragma: no cover - depends on the install
    _tk = None

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_MAX_NUMEL = 2**31  # the kernels use 32-bit offsets


def triton_usable(t: torch.Tensor, out_numel: int = 0) -> bool:
    """Whether the Triton kernels run for tensor ``t`` now (CUDA, or CPU under ``TRITON_INTERPRET=1``).

    ``out_numel``: size of the op's output, which must also fit the kernels' 32-bit offsets.
    """
    if _tk is None or os.environ.get("DSRNET_DISABLE_TRITON", "0") == "1" or t.dtype not in _KERNEL_DTYPES:
        return False
    if max(t.numel(), out_numel) >= _MAX_NUMEL:
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and _tk.interpreting() and _tk.helpers_interpreted()


def precompile(fn, workers: int | None = None):
    """Call ``fn()`` once with every launch of these kernels compiling all its autotune configs instead of running
    (:func:`dsrnet.kernels._triton.precompiling`: ``workers`` processes, default one per CPU, fill Triton's
    on-disk cache), so that the next real call at the same shapes only autotunes. Give it a throw-away call with
    the real shapes and dtypes (a forward, or forward + backward for training): outputs are garbage, so never step
    an optimiser in it, and BatchNorm statistics it updates in training mode are garbage too. Returns the pass's
    :class:`~dsrnet.kernels._triton.Precompile` record (launches, specializations, how many compiled, errors:
    reported, never raised), or ``None`` -- without calling ``fn`` -- where nothing would compile (no Triton, no
    CUDA, Triton's interpreter)."""
    if _tk is None or _tk.interpreting() or not torch.cuda.is_available():
        return None
    with _tk.precompiling(workers) as pass_:
        fn()
    return pass_


def precompiling_now() -> bool:
    """Whether a :func:`precompile` pass is running: launches compile instead of run and outputs are garbage, so
    nothing may be measured or decided from them."""
    return _tk is not None and _tk._PRECOMPILE is not None


def _out_size(size: int, stride: int) -> int:
    # 3x3, padding = dilation: (size + 2d - 2d - 1) // stride + 1 for every rate.
    return (size - 1) // stride + 1


def _empty_nhwc(n: int, c: int, h: int, w: int, like: torch.Tensor, dtype=None) -> torch.Tensor:
    return torch.empty((n, c, h, w), device=like.device, dtype=dtype or like.dtype, memory_format=torch.channels_last)


def _pixel_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides of (n, h, w); the kernels need channels contiguous (see :func:`_channels_inner`)."""
    return t.stride(0), t.stride(2), t.stride(3)


def _span(t: torch.Tensor) -> int:
    """Elements from ``t``'s first to its last, in memory: what the kernels' 32-bit offsets must reach (a view can
    span far more than its own ``numel``, e.g. every other image of a large batch)."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True)) if t.numel() else 0


def _channels_inner(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its channels are contiguous (channels-last, or a view of it) and its span fits the kernels'
    32-bit offsets, else a channels-last copy (dense: its span is its ``numel``, which the callers check)."""
    return t if t.stride(1) == 1 and _span(t) < _MAX_NUMEL else t.contiguous(memory_format=torch.channels_last)


def _as_nhwc(src: torch.Tensor) -> torch.Tensor:
    """A fresh channels-last copy: fixed strides even where the two formats coincide (1x1 maps, one channel); under
    ``torch.jit.trace`` the plain conversion (the TorchScript ONNX exporter has no ``aten::copy``)."""
    if torch.jit.is_tracing():
        return src.contiguous(memory_format=torch.channels_last)
    out = _empty_nhwc(*src.shape, like=src)
    return out.copy_(src)


def _kernel_operand(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` and contiguous, as the kernels read it (tl.dot: both operands in one dtype), copied only
    when it is not already (a fused model's weights are: no per-call work)."""
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


def pack_taps(weight: torch.Tensor) -> torch.Tensor:
    """Depthwise weight ``[C, 1, 3, 3]`` -> ``[9, C]``: each tap's channels contiguous for the kernels."""
    return weight.reshape(weight.shape[0], 9).t().contiguous()


def _tap_strides(weight: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A depthwise weight ``[C, 1, 3, 3]`` as the depthwise kernels read it: the weight, the stride between its taps
    and between its channels. No copy where the 3x3 taps are evenly spaced (a conv's own weight: 1 and 9; a fused
    model's packed ``[9, C]`` viewed back: C and 1); packing it took a copy kernel per call, two per layer and
    training step."""
    if weight.stride(2) != 3 * weight.stride(3):
        weight = weight.contiguous()
    return weight, weight.stride(3), weight.stride(0)


def _check_dw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    if x.dim() != 4 or weight.shape != (x.shape[1], 1, 3, 3):
        raise DsrnetError(
            f"dwconv2d wants x [N, C, H, W] and weight [C, 1, 3, 3], got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    _check_shape("dwconv2d", "bias", bias, (x.shape[1],))


def _check_shape(op: str, name: str, t: torch.Tensor | None, want: tuple[int, ...]) -> None:
    """One clear error for an argument of the wrong shape: the kernels index their arguments by the shapes of the
    others, so a wrong one would be read out of bounds (the PyTorch fallback raises, deep in some op)."""
    if t is not None and tuple(t.shape) != want:
        raise DsrnetError(f"{op} wants {name} of shape {list(want)}, got {list(t.shape)}")


def _check_dw_grad(op: str, grad: torch.Tensor, x_shape: tuple[int, ...], weight: torch.Tensor | None, stride: int,
                   affine: torch.Tensor | None = None) -> None:  # fmt: skip
    """The backward ops' arguments against the forward's input shape ``x_shape`` [N, C, H, W]: ``grad`` must be the
    output's gradient, [N, C, out(H), out(W)] at ``stride``; ``weight`` [C, 1, 3, 3]; ``affine`` [3, C]. The kernels
    index each by the others' shapes (:func:`_check_shape`)."""
    if len(x_shape) != 4 or grad.dim() != 4:
        raise DsrnetError(f"{op} wants 4-d tensors [N, C, H, W], got {list(grad.shape)} and {list(x_shape)}")
    n, c, h, w = x_shape
    _check_shape(op, "grad", grad, (n, c, _out_size(h, stride), _out_size(w, stride)))
    _check_shape(op, "weight", weight, (c, 1, 3, 3))
    _check_shape(op, "affine", affine, (3, c))


def _check_pw(op: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, shortcut: torch.Tensor | None,
              w_ds: torch.Tensor | None, stride: int, ds_stride: int) -> None:  # fmt: skip
    """The arguments of the 1x1 (``pointwise_conv``) and fused (``dw_pw_block``) ops: ``w`` [Cin, Cout] against
    ``x``, the bias, and the shortcut (identity: the output's shape; downsampled: [N, Cin_ds, ., .] with ``w_ds``
    [Cin_ds, Cout] reaching the output's size at ``ds_stride``)."""
    if x.dim() != 4 or w.dim() != 2 or w.shape[0] != x.shape[1]:
        raise DsrnetError(f"{op} wants x [N, C, H, W] and a weight [C, Cout], got {list(x.shape)} and {list(w.shape)}")
    n, cout = x.shape[0], w.shape[1]
    out_hw = (_out_size(x.shape[2], stride), _out_size(x.shape[3], stride))
    _check_shape(op, "bias", bias, (cout,))
    if shortcut is None:
        return
    if w_ds is None:
        _check_shape(op, "the residual (identity shortcut)", shortcut, (n, cout, *out_hw))
        return
    if w_ds.dim() != 2 or w_ds.shape[1] != cout or shortcut.dim() != 4 or shortcut.shape[:2] != (n, w_ds.shape[0]):
        raise DsrnetError(f"{op} wants a shortcut [N, Cin, H, W] and w_ds [Cin, {cout}], got {list(shortcut.shape)} "
                          f"and {list(w_ds.shape)}")  # fmt: skip
    reached = (_out_size(shortcut.shape[2], ds_stride), _out_size(shortcut.shape[3], ds_stride))
    if reached != tuple(out_hw):
        raise DsrnetError(f"{op}: the shortcut {list(shortcut.shape)} at stride {ds_stride} gives {list(reached)}, "
                          f"not the output's {list(out_hw)}")  # fmt: skip


def _cdiv(a: int, b: int) -> int:
    """Ceiling division on the host, for launch grids and work splits. ``triton.cdiv`` is a ``ConstexprFunction``
    in Triton 3.8 whose host call took ~4 us each (two per launch grid): launch cost is host time the GPU waits
    for at small batches (BENCHMARKS.md, "Fused DSRNet")."""
    return -(-a // b)


def _launch(t: torch.Tensor):
    """Launch on ``t``'s GPU (Triton launches on the current device); a no-op context on the CPU interpreter."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


#: Launch every kernel with programmatic dependent launch where the GPU has it (sm_90 and later): a kernel may start
#: while the one before it in the stream finishes, and waits in its first instruction for that one's writes
#: (``_dependent_launch`` in ``dsrnet.kernels._triton``), so consecutive kernels overlap a launch and a tail, not
#: work. What that is worth is the gaps between ~50 short kernels per forward: at batch 128 as a CUDA graph a fused
#: DSRNet-50's whole forward takes ~1 ms. Off until a GPU times it (``benchmarks/fused_gpu.py``'s ``*_pdl`` forms).
PDL = False


@functools.cache
def _has_dependent_launch(device: torch.device) -> bool:
    """An NVIDIA GPU of compute capability 9.0 or later (ROCm reports its own numbers as capabilities, 9.x on
    MI200/MI300, whose Triton backend has no ``launch_pdl`` and whose assembler no ``griddepcontrol``)."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def _dependent_launch(t: torch.Tensor) -> dict:
    """A launch's extra arguments for :data:`PDL`: Triton's ``launch_pdl`` and the kernel's ``GDC`` (its wait),
    always both (a kernel launched early must wait), or neither (off, or not a Hopper-or-later GPU, or the CPU
    interpreter, which cannot run the wait, CUDA tensors included). The inference kernels take them, which follow
    each other, and so the depthwise forward of a training step (``use_triton_dwconv``: it follows an inductor
    kernel, which lets nothing start before it ends, so the launch is as without them); the backward kernels and
    the forward with the BatchNorm prologue do not."""
    if PDL and t.is_cuda and not _tk.interpreting() and _has_dependent_launch(t.device):
        return {"GDC": True, "launch_pdl": True}
    return {}


def _pixel_channel_grid(pixels: int, channels: int):
    """Launch grid of the depthwise kernels: pixel blocks x channel blocks (block sizes from autotune)."""
    return lambda meta: (_cdiv(pixels, meta["BLOCK_P"]), _cdiv(channels, meta["BLOCK_C"]))


def _gemm_grid(rows: int, cols: int, sms: int = 1):
    """Launch grid of the 1x1 (GEMM) kernels: one program per output tile, flattened; a persistent config
    (``PER_SM`` > 0) gets at most ``PER_SM`` programs per SM, each looping over tiles."""

    def grid(meta):
        tiles = _cdiv(rows, meta["BLOCK_M"]) * _cdiv(cols, meta["BLOCK_N"])
        per_sm = meta.get("PER_SM", 0)
        return (min(tiles, sms * per_sm) if per_sm else tiles,)

    return grid


# ---------------------------------------------------------------------------------------------------------------
# depthwise conv, differentiable
# ---------------------------------------------------------------------------------------------------------------
def _dwconv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, dilation: int, relu: bool
) -> torch.Tensor:
    _check_dw(x, weight, bias)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    if n * ho * wo == 0:  # nothing to compute (and nothing for the autotuner to time and keep on disk)
        return _empty_nhwc(n, c, ho, wo, like=x)
    if not triton_usable(x, n * c * ho * wo):
        return _as_nhwc(_dw_reference(x, weight, bias, stride, dilation, relu))
    return _run_dw_fwd(x, weight, bias, None, stride, dilation, relu)


def _dw_reference(x, weight, bias, stride: int, dilation: int, relu: bool) -> torch.Tensor:
    """:func:`dwconv2d` in PyTorch's ops (the fallback, and the form a second derivative differentiates)."""
    bias = None if bias is None else bias.to(x.dtype)
    y = F.conv2d(x, weight.to(x.dtype), bias, stride, dilation, dilation, x.shape[1])
    return F.relu(y) if relu else y


dwconv2d = torch.library.custom_op("dsrnet::dwconv2d", _dwconv2d, mutates_args=())


def _dw_fwd_grid(n: int, channels: int, ho: int, wo: int, stride: int, dilation: int):
    """Launch grid of ``dw_fwd``: pixel blocks x channel blocks, or for a sliding-row config (:func:`slides`)
    column blocks x residue classes x row strips, x channel blocks (block sizes from autotune)."""

    def grid(meta):
        rows = meta.get("ROWS", 0)
        if not _tk.slides(rows, stride, dilation):
            return _pixel_channel_grid(n * ho * wo, channels)(meta)
        classes = dilation // stride
        strips = _cdiv(_cdiv(ho, classes), rows)
        return (_cdiv(n * wo, meta["BLOCK_P"]) * classes * strips, _cdiv(channels, meta["BLOCK_C"]))

    return grid


def _run_dw_fwd(x, weight, bias, affine, stride: int, dilation: int, relu: bool, flip: bool = False) -> torch.Tensor:
    """The ``dw_fwd`` kernel's output: bias and ReLU epilogue, and with ``affine`` ([centre; scale; shift], fp32
    [3, C]) the ``relu((x - centre) * scale + shift)`` prologue on the taps it loads; ``flip``: the taps read in
    reverse order (a stride-1 conv's input gradient is the conv of the output gradient with them)."""
    n, c, h, w = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    x = _channels_inner(x)
    y = _empty_nhwc(n, c, ho, wo, like=x)
    p = n * ho * wo
    weight, swt, swc = _tap_strides(weight)
    w_off, swt = (8 * swt, -swt) if flip else (0, swt)
    with _launch(x):
        _tk.dw_fwd[_dw_fwd_grid(n, c, ho, wo, stride, dilation)](
            x, weight, weight if bias is None else bias.contiguous(), weight if affine is None else affine, y,
            p, c, h, w, ho, wo, *_pixel_strides(x), *_pixel_strides(y), swt, swc, w_off, _tune_size(p),
            STRIDE=stride, DIL=dilation, HAS_BIAS=bias is not None, RELU=relu, AFFINE=affine is not None,
            # not with the BatchNorm prologue (training, between inductor's kernels: nothing to overlap; and its
            # sm_90 build would spill with the wait in it), nor as a backward kernel (flip: the input gradient)
            **(_dependent_launch(x) if affine is None and not flip else {}),
        )  # fmt: skip
    return y


def _dw_out_like(x: torch.Tensor, stride: int) -> torch.Tensor:
    """An empty channels-last tensor of a depthwise 3x3's output shape (the ops' fake kernels)."""
    n, c, h, w = x.shape
    return _empty_nhwc(n, c, _out_size(h, stride), _out_size(w, stride), like=x)


dwconv2d.register_fake(lambda x, weight, bias, stride, dilation, relu: _dw_out_like(x, stride))


@torch.library.custom_op("dsrnet::dwconv2d_grad_input", mutates_args=())
def dwconv2d_grad_input(
    grad: torch.Tensor, weight: torch.Tensor, height: int, width: int, stride: int, dilation: int
) -> torch.Tensor:
    _check_dw_grad("dwconv2d_grad_input", grad, (*grad.shape[:2], height, width), weight, stride)
    n, c = grad.shape[:2]
    if not triton_usable(grad, n * c * height * width):
        dx = torch.nn.grad.conv2d_input(
            (n, c, height, width), weight.to(grad.dtype), grad, stride, dilation, dilation, c
        )
        return _as_nhwc(dx)
    if stride == 1:  # the same conv of the gradient with the taps reversed: the forward kernel and its configs
        return _run_dw_fwd(grad, weight, None, None, 1, dilation, False, flip=True)
    return _run_dw_bwd_input(grad, weight, (n, c, height, width), stride, dilation)


def _run_dw_bwd_input(grad, weight, shape, stride: int, dilation: int, affine=None) -> torch.Tensor:
    """The ``dw_bwd_input`` kernel's input gradient (channels-last, of ``shape``); ``affine = (x, [centre; scale;
    shift], part)``: taken back through ``relu((x - centre) * scale + shift)``, with per-program partial sums
    written to ``part``."""
    n, c, h, w = shape
    grad = _channels_inner(grad)
    dx = _empty_nhwc(n, c, h, w, like=grad)
    x, packed, part = affine or (dx, weight, dx)
    p = n * h * w
    weight, swt, swc = _tap_strides(weight)
    with _launch(grad):
        _tk.dw_bwd_input[_pixel_channel_grid(p, c)](
            grad, weight, dx, x, packed, part,
            p, c, h, w, grad.shape[2], grad.shape[3], *_pixel_strides(grad), *_pixel_strides(dx), *_pixel_strides(x),
            swt, swc, _tune_size(p), STRIDE=stride, DIL=dilation, AFFINE=affine is not None,
        )  # fmt: skip
    return dx


@dwconv2d_grad_input.register_fake
def _(grad, weight, height, width, stride, dilation):
    return _empty_nhwc(grad.shape[0], grad.shape[1], height, width, like=grad)


@torch.library.custom_op("dsrnet::dwconv2d_grad_weight", mutates_args=())
def dwconv2d_grad_weight(
    grad: torch.Tensor,
    x: torch.Tensor,
    stride: int,
    dilation: int,
    affine: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weight gradient ``[C, 1, 3, 3]`` in float32 (the caller casts to the parameter's dtype). With ``affine``
    ([centre; scale; shift], fp32 [3, C]) the conv's input was ``relu((x - centre) * scale + shift)``
    (:func:`dwconv2d_affine_relu`), recomputed from ``x`` as it is read."""
    _check_dw_grad("dwconv2d_grad_weight", grad, tuple(x.shape), None, stride, affine)
    n, c, h, w = x.shape
    ho, wo = grad.shape[2], grad.shape[3]
    if not triton_usable(x, grad.numel()):
        wide = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs (gradcheck)
        a = x.to(wide) if affine is None else _affine_relu(x, affine)
        return torch.nn.grad.conv2d_weight(a, (c, 1, 3, 3), grad.to(wide), stride, dilation, dilation, c).contiguous()
    x, grad = _channels_inner(x), _channels_inner(grad)
    p = n * ho * wo
    programs, pix, cols = _weight_grad_split(n, ho, wo, c, stride, dilation, 64 if _tk.interpreting() else 256)
    part = torch.empty((programs, c, 9), device=x.device, dtype=torch.float32)
    grid = lambda meta: (programs, _cdiv(c, meta["BLOCK_C"]))  # noqa: E731
    with _launch(x):
        _tk.dw_bwd_weight[grid](
            grad, x, x if affine is None else affine, part,
            p, c, h, w, ho, wo, pix, cols, *_pixel_strides(grad), *_pixel_strides(x), _tune_size(p),
            STRIDE=stride, DIL=dilation, AFFINE=affine is not None,
        )  # fmt: skip
    return part.sum(0).view(c, 1, 3, 3)  # [C, 9] summed: the weight's own layout, no copy after the sum


def _weight_grad_split(n: int, ho: int, wo: int, c: int, stride: int, dilation: int, granule: int):
    """How ``dw_bwd_weight`` splits its work: (programs, pixels per pixel-tile program, (image, column) pairs per
    sliding-row program). A few hundred programs per channel block, the same number whichever config the
    autotuner runs, each writing its own row of partial sums (zeros where it has no work), so the buffer needs no
    zeroing. A pixel tile's program owns ``pix`` flat output pixels (a multiple of ``granule``, itself a multiple of
    every BLOCK_P); a sliding-row program (:func:`_tk.slides`) the ``cols`` pairs of its chunk in one residue class
    of rows (the kernel masks its last block at the chunk's end, so any count works: a multiple of 16 keeps the
    16-wide blocks full; a 32-wide one may end half masked, which costs lanes, where rounding up to 32 would leave
    whole programs idle, e.g. a quarter of them at batch 512, 32 px, rate 3)."""
    p = n * ho * wo
    chunks_wanted = max(1, 1024 // max(1, _cdiv(c, 64)))
    pix = max(granule, _cdiv(_cdiv(p, chunks_wanted), granule) * granule)
    classes = dilation // stride if _tk.slides(1, stride, dilation) else 1
    col_chunks = _cdiv(_cdiv(p, pix), classes)
    cols = _cdiv(_cdiv(n * wo, col_chunks), 16) * 16
    return col_chunks * classes, pix, cols


@dwconv2d_grad_weight.register_fake
def _(grad, x, stride, dilation, affine=None):
    return x.new_empty((x.shape[1], 1, 3, 3), dtype=torch.promote_types(x.dtype, torch.float32))


def _dwconv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, dilation, relu = inputs
    ctx.stride, ctx.dilation, ctx.relu, ctx.has_bias = stride, dilation, relu, bias is not None
    ctx.x_dtype, ctx.w_dtype = x.dtype, weight.dtype
    ctx.b_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, weight, bias, output if relu else None)


def _dwconv2d_backward(ctx, grad):
    x, weight, bias, out = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable themselves
        grads = _graph_keeping_backward(
            lambda x, weight, bias: _dw_reference(x, weight, bias, ctx.stride, ctx.dilation, ctx.relu),
            (x, weight, bias), ctx.needs_input_grad[:3], grad,
        )  # fmt: skip
        return *grads, None, None, None
    if ctx.relu:
        grad = grad * (out > 0)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = dwconv2d_grad_input(grad, weight, x.shape[2], x.shape[3], ctx.stride, ctx.dilation)
        grad_x = grad_x.to(ctx.x_dtype)
    if ctx.needs_input_grad[1]:
        grad_w = dwconv2d_grad_weight(grad, x, ctx.stride, ctx.dilation).to(ctx.w_dtype)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad.to(torch.promote_types(grad.dtype, torch.float32)).sum((0, 2, 3)).to(ctx.b_dtype)
    return grad_x, grad_w, grad_b, None, None, None


dwconv2d.register_autograd(_dwconv2d_backward, setup_context=_dwconv2d_setup)


# ---------------------------------------------------------------------------------------------------------------
# training: the preceding BatchNorm (its statistics known) and ReLU in the depthwise conv's prologue
# ---------------------------------------------------------------------------------------------------------------
def _affine_relu(x: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """``relu((x - centre) * scale + shift)`` per channel in fp32, ``affine = [centre; scale; shift]`` ([3, C]):
    the fallback's form of the kernels' prologue."""
    wide = torch.promote_types(x.dtype, torch.float32)
    centre, scale, shift = (v.view(1, -1, 1, 1) for v in affine.to(wide))
    return F.relu((x.to(wide) - centre) * scale + shift)


def _pack_affine(x: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``[centre; scale; shift]`` as one contiguous [3, C] tensor: fp32 (what the kernels read), fp64 for fp64
    inputs (the fallback keeps their precision: gradcheck)."""
    c = x.shape[1]
    if not centre.shape == scale.shape == shift.shape == (c,):
        raise DsrnetError(
            f"dwconv2d_affine_relu wants centre, scale and shift of shape [{c}] (one per channel), got "
            f"{tuple(centre.shape)}, {tuple(scale.shape)} and {tuple(shift.shape)}"
        )
    return torch.stack((centre, scale, shift)).to(torch.promote_types(x.dtype, torch.float32)).contiguous()


@torch.library.custom_op("dsrnet::dwconv2d_affine_relu", mutates_args=())
def dwconv2d_affine_relu(
    x: torch.Tensor,
    centre: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    dilation: int,
) -> torch.Tensor:
    """Depthwise 3x3 (padding = dilation, no bias) of ``relu((x - centre) * scale + shift)`` with per-channel [C]
    ``centre``, ``scale``, ``shift``: a BatchNorm whose statistics are known (``centre = mean``, ``scale = weight /
    sqrt(var + eps)``, ``shift = bias``, centred as BatchNorm computes) and a ReLU, applied in fp32 as the kernel
    loads its taps, so their output never goes to memory. Differentiable in all five tensors; the backward
    recomputes the conv's input from ``x``."""
    _check_dw(x, weight)
    affine = _pack_affine(x, centre, scale, shift)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    if not triton_usable(x, n * c * ho * wo):
        return _as_nhwc(_affine_reference(x, affine, weight, stride, dilation))
    return _run_dw_fwd(x, weight, None, affine, stride, dilation, False)


def _affine_reference(x, affine, weight, stride: int, dilation: int) -> torch.Tensor:
    """:func:`dwconv2d_affine_relu` in PyTorch's ops (``affine`` as :func:`_pack_affine` packs it)."""
    a = _affine_relu(x, affine).to(x.dtype)
    return F.conv2d(a, weight.to(x.dtype), None, stride, dilation, dilation, x.shape[1])


def _graph_keeping_backward(reference, inputs: tuple, needs: tuple, grad: torch.Tensor) -> tuple:
    """The gradients of ``reference(*inputs)`` (an op's PyTorch form) for the inputs ``needs`` marks, as a graph:
    a backward with ``create_graph=True`` (gradient penalties, Hessian-vector products) differentiates them again,
    which the Triton gradient kernels cannot be (they have no backward of their own)."""
    with torch.enable_grad():
        # Aliases: the gradient for each input counts only the paths through that input (BatchNorm's ``centre`` is
        # itself a function of ``x``, a path the outer backward adds already); the graph still reaches the input.
        inputs = tuple(t.view_as(t) if isinstance(t, torch.Tensor) and t.requires_grad else t for t in inputs)
        out = reference(*inputs)
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    got = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(got) if need else None for need in needs)


dwconv2d_affine_relu.register_fake(lambda x, centre, scale, shift, weight, stride, dilation: _dw_out_like(x, stride))


@torch.library.custom_op("dsrnet::dwconv2d_affine_relu_grad_input", mutates_args=())
def dwconv2d_affine_relu_grad_input(
    grad: torch.Tensor, x: torch.Tensor, affine: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d x, d scale, d shift)`` of :func:`dwconv2d_affine_relu` (``affine = [centre; scale; shift]``, fp32
    [3, C]): the conv's input gradient taken back through the ReLU and the affine map in the same kernel (``d
    centre`` is ``-scale * d shift``); ``d x`` in ``x``'s dtype (channels-last), the other two fp32 [C], summed
    from per-program partial sums (deterministic)."""
    _check_dw_grad("dwconv2d_affine_relu_grad_input", grad, tuple(x.shape), weight, stride, affine)
    n, c, h, w = x.shape
    if not triton_usable(x, n * c * h * w):
        wide = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs (gradcheck)
        centre, scale, shift = (v.view(1, -1, 1, 1) for v in affine.to(wide))
        da = torch.nn.grad.conv2d_input((n, c, h, w), weight.to(wide), grad.to(wide), stride, dilation, dilation, c)
        xc = x.to(wide) - centre
        g = da * (xc * scale + shift > 0)
        return _as_nhwc((g * scale).to(x.dtype)), (g * xc).sum((0, 2, 3)), g.sum((0, 2, 3))
    # One row of partial sums per program, for the smallest pixel block the autotuner may pick (rows a larger
    # block leaves unwritten stay zero).
    part = torch.zeros((_cdiv(n * h * w, _tk.dw_bwd_input.smallest("BLOCK_P")), 2, c), device=x.device,
                       dtype=torch.float32)  # fmt: skip
    dx = _run_dw_bwd_input(grad, weight, (n, c, h, w), stride, dilation, (_channels_inner(x), affine, part))
    sums = part.sum(0)
    return dx, sums[0].clone(), sums[1].clone()  # two outputs, not two views of one tensor


@dwconv2d_affine_relu_grad_input.register_fake
def _(grad, x, affine, weight, stride, dilation):
    c = x.shape[1]
    per_channel = lambda: x.new_empty((c,), dtype=torch.promote_types(x.dtype, torch.float32))  # noqa: E731
    return _empty_nhwc(*x.shape, like=x), per_channel(), per_channel()


def _affine_setup(ctx, inputs, output):
    x, centre, scale, shift, weight, stride, dilation = inputs
    ctx.stride, ctx.dilation = stride, dilation
    ctx.dtypes = (x.dtype, centre.dtype, scale.dtype, shift.dtype, weight.dtype)
    ctx.save_for_backward(x, centre, scale, shift, weight)


def _affine_backward(ctx, grad):
    x, centre, scale, shift, weight = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable themselves
        reference = lambda x, centre, scale, shift, weight: _affine_reference(  # noqa: E731
            x, torch.stack((centre, scale, shift)).to(torch.promote_types(x.dtype, torch.float32)), weight,
            ctx.stride, ctx.dilation,
        )  # fmt: skip
        grads = _graph_keeping_backward(reference, (x, centre, scale, shift, weight), ctx.needs_input_grad[:5], grad)
        return *grads, None, None
    affine = _pack_affine(x, centre, scale, shift)
    x_dtype, c_dtype, s_dtype, t_dtype, w_dtype = ctx.dtypes
    grad_x = grad_c = grad_s = grad_t = grad_w = None
    if any(ctx.needs_input_grad[:4]):
        grad_x, grad_s, grad_t = dwconv2d_affine_relu_grad_input(grad, x, affine, weight, ctx.stride, ctx.dilation)
        grad_c = (-affine[1] * grad_t).to(c_dtype)  # d/d centre of (x - centre) * scale
        grad_x, grad_s, grad_t = grad_x.to(x_dtype), grad_s.to(s_dtype), grad_t.to(t_dtype)
    if ctx.needs_input_grad[4]:
        grad_w = dwconv2d_grad_weight(grad, x, ctx.stride, ctx.dilation, affine).to(w_dtype)
    return grad_x, grad_c, grad_s, grad_t, grad_w, None, None


dwconv2d_affine_relu.register_autograd(_affine_backward, setup_context=_affine_setup)


# ---------------------------------------------------------------------------------------------------------------
# inference: 1x1 conv GEMM and the fused depthwise -> pointwise block
# ---------------------------------------------------------------------------------------------------------------
def _ieee(t: torch.Tensor) -> bool:
    # fp32 tiles use exact fp32 products unless the user allowed TF32 for matmuls, as torch itself does.
    return t.dtype == torch.float32 and not tf32_matmul()


def _tune_size(n: int) -> int:
    """The kernels' autotune bucket for ``n`` pixels: the next power of two (a new batch size in the same bucket
    reuses the tuned block sizes instead of timing every config again)."""
    return 1 << max(0, n - 1).bit_length()


def _dot_f32(t: torch.Tensor) -> bool:
    # Triton 3.8's CPU interpreter computes bf16 tl.dot wrongly (garbage of order 1e10); feeding it the exact fp32
    # upcast gives the GPU's numerics (bf16 products are exact in fp32, accumulation is fp32 on both).
    return t.device.type == "cpu" and t.dtype == torch.bfloat16


def _pw_fallback(x: torch.Tensor, w_kn: torch.Tensor, stride: int) -> torch.Tensor:
    """The 1x1 conv as one GEMM over pixels, ``[pixels, Cin] @ [Cin, Cout]``, returned channels-last (a fresh
    tensor): on a CPU from :data:`CPU_CONV_MIN_PIXELS` output pixels on, a oneDNN convolution; elsewhere a matmul
    of ``w_kn`` as stored."""
    if _cpu_conv_route(x, w_kn, stride):
        # a conv-layout copy, made per call: oneDNN reorders the transposed view itself several times slower
        weight = w_kn.t().to(x.dtype).contiguous()[:, :, None, None]
        return F.conv2d(x, weight, stride=stride).contiguous(memory_format=torch.channels_last)
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    n, k, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(n * h * w, k) @ w_kn.to(x.dtype)  # a view of x when it is channels-last
    return y.view(n, h, w, w_kn.shape[1]).permute(0, 3, 1, 2)  # (-1 cannot be inferred for an empty batch)


#: From how many output pixels a CPU runs a 1x1 conv's GEMM as a oneDNN convolution (of a conv-layout copy of the
#: weight, made per call) instead of a BLAS matmul. Measured on a 2-vCPU AMD EPYC (torch 2.14.1, fp32, channels-last,
#: DSRNet-50's 1x1 shapes; BENCHMARKS.md, "Fused DSRNet on one GPU", its CPU part): from 512 pixels on the
#: convolution and its copy took 0.40-0.78x the matmul's time, at 256 about the same (0.8-1.1x), at 128 0.9-1.05x,
#: at 64 up to 2x and at 16 up to 4.3x (the copy and oneDNN's reorder of the weight into its blocked layout
#: outweighing the GEMM).
CPU_CONV_MIN_PIXELS = 256


def _cpu_conv_route(x: torch.Tensor, w_kn: torch.Tensor, stride: int) -> bool:
    """Whether :func:`_pw_fallback` runs a oneDNN convolution: a CPU tensor in plain eager execution (a tracer
    records the matmul, whose graph does not depend on the sizes; a ``torch.fx`` Proxy stops at the first check),
    oneDNN there to run it (without it a CPU convolution is PyTorch's own, several times slower than the matmul),
    input and output channels, and at least :data:`CPU_CONV_MIN_PIXELS` output pixels."""
    if not _plain_eager(x) or x.device.type != "cpu" or 0 in w_kn.shape:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    n, _, h, w = x.shape
    return n * _out_size(h, stride) * _out_size(w, stride) >= CPU_CONV_MIN_PIXELS


def _pointwise_conv(
    x: torch.Tensor,
    w_kn: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    stride: int,
    relu: bool,
    w_ds: torch.Tensor | None = None,
    ds_stride: int = 1,
) -> torch.Tensor:
    """``[relu](pw(x) + bias + r)``: ``r`` = ``residual`` itself, or, with ``w_ds`` ``[Cin, Cout]``, the 1x1
    downsample of ``residual`` (a block's input) strided by ``ds_stride``, computed into the same tile and never
    written (its bias pre-added into ``bias``)."""
    _check_pw("pointwise_conv", x, w_kn, bias, residual, w_ds, stride, ds_stride)
    n, k, h, w = x.shape
    nout = w_kn.shape[1]
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    big = 0 if residual is None else residual.numel()
    if n * ho * wo == 0:  # nothing to compute (and nothing for the autotuner to time and keep on disk)
        return _empty_nhwc(n, nout, ho, wo, like=x)
    if not triton_usable(x, max(n * nout * ho * wo, big)):
        y = _pw_fallback(x, w_kn, stride)  # fresh and channels-last: updated in place
        y += bias.to(x.dtype)[:, None, None]
        if residual is not None:
            y += residual if w_ds is None else _pw_fallback(residual, w_ds, ds_stride)
        return y.relu_() if relu else y
    x = _channels_inner(x)
    w_kn = _kernel_operand(w_kn, x.dtype)
    y = _empty_nhwc(n, nout, ho, wo, like=x)
    m = n * ho * wo
    r = y if residual is None else _channels_inner(residual.to(x.dtype))
    wds = w_kn if w_ds is None else _kernel_operand(w_ds, x.dtype)
    res = 0 if residual is None else 1 if w_ds is None else 2
    if GEMM_TMA and stride == 1 and res < 2 and _tma_rows(x, w_kn, r, y):
        _use_triton_allocator()
        with _launch(x):
            _tk.pw_gemm_tma[_gemm_grid(m, nout, device_sms(x.device))](
                x, w_kn, bias.contiguous(), r, y, m, nout, k, _tune_size(m), RES=res, RELU=relu, DOT_F32=_dot_f32(x),
                **_dependent_launch(x),
            )  # fmt: skip
        return y
    with _launch(x):
        _tk.pw_gemm[_gemm_grid(m, nout, device_sms(x.device))](
            x, w_kn, bias.contiguous(), r, wds, y,
            m, nout, k, wds.shape[0] if res == 2 else 0, ho, wo,
            *_pixel_strides(x), *_pixel_strides(r), *_pixel_strides(y), _tune_size(m),
            STRIDE=stride, RES=res, DS_STRIDE=ds_stride, RELU=relu, IEEE=_ieee(x), DOT_F32=_dot_f32(x),
            **_dependent_launch(x),
        )  # fmt: skip
    return y


pointwise_conv = torch.library.custom_op("dsrnet::pointwise_conv", _pointwise_conv, mutates_args=())

#: Run :func:`pointwise_conv` at stride 1 without a downsample GEMM by ``_tk.pw_gemm_tma`` (operand, residual and
#: output tiles moved by Hopper's TMA) where the tensors allow it (:func:`_tma_rows`). Off until a GPU times it
#: against the pointer-based kernel (``benchmarks/fused_gpu.py``'s ``dsrnet_fused_tma`` form switches it on).
GEMM_TMA = False


def _tma_rows(x: torch.Tensor, w_kn: torch.Tensor, *maps: torch.Tensor) -> bool:
    """Whether the TMA kernel can read ``x`` and ``maps`` as dense [pixels, channels] rows and ``w_kn`` as [K, N]:
    bf16/fp16 (the kernel has no fp32 path), this Triton builds tensor descriptors in kernels, each tensor
    densely channels-last (the kernel gets no pixel strides), and every row 16-byte aligned, as a TMA copy needs
    (channel counts that are multiples of 8; DSRNet's are)."""
    if x.dtype not in (torch.bfloat16, torch.float16) or not hasattr(_tk.tl, "make_tensor_descriptor"):
        return False
    tensors = (x, w_kn, *maps)
    if any(t.shape[1] * t.element_size() % 16 or t.data_ptr() % 16 for t in tensors):
        return False
    return w_kn.is_contiguous() and all(t.is_contiguous(memory_format=torch.channels_last) for t in (x, *maps))


def _use_triton_allocator() -> None:
    """Give Triton an allocator for kernels' global scratch (the TMA kernel builds its tensor descriptors there),
    unless this thread set one already (Triton keeps it per context; its default refuses to allocate)."""
    try:
        from triton.runtime import _allocation

        unset = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
    except (ImportError, AttributeError):  # another Triton layout: ours, as it must have one
        unset = True
    if unset:
        _tk.triton.set_allocator(_scratch)


def _scratch(size: int, alignment: int, stream) -> torch.Tensor:
    """Triton's scratch allocations, from PyTorch's caching allocator on the current device (a CUDA graph's
    capture takes them from its own pool)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.empty(size, dtype=torch.int8, device=device)


@pointwise_conv.register_fake
def _(x, w_kn, bias, residual, stride, relu, w_ds=None, ds_stride=1):
    return _empty_nhwc(x.shape[0], w_kn.shape[1], _out_size(x.shape[2], stride), _out_size(x.shape[3], stride), x)


#: The widest next-block first 1x1 :func:`pointwise_chain` computes in its tile (its fp32 accumulator, BLOCK_M x
#: this, stays in registers beside the output chunk's: 64 x 256 is 64 per thread at 8 warps); wider (DSRNet-50's
#: layer4: 512), it runs the two 1x1s as two kernels.
CHAIN_MAX_WIDTH = 256
#: The widest depthwise conv :func:`pointwise_chain` computes in its tile (``w_dw`` given): the tile, BLOCK_M x this
#: in registers, is the GEMM's A operand for every chunk of outputs (DSRNet-50: layer1's 64, layer2's 128); wider,
#: the depthwise conv runs as its own kernel first. 0: never in the tile (a benchmark's comparison).
CHAIN_DW_MAX_WIDTH = 128


def _pointwise_chain(
    x: torch.Tensor,
    w_kn: torch.Tensor,
    bias: torch.Tensor,
    shortcut: torch.Tensor,
    w_ds: torch.Tensor | None,
    ds_stride: int,
    w1_next: torch.Tensor | None,
    b1_next: torch.Tensor | None,
    w_dw: torch.Tensor | None = None,
    b_dw: torch.Tensor | None = None,
    stride: int = 1,
    dilation: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A DSR block's last kernel in ``fuse(mode="chain")``: ``y = relu(pw(a) + bias + s)`` as :func:`pointwise_conv`
    with a shortcut ``s`` (``shortcut``, or its strided 1x1 downsample by ``w_ds``), and the next DSR block's first
    1x1 of it, ``m = relu(pw(y, w1_next) + b1_next)``, from the same tile: ``(y, m)`` (``m`` with no channels where
    ``w1_next`` is ``None``). Split's next block reads ``y`` back for its first 1x1; here nothing but the next
    shortcut reads it (``w1_next``: ``[Cout, Wn]``, at most :data:`CHAIN_MAX_WIDTH` columns in one kernel).

    ``a`` = ``x``, or with ``w_dw`` (``[9, K]``, :func:`pack_taps`) and ``b_dw`` the depthwise conv of ``x``
    (``relu(dw(x) + b_dw)`` at ``stride`` and ``dilation``), computed in the same kernel up to
    :data:`CHAIN_DW_MAX_WIDTH` channels, so the depthwise output is never written either."""
    if w_dw is None and stride != 1:
        raise DsrnetError(f"pointwise_chain: stride {stride} without a depthwise conv; fix: stride 1, or give w_dw")
    n, k, h, w = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    if w_dw is not None:
        if b_dw is None:
            raise DsrnetError("pointwise_chain: w_dw without b_dw; fix: pass the depthwise bias (zeros for none)")
        _check_shape("pointwise_chain", "w_dw (taps-major)", w_dw, (9, k))
        _check_shape("pointwise_chain", "b_dw", b_dw, (k,))
    _check_pw("pointwise_chain", x, w_kn, bias, shortcut, w_ds, stride, ds_stride)  # (the output at stride)
    if shortcut is None:
        raise DsrnetError("pointwise_chain wants a shortcut (a DSR block's identity or downsample input), got None")
    nout = w_kn.shape[1]
    if (w1_next is None) != (b1_next is None):
        raise DsrnetError("pointwise_chain: w1_next and b1_next go together; fix: pass both (the next block's first "
                          "1x1) or neither")  # fmt: skip
    if w1_next is not None:
        if w1_next.dim() != 2 or w1_next.shape[0] != nout:
            raise DsrnetError(f"pointwise_chain wants w1_next [{nout}, Wn] (the next block's first 1x1), got "
                              f"{list(w1_next.shape)}")  # fmt: skip
        _check_shape("pointwise_chain", "b1_next", b1_next, (w1_next.shape[1],))
    width = 0 if w1_next is None else w1_next.shape[1]
    if n * ho * wo == 0:  # nothing to compute (and nothing for the autotuner to time)
        return _empty_nhwc(n, nout, ho, wo, like=x), _empty_nhwc(n, width, ho, wo, like=x)
    # fp32 on a GPU: the two accumulators and 4-byte operands spill (sm_90: 9-39 KB of stack per thread): the split
    # kernels instead; the interpreter runs the one kernel in every dtype (the tests' fp32 tolerance)
    one_kernel = triton_usable(x, max(n * max(nout, k, width) * h * w, shortcut.numel())) and not (
        x.is_cuda and x.element_size() > 2)  # fmt: skip
    if w_dw is not None and (not one_kernel or k > CHAIN_DW_MAX_WIDTH):
        x = _dwconv2d(x, w_dw.t().reshape(k, 1, 3, 3), b_dw, stride, dilation, True)
        w_dw, b_dw, stride, dilation, h, w = None, None, 1, 1, ho, wo
    chain = 0 < width <= CHAIN_MAX_WIDTH
    if not one_kernel:
        y = _pointwise_conv(x, w_kn, bias, shortcut, 1, True, w_ds, ds_stride)
    else:
        x = _channels_inner(x)
        w_kn = _kernel_operand(w_kn, x.dtype)
        wds = w_kn if w_ds is None else _kernel_operand(w_ds, x.dtype)
        r = _channels_inner(shortcut.to(x.dtype))
        y = _empty_nhwc(n, nout, ho, wo, like=x)
        m_out = _empty_nhwc(n, width if chain else 0, ho, wo, like=x)
        w1 = _kernel_operand(w1_next, x.dtype) if chain else w_kn
        m = n * ho * wo
        with _launch(x):
            _tk.pw_chain[lambda meta: (_cdiv(m, meta["BLOCK_M"]),)](
                x, w_kn if w_dw is None else w_dw.contiguous(), bias if b_dw is None else b_dw.contiguous(), w_kn,
                bias.contiguous(), r, wds, y, w1, b1_next.contiguous() if chain else bias, m_out,
                m, nout, k, wds.shape[0] if w_ds is not None else 0, width, h, w, ho, wo,
                *_pixel_strides(x), *_pixel_strides(r), *_pixel_strides(y), *_pixel_strides(m_out), _tune_size(m),
                RES=1 if w_ds is None else 2, DS_STRIDE=ds_stride, IEEE=_ieee(x), DOT_F32=_dot_f32(x),
                DW=w_dw is not None, STRIDE=stride, DIL=dilation, CHAIN=chain,
                BLOCK_KW=_pow2_at_least_16(k), BLOCK_W=_pow2_at_least_16(width if chain else 1),
                **_dependent_launch(x),
            )  # fmt: skip
        if chain or width == 0:
            return y, m_out
    if width == 0:
        return y, _empty_nhwc(n, 0, ho, wo, like=y)
    return y, _pointwise_conv(y, w1_next, b1_next, None, 1, True)


def _pow2_at_least_16(n: int) -> int:
    """A ``tl.dot`` / ``tl.arange`` extent: a power of two, at least 16."""
    return max(16, 1 << (n - 1).bit_length())


pointwise_chain = torch.library.custom_op("dsrnet::pointwise_chain", _pointwise_chain, mutates_args=())


@pointwise_chain.register_fake
def _(x, w_kn, bias, shortcut, w_ds, ds_stride, w1_next, b1_next, w_dw=None, b_dw=None, stride=1, dilation=1):
    n, _, h, w = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    width = 0 if w1_next is None else w1_next.shape[1]
    return _empty_nhwc(n, w_kn.shape[1], ho, wo, x), _empty_nhwc(n, width, ho, wo, x)


def _dw_pw_block(
    x: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pw: torch.Tensor,
    bias: torch.Tensor,
    shortcut: torch.Tensor | None,
    w_ds: torch.Tensor | None,
    stride: int,
    dilation: int,
    ds_stride: int,
) -> torch.Tensor:
    """relu(pw(relu(dw(x) + b_dw)) + bias + s): ``s`` = ``shortcut`` (identity), or ``shortcut`` strided by
    ``ds_stride`` times ``w_ds`` (the 1x1 downsample; its bias is pre-added into ``bias``), or nothing.

    ``w_dw``: ``[9, C]`` (taps-major, see :func:`pack_taps`); ``w_pw``: ``[C, Cout]``; ``w_ds``: ``[Cin, Cout]``.
    """
    _check_pw("dw_pw_block", x, w_pw, bias, shortcut, w_ds, stride, ds_stride)
    n, k, h, w = x.shape
    nout = w_pw.shape[1]
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    _check_shape("dw_pw_block", "w_dw (taps-major)", w_dw, (9, k))
    _check_shape("dw_pw_block", "b_dw", b_dw, (k,))
    big = 0 if shortcut is None else shortcut.numel()
    if not triton_usable(x, max(n * nout * ho * wo, big)):
        w_dw = w_dw.t().reshape(k, 1, 3, 3).to(x.dtype)
        mid = F.conv2d(_channels_inner(x), w_dw, b_dw.to(x.dtype), stride, dilation, dilation, k).relu_()
        y = _pw_fallback(mid, w_pw, 1)  # fresh and channels-last: updated in place
        y += bias.to(x.dtype)[:, None, None]
        if shortcut is not None:
            y += shortcut if w_ds is None else _pw_fallback(shortcut, w_ds, ds_stride)
        return y.relu_()
    x = _channels_inner(x)
    w_pw = _kernel_operand(w_pw, x.dtype)  # tl.dot wants both operands in the activation dtype
    w_ds = None if w_ds is None else _kernel_operand(w_ds, x.dtype)
    y = _empty_nhwc(n, nout, ho, wo, like=x)
    m = n * ho * wo
    kind = 0 if shortcut is None else (1 if w_ds is None else 2)
    r = y if shortcut is None else _channels_inner(shortcut.to(x.dtype))  # tl.dot: one dtype for both operands
    kds = 0 if w_ds is None else w_ds.shape[0]
    with _launch(x):
        _tk.dw_pw[_gemm_grid(m, nout)](
            x, w_dw.contiguous(), b_dw.contiguous(), w_pw, bias.contiguous(), r, w_pw if w_ds is None else w_ds, y,
            m, nout, k, kds, h, w, ho, wo, *_pixel_strides(x), *_pixel_strides(r), *_pixel_strides(y), _tune_size(m),
            STRIDE=stride, DIL=dilation, SHORTCUT=kind, DS_STRIDE=ds_stride, IEEE=_ieee(x), DOT_F32=_dot_f32(x),
            **_dependent_launch(x),
        )  # fmt: skip
    return y


dw_pw_block = torch.library.custom_op("dsrnet::dw_pw_block", _dw_pw_block, mutates_args=())


@dw_pw_block.register_fake
def _(x, w_dw, b_dw, w_pw, bias, shortcut, w_ds, stride, dilation, ds_stride):
    return _empty_nhwc(x.shape[0], w_pw.shape[1], _out_size(x.shape[2], stride), _out_size(x.shape[3], stride), x)


def _dsr_block(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_pw: torch.Tensor,
    bias: torch.Tensor,
    w_ds: torch.Tensor | None,
    stride_1x1: int,
    stride: int,
    dilation: int,
    ds_stride: int,
) -> torch.Tensor:
    """A whole folded DSR block (Fig. 1) in one kernel: ``relu(pw(relu(dw(relu(x @ w1 + b1)) + b_dw)) + bias +
    s)``, ``s`` = ``x`` (identity shortcut, ``w_ds`` None) or ``x`` strided by ``ds_stride`` times ``w_ds`` (the
    1x1 downsample; its bias pre-added into ``bias``). The first 1x1 reads ``x`` at ``stride_1x1``, the depthwise
    conv runs at ``stride`` and ``dilation``. Reads the block's input once and writes its output once; the two
    intermediates live in per-program scratch that stays in L2 (:mod:`dsrnet.kernels._triton`).

    ``w1``: ``[Cin, C]``; ``w_dw``: ``[9, C]`` (:func:`pack_taps`); ``w_pw``: ``[C, Cout]``; ``w_ds``: ``[Cin,
    Cout]``. Same math as ``pointwise_conv`` then ``dw_pw_block`` (the fallback); inference only.
    """
    if x.dim() != 4 or w1.dim() != 2 or w1.shape[0] != x.shape[1]:
        raise DsrnetError(f"dsr_block wants x [N, Cin, H, W] and w1 [Cin, C], got {list(x.shape)} and "
                          f"{list(w1.shape)}")  # fmt: skip
    n, cin, h, w = x.shape
    k, nout = w1.shape[1], w_pw.shape[-1]
    h1, wd1 = _out_size(h, stride_1x1), _out_size(w, stride_1x1)
    ho, wo = _out_size(h1, stride), _out_size(wd1, stride)
    # Shapes only, no tensors made: this runs on every call, and a launch's host time is what a small batch pays.
    for name, t, want in (("b1", b1, (k,)), ("w_dw (taps-major)", w_dw, (9, k)), ("b_dw", b_dw, (k,)),
                          ("w_pw", w_pw, (k, nout)), ("bias", bias, (nout,))):  # fmt: skip
        _check_shape("dsr_block", name, t, want)
    if w_ds is None and (cin, h, w) != (nout, ho, wo):
        raise DsrnetError(f"dsr_block without w_ds adds x itself (identity shortcut), so its output [{n}, {nout}, "
                          f"{ho}, {wo}] must have x's shape {list(x.shape)}; fix: pass w_ds (the downsample 1x1) "
                          f"for a block that changes channels or size")  # fmt: skip
    if w_ds is not None:
        _check_shape("dsr_block", "w_ds", w_ds, (cin, nout))
        if (_out_size(h, ds_stride), _out_size(w, ds_stride)) != (ho, wo):
            raise DsrnetError(f"dsr_block: the shortcut {list(x.shape)} at stride {ds_stride} does not reach the "
                              f"output's {[ho, wo]}")  # fmt: skip
    m = n * ho * wo
    usable = m > 0 and triton_usable(x, max(n * nout * ho * wo, n * k * h1 * wd1))  # False without Triton
    sms = device_sms(x.device)
    scratch_numel = _block_scratch(m, wo, wd1, k, stride, dilation, sms) if usable else 0
    if not usable or scratch_numel >= _MAX_NUMEL:  # (the kernels' 32-bit offsets)
        y1 = run(pointwise_conv, x, w1, b1, None, stride_1x1, True)  # (run: a tracer of the fallback sees aten ops)
        return run(dw_pw_block, y1, w_dw, b_dw, w_pw, bias, x, w_ds, stride, dilation, ds_stride)
    x = _channels_inner(x)
    w1, w_pw, w_ds = (None if t is None else _kernel_operand(t, x.dtype) for t in (w1, w_pw, w_ds))
    y = _empty_nhwc(n, nout, ho, wo, like=x)
    scratch = torch.empty(scratch_numel, dtype=x.dtype, device=x.device)
    with _launch(x):
        _tk.dsr_block[lambda meta: (_block_programs(m, meta["TILE_M"], meta["PER_SM"], sms),)](
            x, w1, b1.contiguous(), w_dw.contiguous(), b_dw.contiguous(), w_pw, bias.contiguous(),
            w_pw if w_ds is None else w_ds, scratch, y, m, cin, k, nout, h1, wd1, ho, wo, *_pixel_strides(x),
            *_pixel_strides(y), _tune_size(m), S1=stride_1x1, STRIDE=stride, DIL=dilation,
            SHORTCUT=1 if w_ds is None else 2,
            DS_STRIDE=ds_stride, IEEE=_ieee(x), DOT_F32=_dot_f32(x),
            **_dependent_launch(x),
        )  # fmt: skip
    return y


dsr_block = torch.library.custom_op("dsrnet::dsr_block", _dsr_block, mutates_args=())


@functools.lru_cache(maxsize=16)
def device_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (what a persistent kernel's grid is sized by); 1 elsewhere (the
    CPU interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _block_programs(m: int, tile_m: int, per_sm: int, sms: int) -> int:
    """``dsr_block``'s persistent grid: a program per tile, at most ``per_sm`` per SM (what its registers allow)."""
    return min(_cdiv(m, tile_m), sms * per_sm)


@functools.lru_cache(maxsize=256)
def _block_scratch(m: int, wo: int, w1: int, k: int, stride: int, dilation: int, sms: int) -> int:
    """Elements of ``dsr_block``'s scratch for one shape: per program a slot of ``halo_rows(TILE_M) * w1 + TILE_M``
    pixels of ``k`` channels (stage A's output, then stage B's), for the config that needs the most (a launch may
    pick any of them, GPU and interpreter configs alike: the cache must not depend on the mode)."""
    configs = [*_tk.dsr_block.configs, _tk.dsr_block.interp_config]
    return max(
        _block_programs(m, c.kwargs["TILE_M"], c.kwargs["PER_SM"], sms)
        * (_tk.halo_rows(c.kwargs["TILE_M"], wo, stride, dilation) * w1 + c.kwargs["TILE_M"]) * k
        for c in configs
    )


@dsr_block.register_fake
def _(x, w1, b1, w_dw, b_dw, w_pw, bias, w_ds, stride_1x1, stride, dilation, ds_stride):
    h1, w1_ = _out_size(x.shape[2], stride_1x1), _out_size(x.shape[3], stride_1x1)
    return _empty_nhwc(x.shape[0], w_pw.shape[1], _out_size(h1, stride), _out_size(w1_, stride), x)


# ---------------------------------------------------------------------------------------------------------------
# direct conv for few input channels (the stem), inference
# ---------------------------------------------------------------------------------------------------------------
def pack_direct(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight ``[Cout, Cin, k, k]`` -> ``[Cin * k * k, Cout]``: each tap's output channels contiguous."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _direct_out_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _direct_conv(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    bias: torch.Tensor,
    kernel_size: int,
    stride: int,
    padding: int,
    dilation: int,
    relu: bool,
) -> torch.Tensor:
    """``[relu](conv2d(x, w) + bias)`` with one kernel that writes its output once, channels-last. For convs of an
    input with few channels (DSRNet's stem: 3): cuDNN ran the folded stem of ``fuse()`` as a padded NHWC conv, a
    separate bias add and a ReLU, ~8 % of the fused model's time on an H200 (BENCHMARKS.md, issue 10)."""
    if x.dim() != 4 or w_packed.dim() != 2 or w_packed.shape[0] != x.shape[1] * kernel_size**2:
        raise DsrnetError(f"direct_conv wants x [N, C, H, W] and a weight [C * {kernel_size}^2, Cout], got "
                          f"{list(x.shape)} and {list(w_packed.shape)}")  # fmt: skip
    n, cin, h, w = x.shape
    cout = w_packed.shape[1]
    _check_shape("direct_conv", "bias", bias, (cout,))
    ho = _direct_out_size(h, kernel_size, stride, padding, dilation)
    wo = _direct_out_size(w, kernel_size, stride, padding, dilation)
    if min(n, ho, wo) <= 0 or not triton_usable(x, n * cout * ho * wo):  # (an empty batch: nothing to launch)
        weight = w_packed.t().reshape(cout, cin, kernel_size, kernel_size).to(x.dtype)
        y = _as_nhwc(F.conv2d(x, weight, bias.to(x.dtype), stride, padding, dilation))
        return y.relu_() if relu else y
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()  # the kernel's 32-bit offsets: strides bounded by the tensor's own size
    y = _empty_nhwc(n, cout, ho, wo, like=x)
    p = n * ho * wo
    with _launch(x):
        _tk.direct_conv[lambda meta: (_cdiv(p, meta["BLOCK_P"]), _cdiv(cout, meta["BLOCK_N"]))](
            x, _kernel_operand(w_packed, x.dtype), bias.contiguous(), y,  # tl.dot: one dtype for both operands
            p, cout, h, w, ho, wo, *x.stride(), *_pixel_strides(y), _tune_size(p),
            CIN=cin, KSIZE=kernel_size, STRIDE=stride, PAD=padding, DIL=dilation, RELU=relu, IEEE=_ieee(x),
            DOT_F32=_dot_f32(x),
            **_dependent_launch(x),
        )  # fmt: skip
    return y


direct_conv = torch.library.custom_op("dsrnet::direct_conv", _direct_conv, mutates_args=())


@direct_conv.register_fake
def _(x, w_packed, bias, kernel_size, stride, padding, dilation, relu):
    ho = _direct_out_size(x.shape[2], kernel_size, stride, padding, dilation)
    wo = _direct_out_size(x.shape[3], kernel_size, stride, padding, dilation)
    return _empty_nhwc(x.shape[0], w_packed.shape[1], ho, wo, x)


def _inference_only(op, name: str) -> None:
    """Backward through ``op`` (an inference kernel of ``dsrnet.fuse``'s form) raises one line that names the fix,
    where torch's default for a custom op without a formula said only that none was registered."""

    def backward(ctx, *grads):
        raise DsrnetError(
            f"{name} has no backward pass: a fuse()d DSRNet is for inference only (BatchNorm folded into "
            "kernels without gradients), and its input required grad; fix: take gradients through the unfused "
            "model (dsrnet.use_triton_dwconv(model) trains with the Triton depthwise kernels), or detach the input"
        )

    op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)


for _name, _op in (("pointwise_conv", pointwise_conv), ("pointwise_chain", pointwise_chain),
                   ("dw_pw_block", dw_pw_block), ("dsr_block", dsr_block), ("direct_conv", direct_conv)):
    _inference_only(_op, f"dsrnet::{_name}")


#: The inference ops' Python bodies, which :func:`run` calls directly where nothing needs the dispatcher.
_BODIES = {dwconv2d: _dwconv2d, pointwise_conv: _pointwise_conv, pointwise_chain: _pointwise_chain,
          dw_pw_block: _dw_pw_block, dsr_block: _dsr_block, direct_conv: _direct_conv}  # fmt: skip


def forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.func.jvp``, ``torch.autograd.forward_ad.dual_level``): one
    attribute read, so that callers can skip :func:`has_tangent`'s per-tensor work in the common case."""
    return getattr(_forward_ad, "_current_level", 0) >= 0


def has_tangent(*tensors) -> bool:
    """Whether forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) carries a tangent on one of
    ``tensors``. A custom op has no forward-mode formula, and torch passes the primals through it and drops the
    tangents without a word (a zero derivative): callers check this first, to refuse or to take PyTorch's ops.
    Not seen: forward AD inside ``torch.compile`` (dynamo cannot trace the check; the ops drop tangents there, as
    they do when called directly, outside a model)."""
    if not forward_ad_active() or torch.compiler.is_compiling():
        return False
    return any(isinstance(t, torch.Tensor) and _tangent_of(t) for t in tensors)


def _tangent_of(t: torch.Tensor) -> bool:
    """Whether ``t`` carries a tangent at the open level; a tensor batched by ``vmap`` inside ``jvp`` is looked at
    through its batching wrappers (``unpack_dual`` has no batching rule). Where torch cannot say, True: the callers
    then take their safe side (PyTorch's ops, or the fused model's clear error)."""
    try:
        functorch = torch._C._functorch
        while functorch.is_functorch_wrapped_tensor(t) and functorch.is_batchedtensor(t):
            t = functorch.get_unwrapped(t)
        return _forward_ad.unpack_dual(t).tangent is not None
    except (AttributeError, RuntimeError):
        return True


def run(op, x: torch.Tensor, *args):
    """``op(x, *args)`` for a fused model's forward; where nothing needs torch's dispatcher, its body directly.

    The dispatcher (custom op, autograd wrapper, alias checks) costs ~21 us of host time per call on an H200's host,
    a fifth of a Triton launch's ~104 us (BENCHMARKS.md, "Third timings"), and a plain call at a small batch waits
    on the host. It is skipped only where :func:`_dispatch_free` finds nothing that needs it: every tracer
    (``torch.compile``, ``torch.export``, ``torch.jit.trace``, ``make_fx``, ``torch.func``) and every gradient
    (the op's autograd formula raises the fused model's clear error) goes through the op -- except where no kernel
    can run for ``x`` (a CPU without Triton's interpreter, or with ``DSRNET_DISABLE_TRITON=1``) and its shape is
    static: there the body is the op's PyTorch fallback, and ``torch.jit.trace`` and a non-strict
    ``torch.export`` (the default) record its aten ops, so the file loads without ``dsrnet`` and converts to ONNX.
    Dynamo (``torch.compile``, a strict export) and dynamic shapes keep the op."""
    if has_tangent(x, *args):
        raise DsrnetError(
            f"{getattr(op, '_qualname', op)} has no forward-mode derivative (torch.func.jvp, torch.autograd.forward_ad): a fuse()d DSRNet is "
            "for inference only, and torch would return a zero tangent; fix: take the jvp through the unfused model"
        )
    body = _BODIES.get(op)  # None for a stand-in (a test's spy, a user's wrapper): it is called as given
    direct = body is not None and (_dispatch_free(x, args) or _fallback_only(x, args))
    return (body if direct else op)(x, *args)


def _fallback_only(x: torch.Tensor, args: tuple) -> bool:
    """Whether the op could only run its PyTorch fallback for ``x`` (a device without the kernels, e.g. a CPU
    without Triton's interpreter) and no gradient flows, outside Dynamo (``torch.compile`` keeps the op, which
    inductor calls as it is): then a tracer may as well record the fallback's aten ops."""
    return (isinstance(x, torch.Tensor)  # not a torch.fx Proxy: symbolic tracing records the op
            and not symbolic_shape(x)  # a dynamic-shape export: the fallbacks'
            # shape checks would become guards on the sizes (the op's fake kernel adds none)
            and x.device.type not in _DIRECT_DEVICES and not torch.compiler.is_dynamo_compiling()
            and not _grad_flows(x, args) and not triton_usable(x))  # fmt: skip


def symbolic_shape(x: torch.Tensor) -> bool:
    """Whether ``x``'s shape holds symbolic sizes (a dynamic-shape export or compile traces it)."""
    return any(isinstance(d, torch.SymInt) for d in x.shape)


def _grad_flows(x: torch.Tensor, args: tuple) -> bool:
    """Whether a gradient would flow through the call (into ``x`` or a tensor argument)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (x, *args))


#: Devices whose tensors :func:`run` may hand to an op's body directly (a CPU runs the PyTorch fallback, whose
#: time the dispatcher's few microseconds do not matter to).
_DIRECT_DEVICES = ("cuda",)


def _dispatch_free(x: torch.Tensor, args: tuple = ()) -> bool:
    """Whether nothing could need the dispatcher for this call: ``x`` a plain tensor on a direct device, not wrapped
    by functorch (``torch.func``) or functionalization and no ``TorchDispatchMode`` active (``make_fx``,
    ``FlopCounterMode``, ...), nothing compiling or tracing, and no tensor argument carrying a gradient."""
    return _plain_eager(x) and x.device.type in _DIRECT_DEVICES and not _grad_flows(x, args)  # (a Proxy: False)


def _plain_eager(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain tensor in plain eager execution: not a FakeTensor, FunctionalTensor or another
    Python subclass, nor wrapped by functorch or functionalization, with nothing compiling, tracing, or
    intercepting ops through a ``TorchDispatchMode``."""
    return (
        type(x) is torch.Tensor
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _dispatch_modes()
        and not _wrapped(x)
    )


def _dispatch_modes() -> int:
    """How many ``TorchDispatchMode``s are active; on a torch without this counter, assumed one (the op is safe)."""
    count = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return count() if count is not None else 1


def _wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is a C++ wrapper of plain ``torch.Tensor`` type: functorch's (``torch.func.grad``, ``vmap``)
    or functionalization's; on a torch without these checks, assumed wrapped (the op is always safe)."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(x) or torch._is_functional_tensor(x))
    except AttributeError:
        return True
