#!/usr/bin/env python3
"""Compile every Triton kernel of ``dsrnet.kernels`` for a GPU target on a machine without a GPU.

Triton's interpreter (what the unit tests use) runs kernels as NumPy and never lowers them, so type errors, layout
problems and register/shared-memory overflows only show up when a kernel is compiled for a real target. This script
compiles each kernel, for each autotune config and each constexpr variant that DSRNet uses, down to PTX and cubin for
``--arch`` (default 90 = H100/H200) with Triton's bundled ``ptxas``, and prints registers, spills and shared memory.

    PYTHONPATH=src python3 benchmarks/triton_compile_check.py --quick          # every variant, first config, bf16
    PYTHONPATH=src python3 benchmarks/triton_compile_check.py --all-configs    # every config, one variant each
    PYTHONPATH=src python3 benchmarks/triton_compile_check.py                  # everything (slow: ~500 compiles)
    PYTHONPATH=src python3 benchmarks/triton_compile_check.py --sweep          # the sweep's extra configs, bf16
    PYTHONPATH=src python3 benchmarks/triton_compile_check.py --quick --pdl --ptx-grep griddepcontrol  # ops.PDL
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dsrnet.kernels import _triton as tk


def _signature(fn, ptr_dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            # Partial sums and a BatchNorm prologue's centre/scale/shift are fp32 whatever the activations' dtype.
            sig[name] = "*fp32" if name in ("part_ptr", "a_ptr") else f"*{ptr_dtype}"
        else:
            sig[name] = "i32"
    return sig


# Integer arguments that are multiples of 16 in DSRNet-50 (channel counts and the strides built from them), which a
# real launch detects and specialises on ("tt.divisibility"); pixel counts and map sizes are left general.
_DIVISIBLE_INTS = {"C", "N", "K", "KDS", "PIX_PER_PROG", "COUT", "CIN", "SLOT_M", "W1N"}


#: Per kernel, integer arguments that are NOT multiples of 16 although their names say stride: the stem kernel's
#: input strides (3 channels: sxw = 3 channels-last, 1 NCHW; sxc = 1 or H * W).
_GENERAL_INTS = {"_direct_conv": {"sxn", "sxc", "sxh", "sxw"}}


def _attrs(fn, constexprs: dict) -> dict:
    attrs = {}
    general = _GENERAL_INTS.get(fn.__name__, set())
    for i, name in enumerate(fn.arg_names):
        if name in constexprs or name in general:
            continue
        if name.endswith("_ptr") or name in _DIVISIBLE_INTS or (name.startswith("s") and name[-1] in "nhw"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


#: The depthwise kernels read the weight through two strides (tap, channel), one of which a launch always finds
#: equal to 1 and Triton specialises to the constant: a fused model's packed [9, C] weight (channel stride 1; the
#: inference form, bias + ReLU) or a conv's own [C, 1, 3, 3] (tap stride 1; the training form).
PACKED, CONV_WEIGHT = {"swc": 1}, {"swt": 1}


def variants():
    """(kernel, constexpr dict) for every variant DSRNet-50 (either stride placement) and the training form use."""
    dw = [(1, 1), (1, 2), (1, 3), (2, 2), (2, 1), (2, 3)]  # (stride, dilation)
    for (s, d), (bias, relu) in itertools.product(dw, [(False, False), (True, True)]):
        weight = PACKED if bias else CONV_WEIGHT
        yield tk.dw_fwd, {"STRIDE": s, "DIL": d, "HAS_BIAS": bias, "RELU": relu, "AFFINE": False, **weight}
    for d in (1, 2, 3):  # a stride-1 conv's input gradient: the taps read in reverse (tap stride -1, unspecialised)
        yield tk.dw_fwd, {"STRIDE": 1, "DIL": d, "HAS_BIAS": False, "RELU": False, "AFFINE": False}
    for (s, d), affine in itertools.product(dw, (False, True)):  # AFFINE: BatchNorm + ReLU prologue (training)
        if affine:
            yield tk.dw_fwd, {"STRIDE": s, "DIL": d, "HAS_BIAS": False, "RELU": False, "AFFINE": True, **CONV_WEIGHT}
        yield tk.dw_bwd_input, {"STRIDE": s, "DIL": d, "AFFINE": affine, **CONV_WEIGHT}
        yield tk.dw_bwd_weight, {"STRIDE": s, "DIL": d, "AFFINE": affine}
    # RES: 0 none (conv1; stride_on="1x1"), 1 identity residual, 2 the downsample GEMM in the tile (split blocks)
    for s, res, ds, relu in [(1, 0, 1, True), (2, 0, 1, True), (1, 1, 1, True), (1, 2, 1, True), (1, 2, 2, True),
                             (1, 0, 1, False)]:  # fmt: skip
        yield tk.pw_gemm, {"STRIDE": s, "RES": res, "DS_STRIDE": ds, "RELU": relu}
    # ops.GEMM_TMA: the same 1x1s at stride 1 without a downsample GEMM, tiles moved by TMA (bf16/fp16 only)
    for res, relu in [(0, True), (1, True), (0, False)]:
        yield tk.pw_gemm_tma, {"RES": res, "RELU": relu}
    # mode="chain": identity / downsample (stride 1, 2) shortcut, the next block's first 1x1 up to 256 wide
    # (the depthwise output read from memory: layer3's 256 wide blocks, layer4's 512 without the next 1x1)
    for res, ds, width, k, chain in [(1, 1, 64, 64, True), (1, 1, 128, 128, True), (1, 1, 256, 256, True),
                                     (2, 1, 64, 64, True), (2, 2, 128, 128, True), (2, 2, 256, 256, True),
                                     (1, 1, 16, 512, False), (2, 2, 16, 512, False),
                                     (1, 1, 128, 512, True)]:  # fmt: skip
        yield tk.pw_chain, {"RES": res, "DS_STRIDE": ds, "BLOCK_W": width, "DW": False, "STRIDE": 1, "DIL": 1,
                            "CHAIN": chain, "BLOCK_KW": k}  # fmt: skip
    # ... with the depthwise conv in it (DW): layer1 (64 wide, rates 1-3, the first block's downsample), layer2
    # (128 wide, its stride-2 opener), each chaining into a next block as wide, or (CHAIN False) a stage's last
    for res, ds, s, d, kw, chain in [(1, 1, 1, 1, 64, True), (1, 1, 1, 3, 64, True), (2, 1, 1, 1, 64, True),
                                     (1, 1, 1, 2, 64, False), (2, 2, 2, 2, 128, True), (1, 1, 1, 3, 128, True),
                                     (1, 1, 1, 1, 128, False)]:  # fmt: skip
        yield tk.pw_chain, {"RES": res, "DS_STRIDE": ds, "BLOCK_W": kw if chain else 16, "DW": True, "STRIDE": s,
                            "DIL": d, "CHAIN": chain, "BLOCK_KW": kw}  # fmt: skip
    for s, d, kind, ds in [(1, 1, 1, 1), (1, 2, 1, 1), (1, 3, 1, 1), (1, 1, 2, 1), (2, 2, 2, 2), (1, 2, 2, 2)]:
        yield tk.dw_pw, {"STRIDE": s, "DIL": d, "SHORTCUT": kind, "DS_STRIDE": ds}
    # (S1, STRIDE, DIL, SHORTCUT, DS_STRIDE): identity blocks at each rate, a stage's first block (channels change),
    # a downsampling block with the stride on the depthwise conv, and with it on the first 1x1 (stride_on="1x1").
    for s1, s, d, kind, ds in [(1, 1, 1, 1, 1), (1, 1, 2, 1, 1), (1, 1, 3, 1, 1), (1, 1, 2, 2, 1), (1, 2, 2, 2, 2),
                               (2, 1, 2, 2, 2)]:  # fmt: skip
        yield tk.dsr_block, {"S1": s1, "STRIDE": s, "DIL": d, "SHORTCUT": kind, "DS_STRIDE": ds}
    for k, s, d in [(3, 1, 3), (7, 2, 3)]:  # the stems of fuse(): cifar (3x3, rate 3) and paper (7x7 stride 2, rate 3)
        yield tk.direct_conv, {"CIN": 3, "KSIZE": k, "STRIDE": s, "PAD": d * (k - 1) // 2, "DIL": d, "RELU": True}


def _constexpr_defaults(fn) -> dict:
    """The kernel's constexpr parameters that have defaults (e.g. ``R_FIRST``), as a launch that omits them binds."""
    import inspect

    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def resource_usage(kernel) -> str:
    """Registers / spills / shared memory per thread as ``cuobjdump -res-usage`` reads them off the cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    lines = [ln.strip() for ln in out.splitlines() if "REG:" in ln]
    return lines[0] if lines else "?"


def sweep_variants():
    """The inference variants the sweep's extra configs are for: the 1x1 GEMM plain, with an identity residual and
    with the downsample GEMM; the depthwise kernel (bias + ReLU) at rates 1 and 3 and at stride 2."""
    for lazy, consts in variants():
        gemm = lazy is tk.pw_gemm and consts["STRIDE"] == 1 and consts["DS_STRIDE"] == 1
        dw = lazy is tk.dw_fwd and (consts["STRIDE"], consts["DIL"]) in ((1, 1), (1, 3), (2, 2))
        if (gemm or dw) and consts["RELU"]:
            yield lazy, consts


def representative():
    """One variant per kernel, the heaviest (bias, residual / downsample GEMM, stride 2, dilation 2)."""
    seen = set()
    for lazy, consts in reversed(list(variants())):
        if lazy.fn.__name__ not in seen:
            seen.add(lazy.fn.__name__)
            yield lazy, consts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="every variant, first autotune config, bf16 only")
    parser.add_argument("--all-configs", action="store_true", help="one variant per kernel, every config, bf16+fp32")
    parser.add_argument("--kernel", help="only this kernel (e.g. dsr_block)")
    parser.add_argument("--ptx-grep", metavar="TEXT", help="also count the PTX lines containing TEXT (e.g. ld.global.nc)")
    parser.add_argument("--pdl", action="store_true", help="as ops.PDL launches them: GDC=True (the kernel's "
                        "griddepcontrol wait and trigger) and launch_pdl where ops passes them (use with --ptx-grep "
                        "griddepcontrol: 2 lines in those, 0 elsewhere)")
    parser.add_argument("--sweep", action="store_true", help="the candidate configs of kernel_shapes.py --sweep "
                        "(dsrnet.kernels._triton.SWEEP_CONFIGS), each kernel's heaviest variant, bf16")
    args = parser.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failures, count, t0 = 0, 0, time.time()
    dtypes = ("bf16",) if args.quick or args.sweep else (("bf16", "fp32") if args.all_configs else ("bf16", "fp32", "fp16"))
    chosen = sweep_variants() if args.sweep else representative() if args.all_configs else variants()
    for lazy, consts in chosen:
        if args.kernel and lazy.fn.__name__.lstrip("_") != args.kernel.lstrip("_"):
            continue
        jit = triton.jit(lazy.fn)
        configs = lazy.configs[:1] if args.quick else lazy.configs
        if args.sweep:
            configs = tk.SWEEP_CONFIGS.get(lazy.fn.__name__.lstrip("_"), [])
        if lazy.prune:  # what a launch of this variant may use (the chain kernel's K is its BLOCK_KW; 1 elsewhere:
            configs = lazy.prune(configs, {"K": consts.get("BLOCK_KW", 1)}, **consts)  # every K-bound config allowed)
        for dtype, cfg in itertools.product(dtypes, configs):
            if lazy is tk.pw_gemm_tma and dtype == "fp32":  # no fp32 path: ops runs pw_gemm for fp32
                continue
            extra = {}
            if "IEEE" in jit.arg_names:
                extra["IEEE"] = dtype == "fp32"
            if "DOT_F32" in jit.arg_names:
                extra["DOT_F32"] = False
            pdl = args.pdl and "GDC" in jit.arg_names and not consts.get("AFFINE")  # where ops.PDL launches it
            if pdl:
                extra["GDC"] = True
            constexprs = {**_constexpr_defaults(lazy.fn), **consts, **extra, **cfg.kwargs}
            src = ASTSource(jit, _signature(jit, dtype, constexprs), constexprs, _attrs(jit, constexprs))
            opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, **({"launch_pdl": True} if pdl else {})}
            label = f"{lazy.fn.__name__} {dtype} {consts} {cfg.kwargs} w{cfg.num_warps} s{cfg.num_stages}"
            count += 1
            try:
                kernel = triton.compile(src, target=target, options=opts)
                found = ""
                if args.ptx_grep:
                    found = f" ptx lines with {args.ptx_grep!r}: {sum(args.ptx_grep in ln for ln in kernel.asm['ptx'].splitlines())}"
                print(f"ok   {label}  shared={kernel.metadata.shared} {resource_usage(kernel)}{found}", flush=True)
            except Exception as err:  # report every failing variant, not just the first
                failures += 1
                print(f"FAIL {label}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    print(f"{count - failures}/{count} variants compiled for sm_{args.arch} in {time.time() - t0:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
