#!/usr/bin/env python3
"""Where an ONNX model's time goes on OpenVINO's CPU plugin: per-layer profile at one input size (issue 11).

    python benchmarks/openvino_profile.py MODEL.onnx [MODEL.onnx ...] [--size 32] [--threads 1] [--batch 1]

For each file: the median latency of ``--repeats`` calls after ``--warmup`` (one compiled model, PERF_COUNT on,
which adds a little overhead: use ``benchmarks/cpu_backends.py`` for the latency table), then the executed layers'
time summed by layer type and by (layer type, kernel), and the slowest layers. The kernel name tells whether a
layer ran in int8 (``..._I8``), on AMX, and how (``brgconv_avx512_amx_1x1_I8`` = a 1x1 conv as an AMX GEMM). Files
come from ``dsrnet export MODEL --int8 [--quantizer nncf] --out FILE``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np


def profile(path: str, *, size: int, threads: int, batch: int, warmup: int, repeats: int, top: int) -> str:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.inputs[0].get_any_name(): [batch, 3, size, size]})
    config = {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(warmup):
        request.infer({0: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t)
    by_type: collections.Counter = collections.Counter()
    by_kernel: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    layers = []
    for info in request.get_profiling_info():  # the last call's per-layer times
        if info.status.name != "EXECUTED":
            continue
        us = info.real_time.total_seconds() * 1e6
        by_type[info.node_type] += us
        by_kernel[(info.node_type, info.exec_type)] += us
        count[info.node_type] += 1
        layers.append((us, info.node_type, info.exec_type, info.node_name))
    total = sum(by_type.values())
    lines = [
        f"## {path}",
        f"batch {batch}, {size} px, {threads} thread(s): median {statistics.median(times) * 1e3:.3f} ms of "
        f"{repeats} calls after {warmup}; executed layers sum to {total:.0f} us ({len(layers)} layers)",
        "",
        "| layer type | layers | us | share |",
        "|---|--:|--:|--:|",
        *(f"| {k} | {count[k]} | {v:.0f} | {100 * v / total:.1f} % |" for k, v in by_type.most_common()),
        "",
        "| layer type | kernel | us | share |",
        "|---|---|--:|--:|",
        *(f"| {t} | {e} | {v:.0f} | {100 * v / total:.1f} % |" for (t, e), v in by_kernel.most_common()),
        "",
        f"slowest {top} layers: "
        + ", ".join(f"{name} ({kind}, {us:.0f} us)" for us, kind, _, name in sorted(layers, reverse=True)[:top]),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="ONNX files (e.g. from `dsrnet export ... --int8`)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--top", type=int, default=5)
    args = p.parse_args()
    for path in args.models:
        print(profile(path, size=args.size, threads=args.threads, batch=args.batch, warmup=args.warmup,
                      repeats=args.repeats, top=args.top))  # fmt: skip


if __name__ == "__main__":
    main()
