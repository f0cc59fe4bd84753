#!/usr/bin/env python3
"""The CPU deployment table of issue 11: DSRNet-50 vs ResNet-50 vs MobileNetV2 through every installed
backend.

For each model and input size (32 px = the ``*_cifar`` 3x3 stem, 96/224 px = the paper's 7x7 stem) the model
is exported once to ONNX with BatchNorm folded (:func:`dsrnet.export.export_model`'s path), quantised to int8
once (:func:`dsrnet.export.quantize.quantize_onnx`, calibrated on real CIFAR-10 training images), and then
timed through each backend (``torch`` eager on the folded model, ``onnxruntime``, ``openvino``;
``torch-compile`` with ``--backends``), fp32 and int8 (int8: the ONNX engines), at each batch size and thread
count: median of ``--repeats`` calls after ``--warmup`` calls (fewer at batch 32, ``--repeats-large``). "x
ResNet-50" is ResNet-50's latency over the model's on the same backend, precision, size, batch and threads (>
1: faster than ResNet-50).

The weights are random, which does not change the speed of dense kernels. Accuracy is reported only with
``--checkpoint SOURCE`` (a run, a ``.safetensors`` file or a weights tag such as ``dsrnet50_cifar.c10``): that
model's fp32 and int8 top-1 on the full CIFAR-10 test split and their top-1 agreement; without it no accuracy is
claimed (results/cpu-deploy/int8-accuracy/ has the shipped weights' numbers through ``dsrnet eval``).

    python3 ../shared/data/cifar10/decode.py /tmp/c10data
    PYTHONPATH=src python benchmarks/cpu_backends.py --data-dir /tmp/c10data

Writes ``cpu_backends.{md,json}`` into ``--out`` (default ``results/cpu-deploy``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from dsrnet.errors import DsrnetError
from dsrnet.export import installed_backends, load_runner
from dsrnet.export.backends import BF16_BACKENDS
from dsrnet.export.formats import export_onnx_model, fold_batchnorm
from dsrnet.export.quantize import compare_int8, quantize_onnx
from dsrnet.export.source import load_source
from dsrnet.export.timing import time_runner
from dsrnet.models import stem_variant

INT8_BACKENDS = ("onnxruntime", "openvino")
DISPLAY = {"dsrnet50": "DSRNet-50", "resnet50": "ResNet-50", "mobilenet_v2": "MobileNetV2"}


def cpu_info() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "flags": []}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = (
                        "avx2",
                        "avx512f",
                        "avx512_vnni",
                        "avx512_bf16",
                        "amx_int8",
                        "amx_bf16",
                        "avx_vnni",
                    )
                    info["flags"] = [f for f in keep if f in flags]
                    break
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    return info


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stem_of(size: int) -> str:
    return "cifar" if size <= 32 else "paper"


def run(args: argparse.Namespace) -> dict:
    backends = args.backends or [b for b in installed_backends() if b != "torch-compile"]
    for b in backends:
        if b not in installed_backends():
            raise DsrnetError(f"backend {b} is not installed")
    load_before = os.getloadavg()
    started = time.time()
    rows, int8_checks = [], []
    tmp = tempfile.TemporaryDirectory(prefix="dsrnet-cpu-bench-")
    for size in args.sizes:
        prepared = {}  # model -> (arch, BN-folded module, {precision: ONNX file})
        for name in args.models:
            arch = stem_variant(name, stem_of(size))
            torch.manual_seed(0)
            src = load_source(arch, num_classes=10, image_size=size)
            folded, _ = fold_batchnorm(src.model)
            fp32 = export_onnx_model(folded, size, src.metadata(), Path(tmp.name) / f"{arch}-{size}.onnx")
            files = {"fp32": fp32, "bf16": fp32}
            if "int8" in args.precisions:
                t0 = time.time()
                q = quantize_onnx(
                    fp32,
                    Path(tmp.name) / f"{arch}-{size}.int8.onnx",
                    calib_images=args.calib_images,
                    data_dir=args.data_dir,
                    image_size=size,
                    mean=src.mean,
                    std=src.std,
                    check_images=100,
                    quantizer=args.quantizer,
                )
                files["int8"] = Path(tmp.name) / f"{arch}-{size}.int8.onnx"
                int8_checks.append({"arch": arch, "image_size": size, "quantize_s": time.time() - t0, **q})
            prepared[name] = (arch, folded, files)
        # The models are timed back to back within each configuration, so that a change in the machine's load
        # (it is shared) hits the compared models alike instead of whichever model happened to run then.
        for backend in backends:
            for precision in args.precisions:
                if precision == "int8" and backend not in INT8_BACKENDS:
                    continue
                if precision == "int8" and args.quantizer == "nncf" and backend != "openvino":
                    continue  # NNCF's file is made for OpenVINO (its int8 timing there); eval checks it on either
                if precision == "bf16" and backend not in BF16_BACKENDS:
                    continue
                for threads in args.threads:
                    if backend == "torch-compile" and threads not in args.compile_threads:
                        continue
                    torch.set_num_threads(threads)
                    float_precision = "bf16" if precision == "bf16" else "fp32"
                    runners = {
                        name: load_runner(
                            backend,
                            folded if backend.startswith("torch") else files[precision],
                            threads=threads,
                            precision=float_precision,
                        )
                        for name, (arch, folded, files) in prepared.items()
                    }
                    for batch in args.batch_sizes:
                        if backend == "torch-compile" and batch not in args.compile_batch_sizes:
                            continue  # each new shape compiles for about a minute on 2 cores
                        large = batch > 1
                        for name, runner in runners.items():
                            row = time_runner(
                                runner,
                                batch_size=batch,
                                image_size=size,
                                warmup=args.warmup_large if large else args.warmup,
                                repeats=args.repeats_large if large else args.repeats,
                                model=name,
                                arch=prepared[name][0],
                                stem=stem_of(size),
                                backend=backend,
                                precision=precision,
                                threads=threads,
                            )
                            row["load_avg_1min_after"] = os.getloadavg()[0]
                            rows.append(row)
                            log(
                                f"{row['arch']} {size}px {backend} {precision} t{threads} b{batch}: "
                                f"{row['latency_ms']:.2f} ms (load {row['load_avg_1min_after']:.2f})"
                            )
                    del runners
                    gc.collect()
    add_ratio(rows)
    accuracy = checkpoint_accuracy(args, tmp.name) if args.checkpoint else None
    load_after = os.getloadavg()
    tmp.cleanup()
    return {
        "command": args.command,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**cpu_info(), "platform": platform.platform()},
        "versions": versions(),
        "threads_note": "torch.set_num_threads(t); onnxruntime intra_op_num_threads=t, inter_op 1, "
        "sequential, its worker threads spin between calls at t=1 only (allow_spinning 0 at t>1: on a shared "
        "machine spinning steals cores; it adds wake-up latency); OpenVINO INFERENCE_NUM_THREADS=t, "
        "PERFORMANCE_HINT=LATENCY, static shape per batch size",
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "wall_s": time.time() - started,
        "rows": rows,
        "int8_checks": int8_checks,
        "checkpoint_accuracy": accuracy,
        "targets": targets(rows),
    }


def _key(r: dict) -> tuple:
    return (r["image_size"], r["backend"], r["precision"], r["threads"], r["batch_size"])


def add_ratio(rows: list[dict]) -> None:
    ref = {_key(r): r["latency_ms"] for r in rows if r["model"] == "resnet50"}
    for r in rows:
        base = ref.get(_key(r))
        r["speedup_vs_resnet50"] = base / r["latency_ms"] if base else None


def targets(rows: list[dict]) -> list[dict]:
    """Issue 11's targets, read off the rows: batch 1, 2 threads (or the largest measured)."""
    out = []
    threads = 2 if any(r["threads"] == 2 for r in rows) else max((r["threads"] for r in rows), default=1)
    for size in sorted({r["image_size"] for r in rows}):
        sel = [
            r for r in rows if r["image_size"] == size and r["batch_size"] == 1 and r["threads"] == threads
        ]

        def best(model, sel=sel, **match):
            cands = [r for r in sel if r["model"] == model and all(r[k] == v for k, v in match.items())]
            return min(cands, key=lambda r: r["latency_ms"], default=None)

        for precision in ("fp32", "bf16", "int8", None):
            match = {"precision": precision} if precision else {}
            d, r = best("dsrnet50", **match), best("resnet50", **match)
            if d and r:
                out.append(
                    {
                        "target": "DSRNet-50 best >= 2x ResNet-50 best",
                        "image_size": size,
                        "threads": threads,
                        "precision": precision or "any",
                        "dsrnet": f"{d['backend']} {d['precision']}",
                        "dsrnet_ms": d["latency_ms"],
                        "resnet": f"{r['backend']} {r['precision']}",
                        "resnet_ms": r["latency_ms"],
                        "ratio": r["latency_ms"] / d["latency_ms"],
                        "met": r["latency_ms"] / d["latency_ms"] >= 2.0,
                    }
                )
        for backend, float_precision in [(b, "fp32") for b in INT8_BACKENDS] + [("openvino", "bf16")]:
            f, q = (
                best("dsrnet50", backend=backend, precision=float_precision),
                best("dsrnet50", backend=backend, precision="int8"),
            )
            if f and q:
                out.append(
                    {
                        "target": f"int8 DSRNet-50 >= 1.5x {float_precision}, same backend",
                        "float_precision": float_precision,
                        "image_size": size,
                        "threads": threads,
                        "backend": backend,
                        "fp32_ms": f["latency_ms"],
                        "int8_ms": q["latency_ms"],
                        "ratio": f["latency_ms"] / q["latency_ms"],
                        "met": f["latency_ms"] / q["latency_ms"] >= 1.5,
                    }
                )
    return out


