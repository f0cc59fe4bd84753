#!/usr/bin/env python3
"""Seconds per epoch of `dsrnet train`'s own loop on one GPU, per speed setting, on synthetic CIFAR-shaped data.

``fused_gpu.py`` times one training step by itself (H200, batch 512: 21.3 ms with the Triton depthwise convs and
CUDA graphs against 45.4 ms without graphs; BENCHMARKS.md, "Third timings"). Whether the real loop gets that --
data loader, learning-rate schedule, loss bookkeeping, per-epoch test pass, precompile pass, ``reduce-overhead``'s
graph trees -- is what this script measures before the fast recipe switches its defaults. It needs no staged data:
it writes random 32x32 images in the array-cache format (50,000 train, 10,000 test, every class present), so the
accuracy means nothing; only the time does.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/train_speed.py --out $OUT --budget-s 360   # one GPU call
    PYTHONPATH=src python3 benchmarks/train_speed.py --dry-run --out /tmp/train-speed                # CPU rehearsal

Each arm is one ``python -m dsrnet train --config fast --epochs E`` in its own process (its compilation, CUDA
graphs and failures stay its own) with empty compile caches of its own (inductor's and Triton's: its first epoch
is a fresh machine's), in the order below; an arm that no longer fits the budget is skipped and
listed. Per arm: the median epoch time over the epochs after the first (compilation, autotuning and graph
recording fall in the first), images/s, the first epoch's time, the median test-pass time, the process's wall
time, the final train loss (finite: the step ran) and the exit status. Writes three files into ``--out``
(``results.json`` with every arm's per-epoch metrics; ``results.md``, with each arm's speed-up over ``fast`` for a
whole run of the recipe's epochs (:func:`run_s`) and
which arm, if any, ``fast.yaml`` should take, :func:`verdict`; ``log.txt`` with each arm's last output lines); the data and run folders go to ``--work`` (a temporary folder unless named), never back from a GPU call.
``--dry-run``: a few images, 2 epochs, no compilation (a CPU compiles for minutes), the Triton arms through the
PyTorch fallback (``DSRNET_DISABLE_TRITON=1``): the plumbing, not the speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"

#: (name, extra ``dsrnet train`` flags): the fast recipe as shipped first, then the settings under test.
ARMS = [
    ("fast", []),
    ("fast+triton_dw+cudagraphs", ["--dwconv", "triton", "--compile-mode", "reduce-overhead"]),
    # + each block's BatchNorm + ReLU before the depthwise conv inside its kernel (their output never written)
    ("fast+triton_bn_relu+cudagraphs", ["--dwconv", "triton_bn_relu", "--compile-mode", "reduce-overhead"]),
    ("fast+cudagraphs", ["--compile-mode", "reduce-overhead"]),
    ("fast+triton_dw", ["--dwconv", "triton"]),
    # + inductor's GEMM templates for the forward's stride-1 1x1 convs, the pointwise work around them fused into
    # them (CUDA graphs too); autotuning makes its first epoch minutes long: these last, best in a call of their own
    ("fast+triton_dw+max-autotune", ["--dwconv", "triton", "--compile-mode", "max-autotune"]),
    # + the 1x1 convs as matmuls in the model, so the backward's GEMMs reach inductor too (with cuBLAS, and with
    # max-autotune's templates)
    ("fast+triton_dw+matmul+cudagraphs", ["--dwconv", "triton", "--pointwise", "matmul", "--compile-mode",
                                          "reduce-overhead"]),
    ("fast+triton_dw+matmul+max-autotune", ["--dwconv", "triton", "--pointwise", "matmul", "--compile-mode",
                                            "max-autotune"]),
]


def write_synthetic_cifar10(root: Path, train: int, test: int, seed: int = 0) -> None:
    """Random uint8 images and balanced labels as ``root/cifar10/{train,test}.npz`` (the array cache)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.int64)  # every class present, as the loader checks
        np.savez(folder / f"{split}.npz", images=images, labels=labels)


