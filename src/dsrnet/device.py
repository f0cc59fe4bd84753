"""Which torch device a command runs on; shared by train, eval, predict, bench and reproduce."""

from __future__ import annotations

import torch

from dsrnet.errors import DsrnetError


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