#: How each ``--quantizer`` makes its int8 file (dsrnet.export.quantize), for the method line of the report.
QUANTIZER_METHOD = {
    "ort": "onnxruntime quantize_static QDQ (per-channel s8 weights, u8 activations, MinMax calibration)",
    "nncf": "NNCF quantize on the ONNX graph (PERFORMANCE preset, symmetric, fast bias correction)",
}


def checkpoint_accuracy(args: argparse.Namespace, tmpdir: str) -> dict:
    """fp32 vs int8 top-1 of a trained run on the full CIFAR-10 test split (10,000 images), int8 made by
    ``--quantizer``."""
    from dsrnet.export import export_model

    src = load_source(args.checkpoint)
    res = export_model(
        src, Path(tmpdir) / "ckpt.onnx", int8=True, calib_images=args.calib_images, data_dir=args.data_dir,
        quantizer=args.quantizer,
    )  # fmt: skip
    check = compare_int8(
        res.int8["fp32_path"],
        res.path,
        data_dir=args.data_dir,
        image_size=src.image_size,
        mean=src.mean,
        std=src.std,
        n=10000,
    )
    return {"checkpoint": str(args.checkpoint), "model": src.name, **check}


def render(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    head = [
        "model",
        "stem",
        "px",
        "backend",
        "prec",
        "threads",
        "batch",
        "ms (median)",
        "IQR ms",
        "images/s",
        "x ResNet-50",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + [":--"] * 2 + ["--:"] * 6) + "|"]
    rows = sorted(
        result["rows"],
        key=lambda r: (
            r["image_size"],
            r["batch_size"],
            r["threads"],
            r["model"],
            r["backend"],
            r["precision"],
        ),
    )
    for r in rows:
        ratio = r.get("speedup_vs_resnet50")
        lines.append(
            "| "
            + " | ".join(
                [
                    DISPLAY.get(r["model"], r["model"]),
                    r["stem"],
                    str(r["image_size"]),
                    r["backend"],
                    r["precision"],
                    str(r["threads"]),
                    str(r["batch_size"]),
                    f"{r['latency_ms']:.2f}",
                    f"{r['latency_p25_ms']:.2f}–{r['latency_p75_ms']:.2f}",
                    f"{r['images_per_s']:.0f}",
                    "–" if ratio is None else f"{ratio:.2f}x",
                ]
            )
            + " |"
        )
    text = ["\n".join(lines), ""]
    text.append(
        f"Machine: {m['cpu']} ({m['logical_cpus']} logical CPUs; {', '.join(m['flags'])}), {m['platform']}. "
        f"Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "."
    )
    text.append(f"Threads: {result['threads_note']}.")
    lb, la = result["load_avg_before"], result["load_avg_after"]
    text.append(
        f"Load average (1/5/15 min) before: {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, after: "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; run took {result['wall_s'] / 60:.1f} min, {result['date']}."
    )
    reps = sorted({(r["batch_size"], r["warmup"], r["repeats"]) for r in result["rows"]})
    checks = result["int8_checks"]
    quantizer = checks[0].get("quantizer", "ort") if checks else None
    int8 = (
        "no int8 rows"
        if not checks
        else f"int8 = {QUANTIZER_METHOD[quantizer]} on {checks[0]['calibration_images']} CIFAR-10 training images"
    )
    text.append(
        "Method: median of "
        + ", ".join(f"{n} calls after {w} warm-up at batch {b}" for b, w, n in reps)
        + f"; random weights, BatchNorm folded, ONNX from torch.onnx (dynamo), {int8}."
    )
    text.append(f"Command: `{result['command']}`")
    if result["targets"]:
        bullets = []
        for t in result["targets"]:
            met = "met" if t["met"] else "NOT met"
            where = f"- {t['image_size']} px, {t['threads']} threads"
            if "backend" in t:
                bullets.append(
                    f"{where}, {t['backend']}: int8 {t['int8_ms']:.2f} ms vs {t['float_precision']} "
                    f"{t['fp32_ms']:.2f} ms = "
                    f"{t['ratio']:.2f}x (target 1.5x: {met})"
                )
            else:
                bullets.append(
                    f"{where}, best {t['precision']}: DSRNet-50 {t['dsrnet_ms']:.2f} ms ({t['dsrnet']}) vs "
                    f"ResNet-50 {t['resnet_ms']:.2f} ms ({t['resnet']}) = {t['ratio']:.2f}x "
                    f"(target 2x: {met})"
                )
        text.append("Targets of issue 11 (batch 1):\n\n" + "\n".join(bullets))
    if result["int8_checks"]:
        text.append(
            "int8 vs fp32 on 100 CIFAR-10 test images with RANDOM weights (a sanity check that the int8 "
            "graph computes the same function, not an accuracy): "
            + "; ".join(
                f"{c['arch']} {c['image_size']} px: logit correlation {c['logit_correlation']:.4f}"
                for c in result["int8_checks"]
            )
        )
    acc = result["checkpoint_accuracy"]
    if acc:
        text.append(
            f"Accuracy ({acc['model']}, {acc['checkpoint']}, {acc['check_images']} CIFAR-10 test images): "
            f"fp32 top-1 {acc['fp32_top1']:.2%}, int8 {acc['int8_top1']:.2%}, agreement "
            f"{acc['top1_agreement']:.2%}."
        )
    else:
        text.append("Accuracy: not measured (no trained checkpoint given; pass --checkpoint RUN).")
    return "\n\n".join(t for t in text if t) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["dsrnet50", "resnet50", "mobilenet_v2"])
    p.add_argument(
        "--sizes", nargs="+", type=int, default=[32, 96], help="32 = cifar stem; larger = paper stem"
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--backends", nargs="+", default=None, help="default: every installed one but torch-compile"
    )
    p.add_argument(
        "--compile-batch-sizes", nargs="+", type=int, default=[1], help="torch-compile batch sizes"
    )
    p.add_argument("--compile-threads", nargs="+", type=int, default=[2], help="torch-compile thread counts")
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16", "int8"],
        choices=("fp32", "bf16", "int8"),
        help="bf16 = OpenVINO's bf16 inference precision (its default on bf16-capable CPUs), or torch-compile's "
        "model and input in bf16; those two backends only",
    )
    p.add_argument("--quantizer", choices=("ort", "nncf"), default="ort", help="int8 tool, see quantize.py")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup-large", type=int, default=1)
    p.add_argument("--repeats-large", type=int, default=5)
    p.add_argument("--calib-images", type=int, default=200)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--checkpoint", default=None, help="trained run: report fp32/int8 top-1 on CIFAR-10 test")
    p.add_argument("--out", default="results/cpu-deploy")
    args = p.parse_args(argv)
    args.command = shlex.join(
        ["python", "benchmarks/cpu_backends.py", *(sys.argv[1:] if argv is None else argv)]
    )
    try:
        result = run(args)
    except DsrnetError as err:
        print(f"cpu_backends: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = render(result)
    (out / "cpu_backends.md").write_text(md)
    (out / "cpu_backends.json").write_text(json.dumps(result, indent=1))
    print(md)
    log(f"wrote {out / 'cpu_backends.md'} and {out / 'cpu_backends.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
