"""``dsrnet bench``: parameters, MACs, latency per batch, throughput and peak memory of the paper's networks.

The paper's speed measure is the time for one batch of 128 images ("fps/ms" rows of Tables 2-4, BatchSize=128) and
its size claim is the parameter count (Fig. 2). Both are measured here for any model, input size, device, precision,
memory layout and eager/compiled mode, so the claims can be checked on the reader's own hardware.

How the timing is done:

* the model is built, put on the device in eval mode (``mode="inference"``, run under ``torch.inference_mode``) or
  train mode (``mode="train"``: forward, cross-entropy, backward and an SGD step, as in training);
* ``warmup`` untimed calls first (they absorb cuDNN autotuning -- ``torch.backends.cudnn.benchmark`` is on for the
  timing on a GPU, as in ``dsrnet train`` -- allocator growth and ``torch.compile``; at least one where something
  compiles or autotunes), then
  ``repeats`` timed calls, each timed on its own: with CUDA events on a GPU, ``time.perf_counter`` on the CPU
  (a CPU call is synchronous), with a device synchronisation before and after;
* the median is reported, with the 25th/75th percentiles and min/max as the spread.

``dwconv`` (:data:`dsrnet.models.DWCONVS`) times the models with depthwise convs (DSRNet, MobileNetV2) with them
computed as nine shifted multiply-adds for ``torch.compile`` to fuse (``shifts``,
:mod:`dsrnet.models.shifted_dwconv`) or by the Triton kernels (``triton``; ``triton_bn_relu`` also moves each DSR
block's preceding BatchNorm and ReLU into the kernel), the training forms of :func:`dsrnet.use_triton_dwconv`; the
other models run as they are. The Triton kernels are compiled in worker processes before the warm-up
(:func:`dsrnet.kernels.precompile`). ``pointwise`` (:data:`dsrnet.models.POINTWISE`): ``matmul`` times every model
with its plain 1x1 convs as matmuls over the channels-last pixels (:mod:`dsrnet.models.matmul_pointwise`, the
training form ``dsrnet train --pointwise matmul`` uses).

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one image (forward pass, eval mode);
``FlopCounterMode`` counts a multiply-add as 2 FLOPs, so MACs = FLOPs / 2.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the model was built
(weights + activations + workspace of the timed calls). On CPU the timed model's weight bytes (parameters and
buffers) plus the growth of the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
over the calls, measured after the model, its input (and an engine's session) exist and freed memory went back to
the system (glibc ``malloc_trim``), so that what earlier models left behind in the allocator neither hides nor
inflates it; ``None`` where Linux's ``/proc`` interface is missing. On both, the first warm-up call is outside the
window: where anything compiles (``--compile``, an engine, Triton's autotuning) it does so there, and that memory
is the compiler's (the peak of a compiled ResNet-50 on a CPU was 90 MB above its eager one with it inside); in
training the optimiser state that call made is counted with the weights, and the gradients it made are dropped, so
the next calls allocate them inside the window. An approximation still: an engine's own copy of the weights is
counted as the model's fp32 weights.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import logging
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsrnet.device import (
    PRECISIONS,
    autocast,
    resolve_device,
    tf32_conv,
    tf32_matmul,
    time_calls,
)
from dsrnet.errors import DsrnetError, check_int
from dsrnet.report.markdown import display_name, fmt, labelled, markdown_table, write_csv
from dsrnet.run.atomic import atomic_write_json, atomic_write_text
from dsrnet.run.rundir import RunDir

logger = logging.getLogger(__name__)

MODES = ("inference", "train")
#: ``torch.compile`` modes ``dsrnet bench --compile-mode`` passes on.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Warm-up and repeat counts when the user gives none. A CPU batch of 128 through ResNeXt101 takes seconds, so the
#: CPU defaults are small enough for the default bench to finish in a few minutes on 2 cores; the CUDA defaults
#: match the reference H100 timings (median of 30 after warm-up).
DEFAULT_WARMUP = {"cpu": 1, "cuda": 10}


DEFAULT_REPEATS = {"cpu": 3, "cuda": 30}


DEFAULT_SIZES = (32, 96)


# ------------------------------------------------------------------------------------------------- environment


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs)"


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a timing depends on: versions, device, threads, date (the header of every bench/reproduce output)."""
    device = resolve_device(device)
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # Other processes competing for the cores slow CPU timings a lot; the load average says how busy it was.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_count"] = torch.cuda.device_count()
        # "fp32" convolutions/matmuls may run in TF32 on Ampere and later: PyTorch's defaults allow it for cuDNN
        # convolutions, not for matmuls. Recorded because it changes fp32 timings a lot.
        env["tf32_conv"] = tf32_conv()
        env["tf32_matmul"] = tf32_matmul()
        # The setting the timings run with: benchmark_model turns it on for every GPU timing (as dsrnet train does),
        # whatever it was when this record is taken (before the timing).
        env["cudnn_benchmark"] = True
    return env


