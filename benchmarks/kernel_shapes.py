#!/usr/bin/env python3
"""Per-kernel GPU timings of the fused DSRNet, one block shape at a time (issue 10): which shape and which
kernel is far from its floor.

    PYTHONPATH=src python3 benchmarks/kernel_shapes.py --out OUT --budget-s 240  # one H100/H200 call, ~4 min
    PYTHONPATH=src python3 benchmarks/kernel_shapes.py --out /tmp/ks --dry-run   # CPU, Triton interpreter

``benchmarks/fused_gpu.py`` times the whole model; when that misses the target, this script says where the
time goes. The block shapes are derived from the real network, not written down:
``dsrnet.fuse(create_model(...))`` is run once on the CPU (batch 1, PyTorch fallback of the kernels) with a
hook on every :class:`FusedDSRBlock` that records its input size and kernel arguments (input C/H/W, width,
output channels, strides, dilation, shortcut kind); blocks with the same arguments are one shape, counted.
``dsrnet50_cifar`` at 32 px first, then, budget permitting, ``dsrnet50`` at 96 px (paper stem). For each
distinct shape, in ``--dtype`` (bf16) channels-last at ``--batch`` (1024), with the folded weights of the
network's first block of that shape:

 0. ``whole``: the ``dsrnet::dsr_block`` kernel (the whole block, first 1x1 included, in one persistent kernel:
    ``fuse(mode="block")``), autotuned, against the same block in PyTorch eager;
 1. ``fused``: the ``dsrnet::dw_pw_block`` kernel (depthwise 3x3 + bias + ReLU -> 1x1 + bias + shortcut +
    ReLU), autotuned; the config the autotuner picked (``best_config``) and, where it tuned, every config's
    time;
 2. ``split``: Triton ``dwconv2d``, then Triton ``pointwise_conv`` with the shortcut in its tile (the strided
    downsample 1x1 as a second GEMM into the same accumulator, where the block has one), as a whole and each
    kernel alone (``split dw``, ``split pw``);
 3. ``torch``: the same math in PyTorch eager (cuDNN depthwise conv2d, groups = C, + ReLU; 1x1 conv2d + bias +
    shortcut + ReLU), as a whole and each conv alone; ``torch compiled``: ``torch.compile`` of it, last
    (compiles);
 4. ``pw1``: the block's first 1x1 (Cin -> width, + bias + ReLU): Triton ``pointwise_conv`` vs cuDNN
    ``conv2d`` (timed once per distinct 1x1 shape, counted over the blocks that have it).

Each row: median ms (CUDA events after warm-up, calls queued behind a GPU sleep so that the host's launch cost
is not counted: ``dsrnet.models.fused.queued_kernel_ms``), the bytes an ideal kernel moves
(inputs read once, output written once, weights once), FLOPs (2 per multiply-add), achieved GB/s and TFLOP/s,
the fractions of the card's copy bandwidth and bf16 matmul rate (both measured first, by
``fused_gpu.step_ceilings``), the floor (max(bytes / bandwidth, FLOPs / matmul rate)) and how many times the
floor the kernel takes; and the block count, so that ms x count ranks the shapes by their share of the
network's time. The Triton rows also carry the largest relative difference to the PyTorch output (a check that
the rows time the same math).

Steps run most valuable first (whole, fused, then split, chain, pw1, torch, tma for every 32-px shape; then 96
px; then compiled); a step is skipped, and listed, when its estimate no longer fits the budget (estimates start at H100
guesses and follow the fastest measured step of the same kind), SIGALRM stops a step at the deadline, and the
results are rewritten after every step. Writes ``results.json``, ``results.md`` and ``log.txt`` into
``--out``. For a narrower follow-up call: ``--kinds whole,split,pw1`` (a subset of whole, fused, pw1, torch,
split, chain, tma, compiled; the summary adds pw1 to split and fused to compare whole blocks; chain times
``fuse(mode="chain")``'s kernel against split's three kernels doing the same, the next block's first 1x1 included,
in tables of its own; tma times the 1x1 GEMMs through TMA tensor descriptors, ``ops.GEMM_TMA``, against the
pointer-based kernel, back to back), ``--max-shapes N``,
``--no-paper``; also ``--batch``, ``--dtype``. ``--sweep`` (with ``--kinds split,pw1``) autotunes the 1x1 GEMM and
the depthwise kernel over ``dsrnet.kernels._triton.SWEEP_CONFIGS`` too and tabulates, per shape, the best of the
library's configs against the best of all. The summary per network: each shape's whole block in every
``fuse`` mode timed, the fastest, its share of the time, x PyTorch eager and x the block's floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if "--dry-run" in sys.argv:  # Triton reads this when triton.language is first imported: set it before torch
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fused_gpu  # noqa: E402  (the budgeted Bench, time_ms, the ceilings and the markdown table helpers)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fused_gpu import BudgetExceeded, _table, _write, summarize_ms, time_ms  # noqa: E402

import dsrnet  # noqa: E402
from dsrnet.kernels import ops  # noqa: E402
from dsrnet.models.fused import FusedDSRBlock, queued_kernel_ms  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NETWORKS = (("cifar", "dsrnet50_cifar", 32), ("paper", "dsrnet50", 96))
#: First-shape estimates in seconds on an H100 (compiles and autotuning included); later shapes of the same
#: kind are estimated from the fastest one measured.
FIRST_ESTIMATE_S = {"whole": 25.0, "fused": 25.0, "pw1": 12.0, "torch": 3.0, "split": 25.0, "chain": 30.0,
                    "tma": 25.0, "compiled": 30.0}
WARMUP, REPEATS = 5, 20


@dataclass(frozen=True)
class BlockShape:
    """A :class:`FusedDSRBlock`'s kernel arguments and input size: blocks with equal ones run the same
    kernels."""

    cin: int
    h: int
    w: int
    width: int
    cout: int
    stride_1x1: int
    stride_dw: int
    dilation: int
    shortcut: str  # "identity" or "downsample" (strided 1x1 conv of the block input)
    ds_stride: int

    @property
    def h1(self) -> int:  # after the first 1x1 (stride_on="1x1" puts the stride there)
        return (self.h - 1) // self.stride_1x1 + 1

    @property
    def w1(self) -> int:
        return (self.w - 1) // self.stride_1x1 + 1

    @property
    def ho(self) -> int:
        return (self.h1 - 1) // self.stride_dw + 1

    @property
    def wo(self) -> int:
        return (self.w1 - 1) // self.stride_dw + 1

    def label(self) -> str:
        stride = max(self.stride_1x1, self.stride_dw)
        sc = "id" if self.shortcut == "identity" else f"ds/{self.ds_stride}"
        return (
            f"{self.cin}x{self.h}x{self.w} -> {self.width} -> {self.cout}x{self.ho}x{self.wo} "
            f"s{stride} d{self.dilation} {sc}"
        )

    def pw1_key(self) -> tuple[int, int, int, int, int]:
        return (self.cin, self.h, self.w, self.width, self.stride_1x1)


def pw1_label(key: tuple[int, int, int, int, int]) -> str:
    cin, h, w, width, stride = key
    return f"{cin}x{h}x{w} -> {width}" + (f" s{stride}" if stride > 1 else "")


# ------------------------------------------------------------------------------------------------------------
# shapes from the real network
# ------------------------------------------------------------------------------------------------------------
def build_fused(model_name: str, model_kwargs: dict):
    """``dsrnet.fuse`` of the network (random weights, BN statistics randomised: a non-trivial folding)."""
    torch.manual_seed(0)
    model = dsrnet.create_model(model_name, num_classes=10, **model_kwargs)
    return dsrnet.fuse(fused_gpu.randomise_bn(model).eval())


def derive_shapes(fused: torch.nn.Module, image: int) -> list[dict]:
    """Each distinct block shape of ``fused`` in network order: ``shape``, ``count``, ``blocks`` (names).

    One forward pass of one image on the CPU through the kernels' PyTorch fallback records each block's
    input size.
    """
    inputs: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, mod in fused.named_modules():
        if isinstance(mod, FusedDSRBlock):
            if not mod.separable:
                raise ValueError(
                    f"{name} is not depthwise-separable (separable=False): no Triton kernels to time"
                )
            hooks.append(
                mod.register_forward_pre_hook(lambda m, a, name=name: inputs.__setitem__(name, a[0].shape))
            )
    before = os.environ.get("DSRNET_DISABLE_TRITON")
    os.environ["DSRNET_DISABLE_TRITON"] = "1"  # shapes only: the interpreter would take minutes
    try:
        with torch.inference_mode():
            fused.float()(torch.zeros(1, 3, image, image))
    finally:
        for h in hooks:
            h.remove()
        if before is None:
            os.environ.pop("DSRNET_DISABLE_TRITON")
        else:
            os.environ["DSRNET_DISABLE_TRITON"] = before
    shapes: dict[BlockShape, list[str]] = {}
    for name, (_, cin, h, w) in inputs.items():
        mod = fused.get_submodule(name)
        shape = BlockShape(
            cin=cin, h=h, w=w, width=mod.width, cout=mod.w_pw.shape[1], stride_1x1=mod.stride_1x1,
            stride_dw=mod.stride_dw, dilation=mod.dilation,
            shortcut="identity" if mod.w_ds is None else "downsample", ds_stride=mod.ds_stride,
        )  # fmt: skip
        shapes.setdefault(shape, []).append(name)
    return [{"shape": s, "count": len(names), "blocks": names} for s, names in shapes.items()]


# ------------------------------------------------------------------------------------------------------------
# ideal traffic and arithmetic of each kernel (elements; x element size later)
# ------------------------------------------------------------------------------------------------------------
def work(s: BlockShape, n: int, part: str) -> tuple[int, int]:
    """(elements moved by an ideal kernel, FLOPs) of ``part`` for batch ``n``.

    ``block``: the whole dw -> pw + shortcut math (what ``dw_pw_block`` does: reads y1 and the shortcut input,
    writes the output); ``dw`` / ``pw``: one kernel of the split form; ``pw1``: the first 1x1; ``whole``: all of
    the block, first 1x1 included (what ``dsr_block`` does).
    A strided 1x1 reads only the pixels it uses (NHWC: each is a contiguous run of channels).
    """
    y1 = n * s.width * s.h1 * s.w1
    out_px = n * s.ho * s.wo
    dw_flops, pw_flops = 2 * 9 * s.width * out_px, 2 * s.width * s.cout * out_px
    ds_flops = 2 * s.cin * s.cout * out_px if s.shortcut == "downsample" else 0
    w_dw, w_pw, w_ds = 10 * s.width, (s.width + 1) * s.cout, (s.cin + 1) * s.cout
    shortcut_in = s.cout * out_px if s.shortcut == "identity" else s.cin * out_px
    if part == "block":
        weights = w_dw + w_pw + (w_ds if s.shortcut == "downsample" else 0)
        return y1 + shortcut_in + s.cout * out_px + weights, dw_flops + pw_flops + ds_flops
    if part == "dw":
        return y1 + s.width * out_px + w_dw, dw_flops
    if part == "pw":  # 1x1 + bias + shortcut (the identity input, or the downsample GEMM of the block input) + ReLU
        weights = w_pw + (w_ds if s.shortcut == "downsample" else 0)
        return s.width * out_px + shortcut_in + s.cout * out_px + weights, pw_flops + ds_flops
    if part == "pw1":
        px = n * s.h1 * s.w1
        return s.cin * px + s.width * px + (s.cin + 1) * s.width, 2 * s.cin * s.width * px
    if part == "chain":  # pointwise_chain: the block after its first 1x1, then the next first 1x1 of its output
        weights = w_dw + w_pw + (w_ds if s.shortcut == "downsample" else 0) + (s.cout + 1) * s.width
        return (y1 + shortcut_in + s.cout * out_px + s.width * out_px + weights,
                dw_flops + pw_flops + ds_flops + 2 * s.cout * s.width * out_px)  # fmt: skip
    if part == "whole":  # the block from its input to its output (dsr_block): x read once, the output written once
        px = n * s.h1 * s.w1  # the input pixels the first 1x1 reads (all, or every other row/column at stride_1x1 2)
        weights = (s.cin + 1) * s.width + w_dw + w_pw + (w_ds if s.shortcut == "downsample" else 0)
        return s.cin * px + s.cout * out_px + weights, 2 * s.cin * s.width * px + dw_flops + pw_flops + ds_flops
    raise ValueError(part)


# ------------------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------------------
class ShapeBench(fused_gpu.Bench):
    """fused_gpu's budgeted runner (``step``: estimate, skip, record errors, save), this script's results."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.dtype = DTYPES[args.dtype]
        self.results = {
            "command": "PYTHONPATH=src python3 " + shlex.join(["benchmarks/kernel_shapes.py", *sys.argv[1:]]),
            "dry_run": self.dry,
            "budget_s": args.budget_s,
            "batch": args.batch,
            "dtype": args.dtype,
            "channels_last": True,
            "environment": {},
            "ceilings": {},
            "networks": {},
            "rows": [],
            "skipped": [],
            "errors": [],
        }
        self.cost: dict[str, float] = {}  # fastest measured seconds per step kind, the next estimate

    def _save_files(self) -> None:  # fused_gpu's save() calls it under its lock, and so does its watchdog
        self.results["elapsed_s"] = round(time.monotonic() - fused_gpu.T0, 1)
        _write(self.out / "results.json", _json(self.results))
        _write(self.out / "results.md", render_markdown(self.results))
        _write(self.out / "log.txt", "\n".join(self.log_lines) + "\n")

    def estimate(self, kind: str) -> float:
        return 0.0 if self.dry else self.cost.get(kind, FIRST_ESTIMATE_S[kind])

    def timed_step(self, kind: str, name: str, fn, *fn_args) -> None:
        t = time.monotonic()
        self.step(name, self.estimate(kind), fn, *fn_args)
        if not self.results["skipped"] or self.results["skipped"][-1].get("step") != name:
            # the fastest so far: the first shapes of a kind pay for compiles that later ones reuse, and an
            # estimate that is too low costs at most the step the deadline alarm stops
            self.cost[kind] = min(self.cost.get(kind, float("inf")), time.monotonic() - t)

    def add_row(self, net: str, entry: dict, impl: str, part: str, timing: dict, **extra) -> dict:
        s: BlockShape = entry["shape"]
        elements, flops = work(s, self.args.batch_eff, part)
        nbytes = elements * torch.empty((), dtype=self.dtype).element_size()
        ms = timing["median_ms"]
        ceil = self.results["ceilings"]
        bw, peak = ceil.get("copy_bandwidth_GBps"), ceil.get("bf16_matmul_TFLOPs")
        floor_ms = max(nbytes / (bw * 1e9), flops / (peak * 1e12)) * 1e3 if bw and peak else None
        row = {
            "network": net, "shape_id": entry["id"], "shape": entry["label"], "count": entry["count"],
            "impl": impl, "part": part, "batch": self.args.batch_eff,
            "ms": round(ms, 5), "p25_ms": round(timing["p25_ms"], 5), "p75_ms": round(timing["p75_ms"], 5),
            "repeats": timing["repeats"], "total_ms": round(ms * entry["count"], 5),
            "ideal_bytes": nbytes, "flops": flops,
            "GBps": round(nbytes / ms / 1e6, 1), "TFLOPs": round(flops / ms / 1e9, 3),
            "bw_fraction": round(nbytes / ms / 1e6 / bw, 4) if bw else None,
            "mm_fraction": round(flops / ms / 1e9 / peak, 4) if peak else None,
            "floor_ms": None if floor_ms is None else round(floor_ms, 5),
            "x_floor": None if floor_ms is None else round(ms / floor_ms, 2),
            **extra,
        }  # fmt: skip
        self.results["rows"].append(row)
        self.log(f"{net} {entry['id']} {impl}: {row['ms']} ms, {row['x_floor']}x floor ({entry['label']})")
        return row


