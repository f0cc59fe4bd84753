"""Fast forms of a :class:`~dsrnet.models.dsrnet.DSRNet` built on the Triton kernels of :mod:`dsrnet.kernels`.

* :func:`fuse` -> inference form: BatchNorm folded into the convs (``torch.nn.utils.fusion.fuse_conv_bn_eval``),
  channels-last, and every depthwise-separable DSR block (Fig. 1) run by Triton kernels:

  1. the first 1x1 conv + bias + ReLU as a GEMM (``dsrnet::pointwise_conv``);
  2. ``mode="split"`` (the default): the dilated depthwise 3x3 + bias + ReLU (``dsrnet::dwconv2d``), then the
     pointwise 1x1 + bias + shortcut + ReLU as one GEMM (``dsrnet::pointwise_conv``) whose output tile also
     accumulates a downsampling block's strided 1x1 shortcut conv, so the shortcut branch is never written to
     memory; ``mode="fused"``: both in one kernel (``dsrnet::dw_pw_block``), the depthwise tile kept in registers
     and fed to ``tl.dot`` directly, so the depthwise output is never written either.

  ``mode="block"``: the whole block (steps 1 and 2) in one persistent kernel (``dsrnet::dsr_block``): each program
  computes the first 1x1 for its output tile's depthwise input rows (a halo of ``dilation`` rows each side computed
  twice), the depthwise 3x3, then the second 1x1 + shortcut, the two intermediates passing through a per-program
  scratch slot that stays in L2. The block's input is read from DRAM once and its output written once: the traffic
  floor of a DSR block, where split also writes and reads back both intermediates and reads the input twice
  (~2x the floor at 32 px). Its parallelism is the output's pixel tiles only (each program does all output
  channels of its tile), so on a GPU a block whose output has fewer than :data:`BLOCK_MIN_PIXELS_PER_SM` pixels per
  SM (the deep stages at small batches: 2048 pixels in layer4 at batch 128, 32 px) runs split instead, whose GEMM
  tiles also split the output channels. Slower than split as it stands (H200, bf16, 32 px: 12.07 against
  6.89 ms per batch of 1024, 1.22 against 1.02 ms at 128 as CUDA graphs; its kernel ran at 5-8x its shape's
  floor, BENCHMARKS.md), so not the default.

  ``mode="chain"``: split, with each block's last kernel (second 1x1 + shortcut) also computing the next block's
  first 1x1 + bias + ReLU of the output tile it has just written (``dsrnet::pointwise_chain``, two ``tl.dot``
  chains in one kernel), within each stage (:class:`FusedStage`) and, in a :class:`FusedDSRNet`, from stage to
  stage: the block output is then read back by the next shortcut only, not again by the next first 1x1. Up to
  ``ops.CHAIN_DW_MAX_WIDTH`` channels (layer1's 64, layer2's 128) the same kernel also computes the block's
  depthwise conv, once per tile of pixels, as the A operand of every chunk of output channels, so its output is not
  written either. Values moved per pixel of an identity
  block (C channels in and out, width C/4): split 4C (the first 1x1 reads x and writes y1, the depthwise conv reads
  y1 and writes its output, the second 1x1 reads that and x and writes y), chain 3C, with the depthwise conv 2.5C;
  the block floor (input read once, output written once) is 2C. Not where the next first 1x1 is strided
  (``stride_on="1x1"``'s stage openers) or wider than ``ops.CHAIN_MAX_WIDTH`` (DSRNet-50's layer4: 512), nor into
  or out of a block or stage with forward hooks (it runs as itself so that they see its input and output), nor
  where the kernel's pixel tiles would not fill the GPU (block mode's rule: split there). Not yet timed on a GPU.

  ``mode="auto"``: each block measures ``split`` and the one-kernel ``block`` on its first call with a new input
  shape (dtype, device) and keeps the faster, as ``torch.backends.cudnn.benchmark`` picks conv algorithms: which of
  the two wins depends on the card, the block's shape and the batch (the deep stages at small batches have few
  pixel tiles). Block's output on that call is checked against split's: beyond rounding, block is not picked (a
  warning says so). Blocks of the same shape share one measurement, and so do inputs whose pixel counts fall in the
  same power-of-two bucket (the kernels' own autotuning rule: inputs of varying size, as a detector's, are not
  measured anew each; :func:`auto_choices` lists the measurements). It compares the kernels' GPU time, the host's
  launch cost hidden (see :func:`_median_ms`): what a CUDA graph or ``torch.compile(mode="reduce-overhead")``
  replays, the way to run small batches. Called without a graph, small batches are bound by the host's launches
  whichever the mode (H200, batch 128: split 6.84 ms, block with one launch per block 4.92, against 1.02 and 1.22
  as CUDA graphs), and there auto's picks (split where its kernels are faster) can be the slower. Where it cannot time (inside ``torch.compile``'s tracing or a CUDA-graph capture, before any eager call of that shape) it takes
  ``block``'s rule above; off a GPU it runs split (the PyTorch fallbacks of both modes are the same ops).

  Why split is the default: each program of the fused kernel computes the depthwise tile for its own
  ``BLOCK_N``-wide slice of the output channels, in fp32 on the CUDA cores, so the depthwise work is paid once per
  slice (up to 16 times over at DSRNet-50's 2048 outputs), where writing the depthwise output once (2 bytes per
  channel and pixel in bf16) and reading it back costs less. Measured on an H200 (bf16, batch 1024, 32 px,
  ``benchmarks/fused_gpu.py``, BENCHMARKS.md): split 7.16 ms, fused 10.63 ms per batch (and 7.66 ms for a mode
  since removed that ran fused up to 256 output channels, split above); the fused kernel took 78 % of the fused
  model's time. Blocks with ``separable=False`` (the ablation) run their folded convs
  with plain PyTorch. The stem conv (folded) + ReLU is one direct-conv kernel (``dsrnet::direct_conv``); the paper
  stem's max-pool, the global pool and the head stay PyTorch ops.
* :func:`use_triton_dwconv` -> training form: each block's depthwise conv becomes a
  :class:`TritonDepthwiseConv2d`, an ``nn.Conv2d`` subclass with the same parameters (``state_dict`` compatible) whose
  forward and both backward passes are the NHWC Triton kernels (``dsrnet::dwconv2d``). ``bn_relu=True`` also
  moves the BatchNorm and ReLU between each DSR block's first 1x1 conv and its depthwise conv into the depthwise
  kernel: that BatchNorm's statistics are those of the 1x1 conv's output, known before the depthwise conv runs
  (unlike the one after it, which needs the depthwise output of the whole batch first), so the kernel applies the
  normalisation and the ReLU to the taps it loads (``dsrnet::dwconv2d_affine_relu``, :func:`bn_relu_dwconv`) and
  the normalised activations are neither written nor read back, in the forward or the backward pass.

On a machine without CUDA (and without ``TRITON_INTERPRET=1``) the custom ops fall back to PyTorch's own convs, so
both forms run everywhere with the same math.
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import is_fake
from torch.nn.modules import module as _module_lib
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dsrnet.device import time_calls
from dsrnet.errors import DsrnetError
from dsrnet.kernels import ops
from dsrnet.models import DEFAULT_FUSE_MODE, FUSE_MODES
from dsrnet.models.dsrnet import DSRBlock, DSRNet
from dsrnet.models.shifted_dwconv import DepthwiseConvForm, is_depthwise_3x3

#: ``mode="auto"``: the modes it measures per block shape, keeping the faster (module docstring).
AUTO_CANDIDATES = ("split", "block")
#: ``mode="auto"``'s timing: untimed calls after the first (which compiles, autotunes and is checked against split),
#: then timed calls of which the median counts.
AUTO_WARMUP, AUTO_REPEATS = 2, 10
#: ``mode="auto"`` on a GPU: calls per timed sample, and the GPU cycles it sleeps before each sample so that the
#: host has queued them before the first starts (~2.5 ms at 2 GHz; a split block's three launches take the host
#: ~0.4 ms: ~130 us each, H200 run of 2026-11-27, batch 128 without a CUDA graph).
AUTO_CALLS_PER_SAMPLE, AUTO_HOST_LEAD_CYCLES = 3, 5_000_000
#: ... doubled when the host had not queued a sample's calls before the sleep ended, at most this many times.
AUTO_LEAD_DOUBLINGS = 4
#: ``mode="block"`` on a GPU: a block runs as one kernel when its output has at least this many pixels per SM (one
#: tile of the kernel's smallest configs for every SM), else split (module docstring).
BLOCK_MIN_PIXELS_PER_SM = 64


def _pointwise_kn(conv: nn.Conv2d) -> torch.Tensor:
    """1x1 conv weight ``[Cout, Cin, 1, 1]`` -> GEMM operand ``[Cin, Cout]`` (output channels contiguous)."""
    return conv.weight.detach()[:, :, 0, 0].t().contiguous()


class FusedDSRBlock(nn.Module):
    """A folded :class:`DSRBlock` for inference (see the module docstring); same input and output as the block."""

    def __init__(self, block: DSRBlock, mode: str = DEFAULT_FUSE_MODE) -> None:
        super().__init__()
        if mode not in FUSE_MODES:
            raise DsrnetError(f"mode={mode!r} is not valid; fix: choose one of {FUSE_MODES}")
        self.mode = mode
        conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)
        conv_dw = fuse_conv_bn_eval(block.conv_dw, block.bn2)
        conv_pw = fuse_conv_bn_eval(block.conv_pw, block.bn3)
        ds = None if block.downsample is None else fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
        self.stride_1x1 = conv1.stride[0]
        self.stride_dw = conv_dw.stride[0]
        self.dilation = conv_dw.dilation[0]
        self.ds_stride = 1 if ds is None else ds.stride[0]
        self.width = conv_dw.in_channels
        self.separable = conv_dw.groups == conv_dw.in_channels
        if not self.separable:  # the separable=False ablation: folded convs, plain PyTorch
            self.conv1, self.conv2, self.conv3, self.downsample = conv1, conv_dw, conv_pw, ds
            return
        self.register_buffer("w1", _pointwise_kn(conv1))
        self.register_buffer("b1", conv1.bias.detach().clone())
        self.register_buffer("w_dw", ops.pack_taps(conv_dw.weight.detach()))
        self.register_buffer("b_dw", conv_dw.bias.detach().clone())
        self.register_buffer("w_pw", _pointwise_kn(conv_pw))
        self.register_buffer("b_pw", conv_pw.bias.detach().clone())
        self.register_buffer("w_ds", None if ds is None else _pointwise_kn(ds))
        self.register_buffer("b_ds", None if ds is None else ds.bias.detach().clone())
        # The fused kernel adds both branches' biases once, so it gets their sum.
        self.register_buffer("b_out", self.b_pw.clone() if ds is None else self.b_pw + self.b_ds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.separable:
            shortcut = x if self.downsample is None else self.downsample(x)
            y = F.relu(self.conv1(x))
            y = F.relu(self.conv2(y))
            return F.relu(self.conv3(y) + shortcut)
        mode = self.mode
        if mode == "block" and not self._fills_device(x):
            mode = "split"
        elif mode == "auto":
            mode = self._auto_mode(x)
        return self._run(x, mode)

    def chains_into(self, nxt: nn.Module) -> bool:
        """``mode="chain"``: whether this block's last kernel can compute ``nxt``'s first 1x1 (both separable fused
        blocks, ``nxt``'s first 1x1 unstrided and at most ``ops.CHAIN_MAX_WIDTH`` wide; at run time also where the
        kernel fills the device, :meth:`chained`)."""
        return (isinstance(nxt, FusedDSRBlock) and self.separable and nxt.separable and nxt.stride_1x1 == 1
                and nxt.w1.shape[1] <= ops.CHAIN_MAX_WIDTH)  # fmt: skip

    def chained(self, x: torch.Tensor, y1: torch.Tensor | None, nxt: FusedDSRBlock | None):
        """This block from its first 1x1's output ``y1`` where the previous block's last kernel computed it
        (``None``: computed here). ``mode="chain"``: its last kernel (``dsrnet::pointwise_chain``) runs the depthwise
        conv (up to ``ops.CHAIN_DW_MAX_WIDTH`` channels), the second 1x1 + shortcut and, with ``nxt`` (see
        :meth:`chains_into`), ``nxt``'s first 1x1; other modes: split. Returns ``(output, nxt's y1 or None)``."""
        if not self.separable:
            return self(x), None
        if y1 is None:
            y1 = ops.run(ops.pointwise_conv, x, self.w1, self.b1, None, self.stride_1x1, True)
        # The chain kernel's programs each take all output channels of a pixel tile: where that leaves SMs idle
        # (deep stages at small batches; block mode's rule, not yet tuned for chain) the split kernels run instead.
        if self.mode == "chain" and self._fills_device(x):  # the depthwise conv too, up to CHAIN_DW_MAX_WIDTH wide
            w1, b1 = (None, None) if nxt is None else (nxt.w1, nxt.b1)
            out = ops.run(ops.pointwise_chain, y1, self.w_pw, self.b_out, x, self.w_ds, self.ds_stride, w1, b1,
                          self.w_dw, self.b_dw, self.stride_dw, self.dilation)  # fmt: skip
            # the block output taken last: under torch.fx a module's output is its last node (feature extraction)
            y1_next = None if nxt is None else out[1]
            return out[0], y1_next
        w_dw = self.w_dw.t().reshape(self.width, 1, 3, 3)
        y2 = ops.run(ops.dwconv2d, y1, w_dw, self.b_dw, self.stride_dw, self.dilation, True)
        # The downsample shortcut (if any) goes into the pointwise GEMM's tile, as in the fused kernel.
        return ops.run(ops.pointwise_conv, y2, self.w_pw, self.b_out, x, 1, True, self.w_ds, self.ds_stride), None

    def _run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "block":
            return ops.run(
                ops.dsr_block, x, self.w1, self.b1, self.w_dw, self.b_dw, self.w_pw, self.b_out, self.w_ds,
                self.stride_1x1, self.stride_dw, self.dilation, self.ds_stride,
            )  # fmt: skip
        if mode != "fused":  # split; and chain, for a block run on its own (FusedStage chains its blocks)
            return self.chained(x, None, None)[0]
        y1 = ops.run(ops.pointwise_conv, x, self.w1, self.b1, None, self.stride_1x1, True)
        return ops.run(
            ops.dw_pw_block, y1, self.w_dw, self.b_dw, self.w_pw, self.b_out, x, self.w_ds,
            self.stride_dw, self.dilation, self.ds_stride,
        )  # fmt: skip

    def extra_repr(self) -> str:
        if not self.separable:
            return "separable=False (folded convs, PyTorch)"
        stride = self.stride_1x1 * self.stride_dw
        return (f"{self.w1.shape[0]} -> {self.width} -> {self.w_pw.shape[1]}, stride={stride}, dilation={self.dilation}, "
                f"mode={self.mode!r}")  # fmt: skip

    def _auto_mode(self, x: torch.Tensor) -> str:
        """``mode="auto"``: the faster of :data:`AUTO_CANDIDATES` for this block's shape and ``x``'s, measured on the
        first call and remembered (module docstring)."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing() or ops.symbolic_shape(x):
            # torch.fx (torchvision's create_feature_extractor), torch.jit.trace and a dynamic-shape export or
            # compile record one graph for any input, with no size to key a measurement by: split, auto's choice
            # wherever nothing was measured
            return "split"
        key = self._auto_key(x)
        known = _AUTO_CHOICES.get(key)
        if known is not None:
            return known["mode"]
        if (torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())
                or x.device.type == "meta" or is_fake(x)):  # fmt: skip
            # no timing while tracing or capturing, nor of tensors without data (shape propagation, memory
            # estimates under FakeTensorMode)
            return "block" if x.is_cuda and self._fills_device(x) else "split"
        if not ops.triton_usable(x):
            return "split"
        if ops.precompiling_now():  # launches only compile: block once too, so that both compile; no timing
            self._run(x, "block")
            return "split"
        times: dict[str, float | None] = {}
        diffs: dict[str, float] = {}
        reference = None
        with torch.no_grad():
            for mode in AUTO_CANDIDATES:
                try:
                    out = self._run(x, mode)  # the first call: compiles and autotunes; checked against split's
                except Exception as err:  # e.g. a card whose shared memory the kernel's configs exceed
                    if reference is None:  # the reference form: its failure is the user's to see
                        raise
                    times[mode] = None
                    warnings.warn(f"fuse(mode='auto'): {mode} failed on {tuple(x.shape)} ({err!r}); using split",
                                  stacklevel=2)  # fmt: skip
                    continue
                if reference is None:
                    reference = out
                else:
                    diffs[mode] = _max_rel_diff(out, reference)
                del out
                if not diffs.get(mode, 0.0) <= _agreement(x.dtype):  # a kernel computing wrong numbers: never picked
                    times[mode] = None
                    warnings.warn(f"fuse(mode='auto'): {mode}'s output differs from split's on {tuple(x.shape)} (max "
                                  f"relative difference {diffs[mode]:.3g}); using split", stacklevel=2)  # fmt: skip
                    continue
                times[mode] = _median_ms(lambda mode=mode: self._run(x, mode), x.device)
        del reference
        mode = min((m for m in times if times[m] is not None), key=lambda m: times[m])
        _AUTO_CHOICES[key] = {"block_shape": key[0], "input": tuple(x.shape), "pixel_bucket": key[1],
                              "dtype": str(x.dtype), "device": str(x.device),
                              **{f"{m}_ms": t for m, t in times.items()},
                              **{f"{m}_max_rel_diff": d for m, d in diffs.items()}, "mode": mode}  # fmt: skip
        return mode

    def _auto_key(self, x: torch.Tensor) -> tuple:
        """What a measurement holds for: the block's geometry, the input's pixel count up to the next power of two
        (the kernels' own autotune bucket: inputs of varying size, as a detector's, are not measured anew each),
        dtype and device."""
        geometry = (self.w1.shape[0], self.width, self.w_pw.shape[1], self.stride_1x1, self.stride_dw, self.dilation,
                    self.w_ds is not None, self.ds_stride)  # fmt: skip
        return geometry, ops._tune_size(x.numel() // max(1, x.shape[1])), x.dtype, x.device

    def _fills_device(self, x: torch.Tensor) -> bool:
        """Whether the one-kernel block (``mode="block"``) or the chain kernel (``mode="chain"``), one program per
        tile of output pixels, gets at least one tile per SM from ``x`` (always, off a GPU, and under ``torch.fx``
        symbolic tracing, which has no device or shape to decide by: a traced graph keeps the mode's own kernel)."""
        if isinstance(x, torch.fx.Proxy) or x.device.type != "cuda":
            return True
        n, _, h, w = x.shape
        s = self.stride_1x1 * self.stride_dw
        return n * ((h - 1) // s + 1) * ((w - 1) // s + 1) >= BLOCK_MIN_PIXELS_PER_SM * ops.device_sms(x.device)


class FusedStage(nn.Sequential):
    """A stage of :class:`FusedDSRBlock` in ``mode="chain"``: an ``nn.Sequential`` of the same blocks (indices,
    ``state_dict`` keys) whose forward runs each block's last kernel with the next block's first 1x1 in it
    (:meth:`FusedDSRBlock.chained`), so the block output the next block's first 1x1 reads is not read back from
    memory for it. A block with forward hooks (its own, or global ones: ``register_module_forward_hook``, which
    ``FlopCounterMode`` uses) and any other module in the stage run as themselves (``module(x)``), unchained on both
    sides, so that the hooks see their input and output. The blocks themselves are not called as modules otherwise,
    so ``torch.fx`` tracing (torchvision's ``create_feature_extractor``) sees the stage's ops, not block nodes:
    extract a stage's output, or use the model's ``forward_intermediates``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.chained(x, None, None)[0]

    def chained(self, x: torch.Tensor, y1: torch.Tensor | None, nxt: nn.Module | None):
        """The stage from its first block's first-1x1 output ``y1`` where the previous stage's last kernel computed
        it (``None``: computed here), its last block also computing ``nxt``'s first 1x1 where it can (the next
        stage's first block, from :class:`FusedDSRNet`). Returns ``(output, nxt's y1 or None)``."""
        blocks = list(self)
        for i, block in enumerate(blocks):
            if not _chainable(block):
                x, y1 = block(x), None
                continue
            after = blocks[i + 1] if i + 1 < len(blocks) else nxt
            link = after if after is not None and _chainable(after) and block.chains_into(after) else None
            x, y1 = block.chained(x, y1, link)
        return x, y1


def _chainable(module: nn.Module, block: bool = True) -> bool:
    """A fused block (``block``; else any module) without forward hooks of its own, while no global module hooks
    are set: what a chain may run without calling it as a module."""
    return ((isinstance(module, FusedDSRBlock) or not block) and not module._forward_hooks
            and not module._forward_pre_hooks and not _module_lib._global_forward_hooks
            and not _module_lib._global_forward_pre_hooks)  # fmt: skip


#: ``mode="auto"``'s measurements, one per block geometry, input shape, dtype and device (see :func:`auto_choices`).
_AUTO_CHOICES: dict[tuple, dict] = {}


def auto_choices() -> list[dict]:
    """What ``fuse(mode="auto")`` measured so far in this process, one row per block shape and input bucket: the
    block (input channels, width, output channels, strides of the first 1x1 and of the depthwise conv, dilation,
    projection shortcut, its stride), the input shape measured and its pixel bucket, dtype, device, ms per call of
    each candidate (``None``: it failed, or computed other numbers than split), block's max relative difference
    from split's output (``block_max_rel_diff``) and the mode kept."""
    return [dict(row) for row in _AUTO_CHOICES.values()]


def _median_ms(fn, device: torch.device) -> float:
    """Median time of ``fn()`` in ms over :data:`AUTO_REPEATS` samples after :data:`AUTO_WARMUP` calls; the caller
    has made the first call (compilation, autotuning). On a GPU, the kernels' own time (:func:`queued_kernel_ms`)."""
    if device.type != "cuda":
        return 1e3 * statistics.median(time_calls(fn, device=device, warmup=AUTO_WARMUP, repeats=AUTO_REPEATS))
    return statistics.median(queued_kernel_ms(fn, device, warmup=AUTO_WARMUP, repeats=AUTO_REPEATS))


def queued_kernel_ms(fn, device: torch.device, *, warmup: int, repeats: int) -> list[float]:
    """``repeats`` samples of the GPU time per ``fn()`` call in ms, after ``warmup`` calls: the kernels' own time.

    Before each sample of :data:`AUTO_CALLS_PER_SAMPLE` calls the GPU is kept busy (``torch.cuda._sleep``) while the
    host queues them, so the host's launch cost, which a model running ahead of its GPU or a CUDA graph hides, is not
    counted. Timing each call from an idle GPU counted it: split's three launches against block's one made split's
    per-block times 1.4-2.9x what a block takes on average inside the model (H200, batch 1024: 0.59-1.20 ms, against
    0.41 ms per block in the profile), and auto picked block where it was slower (auto 8.43 ms per batch against
    split's 6.89; BENCHMARKS.md, "Fused DSRNet"). A sample whose sleep ended before its calls were queued is taken
    again with a doubled lead (at most :data:`AUTO_LEAD_DOUBLINGS` times)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    samples, lead = [], AUTO_HOST_LEAD_CYCLES
    with torch.cuda.device(device):
        while len(samples) < repeats:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(lead)
            start.record()
            for _ in range(AUTO_CALLS_PER_SAMPLE):
                fn()
            ahead = not start.query()  # the GPU still asleep: every call was queued before the first ran
            end.record()
            end.synchronize()
            if ahead or lead >= AUTO_HOST_LEAD_CYCLES * 2**AUTO_LEAD_DOUBLINGS:
                samples.append(start.elapsed_time(end) / AUTO_CALLS_PER_SAMPLE)
            else:  # the sleep ended first, so the GPU may have waited for launches: a longer lead, sample again
                lead *= 2
    return samples


def _max_rel_diff(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| / max |reference| (non-finite where ``out`` is)."""
    scale = reference.abs().max().float().clamp_min(torch.finfo(torch.float32).tiny)
    return float((out.float() - reference.float()).abs().max() / scale)


def _agreement(dtype: torch.dtype) -> float:
    """``mode="auto"``: the largest relative difference between two modes' outputs that is rounding (both keep
    fp32 accumulators; in bf16/fp16 both round their intermediates; fp32 allows for TF32). A wrong kernel (a stale
    or unwritten tile) differs by O(1)."""
    return 1e-2 if dtype == torch.float32 else 5e-2


class FusedStem(nn.Module):
    """The stem conv (BatchNorm folded) + ReLU as one direct-conv kernel (``dsrnet::direct_conv``): cuDNN ran it as a
    padded conv, a bias add and a ReLU, three passes over the largest map of the network. A module of its own, the
    first child of :class:`FusedDSRNet`, so that tools that run a backbone's children in order (torchvision's
    ``IntermediateLayerGetter``) run it too."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("w_packed", ops.pack_direct(conv.weight.detach()))
        self.register_buffer("bias", conv.bias.detach().clone())
        self.geometry = (conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])

    def extra_repr(self) -> str:
        k, stride, padding, dilation = self.geometry
        return (f"{self.w_packed.shape[0] // k**2} -> {self.w_packed.shape[1]}, kernel_size={k}, stride={stride}, "
                f"padding={padding}, dilation={dilation}, + ReLU")  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernels compute in their input's dtype and autocast does not reach them (custom ops): the model's own
        # dtype decides, so a bf16 model given fp32 input (or run under a bf16 autocast) computes in bf16.
        x = x.to(dtype=self.w_packed.dtype, memory_format=torch.channels_last)
        return ops.run(ops.direct_conv, x, self.w_packed, self.bias, *self.geometry, True)


class FusedDSRNet(nn.Module):
    """Inference form of a :class:`DSRNet` made by :func:`fuse`: same inputs and outputs (logits, or with
    ``features_only`` the feature maps), channels-last and in the model's dtype inside.

    The timm feature API of :class:`DSRNet` carries over: ``feature_info`` (index 0, the stem's output, is module
    ``stem`` here), ``forward_features``, ``forward_head``, ``forward_intermediates``; the children run in order
    (stem, max-pool, layer1..4), so torchvision's ``IntermediateLayerGetter`` / ``BackboneWithFPN`` take it as a
    frozen backbone too. Feature maps come out channels-last, in the model's dtype.
    """

    def __init__(self, model: DSRNet, mode: str = DEFAULT_FUSE_MODE) -> None:
        super().__init__()
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.head_hidden_size = model.head_hidden_size
        self.in_chans = model.in_chans
        cfg = getattr(model, "pretrained_cfg", None)
        # No conv weight of the usual [out, in, k, k] layout to adapt to other input channels (timm's first_conv).
        self.pretrained_cfg = None if cfg is None else {**cfg, "first_conv": None}
        self.default_cfg = self.pretrained_cfg  # timm's older name, as DSRNet has it
        self.stem = FusedStem(fuse_conv_bn_eval(model.conv1, model.bn1))
        self.maxpool = model.maxpool
        for idx in range(1, 5):
            stage = getattr(model, f"layer{idx}")
            stage_type = FusedStage if mode == "chain" else nn.Sequential
            self.add_module(f"layer{idx}", stage_type(*(FusedDSRBlock(b, mode) for b in stage)))
        self.global_pool = model.global_pool
        self.fc = model.fc
        self.features_only = model.features_only
        self.take_indices, self.max_index = list(model.take_indices), model.max_index
        self.feature_info = copy.deepcopy(model.feature_info)
        self.feature_info[0]["module"] = "stem"

    def train(self, mode: bool = True) -> FusedDSRNet:
        """Inference only: it stays in eval mode (BatchNorm is folded away, the fused kernels have no backward and
        its parameters need no gradient), so that a parent's ``train()`` keeps working with it as a frozen
        backbone; asked to train, it warns once."""
        if mode and not getattr(self, "_warned_train", False):
            self._warned_train = True
            warnings.warn(
                "a fuse()d DSRNet is for inference only and stays in eval mode (BatchNorm folded, no backward); to "
                "train it, train the model before fuse() (dsrnet.use_triton_dwconv(model) runs its depthwise convs "
                "with the Triton kernels in training)",
                stacklevel=2,
            )
        return super().train(False)

    def _stages(self, x: torch.Tensor, take: list[int], last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and stages 1..``last``, keeping the outputs whose feature index is in ``take`` (as DSRNet's)."""
        x = self.stem(x)
        feats = [x] if 0 in take else []
        x = self.maxpool(x)
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)[:last]
        # (torch.fx symbolic tracing, e.g. torchvision's create_feature_extractor: every stage called as a module,
        # so that each is a node of the graph)
        chained = [isinstance(stage, FusedStage) and len(stage) and _chainable(stage, block=False)
                   and not isinstance(x, torch.fx.Proxy) for stage in stages]  # fmt: skip
        y1 = None
        for idx, stage in enumerate(stages, start=1):
            if chained[idx - 1]:
                # mode="chain": the stage's last kernel also computes the next stage's first 1x1 (a stage hooks
                # could be watching is called as itself, unchained on both sides)
                x, y1 = stage.chained(x, y1, stages[idx][0] if idx < len(stages) and chained[idx] else None)
            else:
                x, y1 = stage(x), None
            if idx in take:
                feats.append(x)
        return x, feats

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)  # flattened by the pool itself; global_pool="" keeps the map
        return x if pre_logits else self.fc(x)

    def _stem_weight(self) -> torch.Tensor:
        return self.stem.w_packed

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups (its optimizer factory, layer-wise decay), as :class:`DSRNet`'s with the fused
        stem; only a new head trains here (a linear probe), the rest is frozen."""
        return {"stem": r"^stem|maxpool", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch, accepted and recorded: nothing to recompute, the fused body is frozen and keeps no
        activations for a backward pass."""
        self.grad_checkpointing = enable

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A fused model's state dict, or the eager DSRNet's this model was fused from (a training checkpoint:
        timm's ``create_model(..., fused=True, checkpoint_path=...)`` loads it after the builder has fused, as
        ``timm.models.load_checkpoint`` does), folded as :func:`fuse` folds it. An eager state dict loads
        whole, strictly (folding needs every BatchNorm), and keeps this model's mode, dtype and device."""
        layout = self.__dict__.get("_eager_layout")
        if layout is not None and "conv1.weight" in state_dict and "stem.w_packed" not in state_dict:
            device = next((t.device for t in state_dict.values() if isinstance(t, torch.Tensor)), None)
            fold = _fold_dtype(next(layout.parameters()).dtype)  # folded in fp32, rounded once on the copy below
            eager = copy.deepcopy(layout).to(dtype=fold).to_empty(device=device or "cpu")
            eager.load_state_dict(state_dict, strict=True)  # RuntimeError naming the keys, as for any model
            # rounded once, to this model's dtype (assign=True would otherwise keep the fold's fp32)
            own = self.state_dict()
            folded = fuse(eager, mode=self._fuse_mode).state_dict()
            state_dict = {k: v.to(own[k].dtype) if k in own else v for k, v in folded.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        DSRNet.reset_classifier(self, num_classes, global_pool)
        self._on_layout(DSRNet.reset_classifier, num_classes, global_pool)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take = DSRNet.prune_intermediate_layers(self, indices, prune_norm, prune_head)
        self._on_layout(DSRNet.prune_intermediate_layers, indices, prune_norm, prune_head)
        return take

    def _on_layout(self, method, *args) -> None:
        """The same change to the eager layout, so that the eager state dict of the model so changed folds into
        this one (:meth:`load_state_dict`); it stays storage-less (DSRNet's methods make new parts on the device of
        its stem's weight: meta)."""
        layout = self.__dict__.get("_eager_layout")
        if layout is not None:
            method(layout, *args)

    # DSRNet's own, over this class's _stages: the same feature API and outputs. A new head (reset_classifier) is
    # a trainable nn.Linear on the frozen fused features: a linear probe.
    forward_features = DSRNet.forward_features
    forward_intermediates = DSRNet.forward_intermediates
    forward = DSRNet.forward
    get_classifier = DSRNet.get_classifier


def fuse(model: nn.Module, *, mode: str = DEFAULT_FUSE_MODE) -> nn.Module:
    """Inference form of a DSRNet: BN folded, NHWC, each DSR block run by fused Triton kernels.

    The input model is not changed (it is copied). The result is in eval mode, uses the BN running statistics (as
    eval mode does), and keeps the model's dtype and device (BN is folded in fp32 and rounded once to that dtype);
    cast it afterwards like any module
    (``fuse(model).to(torch.bfloat16)``). ``mode="split"`` (default): a depthwise kernel, then the pointwise GEMM
    with the shortcut in its tile; ``mode="fused"``: both in one kernel (module docstring: split measured faster on
    an H200); ``mode="block"``: each whole block in one kernel at its memory-traffic floor (slower than split so
    far on an H200); ``mode="auto"``: split or block per block shape and input size, whichever its first call measures
    faster (:func:`auto_choices`); ``mode="chain"``: split, each block's last kernel also computing its depthwise
    conv (up to 128 channels) and the next block's first 1x1 (module docstring). A ``features_only`` backbone fuses into a backbone with the same feature maps
    (channels-last, in the model's dtype).

    A DSRNet gives a :class:`FusedDSRNet`. Any other module built on DSRNet parts (torchvision's
    ``BackboneWithFPN`` from :func:`dsrnet.backbone_with_fpn`, or a detector on one, after training) gives a copy
    in which every DSR block becomes a :class:`FusedDSRBlock` and every DSRNet stem (a module's ``conv1``, ``bn1``
    and ``act1``, ``FrozenBatchNorm2d`` included) a :class:`FusedStem`: those parts are frozen, the rest (a feature
    pyramid, a detector's heads) is left as it was.
    """
    if mode not in FUSE_MODES:
        raise DsrnetError(f"mode={mode!r} is not valid; fix: choose one of {FUSE_MODES}")
    if isinstance(model, FusedDSRNet) or any(isinstance(m, FusedDSRBlock) for m in model.modules()):
        raise DsrnetError(f"{type(model).__name__} is fused already; fix: use it as it is, or fuse the model it was "
                          f"made from (for another mode: fuse(model, mode=...))")  # fmt: skip
    if isinstance(model, DSRNet):
        folded = _folded_parts(model.named_modules())
        _check_foldable(folded)
        # hooks on what folding removes have no output left to see; the others move with their module below
        _check_hooks(folded)
        dtype = next(model.parameters()).dtype
        source = copy.deepcopy(model).eval().to(_fold_dtype(dtype))  # fold, then round once to the model's dtype
        fused = FusedDSRNet(source, mode).eval().to(dtype=dtype, memory_format=torch.channels_last)
        # The eager layout, without storage, for an eager state dict loaded later (FusedDSRNet.load_state_dict);
        # not a submodule: no state dict entry, no device move.
        fused.__dict__.update(_eager_layout=_storageless_copy(model), _fuse_mode=mode)
        # Forward (pre-)hooks (Grad-CAM, feature taps) move to the modules that now give the same outputs: the
        # model, its stem's ReLU (the fused stem's output), stages and blocks; max-pool, pool and fc are the same
        # modules and keep theirs.
        _with_hooks_of(source, fused)
        _with_hooks_of(source.act1, fused.stem)
        for idx in range(1, 5):
            stage, fused_stage = getattr(source, f"layer{idx}"), getattr(fused, f"layer{idx}")
            _with_hooks_of(stage, fused_stage)
            for block, fused_block in zip(stage, fused_stage, strict=True):
                _with_hooks_of(block, fused_block)
        return fused.requires_grad_(False)  # nothing in it trains (see FusedDSRNet.train)
    parts = [(name, m) for name, m in model.named_modules() if isinstance(m, DSRBlock) or _is_dsrnet_stem(m)]
    if not any(isinstance(m, DSRBlock) for _, m in parts):
        raise DsrnetError(
            f"fuse() takes a DSRNet (e.g. create_model('dsrnet50')) or a module built on one (e.g. "
            f"dsrnet.backbone_with_fpn(...)), got {type(model).__name__}, which holds no DSR block"
        )
    folded = _folded_parts(parts)
    _check_foldable(folded)
    _check_hooks(folded)
    source = copy.deepcopy(model)
    for parent in list(source.modules()):
        if _is_dsrnet_stem(parent):
            conv, bn, dtype = parent.conv1, parent.bn1, parent.conv1.weight.dtype
            fold = _fold_dtype(dtype)
            parent.conv1 = _frozen(FusedStem(fuse_conv_bn_eval(conv.eval().to(fold), bn.eval().to(fold))), dtype)
            parent.bn1 = nn.Identity()  # in conv1's kernel now, and so is act1's ReLU:
            parent.act1 = _with_hooks_of(parent.act1, nn.Identity())  # its output, hooks and all, is conv1's
        for name, child in list(parent.named_children()):
            if isinstance(child, DSRBlock):
                dtype = child.conv1.weight.dtype
                block = _frozen(FusedDSRBlock(child.eval().to(_fold_dtype(dtype)), mode), dtype)
                setattr(parent, name, _with_hooks_of(child, block))
    if mode == "chain":  # a stage of fused blocks (a backbone's layer1..4) chains them, as in a FusedDSRNet
        stages = [(parent, name, child) for parent in source.modules() for name, child in parent.named_children()
                  if type(child) is nn.Sequential and len(child) and all(isinstance(b, FusedDSRBlock) for b in child)]
        for parent, name, child in stages:  # the children's own names (an OrderedDict stage keeps its keys)
            setattr(parent, name, _with_hooks_of(child, FusedStage(OrderedDict(child.named_children()))))
    return source


def _storageless_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device (no memory; ``to_empty`` gives it
    storage): its layout, for loading a state dict into later."""
    memo: dict[int, torch.Tensor] = {}
    for t in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    layout = copy.deepcopy(model, memo)
    for module in layout.modules():  # a layout runs nothing: no hooks (nor what they hold, nor pickling trouble)
        for attr in _HOOK_DICTS:
            if hasattr(module, attr):
                getattr(module, attr).clear()
    return layout


def _fold_dtype(dtype: torch.dtype) -> torch.dtype:
    """BatchNorm is folded in fp32, or the model's own dtype where that is wider (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


#: nn.Module's hook dicts: a wrapper that taps a module's output (timm's ``FeatureHookNet``) registers there.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")  # fmt: skip


def _with_hooks_of(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` carrying ``old``'s forward (pre-)hooks: it replaces ``old`` with the same input and output."""
    for attr in _HOOK_DICTS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    return new


def _foldable_norm(module: nn.Module) -> bool:
    """A norm that is an affine map per channel in eval mode and nothing more: PyTorch's BatchNorm (Sync included),
    torchvision's and timm's ``FrozenBatchNorm2d``; timm's BatchNorm with a built-in activation (``BatchNormAct2d``,
    ``FrozenBatchNormAct2d``) only where that activation and its dropout are identities."""
    plain = isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__name__ in (
        "FrozenBatchNorm2d", "FrozenBatchNormAct2d")  # fmt: skip
    extras = [getattr(module, a) for a in ("act", "drop") if hasattr(module, a)]
    return plain and all(isinstance(e, nn.Identity) for e in extras)


def _check_hooks(named_modules) -> None:
    """Modules that fuse() folds away (a stem's conv and BatchNorm, the parts of a DSR block) cannot keep a hook:
    their own outputs no longer exist."""
    hooked = next((n for n, m in named_modules if m._forward_hooks or m._forward_pre_hooks), None)
    if hooked is not None:
        raise DsrnetError(
            f"{hooked} has a forward hook, but fuse() folds it into a kernel of its stem or block, so its output no "
            f"longer exists; fix: hook the stem's act1 or a whole block (or fuse before adding the hook)"
        )


def _frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A folded part in eval mode, rounded once to ``dtype``, channels-last, with nothing to train."""
    return module.eval().to(dtype=dtype, memory_format=torch.channels_last).requires_grad_(False)


def _folded_parts(named_modules) -> list[tuple[str, nn.Module]]:
    """What folding removes, named: each DSRNet stem's conv and BatchNorm, each DSR block's parts (not the block
    itself: its hooks move with it), among ``named_modules``."""
    folded = []
    for name, part in named_modules:
        if isinstance(part, DSRBlock):
            subs = [(sub, m) for sub, m in part.named_modules() if sub]
        elif _is_dsrnet_stem(part):
            subs = [("conv1", part.conv1), ("bn1", part.bn1)]
        else:
            continue
        folded += [(f"{name}.{sub}" if name else sub, m) for sub, m in subs]
    return folded


def _is_dsrnet_stem(module: nn.Module) -> bool:
    """Whether ``module`` holds a DSRNet stem (a DSRNet, or torchvision's IntermediateLayerGetter over one): conv1,
    bn1 and act1 as children, before a layer1 of DSR blocks."""
    layer1 = getattr(module, "layer1", None)
    return (
        isinstance(getattr(module, "conv1", None), nn.Conv2d)
        and isinstance(getattr(module, "act1", None), nn.ReLU)
        and hasattr(module, "bn1")
        and isinstance(layer1, nn.Sequential)
        and any(isinstance(b, DSRBlock) for b in layer1)
    )


def _check_foldable(folded: list[tuple[str, nn.Module]]) -> None:
    """``folded`` (:func:`_folded_parts`): each norm among them must be a BatchNorm that folds into its conv."""
    norms = [(n, m) for n, m in folded if n.rsplit(".", 1)[-1] in ("bn1", "bn2", "bn3")
             or n.endswith("downsample.1")]  # fmt: skip (the norm after each conv of a stem or DSR block)
    other = next(((n, m) for n, m in norms if not _foldable_norm(m)), None)
    if other is not None:
        raise DsrnetError(
            f"{other[0]} is a {type(other[1]).__name__}, but fuse() folds plain BatchNorm (frozen or not) into the "
            f"convs; fix: fuse a model built with BatchNorm (norm_layer's default, or a FrozenBatchNorm2d)"
        )
    stateless = next((n for n, m in folded if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and (m.running_mean is None or m.running_var is None)), None)  # fmt: skip
    if stateless is not None:
        raise DsrnetError(
            f"BatchNorm {stateless} keeps no running statistics (track_running_stats=False), so it cannot be folded; "
            f"fix: fuse a model whose BatchNorms track them"
        )


class TritonDepthwiseConv2d(DepthwiseConvForm):
    """A depthwise 3x3 ``nn.Conv2d`` (padding = dilation) computed by the NHWC Triton kernels, forward and backward.

    Same parameters and ``state_dict`` keys as the ``nn.Conv2d`` it replaces; the output is channels-last.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if ops.has_tangent(x, self.weight, self.bias):  # forward-mode AD: the op has no formula, PyTorch's conv has
            return nn.Conv2d.forward(self, x)
        return ops.dwconv2d(x, self.weight, self.bias, self.stride[0], self.dilation[0], False)


def bn_relu_dwconv(x: torch.Tensor, bn: nn.BatchNorm2d, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(relu(bn(x)))`` for a depthwise 3x3 ``conv`` in one kernel (``dsrnet::dwconv2d_affine_relu``): the
    kernel computes ``relu((x - mean) * weight / sqrt(var + eps) + bias)`` per channel, in fp32 and centred as
    BatchNorm itself does, on each tap it loads. In training the statistics are those of ``x`` (biased variance
    for normalising, unbiased for the running average, as ``nn.BatchNorm2d`` does), computed first by one
    reduction; in eval, the running ones. Gradients reach ``x`` (through the statistics too), ``bn.weight``,
    ``bn.bias`` and ``conv.weight``."""
    count = x.numel() // x.shape[1]
    if bn.training and count == 1:  # nn.BatchNorm2d's own refusal: one value has no variance
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
    if bn.training and count > 1:
        var, mean = torch.var_mean(x.to(torch.promote_types(x.dtype, torch.float32)), dim=(0, 2, 3), correction=0)
        with torch.no_grad():  # the running statistics, as nn.BatchNorm2d updates them (momentum set)
            bn.num_batches_tracked.add_(1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
            bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), bn.momentum)
    else:  # eval; or an empty batch in training, which leaves the statistics as they were (as nn.BatchNorm2d)
        if bn.training:
            bn.num_batches_tracked.add_(1)
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    return ops.dwconv2d_affine_relu(x, mean, scale, bn.bias, conv.weight, conv.stride[0], conv.dilation[0])


def _bn_relu_fusable(block: DSRBlock) -> bool:
    bn = block.bn1
    return (
        type(bn) is nn.BatchNorm2d  # not SyncBatchNorm: its statistics span processes
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and is_depthwise_3x3(block.conv_dw)
    )


class BNReLUIntoDepthwiseBlock(DSRBlock):
    """A :class:`~dsrnet.models.dsrnet.DSRBlock` (same modules, parameters and ``state_dict``) whose first
    BatchNorm and ReLU run inside its depthwise conv's kernel (:func:`bn_relu_dwconv`); made by
    ``use_triton_dwconv(model, bn_relu=True)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _bn_relu_fusable(self) or (ops.forward_ad_active() and ops.has_tangent(x, *self.parameters())):
            # bn1 replaced since (SyncBatchNorm, a frozen BN), or forward-mode AD (the fused op has no formula for
            # it): the block's own forward, with PyTorch's ops
            return super().forward(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        x = bn_relu_dwconv(self.conv1(x), self.bn1, self.conv_dw)
        x = self.act(self.bn2(x))
        x = self.drop_path(self.bn3(self.conv_pw(x)))
        return self.act(x + shortcut)


def use_triton_dwconv(model: nn.Module, *, bn_relu: bool = False) -> nn.Module:
    """Training form: swap every depthwise 3x3 conv of ``model`` for a :class:`TritonDepthwiseConv2d`, in place;
    with ``bn_relu``, every DSR block whose first BatchNorm is a plain ``nn.BatchNorm2d`` with affine parameters,
    running statistics and a momentum also runs that BatchNorm and the ReLU after it inside its depthwise kernel
    (:func:`bn_relu_dwconv`; the block's other modules are untouched).

    The parameters are the same objects, so an optimizer built before or after the swap keeps working and
    ``state_dict`` keys do not change. Returns ``model``.
    """
    if bn_relu:
        for block in model.modules():
            if type(block) is DSRBlock and _bn_relu_fusable(block):
                block.__class__ = BNReLUIntoDepthwiseBlock  # same modules and state: only forward() differs
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_depthwise_3x3(child) and not isinstance(child, TritonDepthwiseConv2d):
                setattr(parent, name, TritonDepthwiseConv2d.from_conv(child))
    return model
