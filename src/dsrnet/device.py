"""Which torch device a command runs on, and the device helpers every layer shares (sync, timing, label, precision)."""

from __future__ import annotations

import contextlib
import time

import torch

from dsrnet.errors import DsrnetError

#: Numeric precisions of training, evaluation and benchmarks: fp32, or autocast to bf16 / fp16.
PRECISIONS = ("fp32", "bf16", "fp16")
_AMP_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU. Asking for CUDA where there is none is an error, not a silent
    fallback: a timing or a training run on the wrong device is worse than no result."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DsrnetError(f"unknown device {device!r}; fix: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DsrnetError(
            f"device {device!r} asked for, but torch sees no CUDA GPU; fix: use --device cpu (or auto)"
        )
    if dev.type not in ("cpu", "cuda"):
        raise DsrnetError(f"device type {dev.type!r} is not supported; fix: use auto, cpu, cuda or cuda:N")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it (a CPU call is already synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, *, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def compile_frozen(model, **options):
    """``torch.compile(model)`` for inference with Inductor's weight freezing (parameters become constants:
    BatchNorm folded into the convs, weights pre-packed for oneDNN on a CPU), one static build per input shape;
    ``options``: further Inductor options. Returns a callable. Freezing has to be on while Dynamo traces, which is
    when it decides whether parameters become constants: ``torch.compile(..., options={"freezing": True})`` reaches
    Inductor only, which then finds them as graph inputs and freezes nothing (torch 2.11-2.14; on a CPU
    DSRNet-50 then ran at eager speed, BENCHMARKS.md). So every call, and with it every (re)compilation, runs with
    the setting patched in, leaving the process-wide setting alone (the patch is process-wide while it lasts:
    threads making their first calls at the same time may compile unfrozen, which is slower, not wrong). Call it
    under ``torch.inference_mode`` or ``torch.no_grad``: with gradients on, Inductor does not freeze."""
    from torch._inductor import config

    compiled = torch.compile(model, options=options or None, dynamic=False)

    def run(*args, **kwargs):
        with config.patch(freezing=True):
            return compiled(*args, **kwargs)

    return run


def device_label(device: torch.device) -> str:
    """``"cuda:0 (NVIDIA H100 80GB HBM3)"`` or ``"cpu"``, for logs and result files."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPE[precision])


def tf32_matmul() -> bool:
    """Whether fp32 matmuls may run in TF32 on a CUDA card, as the user set it with either of PyTorch's APIs: the
    ``fp32_precision`` settings (torch >= 2.9; reading the legacy ``allow_tf32`` after them raises) or the legacy
    flag / ``torch.set_float32_matmul_precision``."""
    prec = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if prec is None:  # torch < 2.9: the legacy flag is the only one
        return bool(torch.backends.cuda.matmul.allow_tf32)
    if prec == "none":  # not set for matmuls: the global setting, then the float32 matmul precision
        prec = getattr(torch.backends, "fp32_precision", "none")
    if prec == "none":
        return torch.get_float32_matmul_precision() != "highest"
    return prec == "tf32"


def tf32_conv() -> bool:
    """Whether fp32 cuDNN convolutions may run in TF32 (either API, as :func:`tf32_matmul`)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    prec = getattr(conv, "fp32_precision", None) if conv is not None else None
    if prec is None:
        return bool(torch.backends.cudnn.allow_tf32)
    for fallback in (torch.backends.cudnn, torch.backends):
        if prec != "none":
            break
        prec = getattr(fallback, "fp32_precision", "none")
    if prec != "none":
        return prec == "tf32"
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # the new API was used (set to "none"): the legacy read refuses; torch's default is on
        return True
