"""``dsrnet bench``: flags -> :func:`dsrnet.bench.measure.run_bench` -> the markdown table on stdout."""

from __future__ import annotations

import argparse
import logging

from dsrnet.cli.common import command_line, parse_model_kwargs, set_threads
from dsrnet.device import PRECISIONS


def _per_device(defaults: dict[str, int]) -> str:
    return ", ".join(f"{n} on {dev.upper()}" for dev, n in defaults.items())


def configure(name: str, p: argparse.ArgumentParser) -> None:
    # Only `dsrnet bench ...` runs this (not `dsrnet --help`), and the model registry imports torch anyway.
    from dsrnet.bench.measure import COMPILE_MODES, DEFAULT_REPEATS, DEFAULT_SIZES, DEFAULT_WARMUP, MODES
    from dsrnet.models import DEFAULT_FUSE_MODE, DWCONVS, FUSE_MODES, PAPER_COMPARISON, POINTWISE

    p.description = (
        "Measure parameters, MACs per image, latency per batch (median and spread), throughput and peak memory. "
        "Prints a markdown table; writes bench_<device>.{csv,json,md} to --out-dir."
    )
    p.add_argument("--models", nargs="+", default=list(PAPER_COMPARISON), metavar="NAME",
                   help="models to measure (see `dsrnet.list_models()`)")
    p.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES), metavar="PX",
                   help="square input sizes (32 = CIFAR, 96 = STL-10)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per batch (the paper times batches of 128)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                   help="fp32, or bf16/fp16 autocast; several values are measured in turn")
    p.add_argument("--mode", nargs="+", default=["inference"], choices=MODES,
                   help="inference (eval, inference_mode) and/or train (forward+backward+SGD step)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout for weights and inputs")
    p.add_argument("--fused", nargs="?", const=DEFAULT_FUSE_MODE, default=False, choices=FUSE_MODES, metavar="MODE",
                   help="DSRNet models also in their fused inference form (dsrnet.fuse: BatchNorm folded, Triton "
                   "kernels on CUDA), each timed right after the plain model; the baselines as they are. MODE: one "
                   f"of {', '.join(FUSE_MODES)} (default: dsrnet.fuse's, {DEFAULT_FUSE_MODE})")
    p.add_argument("--dwconv", choices=DWCONVS, default="torch",
                   help="what computes the depthwise convs of the models that have them (DSRNet, MobileNetV2): torch, "
                   "shifts (nine shifted multiply-adds for torch.compile to fuse), triton (the NHWC Triton kernels, dsrnet.use_triton_dwconv) or triton_bn_relu (also each DSR "
                   "block's BatchNorm + ReLU before it inside the kernel); the training forms (default: torch)")
    p.add_argument("--pointwise", choices=POINTWISE, default="conv",
                   help="what computes the plain 1x1 convs: conv (nn.Conv2d) or matmul (a matmul over the "
                   "channels-last pixels, dsrnet.use_matmul_pointwise: the form dsrnet train --pointwise matmul "
                   "trains; with --compile the backward's GEMMs reach torch.compile too) (default: conv)")
    p.add_argument("--backend", choices=("torch", "torch-compile", "onnxruntime", "openvino"), default="torch",
                   help="inference engine (CPU engines: BatchNorm folded, exported to ONNX for onnxruntime/openvino; "
                   "int8 timings: benchmarks/cpu_backends.py)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (compilation is in the warm-up)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode (implies --compile): reduce-overhead replays CUDA graphs (small batches), "
                   "max-autotune also times Triton kernel templates (long warm-up) (default: default)")
    p.add_argument("--stem", choices=("paper", "cifar"), default=None,
                   help="paper = 7x7/2 conv + max-pool (Table 1); cifar = 3x3/1 conv, no max-pool (default: as the "
                   "model is named, i.e. paper for plain names, cifar for *_cifar)")
    p.add_argument("--warmup", type=int, default=None, help=f"untimed calls first (default: {_per_device(DEFAULT_WARMUP)})")
    p.add_argument("--repeats", type=int, default=None, help=f"timed calls (default: {_per_device(DEFAULT_REPEATS)})")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (10 = CIFAR-10 / STL-10)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="extra DSRNet constructor arguments as a JSON object, e.g. '{\"separable\": false}'")
    p.add_argument("--out-dir", default="results/bench", help="folder for bench_<device>.{csv,json,md}")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the bench_<device>.* files an earlier run left in --out-dir (default: refuse)")
    p.set_defaults(func=_cmd_bench)  # fmt: skip


def _cmd_bench(args: argparse.Namespace) -> int:
    from dsrnet.bench.measure import run_bench

    set_threads(args.threads)
    result = run_bench(
        args.models, sizes=args.sizes, batch_size=args.batch_size, device=args.device, precisions=args.precision,
        channels_last=args.channels_last, compile=args.compile or args.compile_mode is not None,
        compile_mode=args.compile_mode or "default", modes=args.mode, warmup=args.warmup,
        repeats=args.repeats, num_classes=args.num_classes, stem=args.stem,
        model_kwargs=parse_model_kwargs(args.model_kwargs), fused=args.fused, dwconv=args.dwconv,
        pointwise=args.pointwise,
        backend=args.backend, out_dir=args.out_dir, overwrite=args.overwrite, command=command_line(args),
    )  # fmt: skip
    print(result["markdown"], end="")
    for path in result["files"]:
        logging.getLogger("dsrnet.bench").info(f"wrote {path}")
    return 0