def _json(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


def _rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return round(((a.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item(), 6)


class ShapeTensors:
    """Inputs and folded weights of one block shape, on the device, in the benchmark dtype, channels-last."""

    def __init__(self, bench: ShapeBench, block: FusedDSRBlock, s: BlockShape) -> None:
        dev, dt, n = bench.device, bench.dtype, bench.args.batch_eff
        torch.manual_seed(0)

        def act(c, h, w, relu=False):  # drawn on the device: a batch-1024 input is a GB in fp32 on the host
            t = torch.randn(n, h, w, c, device=dev, dtype=dt).permute(0, 3, 1, 2)  # NCHW view, NHWC memory
            return t.relu_() if relu else t

        self.x = act(s.cin, s.h, s.w, relu=True)  # a block input is a ReLU output
        self.y1 = act(s.width, s.h1, s.w1, relu=True)  # so is the first 1x1's output
        b = {k: v.to(dev, dt) for k, v in block.named_buffers() if v is not None}
        self.w1, self.b1, self.w_dw, self.b_dw = b["w1"], b["b1"], b["w_dw"], b["b_dw"]
        self.w_pw, self.b_pw, self.b_out = b["w_pw"], b["b_pw"], b["b_out"]
        self.w_ds, self.b_ds = b.get("w_ds"), b.get("b_ds")
        # PyTorch layouts of the same weights
        self.w_dw4 = self.w_dw.t().reshape(s.width, 1, 3, 3).contiguous()
        self.w1_4 = self.w1.t()[:, :, None, None].contiguous()
        self.w_pw4 = self.w_pw.t()[:, :, None, None].contiguous()
        self.w_ds4 = None if self.w_ds is None else self.w_ds.t()[:, :, None, None].contiguous()
        # a next block's first 1x1 for the chain kernel: as wide as this block (the next block of its stage)
        self.w1_next = (torch.randn(s.cout, s.width, device=dev) / s.cout**0.5).to(dt)
        self.b1_next = torch.zeros(s.width, device=dev, dtype=dt)
        self.s = s

    # -- Triton ----------------------------------------------------------------------------------------------
    def fused(self):
        s = self.s
        return ops.dw_pw_block(
            self.y1,
            self.w_dw,
            self.b_dw,
            self.w_pw,
            self.b_out,
            self.x,
            self.w_ds,
            s.stride_dw,
            s.dilation,
            s.ds_stride,
        )

    def split_dw(self):
        return ops.dwconv2d(self.y1, self.w_dw4, self.b_dw, self.s.stride_dw, self.s.dilation, True)

    def split_pw(self, y2):  # the shortcut, downsample GEMM included, in the same tile
        return ops.pointwise_conv(y2, self.w_pw, self.b_out, self.x, 1, True, self.w_ds, self.s.ds_stride)

    def split(self):  # what FusedDSRBlock does with mode="split", after the first 1x1
        return self.split_pw(self.split_dw())

    def pw1(self):
        return ops.pointwise_conv(self.x, self.w1, self.b1, None, self.s.stride_1x1, True)

    def chain(self):  # mode="chain": the depthwise conv (up to ops.CHAIN_DW_MAX_WIDTH), 1x1 + shortcut, next 1x1
        s = self.s
        return ops.pointwise_chain(self.y1, self.w_pw, self.b_out, self.x, self.w_ds, s.ds_stride, self.w1_next,
                                   self.b1_next, self.w_dw, self.b_dw, s.stride_dw, s.dilation)  # fmt: skip

    def split_and_next_pw1(self):  # the same math in split's kernels: depthwise, 1x1 + shortcut, the next 1x1
        y = self.split()
        return y, ops.pointwise_conv(y, self.w1_next, self.b1_next, None, 1, True)

    def whole(self):  # what FusedDSRBlock does with mode="block": the block's input to its output, one kernel
        s = self.s
        return ops.dsr_block(self.x, self.w1, self.b1, self.w_dw, self.b_dw, self.w_pw, self.b_out, self.w_ds,
                             s.stride_1x1, s.stride_dw, s.dilation, s.ds_stride)  # fmt: skip

    # -- PyTorch ---------------------------------------------------------------------------------------------
    def torch_dw(self):
        s = self.s
        return F.relu(F.conv2d(self.y1, self.w_dw4, self.b_dw, s.stride_dw, s.dilation, s.dilation, s.width))

    def torch_ds(self):
        return F.conv2d(self.x, self.w_ds4, self.b_ds, self.s.ds_stride)

    def torch_pw(self, y2):  # the shortcut, downsample conv included
        shortcut = self.x if self.w_ds is None else self.torch_ds()
        return F.relu(F.conv2d(y2, self.w_pw4, self.b_pw) + shortcut)

    def torch_block(self):
        return self.torch_pw(self.torch_dw())

    def torch_pw1(self):
        return F.relu(F.conv2d(self.x, self.w1_4, self.b1, self.s.stride_1x1))

    def torch_chain(self):
        y = self.torch_block()
        return y, F.relu(F.conv2d(y, self.w1_next.t()[:, :, None, None], self.b1_next))

    def torch_whole(self):  # the block's input to its output in PyTorch eager (cuDNN)
        s = self.s
        y1 = self.torch_pw1()
        return self.torch_pw(F.relu(F.conv2d(y1, self.w_dw4, self.b_dw, s.stride_dw, s.dilation, s.dilation,
                                             s.width)))  # fmt: skip


def _autotuner(name: str):
    """The Triton autotuner behind ``dsrnet.kernels._triton.<name>`` in the current mode (None: no Triton)."""
    tk = getattr(ops, "_tk", None)
    return None if tk is None else getattr(tk, name).build()


def _config_text(config) -> str | None:
    if config is None:
        return None
    meta = ",".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in config.kwargs.items())
    return f"{meta} w{config.num_warps} s{config.num_stages}"


def first_call(bench: ShapeBench, fn, tuner_name: str | None = None) -> dict:
    """The untimed first call (compilation + autotuning), and what the autotuner chose for this shape."""
    tuner = None if tuner_name is None else _autotuner(tuner_name)
    before = getattr(tuner, "configs_timings", None)
    precompile_s = None
    if tuner is not None:  # every autotune config compiled in parallel first (outputs of this pass are garbage)
        t = time.monotonic()
        with torch.inference_mode():
            compiled = ops.precompile(fn)
        bench.sync()
        precompile_s = None if compiled is None else round(time.monotonic() - t, 2)
    t = time.monotonic()
    with torch.inference_mode():
        out = fn()
    bench.sync()
    info = {"first_call_s": round(time.monotonic() - t, 2), "output": out}
    if precompile_s is not None:
        info["precompile_s"] = precompile_s
    if tuner is not None:
        info["config"] = _config_text(getattr(tuner, "best_config", None))
        timings = getattr(tuner, "configs_timings", None)
        if timings is not None and timings is not before:  # tuned on this call: every config's time
            info["tuning_ms"] = {_config_text(c): round(_first(v), 5) for c, v in timings.items()}
    return info


def tuned_fields(info: dict) -> dict:
    """The row fields of a Triton kernel's :func:`first_call`: the autotuner's pick and timings, compile times."""
    return {k: info.get(k) for k in ("config", "tuning_ms", "first_call_s", "precompile_s")}


def _first(v) -> float:
    return float(v[0] if isinstance(v, (list, tuple)) else v)


def _time(bench: ShapeBench, fn) -> dict:
    """On a GPU, the kernels' own time: calls queued behind a GPU sleep (``queued_kernel_ms``, as ``fuse(mode=
    "auto")``'s probe). Timed one by one from an idle GPU (``time_ms``, before 2026-11-27's third H200 session), a
    0.08-ms GEMM read 0.20 ms: the host's ~0.1 ms per launch counted."""
    with torch.inference_mode():
        if bench.device.type != "cuda":
            return time_ms(bench, fn, warmup=WARMUP, repeats=REPEATS)
        return summarize_ms(queued_kernel_ms(fn, bench.device, warmup=WARMUP, repeats=REPEATS))


def _backend(t: torch.Tensor) -> str:
    return "triton" if ops.triton_usable(t) else "pytorch fallback"


# -- steps (one shape each) ----------------------------------------------------------------------------------
def step_fused(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    info = first_call(bench, tensors.fused, "dw_pw")
    with torch.inference_mode():
        ref = tensors.torch_block()
    diff = _rel_diff(info["output"], ref)
    bench.add_row(
        net,
        entry,
        "fused dw_pw_block",
        "block",
        _time(bench, tensors.fused),
        **tuned_fields(info),
        max_rel_diff=diff,
        backend=_backend(tensors.y1),
    )


def step_whole(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    info = first_call(bench, tensors.whole, "dsr_block")
    with torch.inference_mode():
        diff = _rel_diff(info["output"], tensors.torch_whole())
    bench.add_row(net, entry, "whole dsr_block", "whole", _time(bench, tensors.whole), **tuned_fields(info),
                  max_rel_diff=diff, backend=_backend(tensors.x))  # fmt: skip
    first_call(bench, tensors.torch_whole)
    bench.add_row(net, entry, "torch eager whole block", "whole", _time(bench, tensors.torch_whole))


def step_pw1(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    info = first_call(bench, tensors.pw1, "pw_gemm")
    with torch.inference_mode():
        diff = _rel_diff(info["output"], tensors.torch_pw1())
    bench.add_row(
        net,
        entry,
        "pw1 triton pointwise_conv",
        "pw1",
        _time(bench, tensors.pw1),
        **tuned_fields(info),
        max_rel_diff=diff,
        backend=_backend(tensors.x),
    )
    first_call(bench, tensors.torch_pw1)
    bench.add_row(net, entry, "pw1 torch conv2d", "pw1", _time(bench, tensors.torch_pw1))


def step_torch(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    first_call(bench, tensors.torch_block)
    bench.add_row(net, entry, "torch eager", "block", _time(bench, tensors.torch_block))
    with torch.inference_mode():
        y2 = tensors.torch_dw()
    bench.add_row(net, entry, "torch dw conv2d + relu", "dw", _time(bench, tensors.torch_dw))
    bench.add_row(net, entry, "torch 1x1 + shortcut + relu", "pw", _time(bench, lambda: tensors.torch_pw(y2)))


def step_split(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    dw = first_call(bench, tensors.split_dw, "dw_fwd")
    pw = first_call(bench, lambda: tensors.split_pw(dw["output"]), "pw_gemm")
    with torch.inference_mode():
        diff = _rel_diff(tensors.split(), tensors.torch_block())
    backend = _backend(tensors.y1)
    bench.add_row(
        net,
        entry,
        "split dwconv2d + pointwise_conv",
        "block",
        _time(bench, tensors.split),
        max_rel_diff=diff,
        backend=backend,
    )
    bench.add_row(
        net,
        entry,
        "split dwconv2d",
        "dw",
        _time(bench, tensors.split_dw),
        config=dw.get("config"),
        tuning_ms=dw.get("tuning_ms"),
        backend=backend,
    )
    bench.add_row(
        net,
        entry,
        "split pointwise_conv + shortcut",
        "pw",
        _time(bench, lambda: tensors.split_pw(dw["output"])),
        config=pw.get("config"),
        tuning_ms=pw.get("tuning_ms"),
        backend=backend,
    )


def step_tma(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    """The 1x1 GEMMs through TMA (``ops.GEMM_TMA``, ``pw_gemm_tma``) against the pointer-based kernel at the same
    shape, back to back: the first 1x1 where it is not strided, and the second with its identity shortcut (a
    downsample GEMM in the tile stays pointer-based); rows say which kernel ran."""
    cases = []
    if tensors.s.stride_1x1 == 1:
        cases.append(("pw1", "pw1 pointwise_conv", tensors.pw1))
    if tensors.w_ds is None:
        y2 = first_call(bench, tensors.split_dw, "dw_fwd")["output"]
        cases.append(("pw", "split pointwise_conv + shortcut", lambda: tensors.split_pw(y2)))
    for part, impl, fn in cases:
        pointer = first_call(bench, fn, "pw_gemm")
        bench.add_row(net, entry, f"{impl} (pointer)", part, _time(bench, fn), **tuned_fields(pointer),
                      backend=_backend(tensors.x))  # fmt: skip
        with fused_gpu.tma_gemms():
            tma = first_call(bench, fn, "pw_gemm_tma")  # first: its compile and tuning are what it records
            launched = _tma_launches(fn)
            with torch.inference_mode():
                diff = _rel_diff(tma["output"], pointer["output"])
            bench.add_row(net, entry, f"{impl} (TMA)", part, _time(bench, fn), **tuned_fields(tma),
                          max_rel_diff=diff, tma_launches=launched, backend=_backend(tensors.x))  # fmt: skip


def _tma_launches(fn) -> int:
    """How many launches of ``pw_gemm_tma`` one call of ``fn`` makes (0: the tensors did not allow TMA)."""
    tk = getattr(ops, "_tk", None)
    if tk is None:
        return 0
    lazy, count = tk.pw_gemm_tma, []

    class Counted:
        def __getitem__(self, grid):
            count.append(1)
            return lazy[grid]

    tk.pw_gemm_tma = Counted()
    try:
        with torch.inference_mode():
            fn()
    finally:
        tk.pw_gemm_tma = lazy
    return len(count)


def step_chain(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    """``fuse(mode="chain")``'s kernel against split's three (depthwise, 1x1 + shortcut, the next block's first
    1x1) on the same math; the next 1x1 is a stand-in as wide as the block (its stage's next block)."""
    info = first_call(bench, tensors.chain, "pw_chain")
    with torch.inference_mode():
        want = tensors.torch_chain()
    diff = max(_rel_diff(got, ref) for got, ref in zip(info["output"], want, strict=True))
    bench.add_row(net, entry, "chain pointwise_chain", "chain", _time(bench, tensors.chain), **tuned_fields(info),
                  max_rel_diff=diff, backend=_backend(tensors.y1))  # fmt: skip
    first_call(bench, tensors.split_and_next_pw1)
    bench.add_row(net, entry, "split + next pw1", "chain", _time(bench, tensors.split_and_next_pw1),
                  backend=_backend(tensors.y1))  # fmt: skip
    first_call(bench, tensors.torch_chain)
    bench.add_row(net, entry, "torch eager block + next 1x1", "chain", _time(bench, tensors.torch_chain))


def step_compiled(bench: ShapeBench, net: str, entry: dict, tensors: ShapeTensors) -> None:
    torch._dynamo.reset()  # a fresh cache per shape: one function recompiled per shape would hit the limit
    compiled = torch.compile(tensors.torch_block, backend=bench.args.compile_backend, dynamic=False)
    info = first_call(bench, compiled)
    bench.add_row(
        net, entry, "torch compiled", "block", _time(bench, compiled), first_call_s=info["first_call_s"]
    )


#: The PyTorch row each Triton row is compared with (``x_vs_torch``).
TORCH_OF = {
    "fused dw_pw_block": "torch eager",
    "split dwconv2d + pointwise_conv": "torch eager",
    "split dwconv2d": "torch dw conv2d + relu",
    "split pointwise_conv + shortcut": "torch 1x1 + shortcut + relu",
    "pw1 triton pointwise_conv": "pw1 torch conv2d",
    "whole dsr_block": "torch eager whole block",
    "chain pointwise_chain": "torch eager block + next 1x1",
    "split + next pw1": "torch eager block + next 1x1",
    "torch compiled": "torch eager",
}
STEPS = {
    "whole": step_whole,
    "fused": step_fused,
    "pw1": step_pw1,
    "torch": step_torch,
    "split": step_split,
    "chain": step_chain,
    "tma": step_tma,
    "compiled": step_compiled,
}


# ------------------------------------------------------------------------------------------------------------
# networks and the plan
# ------------------------------------------------------------------------------------------------------------
def step_shapes(bench: ShapeBench, stem: str, model_name: str, image: int, models: dict) -> None:
    size = dry_size(stem, image) if bench.dry else image
    kwargs = {"widths": (4, 8, 8, 16)} if bench.dry else {}
    fused = build_fused(model_name, kwargs)
    entries = derive_shapes(fused, size)
    pw1_counts: dict[tuple, int] = {}
    for i, e in enumerate(entries):
        e["id"] = f"{stem[0]}{i:02d}"
        e["label"] = e["shape"].label()
        pw1_counts[e["shape"].pw1_key()] = pw1_counts.get(e["shape"].pw1_key(), 0) + e["count"]
    net = f"{stem}/{size}"
    models[net] = (fused.to(bench.device, bench.dtype), entries)
    bench.results["networks"][net] = {
        "model": model_name, "stem": stem, "image": size, "model_kwargs": kwargs,
        "blocks": sum(e["count"] for e in entries), "distinct_shapes": len(entries),
        "shapes": [{"id": e["id"], "label": e["label"], "count": e["count"], "blocks": e["blocks"],
                    **asdict(e["shape"]), "ho": e["shape"].ho, "wo": e["shape"].wo} for e in entries],
        "pw1_shapes": [{"label": pw1_label(k), "count": c} for k, c in pw1_counts.items()],
    }  # fmt: skip
    bench.log(
        f"{net}: {len(entries)} distinct block shapes over {bench.results['networks'][net]['blocks']} blocks"
    )


def dry_size(stem: str, image: int) -> int:
    """Input size of a dry run: layer1 sees 8x8 either way (the interpreter's time grows with pixels)."""
    return 8 if stem == "cifar" else 32


def select(entries: list[dict], max_shapes: int | None) -> list[dict]:
    """The shapes to time. ``max_shapes``: that many, one per shortcut kind and stride first (so a dry run
    with a couple of shapes still runs every kernel variant), then in network order."""
    if max_shapes is None:
        return entries
    firsts, seen = [], set()
    for e in entries:
        kind = (e["shape"].shortcut, e["shape"].stride_dw, e["shape"].ds_stride)
        if kind not in seen:
            seen.add(kind)
            firsts.append(e)
    rest = [e for e in entries if e not in firsts]
    return (firsts + rest)[:max_shapes]


def run_kind(bench: ShapeBench, kind: str, net: str, models: dict, max_shapes: int | None) -> None:
    if net not in models:  # its shapes step was skipped or failed
        bench.results["skipped"].append(
            {"step": f"{kind} {net}", "reason": "no shapes: the shapes step did not run"}
        )
        return
    fused, entries = models[net]
    pw1_done: set = set()
    chosen = select(entries, max_shapes)
    for i, entry in enumerate(chosen):
        s: BlockShape = entry["shape"]
        if kind == "pw1":
            if s.pw1_key() in pw1_done:
                continue
            pw1_done.add(s.pw1_key())
            entry = {
                **entry,
                "id": "pw1:" + entry["id"],
                "label": pw1_label(s.pw1_key()),
                "count": sum(e["count"] for e in entries if e["shape"].pw1_key() == s.pw1_key()),
            }

        def one(entry=entry, s=s):
            tensors = ShapeTensors(bench, fused.get_submodule(entry["blocks"][0]), s)
            try:
                STEPS[kind](bench, net, entry, tensors)
            finally:
                del tensors

        try:
            bench.timed_step(kind, f"{kind} {net} {entry['id']} {entry['label']}", one)
        except BudgetExceeded:  # the budget stop: this kind's other shapes are listed as not run, as later steps are
            later = [e for e in chosen[i + 1 :] if kind != "pw1" or e["shape"].pw1_key() not in pw1_done]
            for e in {(e["shape"].pw1_key() if kind == "pw1" else e["id"]): e for e in later}.values():
                label = pw1_label(e["shape"].pw1_key()) if kind == "pw1" else e["label"]
                step = f"{kind} {net} {'pw1:' if kind == 'pw1' else ''}{e['id']} {label}"
                bench.results["skipped"].append({"step": step, "reason": "not started: budget reached"})
            raise


#: The rows whose autotuning times each kernel of the sweep (``--sweep``).
SWEEP_ROWS = {"pw1 triton pointwise_conv": "pw_gemm", "split pointwise_conv + shortcut": "pw_gemm",
              "split dwconv2d": "dw_fwd"}  # fmt: skip


def widen_configs(dtype: torch.dtype = torch.bfloat16) -> dict:
    """``--sweep``: the 1x1 GEMM's and the depthwise kernel's autotuners get the extra candidate configs beside
    their own (``dsrnet.kernels._triton.widen_configs``: those whose tiles fit in shared memory at ``dtype``).
    Returns, per kernel, the library's configs, the extra ones and those left out, as text."""
    tk = getattr(ops, "_tk", None)
    if tk is None:
        return {}
    widened = tk.widen_configs(torch.empty((), dtype=dtype).element_size())
    return {name: {part: [_config_text(c) for c in configs] for part, configs in parts.items()}
            for name, parts in widened.items()}  # fmt: skip


def sweep_rows(results: dict) -> list[dict]:
    """Per shape and swept kernel: the best of the library's configs against the best of all (``--sweep``)."""
    sweep, out = results.get("sweep") or {}, []
    for r in results["rows"]:
        kernel = SWEEP_ROWS.get(r["impl"])
        timings = r.get("tuning_ms") or {}
        if kernel not in sweep or not timings:
            continue
        library = {c: t for c, t in timings.items() if c in sweep[kernel]["library"]}
        best = min(timings, key=timings.get)
        row = {"network": r["network"], "shape_id": r["shape_id"], "shape": r["shape"], "kernel": r["impl"],
               "best_config": best, "best_ms": timings[best]}  # fmt: skip
        if library:
            lib_best = min(library, key=library.get)
            row.update(library_config=lib_best, library_ms=library[lib_best],
                       gain=round(library[lib_best] / timings[best], 3) if timings[best] > 0 else None)  # fmt: skip
        out.append(row)
    return out


def render_markdown(results: dict) -> str:
    env, ceil = results.get("environment", {}), results.get("ceilings", {})
    lines = [
        "# DSRNet kernels per block shape (issue 10)",
        "",
        f"Command: `{results['command']}`" + ("  (DRY RUN: CPU, Triton interpreter, tiny widths: not timings)"
                                                if results["dry_run"] else ""),
        f"Device: {env.get('device')}; torch {env.get('torch')}, Triton {env.get('triton')}, "
        f"CUDA {env.get('cuda')}; {results['dtype']}, channels_last, batch {results['batch']}; "
        f"elapsed {results.get('elapsed_s')} s of a {results['budget_s']} s budget.",
        f"Measured ceilings: {ceil.get('copy_bandwidth_GBps')} GB/s copy, "
        f"{ceil.get('bf16_matmul_TFLOPs')} TFLOP/s bf16 matmul. floor = max(ideal bytes / copy bandwidth, "
        "FLOPs / matmul rate); ideal bytes = inputs read once + output written once + weights. Later stages' "
        "tensors (tens of MB) may partly stay in L2 between repeats, so their GB/s can exceed what a "
        "whole-model pass sees. x_vs_torch > 1: faster than the PyTorch row of the same math.",
        "",
    ]  # fmt: skip
    for net, info in results["networks"].items():
        rows = [r for r in results["rows"] if r["network"] == net]
        lines += [
            f"## {net}: {info['model']}, {info['blocks']} blocks, {info['distinct_shapes']} distinct shapes",
            "",
        ]
        lines += [
            "Shape: input CxHxW -> width -> output CxHxW, stride, dilation, shortcut (id, or ds/stride = the "
            "1x1 downsample). Blank: not timed (budget, --max-shapes or --kinds).",
            "",
        ]
        lines += [_summary(info, rows), ""]
        by = {(r["shape_id"], r["impl"]): r for r in rows}
        for impl in dict.fromkeys(r["impl"] for r in rows):
            sel = sorted((dict(r) for r in rows if r["impl"] == impl), key=lambda r: -r["total_ms"])
            total = sum(r["total_ms"] for r in sel) or 1.0
            for r in sel:
                r["share_%"] = round(100 * r["total_ms"] / total, 1)
                ref = by.get((r["shape_id"], TORCH_OF.get(impl)))
                r["x_vs_torch"] = round(ref["ms"] / r["ms"], 3) if ref else None  # > 1: faster than PyTorch
            lines += [f"### {impl} ({sel[0]['part']}), sorted by share of this kind's time (ms x count)", ""]
            cols = [
                "shape_id",
                "shape",
                "count",
                "ms",
                "total_ms",
                "share_%",
                "GBps",
                "TFLOPs",
                "bw_fraction",
                "mm_fraction",
                "floor_ms",
                "x_floor",
                "x_vs_torch",
                "config",
                "max_rel_diff",
                "backend",
                "tma_launches",
            ]
            cols = [c for c in cols if any(r.get(c) is not None for r in sel)]  # no all-empty columns
            if all(r.get("backend") == "triton" for r in sel):
                cols.remove("backend")
            lines.append(_table(sel, cols))
    if results.get("sweep"):
        lines += [
            "## Config sweep (--sweep): each shape's best library config against the best of all",
            "",
            "Times from the autotuner's own timing of every config on the shape's first call (ms, median; "
            "gain > 1: an extra config of `SWEEP_CONFIGS` is faster by that factor).",
            "",
            _table(sweep_rows(results), ["network", "shape_id", "shape", "kernel", "library_config", "library_ms",
                                         "best_config", "best_ms", "gain"]),
        ]  # fmt: skip
    lines += [
        "## Skipped steps / errors",
        "",
        _table(results["skipped"], ["step", "estimate_s", "left_s", "reason"]),
        _table(
            [{"step": e["step"], "error": e["error"][:200]} for e in results["errors"]], ["step", "error"]
        ),
        "Everything, with the autotuner's time for every config it tried: results.json.",
    ]
    return "\n".join(lines) + "\n"


def _summary(info: dict, rows: list[dict]) -> str:
    """Per block shape, the whole block (its input to its output) in each ``fuse`` mode that was timed: ``block``
    (one ``dsr_block``), ``split`` (pw1 + ``dwconv2d`` + ``pointwise_conv``), ``fused`` (pw1 + ``dw_pw_block``),
    and PyTorch eager; the fastest (what ``fuse(mode="auto")`` should pick between block and split), x count."""
    by = {(r["shape_id"], r["impl"]): r for r in rows}

    def ms(row: dict | None, *more: dict | None) -> float | None:
        return None if row is None or None in more else row["ms"] + sum(r["ms"] for r in more)

    out = []
    for s in info["shapes"]:
        label = pw1_label((s["cin"], s["h"], s["w"], s["width"], s["stride_1x1"]))
        pw1 = {impl: next((r for r in rows if r["part"] == "pw1" and r["shape"] == label and r["impl"].startswith(impl)),
                          None) for impl in ("pw1 triton", "pw1 torch")}  # fmt: skip
        whole = by.get((s["id"], "whole dsr_block"))
        modes = {
            "block": ms(whole),
            "split": ms(by.get((s["id"], "split dwconv2d + pointwise_conv")), pw1["pw1 triton"]),
            "fused": ms(by.get((s["id"], "fused dw_pw_block")), pw1["pw1 triton"]),
        }
        torch_ms = ms(by.get((s["id"], "torch eager whole block"))) or ms(by.get((s["id"], "torch eager")),
                                                                          pw1["pw1 torch"])  # fmt: skip
        timed = {m: t for m, t in modes.items() if t is not None}
        best = min(timed, key=timed.get) if timed else None
        floor = whole["floor_ms"] if whole else None  # input read once, output written once, weights once
        out.append(
            {
                "shape_id": s["id"], "shape": s["label"], "count": s["count"],
                **{f"{m}_ms": t for m, t in modes.items()}, "torch_ms": torch_ms,
                "fastest": best, "fastest_total_ms": None if best is None else timed[best] * s["count"],
                "x_torch": round(torch_ms / timed[best], 2) if best and torch_ms else None,
                "floor_ms": floor, "x_floor": round(timed[best] / floor, 2) if best and floor else None,
            }
        )  # fmt: skip
    ranked = [r for r in out if r["fastest_total_ms"] is not None]
    total = sum(r["fastest_total_ms"] for r in ranked) or 1.0
    for r in ranked:
        r["share_%"] = round(100 * r["fastest_total_ms"] / total, 1)
    out.sort(key=lambda r: -(r["fastest_total_ms"] or -1))
    head = (
        "Whole blocks per shape in each fuse() mode timed (block = one dsr_block; split and fused include the "
        "first 1x1's pw1 row), sorted by the fastest one's share of the summed time "
        f"({total:.4g} ms per batch over the {len(ranked)} shapes timed); torch = PyTorch eager of the same math; "
        "floor = the whole block's (input once, output once, weights once).\n\n"
    )
    cols = ["shape_id", "shape", "count", "block_ms", "split_ms", "fused_ms", "torch_ms", "fastest",
            "fastest_total_ms", "share_%", "x_torch", "floor_ms", "x_floor"]  # fmt: skip
    return head + _table(out, [c for c in cols if c in ("shape_id", "shape", "count") or any(r.get(c) for r in out)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json, results.md, log.txt")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="stop starting new work after this many s"
    )
    parser.add_argument("--batch", type=int, default=1024, help="images per batch (dry run: 1)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument(
        "--max-shapes", type=int, default=None, help="time at most this many shapes per network"
    )
    parser.add_argument(
        "--kinds", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)} (default: all)"
    )
    parser.add_argument("--no-paper", action="store_true", help="only dsrnet50_cifar at 32 px")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes: finds bugs"
    )
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (inductor; eager in dry run)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="autotune the 1x1 GEMM and the depthwise kernel over their configs "
        "and dsrnet.kernels._triton.SWEEP_CONFIGS: each shape's time per config, and what the extra ones gain "
        "(with --kinds split,pw1)"
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(STEPS):
        parser.error(f"--kinds takes a comma-separated subset of {','.join(STEPS)}, got {args.kinds!r}")
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.dry_run else "inductor"
    if args.dry_run:
        args.max_shapes = 3 if args.max_shapes is None else args.max_shapes
    args.batch_eff = 1 if args.dry_run else args.batch
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    os.environ.pop("DSRNET_TRITON_AUTOTUNE", None)  # the kernels as the model runs them: autotuned
    os.environ.pop("DSRNET_DISABLE_TRITON", None)
    bench = ShapeBench(args)
    bench.results["batch"] = args.batch_eff
    if args.sweep:
        bench.results["sweep"] = widen_configs(DTYPES[args.dtype])
    bench.start_alarm()
    watchdog = bench.start_watchdog()  # a compile stuck past the deadline: files written, process ended at the budget
    models: dict = {}
    nets = {stem: f"{stem}/{dry_size(stem, image) if args.dry_run else image}" for stem, _, image in NETWORKS}
    # Most valuable first: every 32-px shape through the fused model's two kernels, then the references, then
    # 96 px, then torch.compile (seconds of compilation per shape). A dry run times one 96-px / compiled
    # shape.
    few = 1 if args.dry_run else args.max_shapes
    stems = ("cifar",) if args.no_paper else ("cifar", "paper")
    plan = [("environment", fused_gpu.step_environment), ("ceilings", fused_gpu.step_ceilings)]
    plan += [
        (f"shapes {stem}", step_shapes, stem, name, image, models)
        for stem, name, image in NETWORKS
        if stem in stems
    ]
    # the whole-block kernel first (fuse(mode="block"), new), then split right after fused: per shape, which of
    # the two is faster
    order = [(k, "cifar", args.max_shapes) for k in ("whole", "fused", "split", "chain", "pw1", "torch", "tma")]
    order += [(k, "paper", few) for k in ("whole", "fused", "pw1", "torch")] + [("compiled", "cifar", few)]
    plan += [(k, run_kind, k, nets[stem], models, n) for k, stem, n in order if k in kinds and stem in stems]
    done = 0
    try:
        for name, fn, *fn_args in plan:
            if fn is run_kind:  # per-shape steps inside, each with its own estimate
                fn(bench, *fn_args)
            else:
                bench.step(name, 0, fn, bench, *fn_args)
            done += 1
    except BudgetExceeded:
        bench.log("budget reached: writing what was measured")
        for name, *rest in plan[done + 1 :]:
            label = f"{name} {rest[2]}" if rest and rest[0] is run_kind else name
            bench.results["skipped"].append({"step": label, "reason": "not started: budget reached"})
    finally:
        signal.alarm(0)
        watchdog.cancel()
        bench.save()
    bench.log(f"done in {time.monotonic() - fused_gpu.T0:.0f}s; results in {bench.out}")
    bench.save()
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(
        rc
    )  # as fused_gpu.py: skip teardown that can wait on torch.compile's workers after a budget stop
