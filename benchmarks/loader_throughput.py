#!/usr/bin/env python3
"""Throughput of :class:`dsrnet.data.DeviceLoader` over full training epochs of the real CIFAR-10.

Measures what a training step waits for: one epoch of shuffled, cropped, flipped, normalised float32 batches on
the device (no model). Reports the median of ``--epochs`` timed epochs after ``--warmup`` untimed ones, in
images/s, with the hardware and the exact command, so the figure can go into BENCHMARKS.md as is.

    python3 ../shared/data/cifar10/decode.py /tmp/c10data
    python3 benchmarks/loader_throughput.py --data-dir /tmp/c10data
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import torch

from dsrnet.data import DATASETS, DeviceLoader, channel_stats, default_data_dir, load_split
from dsrnet.errors import DsrnetError


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help=f"data folder (default: {default_data_dir()})")
    p.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS))
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--batch-size", type=int, default=128, help="the paper's batch size (Table 2)")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    try:
        train = load_split(args.dataset, "train", args.data_dir)
    except DsrnetError as err:
        print(f"loader_throughput: error: {err}", file=sys.stderr)
        return 2
    mean, std = channel_stats(train.images)
    loader = DeviceLoader(
        train.images,
        train.labels,
        batch_size=args.batch_size,
        train=True,
        device=device,
        mean=mean,
        std=std,
        pad=DATASETS[args.dataset].pad,
        channels_last=args.channels_last,
        drop_last=True,
    )
    times = []
    checksum = 0.0
    for e in range(args.warmup + args.epochs):
        loader.set_epoch(e)
        sync(device)
        t0 = time.perf_counter()
        last = None
        for x, _ in loader:
            last = x
        # Touch the last batch so no lazy backend could skip the work; synchronise before stopping the clock.
        checksum += float(last[0, 0, 0, 0])
        sync(device)
        if e >= args.warmup:
            times.append(time.perf_counter() - t0)
    n = len(loader) * args.batch_size
    med = statistics.median(times)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"command: python3 {' '.join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])}")
    print(f"device: {device} ({hw}); torch threads: {torch.get_num_threads()}; torch {torch.__version__}")
    print(f"dataset: {args.dataset} train, {len(train)} images; batch size {args.batch_size}; drop_last")
    print(f"epoch times (s): {', '.join(f'{t:.3f}' for t in times)}")
    print(f"throughput: {n / med:,.0f} images/s (median of {len(times)} epochs after {args.warmup} warm-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