#: The parts of :func:`environment` that make two timings comparable: the same machine, software and settings
#: (the date and load average may differ).
SAME_SETUP_KEYS = ("torch", "torchvision", "device_name", "cpu", "torch_threads", "tf32_conv", "tf32_matmul",
                   "cudnn_benchmark")  # fmt: skip


def setup_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key saved -> current`` for every :data:`SAME_SETUP_KEYS` entry in which two environments differ."""
    return [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in SAME_SETUP_KEYS if saved.get(k) != current.get(k)]


def environment_line(env: dict[str, Any]) -> str:
    parts = [
        f"torch {env['torch']}",
        *([f"torchvision {env['torchvision']}"] if env.get("torchvision") else []),
        *([f"Python {env['python']}"] if env.get("python") else []),
        f"device {env['device']} ({env['device_name']})",
        f"{env['torch_threads']} torch threads",
    ]
    if env.get("load_avg_1min") is not None and env["device"] == "cpu":
        parts.append(f"load average {env['load_avg_1min']:.2f} at start")
    if "cuda" in env:
        parts.append(f"CUDA {env['cuda']}, cuDNN {env['cudnn']}")
        if "tf32_conv" in env:
            parts.append(f"TF32 convs {'on' if env['tf32_conv'] else 'off'}, matmuls "
                         f"{'on' if env['tf32_matmul'] else 'off'}")  # fmt: skip
    parts.append(env["date"])
    return ", ".join(parts)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    """Forward FLOPs for one image (eval mode, fp32, on the model's device), as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, in_chans, image_size, image_size, device=device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
        return int(match.group(1)) if match else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give the C allocator's free memory back to the system (glibc), so that a later peak-RSS growth counts the
    memory a piece of work needs, not less (reused free memory) nor the leftovers of earlier work."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _MemoryProbe:
    """Peak memory a block of work needs beyond what was in use when the probe started (see module docstring);
    ``extra_mb``: memory the work holds from before the probe (on CPU: the model's weights)."""

    def __init__(self, device: torch.device, extra_mb: float = 0.0) -> None:
        self.device = device
        self.extra_mb = extra_mb
        gc.collect()
        if device.type != "cuda":
            _malloc_trim()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
            self.kind = "cuda max_memory_allocated"
        else:
            ok = _reset_peak_rss()
            self.base = _rss_kb("VmRSS") if ok else None
            self.kind = "peak RSS growth" if self.base is not None else "n/a"

    def restart(self) -> None:
        """Forget the peak so far, keeping the base (CUDA: what was allocated before the model was built)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if self.base is None:
            return None
        peak = _rss_kb("VmHWM")
        return None if peak is None else self.extra_mb + max(peak - self.base, 0) / 1024


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), fine for as few as 2 values.
    pos = q * (len(sorted_values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_times(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and range of per-call times, in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    return {
        "latency_ms": statistics.median(ms),
        "latency_p25_ms": _quantile(ms, 0.25),
        "latency_p75_ms": _quantile(ms, 0.75),
        "latency_min_ms": ms[0],
        "latency_max_ms": ms[-1],
    }


def _check_training_forms(dwconv: str, pointwise: str, fused: bool, backend: str) -> None:
    """``dwconv`` (:data:`dsrnet.models.DWCONVS`) and ``pointwise`` (:data:`dsrnet.models.POINTWISE`) name
    training forms of the convs, which the fused inference form and the other backends replace."""
    from dsrnet.models import DWCONVS, POINTWISE

    for flag, value, choices in (("dwconv", dwconv, DWCONVS), ("pointwise", pointwise, POINTWISE)):
        if value not in choices:
            raise DsrnetError(f"{flag} {value!r} is not valid; fix: choose one of {', '.join(choices)}")
        if value != choices[0] and (fused or backend != "torch"):
            raise DsrnetError(
                f"{flag} {value} times a training form of the convs, which --fused (inference form) and other "
                "backends replace; fix: drop one of them"
            )


def model_for_bench(
    name: str,
    *,
    num_classes: int = 10,
    stem: str | None = None,
    model_kwargs: dict | None = None,
    fused: bool | str = False,
) -> tuple[str, nn.Module]:
    """``(architecture name, model)``: ``stem`` ("paper"|"cifar"|None = as named) picks the stem variant;
    ``model_kwargs`` and ``fused`` (:func:`dsrnet.fuse`, the inference form: ``True`` for its default mode, or a
    mode's name) go to DSRNet models only (the baselines are torchvision's and take none of them)."""
    from dsrnet.models import create_model, stem_variant

    if stem is not None and stem not in ("paper", "cifar"):
        raise DsrnetError(f"stem {stem!r} is not valid: choose paper or cifar")
    arch = stem_variant(name, stem) if stem is not None else name
    kwargs = dict(model_kwargs or {}) if arch.startswith("dsrnet") else {}
    model = create_model(arch, num_classes=num_classes, **kwargs)
    if fused and arch.startswith("dsrnet"):
        from dsrnet.models.fused import fuse

        model = fuse(model, mode=fuse_mode(fused))
    return arch, model


def fuse_mode(fused: bool | str) -> str | None:
    """The :func:`dsrnet.fuse` mode that ``fused`` (``True``: the default; a mode's name) asks for; None: unfused."""
    if not fused:
        return None
    from dsrnet.models import DEFAULT_FUSE_MODE

    return DEFAULT_FUSE_MODE if fused is True else fused


def _forward_backward(runner, x: torch.Tensor, y: torch.Tensor, dev: torch.device, precision: str) -> None:
    """A training step without the optimizer's: what a precompile pass may run (its gradients are garbage)."""
    with autocast(dev, precision):
        loss = nn.functional.cross_entropy(runner(x), y)
    loss.backward()


#: What a fused DSRNet is cast to at each reduced precision (autocast does not reach its custom ops).
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def benchmark_model(
    name: str,
    *,
    image_size: int = 32,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    warmup: int | None = None,
    repeats: int | None = None,
    num_classes: int = 10,
    mode: str = "inference",
    stem: str | None = None,
    model_kwargs: dict | None = None,
    seed: int = 0,
    fused: bool | str = False,
    backend: str = "torch",
    compile_mode: str = "default",
    dwconv: str = "torch",
    pointwise: str = "conv",
) -> dict[str, Any]:
    """Measure one configuration (see the module docstring for the method). Returns one result row.

    ``warmup``/``repeats`` of ``None`` take :data:`DEFAULT_WARMUP`/:data:`DEFAULT_REPEATS` for the device type.
    ``compile_mode``: ``torch.compile``'s ``mode`` when ``compile`` (``reduce-overhead`` replays CUDA graphs, which
    matters at small batches where kernel launches dominate; ``max-autotune`` also times Triton templates).
    """
    dev = resolve_device(device)
    if mode not in MODES:
        raise DsrnetError(f"mode {mode!r} is not valid; fix: choose one of {', '.join(MODES)}")
    if precision not in PRECISIONS:
        raise DsrnetError(f"precision {precision!r} is not valid; fix: choose one of {', '.join(PRECISIONS)}")
    if compile_mode not in COMPILE_MODES:
        raise DsrnetError(f"compile mode {compile_mode!r} is not valid; fix: choose one of {', '.join(COMPILE_MODES)}")
    _check_training_forms(dwconv, pointwise, fused, backend)
    check_int("image size", image_size, 8)
    check_int("batch size", batch_size)
    check_int("num classes", num_classes)
    warmup = DEFAULT_WARMUP[dev.type] if warmup is None else check_int("warmup", warmup, 0)
    repeats = DEFAULT_REPEATS[dev.type] if repeats is None else check_int("repeats", repeats)
    if backend != "torch" and (dev.type != "cpu" or mode != "inference" or compile or fused):
        raise DsrnetError(
            f"backend {backend} times CPU inference of the plain model; fix: --device cpu --mode inference, no "
            "--compile/--fused (or --backend torch)"
        )
    if fused and mode != "inference":
        raise DsrnetError("the fused form is for inference (BatchNorm is folded); fix: drop --fused or --mode train")
    if mode == "train" and batch_size < 2:
        raise DsrnetError("train mode needs a batch size >= 2 (BatchNorm cannot train on one image)")

    triton = (fused or dwconv != "torch") and dev.type == "cuda"  # on a CPU these run PyTorch's own ops
    if (compile or backend != "torch" or triton) and warmup < 1:
        raise DsrnetError(
            "--warmup 0 would time the compilation / first-call set-up of --compile, --backend or the Triton "
            "kernels (--fused, --dwconv on a GPU); fix: --warmup 1 or more"
        )
    if backend != "torch" and channels_last:
        raise DsrnetError(f"backend {backend} takes NCHW input; fix: drop --channels-last (or --backend torch)")
    if backend != "torch":
        from dsrnet.export.backends import check_backend_precision

        check_backend_precision(backend, precision)  # before any row is timed, not after the first ones
    if compile:  # a fresh graph per configuration: else Dynamo reuses a dynamic-shape one from the size before;
        torch._dynamo.reset()  # before the probe: it also frees the previous model's CUDA graph pools
    if dev.type == "cuda":  # as `dsrnet train` runs: cuDNN picks its fastest algorithms during the warm-up
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(seed)
    probe = _MemoryProbe(dev) if dev.type == "cuda" else None  # on a CPU it starts just before the warm-up
    arch, model = model_for_bench(
        name, num_classes=num_classes, stem=stem, model_kwargs=model_kwargs, fused=fused
    )
    # The fused form keeps its folded weights in buffers and runs custom ops that FlopCounterMode does not see: its
    # parameters and MACs are the network's, so count them on the plain model.
    counted = model
    if fused and arch.startswith("dsrnet"):
        counted = model_for_bench(name, num_classes=num_classes, stem=stem, model_kwargs=model_kwargs)[1]
    params = count_params(counted)
    flops = count_flops(counted, image_size)
    del counted

    from dsrnet.models import apply_dwconv, apply_pointwise

    swapped_dwconvs = apply_dwconv(model, dwconv)  # 0: a model without depthwise convs is timed as it is
    triton_dwconvs = swapped_dwconvs if dwconv.startswith("triton") else 0
    swapped_pointwise = apply_pointwise(model, pointwise)  # 0: a model without plain 1x1 convs is timed as it is
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # Autocast does not reach custom ops: the fused form's Triton kernels would run in fp32 under a bf16 autocast
    # (only its head would not), so at bf16/fp16 it is cast, weights and input, as an inference form is deployed.
    cast = _AMP_DTYPES.get(precision) if fused and arch.startswith("dsrnet") else None
    model = model.to(dev, dtype=cast, memory_format=memory_format)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev, dtype=cast)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, max(num_classes, 1), (batch_size,), device=dev)
    runner = torch.compile(model, mode=compile_mode) if compile else model
    if backend != "torch":  # an inference engine of dsrnet.export (BatchNorm folded, ONNX for onnxruntime/openvino)
        from dsrnet.export.backends import load_runner

        # the engine's own thread pool, sized as torch's (--threads), not all cores
        engine = load_runner(
            backend, model.eval(), image_size=image_size, precision=precision, threads=torch.get_num_threads()
        )
        runner = lambda inputs: engine(inputs.contiguous().float())  # noqa: E731

    if mode == "inference":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast(dev, precision):
                runner(x)

    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev, precision):
                loss = nn.functional.cross_entropy(runner(x), y)
            loss.backward()
            optimizer.step()

    if (fused and arch.startswith("dsrnet")) or triton_dwconvs:  # Triton kernels compiled before the warm-up
        from dsrnet.kernels import precompile

        precompile(step if mode == "inference" else lambda: _forward_backward(runner, x, y, dev, precision))
    # The first warm-up call compiles wherever anything does (torch.compile, an engine's graph, Triton autotuning):
    # the memory it takes is the compiler's, not the model's, so the peak is taken over the calls after it.
    first = min(warmup, 1)
    time_calls(step, device=dev, warmup=first, repeats=0)
    if dev.type != "cuda":  # CPU: the weights, then what the calls add (the counting model, an ONNX export, the
        # compilation and what earlier models freed are outside the window; see the module docstring). Training:
        # the gradients go (the next calls allocate them again, inside the window); the optimiser's state made
        # by the first call stays, and counts as the weights do.
        held = [*model.parameters(), *model.buffers()]
        if mode != "inference":
            optimizer.zero_grad(set_to_none=True)
            held += [t for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        weights = sum(t.numel() * t.element_size() for t in held)
        probe = _MemoryProbe(dev, extra_mb=weights / 2**20)
    else:
        probe.restart()
    times = time_calls(step, device=dev, warmup=warmup - first, repeats=repeats)
    peak = probe.peak_mb()
    stats = summarize_times(times)
    row = {
        "model": name,
        "arch": arch,
        "stem": "cifar" if arch.endswith("_cifar") else "paper",
        "image_size": image_size,
        "batch_size": batch_size,
        "mode": mode,
        "device": str(dev),
        "precision": precision,
        "channels_last": bool(channels_last),
        "compile": bool(compile),
        "compile_mode": compile_mode if compile else None,
        "fused": bool(fused and arch.startswith("dsrnet")),
        "fuse_mode": fuse_mode(fused) if arch.startswith("dsrnet") else None,
        "dwconv": dwconv if swapped_dwconvs else "torch",
        "pointwise": pointwise if swapped_pointwise else "conv",
        "backend": backend,
        "num_classes": num_classes,
        "params": params,
        "flops_per_image": flops,
        "gmacs_per_image": flops / 2 / 1e9,
        **stats,
        "images_per_s": batch_size / (stats["latency_ms"] / 1e3),
        "peak_mem_mb": peak,
        "peak_mem_kind": probe.kind,
        "warmup": warmup,
        "repeats": repeats,
        "times_ms": [t * 1e3 for t in times],
    }
    if model_kwargs and arch.startswith("dsrnet"):
        row["model_kwargs"] = dict(model_kwargs)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


# ---------------------------------------------------------------------------------------------------- run_bench


CSV_FIELDS = (
    "model", "arch", "stem", "image_size", "batch_size", "mode", "device", "precision", "channels_last", "compile",
    "num_classes", "params", "gmacs_per_image", "latency_ms", "latency_p25_ms", "latency_p75_ms", "latency_min_ms",
    "latency_max_ms", "images_per_s", "peak_mem_mb", "peak_mem_kind", "warmup", "repeats", "rel_to_dsrnet", "fused",
    "fuse_mode", "backend", "compile_mode", "dwconv", "pointwise", "model_kwargs", "device_name", "torch", "torchvision",
    "torch_threads",
)  # fmt: skip


def write_bench_csv(path: str | os.PathLike, rows: list[dict], env: dict) -> Path:
    """The rows as CSV (:data:`CSV_FIELDS`). The file stands alone: each row names the network's arguments (a
    narrowed DSRNet is not the paper's), the hardware, the torch (and torchvision) and the thread count it was
    timed with."""
    csv_rows = [{**r, "model_kwargs": json.dumps(r.get("model_kwargs") or {}),
                 **{k: env.get(k) for k in ("device_name", "torch", "torchvision", "torch_threads")}}
                for r in rows]  # fmt: skip
    return write_csv(path, csv_rows, CSV_FIELDS)


def _config_key(row: dict) -> tuple:
    return (
        row.get("stem"),  # a model is compared with the DSRNet of its own stem
        row.get("backend", "torch"),
        row["image_size"],
        row["batch_size"],
        row["mode"],
        row["precision"],
        row["channels_last"],
        row["compile"],
        row.get("compile_mode"),
    )


def _fused_label(row: dict) -> str:
    """`` (fused)`` for a fused row in :func:`dsrnet.fuse`'s default mode, `` (fused, MODE)`` in another."""
    if not row.get("fused"):
        return ""
    return " (fused)" if row.get("fuse_mode") in (None, fuse_mode(True)) else f" (fused, {row['fuse_mode']})"


def add_relative_latency(rows: list[dict]) -> None:
    """``rel_to_dsrnet``: latency / DSRNet's latency in the same configuration and stem (the paper's "N times
    faster"); the reference is the plain DSRNet where a fused one was timed beside it (whose own ratio is then
    its time over the plain model's)."""
    ref = _dsrnet_rows(rows)
    for r in rows:
        base = ref.get(_config_key(r))
        r["rel_to_dsrnet"] = r["latency_ms"] / base["latency_ms"] if base else None


def _dsrnet_rows(rows: list[dict]) -> dict[tuple, dict]:
    """The DSRNet row of each configuration: the plain model where its fused form was timed too."""
    ref = {}
    for r in sorted(rows, key=lambda r: bool(r.get("fused")), reverse=True):  # plain rows last: they win
        if r["arch"].removesuffix("_cifar") == "dsrnet50":
            ref[_config_key(r)] = r
    return ref


def _compiled(row: dict) -> str:
    if not row["compile"]:
        return "no"
    mode = row.get("compile_mode") or "default"
    return "yes" if mode == "default" else mode


def render_markdown(rows: list[dict], env: dict[str, Any], *, command: str | None = None) -> str:
    headers = ["model", "stem", "px", "batch", "mode", "prec", "layout", "compiled", "params (M)", "GMACs/img",
               "ms/batch (median)", "IQR ms", "images/s", "peak MB", "× DSRNet time"]  # fmt: skip
    body = []
    for r in rows:
        peak = r["peak_mem_mb"]
        body.append([
            _label(r) + _fused_label(r)
            + (f" ({r['dwconv']})" if r.get("dwconv", "torch") != "torch" else "")
            + (" (1x1 as matmul)" if r.get("pointwise", "conv") != "conv" else "")
            + (f" [{r['backend']}]" if r.get("backend", "torch") != "torch" else ""), r["stem"], r["image_size"], r["batch_size"],
            r["mode"], r["precision"], "NHWC" if r["channels_last"] else "NCHW", _compiled(r),
            f"{r['params'] / 1e6:.2f}", f"{r['gmacs_per_image']:.3f}", f"{r['latency_ms']:.1f}",
            f"{r['latency_p25_ms']:.1f}–{r['latency_p75_ms']:.1f}", f"{r['images_per_s']:.0f}",
            "n/a" if peak is None else f"{peak:.0f}", fmt(r.get("rel_to_dsrnet"), 2, "x"),
        ])  # fmt: skip
    lines = [markdown_table(headers, body, align="llrrllllrrrrrrr")]
    repeats = sorted({(r["warmup"], r["repeats"]) for r in rows})
    mem_kinds = sorted({r["peak_mem_kind"] for r in rows})
    lines.append(f"Environment: {environment_line(env)}.")
    lines.append(
        f"Method: median of {', '.join(f'{n}' for _, n in repeats)} timed calls after "
        f"{', '.join(f'{w}' for w, _ in repeats)} warm-up call(s); spread = 25th–75th percentile; MACs per image "
        f"from torch.utils.flop_counter (FLOPs / 2); peak memory = {', '.join(mem_kinds)}."
    )
    if env["device"] == "cpu" and any(r.get("cpu_defaults") for r in rows):
        lines.append(
            f"CPU defaults were used (warm-up {DEFAULT_WARMUP['cpu']}, repeats {DEFAULT_REPEATS['cpu']}) so the "
            "default run finishes in minutes; pass --warmup/--repeats for tighter numbers."
        )
    if command:
        lines.append(f"Command: `{command}`")
    return "\n\n".join(lines) + "\n"


def _label(row: dict) -> str:
    """The model's display name, with the arguments it was built with when they are not its defaults (a narrowed
    DSRNet is not the paper's network)."""
    return labelled(display_name(row["model"].removesuffix("_cifar")), row.get("model_kwargs"))


def speed_claims(rows: list[dict]) -> list[str]:
    """One line per baseline: its time over DSRNet's, measured and in the paper (Tables 2-4: 32 px = CIFAR-10's
    Table 2, 96 px = STL-10's Table 4)."""
    from dsrnet.models import PAPER_RESULTS

    paper_ratio = {
        32: ("cifar10", PAPER_RESULTS["cifar10"]),
        96: ("stl10", PAPER_RESULTS["stl10"]),
    }
    out = []
    reference = _dsrnet_rows(rows)
    for r in rows:
        base = r["arch"].removesuffix("_cifar")
        if r.get("rel_to_dsrnet") is None or base == "dsrnet50":
            continue
        dsrnet = reference[_config_key(r)]
        line = (
            f"{display_name(base)} at {r['image_size']} px ({r['stem']} stem, {r['mode']}, {r['precision']}): "
            f"{r['rel_to_dsrnet']:.2f}x {_label(dsrnet)}'s time"
        )
        table = paper_ratio.get(r["image_size"])
        # The paper's ratio only beside the paper's setting: its batch of 128, inference in fp32, the network as
        # described (no narrowed widths, no compiler, no fused or Triton forms, PyTorch itself).
        # Also the paper's stem and memory layout (the 3x3 cifar stem is this project's, not the paper's network).
        papers = (r["batch_size"] == 128 and r["mode"] == "inference" and r["precision"] == "fp32"
                  and not r["compile"] and not dsrnet.get("model_kwargs") and not dsrnet.get("fused")
                  and dsrnet.get("dwconv", "torch") == "torch" and r.get("backend", "torch") == "torch"
                  and dsrnet.get("pointwise", "conv") == "conv"
                  and r.get("stem") == "paper" and not r.get("channels_last"))  # fmt: skip
        if table and papers and base in table[1]:
            ratio = table[1][base]["paper_time"] / table[1]["dsrnet50"]["paper_time"]
            line += f" (paper, {table[0]}: {ratio:.2f}x)"
        out.append(line)
    return out


def run_bench(
    models: Sequence[str],
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    batch_size: int = 128,
    device: str = "auto",
    precisions: Sequence[str] = ("fp32",),
    channels_last: bool = False,
    compile: bool = False,
    modes: Sequence[str] = ("inference",),
    warmup: int | None = None,
    repeats: int | None = None,
    num_classes: int = 10,
    stem: str | None = None,
    model_kwargs: dict | None = None,
    fused: bool | str = False,
    backend: str = "torch",
    compile_mode: str = "default",
    dwconv: str = "torch",
    pointwise: str = "conv",
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    command: str | None = None,
    log=None,
) -> dict[str, Any]:
    """Benchmark every model x size x precision x mode; write ``bench_<device>.{csv,json,md}`` to ``out_dir``
    (files an earlier run left there are replaced only with ``overwrite``: a table a document cites is not lost
    to the next run).

    Returns ``{"env", "rows", "markdown", "files"}``."""
    from dsrnet.models import list_models, stem_variant

    dev = resolve_device(device)
    log = log or logger.info
    if not models:
        raise DsrnetError("no models to benchmark: pass --models NAME [NAME ...]")
    for size in sizes:
        check_int("image size", size, 8)
    check_int("batch size", batch_size)
    if warmup is not None:
        check_int("warmup", warmup, 0)
    if repeats is not None:
        check_int("repeats", repeats)
    check_int("num classes", num_classes)
    known = set(list_models())
    archs = [stem_variant(name, stem) if stem else name for name in models]
    for name, arch in zip(models, archs, strict=True):
        if arch not in known:
            raise DsrnetError(f"unknown model {name!r}; fix: choose from {', '.join(sorted(known))}")
    if model_kwargs and not any(a.startswith("dsrnet") for a in archs):
        raise DsrnetError(
            f"model kwargs {model_kwargs} apply to DSRNet models only, and none of {', '.join(models)} is one; "
            "fix: drop --model-kwargs or add a dsrnet model to --models"
        )
    if model_kwargs and not all(a.startswith("dsrnet") for a in archs):
        log(f"bench: model kwargs {model_kwargs} go to the DSRNet models only (the baselines are torchvision's)")
    _check_training_forms(dwconv, pointwise, fused, backend)
    if backend != "torch":  # every precision before the first row is timed (a late refusal threw minutes away)
        from dsrnet.export.backends import check_backend_precision

        for precision in precisions:
            check_backend_precision(backend, precision)
    with_dw = [a for a in archs if a.startswith(("dsrnet", "mobilenet"))]
    if dwconv != "torch" and not with_dw:
        raise DsrnetError(
            f"dwconv {dwconv} runs depthwise convs, and none of {', '.join(models)} has any; fix: drop --dwconv or "
            "add a dsrnet (or mobilenet_v2) model to --models"
        )
    if out_dir is not None:
        RunDir(out_dir).check_writable()  # before the timing, not after it
        earlier = [p.name for p in (Path(out_dir) / f"bench_{dev.type}.{ext}" for ext in ("csv", "json", "md"))
                   if p.exists()]  # fmt: skip
        if earlier and not overwrite:
            raise DsrnetError(f"{out_dir} holds {', '.join(earlier)} of an earlier run; fix: pass another --out-dir, "
                              f"or --overwrite to replace them")  # fmt: skip
    env = environment(dev)
    cpu_defaults = dev.type == "cpu" and warmup is None and repeats is None
    rows = []
    for mode in modes:
        for precision in precisions:
            for size in sizes:
                for name, arch in zip(models, archs, strict=True):
                    # fused: a DSRNet's eager form, then its fused form, back to back (one comparison, one run)
                    for form_fused in (False, fused) if fused and arch.startswith("dsrnet") else (False,):
                        row = benchmark_model(
                            name, image_size=size, batch_size=batch_size, device=dev, precision=precision,
                            channels_last=channels_last, compile=compile, warmup=warmup, repeats=repeats,
                            num_classes=num_classes, mode=mode, stem=stem, model_kwargs=model_kwargs,
                            fused=form_fused, backend=backend, compile_mode=compile_mode, dwconv=dwconv,
                            pointwise=pointwise,
                        )  # fmt: skip
                        row["cpu_defaults"] = cpu_defaults
                        rows.append(row)
                        log(
                            f"bench: {row['arch']}{_fused_label(row)} {size}px bs{batch_size} "
                            f"{mode} {precision}: {row['latency_ms']:.1f} ms/batch, {row['params'] / 1e6:.2f} M params"
                        )
    add_relative_latency(rows)
    markdown = render_markdown(rows, env, command=command)
    claims = speed_claims(rows)
    if claims:
        # "(paper)" in the heading only where a line carries the paper's ratio (its setting alone: speed_claims)
        paper = " (paper)" if any("(paper, " in c for c in claims) else ""
        markdown += (
            f"\nTime per batch relative to DSRNet (> 1: DSRNet is faster), measured{paper}:\n\n"
            + "".join(f"- {c}\n" for c in claims)
        )
    files = []
    if out_dir is not None:
        out = Path(out_dir)
        stem_name = f"bench_{dev.type}"
        files.append(write_bench_csv(out / f"{stem_name}.csv", rows, env))
        files.append(atomic_write_json(out / f"{stem_name}.json", {"command": command, "env": env, "rows": rows}))
        files.append(atomic_write_text(out / f"{stem_name}.md", markdown))
    return {"env": env, "rows": rows, "markdown": markdown, "files": files}