def summarize(run_dir: Path) -> dict:
    """Epoch times and losses from an arm's ``metrics.jsonl`` (whatever epochs it finished)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = [r for r in rows if "epoch_time_s" in r]
    if not rows:
        return {"epochs_done": 0}
    later = [r["epoch_time_s"] for r in rows[1:]]
    evals = [r["eval_time_s"] for r in rows if r.get("eval_time_s")]
    out = {
        "epochs_done": len(rows),
        "first_epoch_s": round(rows[0]["epoch_time_s"], 3),
        "epoch_s": round(statistics.median(later), 3) if later else None,
        "train_images_per_s": round(statistics.median(r["images_per_s"] for r in rows[1:]), 1) if later else None,
        "test_pass_s": round(statistics.median(evals), 3) if evals else None,
        "final_train_loss": rows[-1].get("train_loss"),
    }
    out["metrics"] = rows
    return out


def run_arm(args, name: str, flags: list[str], work: Path, remaining: float) -> dict:
    run_dir, data = work / "runs" / name, work / "data"
    shutil.rmtree(run_dir, ignore_errors=True)  # a --work folder used before: dsrnet train refuses a used run folder
    cmd = [sys.executable, "-m", "dsrnet", "train", "--config", "fast", "--data-dir", str(data),
           "--out-dir", str(run_dir), "--epochs", str(args.epochs), "--seed", "0", *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    # Each arm starts with empty compile caches, as a run on a fresh machine does: its first epoch counts in the
    # verdict's whole-run time, and an arm after another must not inherit the kernels and autotuning it paid for.
    env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"] = str(run_dir) + "-inductor", str(run_dir) + "-triton"
    for cache in (env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"]):
        shutil.rmtree(cache, ignore_errors=True)
    if args.dry_run:
        cmd += ["--device", "cpu", "--subset-per-class", "4", "--test-subset-per-class", "2", "--batch-size", "20",
                "--model-kwargs", json.dumps({"widths": [8, 8, 16, 16], "layers": [1, 1, 1, 1]})]  # fmt: skip
        if "--compile-mode" in flags:  # a CPU run does not compile, and a mode without compiling is refused
            i = cmd.index("--compile-mode")
            del cmd[i : i + 2]
        env["DSRNET_DISABLE_TRITON"] = "1"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(1.0, remaining))
        status, tail = proc.returncode, (proc.stdout + proc.stderr)[-1500:]
    except subprocess.TimeoutExpired as err:
        status, tail = "timeout", ((err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(
            errors="replace"))[-1500:]  # fmt: skip
    wall = time.monotonic() - t0
    with open(args.out / "log.txt", "a") as log:
        log.write(f"== {name}: {shlex.join(cmd)}\nexit {status} after {wall:.1f} s; last output:\n{tail}\n\n")
    row = {"arm": name, "flags": " ".join(flags), "status": status, "wall_s": round(wall, 1), **summarize(run_dir)}
    if status != 0:
        row["error_tail"] = tail[-600:]
    return row


def environment(device: bool) -> dict:
    """Versions; with ``device``, the GPU's name too (which starts CUDA in this process: after the arms)."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        env["torch"] = torch.__version__
        if device and torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def recipe_epochs() -> int:
    """The epochs of a run of the shipped fast recipe (``fast.yaml``), over which an arm's first epoch (its
    compilation, autotuning, graph recording) is paid once."""
    from dsrnet.train.config import load_config_file

    return int(load_config_file("fast")["epochs"])


def run_s(arm: dict, epochs: int) -> float | None:
    """An arm's projected time for a whole run of ``epochs``: its first epoch, then its median later epoch."""
    if not arm.get("epoch_s") or arm.get("first_epoch_s") is None:
        return None
    return round(arm["first_epoch_s"] + (epochs - 1) * arm["epoch_s"], 1)


def verdict(arms: list[dict], epochs: int) -> tuple[dict[str, float], str]:
    """Each arm's speed-up over the shipped recipe for a whole run of ``epochs`` (``fast``'s projected run time,
    :func:`run_s`, over the arm's: an arm whose first epoch autotunes for minutes pays them once per run), and which
    arm ``fast.yaml`` should take: the fastest that finished every epoch with a finite loss, where it beats ``fast``
    by more than 3 % (closer is within what epoch times vary by; a change of defaults must pay for its risk)."""

    def sound(a: dict) -> bool:
        loss = a.get("final_train_loss")
        return a["status"] == 0 and bool(run_s(a, epochs)) and loss is not None and math.isfinite(loss)

    base = next((a for a in arms if a["arm"] == "fast"), None)
    if base is None or not sound(base):
        return {}, "no verdict: the `fast` arm did not finish with a finite loss (nothing to compare with)"
    speedup = {a["arm"]: round(run_s(base, epochs) / run_s(a, epochs), 3) for a in arms if run_s(a, epochs)}
    best = max((a for a in arms if sound(a) and a.get("epochs_done") == base["epochs_done"]),
               key=lambda a: speedup[a["arm"]])  # fmt: skip
    if best["arm"] == "fast" or speedup[best["arm"]] < 1.03:
        return speedup, "keep fast.yaml as it is: no arm beat `fast` by more than 3 %"
    flags = best["flags"].split()
    if len(flags) % 2 or any(not f.startswith("--") for f in flags[::2]):  # not (--option value) pairs: as given
        return speedup, f"`{best['arm']}` is {speedup[best['arm']]}x `fast`: set its flags `{best['flags']}`"
    pairs = zip(flags[::2], flags[1::2], strict=True)
    yaml = ", ".join(f"`{k.removeprefix('--').replace('-', '_')}: {v}`" for k, v in pairs)
    return speedup, f"`{best['arm']}` is {speedup[best['arm']]}x `fast`: in fast.yaml set {yaml}"


