"""Time a :func:`dsrnet.export.backends.load_runner` callable; the row has the keys of ``dsrnet bench``'s rows
(``latency_ms`` = median, quartiles, min/max, ``images_per_s``, ``warmup``, ``repeats``, ``times_ms``) plus
``backend``, ``threads`` and ``precision`` ("fp32" or "int8"), so ``bench --backend`` can print them as it
prints its own.

Method (as ``dsrnet bench`` on a CPU): ``warmup`` untimed calls on the same input (they absorb one-off work:
OpenVINO's per-shape compilation, torch.compile, allocator growth), then ``repeats`` calls each timed on its
own with ``time.perf_counter`` (a CPU call is synchronous); the median is the reported latency.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_runner(
    runner: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    image_size: int,
    warmup: int = 3,
    repeats: int = 20,
    seed: int = 0,
    **row_fields: Any,
) -> dict[str, Any]:
    """Median latency of ``runner`` on a random (batch_size, 3, image_size, image_size) batch; ``row_fields``
    (e.g. ``model``, ``backend``, ``threads``, ``precision``) are copied into the returned row."""
    x = torch.randn(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))
    for _ in range(warmup):
        runner(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(x)
        times.append((time.perf_counter() - t0) * 1e3)
    ms = sorted(times)
    median = statistics.median(ms)
    return {
        **row_fields,
        "image_size": image_size,
        "batch_size": batch_size,
        "mode": "inference",
        "device": "cpu",
        "latency_ms": median,
        "latency_p25_ms": _quantile(ms, 0.25),
        "latency_p75_ms": _quantile(ms, 0.75),
        "latency_min_ms": ms[0],
        "latency_max_ms": ms[-1],
        "images_per_s": batch_size / (median / 1e3),
        "warmup": warmup,
        "repeats": repeats,
        "times_ms": times,
    }
