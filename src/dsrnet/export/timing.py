"""Time a :func:`dsrnet.export.backends.load_runner` callable; the row has the keys of ``dsrnet bench``'s rows
(``latency_ms`` = median, quartiles, min/max, ``images_per_s``, ``warmup``, ``repeats``, ``times_ms``) plus
``backend``, ``threads`` and ``precision`` ("fp32" or "int8"), so ``bench --backend`` can print them as it
prints its own.

Method (as ``dsrnet bench`` on a CPU): ``warmup`` untimed calls on the same input (they absorb one-off work:
OpenVINO's per-shape compilation, torch.compile, allocator growth), then ``repeats`` calls each timed on its
own with ``time.perf_counter`` (a CPU call is synchronous); the median is the reported latency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dsrnet.bench.measure import summarize_times, time_calls


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
    # The same timing loop and statistics as `dsrnet bench`.
    seconds = time_calls(lambda: runner(x), device=torch.device("cpu"), warmup=warmup, repeats=repeats)
    stats = summarize_times(seconds)
    return {
        **row_fields,
        "image_size": image_size,
        "batch_size": batch_size,
        "mode": "inference",
        "device": "cpu",
        **stats,
        "images_per_s": batch_size / (stats["latency_ms"] / 1e3),
        "warmup": warmup,
        "repeats": repeats,
        "times_ms": [t * 1e3 for t in seconds],
    }