def markdown(results: dict) -> str:
    epochs = results.get("recipe_epochs") or recipe_epochs()
    speedup, advice = verdict(results["arms"], epochs)
    cols = ["arm", "status", "epochs_done", "epoch_s", "first_epoch_s", "run_s", "x_fast", "train_images_per_s",
            "test_pass_s", "wall_s", "final_train_loss"]  # fmt: skip
    lines = [
        "# `dsrnet train` epoch time per speed setting (synthetic CIFAR-10-shaped data)",
        "",
        f"Command: `{results['command']}`",
        f"Environment: {results['environment']}; elapsed {results['elapsed_s']} s of a {results['budget_s']} s budget"
        + ("; DRY RUN (CPU, tiny model: plumbing only)" if results["dry_run"] else ""),
        "",
        "epoch_s: median over the epochs after the first; first_epoch_s holds compilation, autotuning and CUDA-graph "
        "recording. Random images: the losses mean nothing beyond being finite.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for row in results["arms"]:
        row = {**row, "x_fast": speedup.get(row["arm"]), "run_s": run_s(row, epochs)}
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |")
    lines += ["", f"run_s: a whole {epochs}-epoch run of the fast recipe at this pace (first_epoch_s + {epochs - 1} x "
              f"epoch_s); x_fast: `fast`'s run_s over the arm's. Verdict: {advice}."]
    if results["skipped"]:
        lines += ["", "Skipped (budget): " + ", ".join(results["skipped"])]
    for row in results["arms"]:
        if row.get("error_tail"):
            lines += ["", f"## {row['arm']}: exit {row['status']}", "", "```", row["error_tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, results.md and log.txt")
    p.add_argument("--work", type=Path, help="folder for the synthetic data and the runs (default: a temporary one)")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-clock budget for all arms")
    p.add_argument("--epochs", type=int, default=4, help="epochs per arm (the first holds compilation)")
    p.add_argument("--arms", help="comma-separated arm names (default: all, in order): " + ", ".join(a for a, _ in ARMS))
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal: tiny data and model, no compiling")
    args = p.parse_args(argv)
    arms = ARMS
    if args.arms:
        known = dict(ARMS)
        unknown = [a for a in args.arms.split(",") if a not in known]
        if unknown:
            p.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        arms = [(a, known[a]) for a in args.arms.split(",")]
    if args.dry_run:
        args.epochs = min(args.epochs, 2)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "log.txt").write_text("")
    work = args.work or Path(tempfile.mkdtemp(prefix="train-speed-"))
    write_synthetic_cifar10(work / "data", *((200, 40) if args.dry_run else (50_000, 10_000)))
    results = {"command": "PYTHONPATH=src python3 " + " ".join(["benchmarks/train_speed.py", *(argv or sys.argv[1:])]),
               "dry_run": args.dry_run, "budget_s": args.budget_s, "epochs": args.epochs,
               "recipe_epochs": recipe_epochs(),
               "environment": environment(device=False), "arms": [], "skipped": []}  # fmt: skip

    def save() -> None:  # after every arm: a call cut short still brings back what finished
        results["elapsed_s"] = round(time.monotonic() - start, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(markdown(results))

    for name, flags in arms:
        remaining = args.budget_s - (time.monotonic() - start)
        # An arm needs its process start, compilation (~30 s on an H200) and its epochs: start it only where the
        # fastest arm so far would fit again (60 s before any finished), not to be killed with no epoch done.
        walls = [a["wall_s"] for a in results["arms"] if a["status"] == 0]
        if remaining < (max(60.0, 1.1 * min(walls)) if walls else 60.0):
            results["skipped"].append(name)
            continue
        row = run_arm(args, name, flags, work, remaining - 5)
        results["arms"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "metrics"}), flush=True)
        save()
    results["environment"] = environment(device=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
