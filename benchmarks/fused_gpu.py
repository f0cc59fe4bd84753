#!/usr/bin/env python3
"""One-call GPU benchmark of the fused DSRNet (issue 10): correctness first, then speed, most valuable numbers first.

    PYTHONPATH=src python3 benchmarks/fused_gpu.py --out OUT_DIR --budget-s 500 [--cifar10-test DIR]
    PYTHONPATH=src python3 benchmarks/fused_gpu.py --out /tmp/dry --dry-run     # CPU, Triton interpreter, tiny

What it measures (the run order, most valuable first, is the ``plan`` in ``main``: headline inference at 32 px,
profiles, the training target's comparison, batch 128, the other training forms, then 96 px; a step is skipped, and
says so, when its estimated cost no longer fits the budget (steps named by ``--only`` always start), and results
are rewritten after every step, so a run cut short keeps everything measured so far):

 1. the card: name, torch/Triton/CUDA versions; its copy bandwidth (a 2 GiB device-to-device copy) and bf16 matmul
    rate (8192^3 ``torch.mm``), both measured here, as the roofline's ceilings;
 2. correctness on the GPU: first ``fuse(mode="block")`` in a process of its own (``step_block_probe``: a fault in
    that kernel, new since the last GPU run, would poison this process's CUDA context; if it fails, the block forms
    are skipped and the rest runs); then ``dsrnet.fuse(model)`` against the eager model (eval, BN statistics randomised so the
    folding matters) in fp32 (TF32 off) and bf16: max |logit diff|, max relative feature diff, top-1 agreement on
    random inputs; ``stride_on="1x1"``; the paper stem (``fuse``'s default mode, and the one-kernel mode at 32 px;
    every timed form is also checked where it is timed: its logits on 256 images against eager fp32); the gradients
    of a training step with ``use_triton_dwconv`` and with the eager model in fp32, each against the same step in
    fp64 (the Triton form's error should be the size of eager fp32's own); with ``--data-dir`` holding CIFAR-10,
    the fused model with the shipped weights against the eager one on all 10,000 test images (top-1 of each,
    agreement, max logit diff). Misses are reported, never fatal (the gradient check covers ``use_triton_dwconv``
    with and without ``bn_relu``);
 3. inference, bf16 weights and activations, channels_last, ``torch.inference_mode``: DSRNet-50 fused (``fuse``'s
    modes: split, block, auto, chain, as each step lists; chain also with its depthwise convs as their own kernels,
    split with the sweep's candidate configs) / eager / compiled and torchvision ResNet-50 compiled, 32 px cifar
    stem and 96 px paper stem, batch 1024 and 128 (steps marked ``+cudagraph`` also replay each form as a CUDA
    graph), last 224 px paper stem at batch 128: median ms per batch over repeats (CUDA events, after warm-up),
    images/s, peak memory, ratio to ResNet-50 compiled;
 4. torch.profiler: top-10 CUDA kernels by time, fused and eager, batch 1024, 32 px;
 5. training step (forward, cross-entropy, backward, SGD; bf16 autocast, channels_last) at batch 512, 32 px:
    ResNet-50 compiled, DSRNet eager, DSRNet eager + Triton depthwise conv, DSRNet compiled (+ Triton dw conv; then
    + Triton dw conv with each block's preceding BatchNorm and ReLU in its kernel, ``bn_relu=True``; and with the
    depthwise convs as nine shifted multiply-adds that inductor fuses, ``dsrnet.models.shifted_dwconv``);
 6. a roofline line per timed form: forward FLOPs per image (``FlopCounterMode``), modelled activation bytes per
    image (the floor: every block reads its input once and writes its output once; and each form's own traffic),
    and the fraction of the measured compute / bandwidth each form reaches; per training form, the step's forward +
    backward FLOPs per image (a grouped conv's weight gradient counted as such, which torch's ``FlopCounterMode``
    overcounts by its groups) and the fraction of the matmul rate it reaches; ResNet-50's training step is
    profiled too, as the reference.

Writes into ``--out``: ``results.json`` (everything, with the block sizes the autotuner picked per kernel and
shape: ``dsrnet.kernels._triton.autotune_picks``), ``results.md`` (tables, led by what the rows decide:
:func:`decision_rows`, each open question of the plan as a verdict and the edit it calls for), ``profiles.txt``,
``log.txt``.
Last, budget permitting: the training step of both with inductor's ``conv_1x1_as_mm`` (1x1 convs lowered to
matmuls, whose neighbours inductor can then fuse), and DSRNet-50 and ResNet-50 both compiled with inductor's own fusion route
(``TUNED_INDUCTOR``: freezing folds BatchNorm, 1x1 convs become matmuls with fused epilogues, GEMM templates
autotuned), what plain PyTorch can make of each network without custom kernels; DSRNet-50 also with its depthwise
convs as shifted multiply-adds (``dsrnet_compiled_shifts``, ``dsrnet_compiled_tuned_shifts``), which inductor
fuses with the BatchNorm and ReLU around them instead of calling cuDNN.

Block sizes of the Triton kernels are autotuned on first use of each shape (part of the warm-up, not timed); every
Triton form first gets one throw-away pass under ``dsrnet.kernels.precompile`` (all autotune configs compiled by
worker processes at once; its time is recorded as ``precompile_s``, the first real call's as ``first_call_s``).
``dsrnet_fused`` is ``dsrnet.fuse(model)`` with its default mode (``split`` since 2026-11-27's H200 run measured it
fastest); the main inference steps also time ``dsrnet_fused_block`` (``mode="block"``, one kernel per block) and
``dsrnet_fused_chain`` (``mode="chain"``), so that a full run shows whether the default is still the fastest, and
the main 32-px steps ``dsrnet_fused_auto`` (``mode="auto"``: split or block per block shape, whichever its first
call measures faster; the row's ``auto_picks`` counts the shapes each won, ``auto_choices`` in results.json has
the times); the chain step sets chain, chain without its depthwise convs and split with the sweep's configs
against the default only;
``dsrnet_fused_onekernel`` (``mode="fused"``), slower in that run, comes last (32 px, batch 1024). Each
fused row records its ``fuse_mode`` (rows of 2026-11-27 named ``dsrnet_fused_auto`` had a mode since removed:
one kernel up to 256 output channels, split above). Runs the call's time limit cut short (no roofline): ``--rerender DIR`` here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import itertools
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

if "--dry-run" in sys.argv:  # Triton reads this when triton.language is first imported: set it before torch
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import dsrnet  # noqa: E402
from dsrnet.device import compile_frozen  # noqa: E402
from dsrnet.kernels import ops  # noqa: E402
from dsrnet.models.fused import DEFAULT_FUSE_MODE  # noqa: E402
from dsrnet.models.matmul_pointwise import use_matmul_pointwise  # noqa: E402
from dsrnet.models.shifted_dwconv import use_shifted_dwconv  # noqa: E402

T0 = time.monotonic()
RESERVE_S = 30
SRC = Path(__file__).resolve().parent.parent / "src"  # the checkout's package, for child processes


class BudgetExceeded(BaseException):
    """Raised by SIGALRM at the deadline; a BaseException so that library code catching Exception lets it pass."""


class Bench:
    """Holds the run's state: budget, results, output files."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # RESERVE_S of the budget is kept for the per-image FLOPs/bytes and the final write.
        self.deadline = T0 + args.budget_s - RESERVE_S
        self.results: dict = {
            "command": "PYTHONPATH=src python3 " + shlex.join(["benchmarks/fused_gpu.py", *sys.argv[1:]]),
            "dry_run": self.dry,
            "budget_s": args.budget_s,
            "environment": {},
            "ceilings": {},
            "correctness": [],
            "inference": [],
            "training": [],
            "roofline": [],
            "per_image": {},
            "skipped": [],
            "errors": [],
        }
        self.profiles: list[str] = []
        self.log_lines: list[str] = []
        self.alarm_fired = False
        self.block_unsafe = False  # the block probe's process failed: no mode="block" form runs in this one
        self.current_step: str | None = None
        self._save_lock = threading.Lock()  # the watchdog thread writes the files too

    def start_alarm(self) -> None:
        """SIGALRM at the deadline raises :class:`BudgetExceeded` wherever the run is, so a step stops there."""

        def on_alarm(signum, frame):
            self.alarm_fired = True
            raise BudgetExceeded

        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(max(1, int(self.deadline - time.monotonic())))

    def start_watchdog(self) -> threading.Timer:
        """A hard stop at the end of the whole budget: the alarm cannot interrupt a step stuck in a call that does
        not return to Python (2026-11-27's H200 run sat past its deadline in a training step's compilation until the
        device call's own time limit killed it, before the reserve's roofline ran). The timer thread writes what
        was measured and ends the process; run the call with a time limit a little above ``--budget-s``."""

        def hard_stop() -> None:
            try:
                self.log(f"HARD STOP: still running at the end of the {self.args.budget_s:.0f}-s budget; writing "
                         "what was measured and exiting")  # fmt: skip
                self.results["errors"].append({"step": "watchdog", "error": "hard stop at the end of the budget"})
                if self.current_step is not None:
                    self.results["skipped"].append({"step": self.current_step,
                                                    "reason": "hard stop at the end of the budget during the step"})
                self._save_lock.acquire(timeout=5)  # a save of the main thread's in progress: let it finish
                for _ in range(5):  # the main thread may still change the results while they are serialised
                    try:
                        self._save_files()
                        break
                    except RuntimeError:  # "dictionary changed size during iteration"
                        time.sleep(0.2)
            finally:
                os._exit(3)

        timer = threading.Timer(max(1.0, T0 + self.args.budget_s - time.monotonic()), hard_stop)
        timer.daemon = True
        timer.start()
        return timer

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - T0:7.1f}s] {msg}"
        print(line, flush=True)
        self.log_lines.append(line)

    def step(self, name: str, estimate_s: float, fn, *fn_args) -> None:
        """Run one step if its estimate fits the remaining budget; record a skip or an error otherwise."""
        if self.remaining() < estimate_s:
            self.log(f"SKIP {name}: needs ~{estimate_s:.0f}s, {self.remaining():.0f}s left")
            self.results["skipped"].append({"step": name, "estimate_s": estimate_s, "left_s": self.remaining()})
            self.save()  # the files say what the run is doing, even if it is killed later
            return
        self.log(f"START {name} (estimate {estimate_s:.0f}s, {self.remaining():.0f}s left)")
        self.save()
        t = time.monotonic()
        self.current_step = name
        try:
            fn(*fn_args)
        except BudgetExceeded:
            self.log(f"STOP {name}: budget reached")
            self.results["skipped"].append({"step": name, "reason": "budget reached during the step"})
            raise
        except Exception as err:
            if self.alarm_fired:
                # The alarm's BudgetExceeded, raised inside a C call (torch's argument parsing, under Triton's
                # interpreter), came back as that call's own error: it is the budget stop, not a broken form.
                self.log(f"STOP {name}: budget reached (surfaced as {type(err).__name__}: {err})")
                self.results["skipped"].append({"step": name, "reason": "budget reached during the step",
                                                "surfaced_as": f"{type(err).__name__}: {err}"})  # fmt: skip
                raise BudgetExceeded from err
            # report and go on: one broken form must not cost the other numbers
            self.log(f"ERROR {name}: {type(err).__name__}: {err}")
            self.results["errors"].append(
                {"step": name, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            )
        finally:
            self.current_step = None
            self.log(f"END {name} ({time.monotonic() - t:.1f}s)")
            self.save()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def save(self) -> None:
        with self._save_lock:
            self._save_files()

    def _save_files(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - T0, 1)
        tk = getattr(ops, "_tk", None)  # the configs the autotuner picked per shape: data for a tuning table
        self.results["autotune_picks"] = tk.autotune_picks() if tk is not None else {}
        if "dsrnet.models.fused" in sys.modules:  # fuse(mode="auto")'s per-shape times and picks
            self.results["auto_choices"] = sys.modules["dsrnet.models.fused"].auto_choices()
        _write(self.out / "results.json", json.dumps(self.results, indent=1, default=str))
        _write(self.out / "results.md", render_markdown(self.results))
        _write(self.out / "profiles.txt", "\n\n".join(self.profiles) or "(no profile taken)\n")
        _write(self.out / "log.txt", "\n".join(self.log_lines) + "\n")

    # -- sizes (the dry run shrinks everything so the interpreter finishes in about a minute) -------------------
    def batch(self, b: int) -> int:
        return max(1, b // 512) if self.dry else b

    def size(self, s: int) -> int:
        return {32: 16, 96: 32, 224: 48}.get(s, s) if self.dry else s

    def skips_block(self, what: str) -> bool:
        """Whether ``what`` (a form, case or step using ``fuse(mode="block")``, or ``mode="auto"``, which runs it
        to time it) must be left out because the block probe failed; records the skip."""
        if self.block_unsafe and ("block" in what or "auto" in what):
            self.results["skipped"].append({"step": what, "reason": "the block kernel probe failed (errors)"})
            return True
        return False

    def model_kwargs(self) -> dict:
        return {"layers": (1, 2, 1, 1), "widths": (4, 8, 8, 16)} if self.dry else {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(f"{path.suffix}.{threading.get_ident()}.tmp")  # one per thread: the watchdog writes too
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------------------------------
def time_ms(bench: Bench, fn, warmup: int, repeats: int) -> dict:
    """Median (and quartiles) of ``repeats`` timed calls after ``warmup`` untimed ones, in ms."""
    if bench.dry:
        warmup, repeats = min(warmup, 1), min(repeats, 2)
    for _ in range(warmup):
        fn()
    bench.sync()
    times = []
    for _ in range(repeats):
        if bench.remaining() < 0:
            raise BudgetExceeded
        if bench.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return summarize_ms(times)


def summarize_ms(times: list[float]) -> dict:
    """Median and quartiles of per-call times in ms, and how many."""
    # "inclusive": the quartiles of the times themselves, as dsrnet bench's summarize_times (never outside them)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "repeats": len(times)}


def cuda_graph(fn):
    """Capture ``fn`` (already warmed up: autotuning and compilation done) into a CUDA graph; returns replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def peak_memory_start(bench: Bench) -> int:
    """What is allocated before a form is built: its peak is counted above this."""
    if bench.device.type != "cuda":
        return 0
    gc.collect()  # the previous form's leftovers
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_memory_restart(bench: Bench) -> None:
    """Forget the peak so far, keeping the base: called after a form's first call, whose compilation, autotuning
    (Triton's timing flushes L2 through a 256 MiB buffer), precompile pass and ``mode="auto"`` measurements are not
    what the form needs to run (the H200 run of 2026-11-27 counted them: 440 MiB for the one-kernel form at batch
    128, 217 MiB for its CUDA graph, whose peak was taken after)."""
    if bench.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(bench: Bench, base: int) -> float | None:
    if bench.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------
def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding them into the convs is actually tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model


def dsrnet_name(stem: str) -> str:
    return "dsrnet50_cifar" if stem == "cifar" else "dsrnet50"


def build_dsrnet(bench: Bench, stem: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = dsrnet.create_model(dsrnet_name(stem), num_classes=10, **bench.model_kwargs(), **kwargs)
    return randomise_bn(model).eval()


def build_resnet(stem: str) -> nn.Module:
    torch.manual_seed(0)
    return dsrnet.create_model("resnet50_cifar" if stem == "cifar" else "resnet50", num_classes=10).eval()


def to_bf16_cl(bench: Bench, model: nn.Module) -> nn.Module:
    return model.to(device=bench.device, dtype=torch.bfloat16, memory_format=torch.channels_last)


def precompile(bench: Bench, fn) -> dict:
    """One throw-away call of ``fn`` under :func:`dsrnet.kernels.precompile`: every Triton kernel it launches is
    compiled for all its autotune configs by worker processes instead of run, so the first real call only autotunes.
    Returns the pass's wall time, how many launches it compiled and its first errors (never raised)."""
    from dsrnet.kernels import precompile as precompile_pass

    t = time.monotonic()
    pass_ = precompile_pass(fn)
    if pass_ is None:  # nothing compiles here (the dry run's interpreter)
        return {}
    bench.sync()
    info = {"precompile_s": round(time.monotonic() - t, 1), "precompiled_launches": len(pass_.launches),
            "precompiled_configs": pass_.compiled, "precompile_specs": len(pass_.specs),
            # loaded: found in Triton's disk cache under this process's key; recompiled: compiled again here
            "precompile_loaded": pass_.loaded, "precompile_recompiled": pass_.recompiled}  # fmt: skip
    if pass_.errors:
        info["precompile_errors"] = pass_.errors[:3]
    bench.log(f"precompile: {info}")
    return info


def compile_model(bench: Bench, model: nn.Module) -> nn.Module:
    # dynamic=False: one static graph per batch size, as a deployed model would use.
    return torch.compile(model, backend=bench.args.compile_backend, dynamic=False)


#: Inductor's own route to fused 1x1 convs, for any CNN: weights frozen (BatchNorm folded into the convs; by
#: ``dsrnet.device.compile_frozen``, since ``options={"freezing": True}`` alone freezes nothing), 1x1 convs lowered
#: to matmuls whose bias/ReLU/residual epilogues it fuses, and its GEMM templates autotuned.
TUNED_INDUCTOR = {"conv_1x1_as_mm": True, "max_autotune": True, "triton.cudagraphs": False}


def compile_tuned(bench: Bench, model: nn.Module):
    """``torch.compile`` with frozen weights and :data:`TUNED_INDUCTOR` (inference only); the same for DSRNet and
    ResNet-50, so the pair shows what inductor alone makes of each. The dry run's ``eager`` backend takes no
    options."""
    if bench.args.compile_backend != "inductor":
        return compile_model(bench, model)
    return compile_frozen(model, **TUNED_INDUCTOR)


# ---------------------------------------------------------------------------------------------------------------
# 1. environment and ceilings
# ---------------------------------------------------------------------------------------------------------------
def step_environment(bench: Bench) -> None:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if bench.device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(
            device=torch.cuda.get_device_name(0),
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
        )
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"
    env["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "0")
    bench.results["environment"] = env
    bench.log(f"environment: {env}")


def step_ceilings(bench: Bench) -> None:
    dev = bench.device
    n_bytes = (2 * 2**30) if not bench.dry else 2**24
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_ms(bench, lambda: dst.copy_(src), warmup=3, repeats=10)
    bw = 2 * n_bytes / (t["median_ms"] / 1e3)  # read + write
    n = 8192 if not bench.dry else 256
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    tm = time_ms(bench, lambda: torch.mm(a, b), warmup=3, repeats=10)
    flops = 2 * n**3 / (tm["median_ms"] / 1e3)
    bench.results["ceilings"] = {
        "copy_bandwidth_GBps": round(bw / 1e9, 1),
        "copy_bytes": 2 * n_bytes,
        "bf16_matmul_TFLOPs": round(flops / 1e12, 1),
        "matmul_n": n,
    }
    bench.log(f"ceilings: {bench.results['ceilings']}")


# ---------------------------------------------------------------------------------------------------------------
# 2. correctness
# ---------------------------------------------------------------------------------------------------------------
def _compare(name: str, dtype: torch.dtype, ref_logits, ref_feats, logits, feats) -> dict:
    ref_logits, ref_feats = ref_logits.float(), ref_feats.float()
    logits, feats = logits.float(), feats.float()
    return {
        "case": name,
        "dtype": str(dtype).removeprefix("torch."),
        "max_abs_logit_diff": (logits - ref_logits).abs().max().item(),
        "max_abs_logit": ref_logits.abs().max().item(),
        "max_rel_feature_diff": ((feats - ref_feats).abs().max() / ref_feats.abs().max()).item(),
        "top1_agreement": (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item(),
    }


#: The block probe's child process: ``fuse(mode="block")`` (the one-kernel ``dsr_block``, new and never run on a GPU
#: when this was written) at the headline shape, bf16 with every autotune config run, and fp32 at a small batch.
BLOCK_PROBE = r"""
import json, os, sys, torch, dsrnet
from dsrnet.kernels import precompile
dry, kwargs = sys.argv[1] == "1", json.loads(sys.argv[2])
dev = torch.device("cpu" if dry else "cuda")
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, **kwargs).eval().to(dev)
out = []
with torch.inference_mode():
    for dtype, batch in ((torch.bfloat16, 2 if dry else 1024), (torch.float32, 2 if dry else 16)):
        os.environ["DSRNET_TRITON_AUTOTUNE"] = "1" if dtype == torch.bfloat16 else "0"
        x = torch.randn(batch, 3, 16 if dry else 32, 16 if dry else 32, device=dev)
        ref = model(x)
        fused = dsrnet.fuse(model, mode="block").to(dtype)
        xd = x.to(dtype).contiguous(memory_format=torch.channels_last)
        precompile(lambda: fused(xd))
        y = fused(xd).float()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out.append({"dtype": str(dtype).removeprefix("torch."), "batch": batch,
                    "max_abs_logit_diff": float((y - ref).abs().max()), "max_abs_logit": float(ref.abs().max())})
print(json.dumps(out))
"""


def step_block_probe(bench: Bench, timeout_s: float = 150.0) -> None:
    """``fuse(mode="block")`` first runs in a process of its own: a fault in a new kernel (an illegal address)
    poisons this process's CUDA context for good, which would cost every later step; there it costs the block rows
    only (they are then skipped, :meth:`Bench.skips_block`). Its compiled kernels stay in Triton's on-disk cache,
    so the forms below do not compile them again."""
    cmd = [sys.executable, "-c", BLOCK_PROBE, "1" if bench.dry else "0", json.dumps(bench.model_kwargs())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    if bench.dry:  # the kernels through Triton's interpreter, as in this process
        env["TRITON_INTERPRET"] = "1"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(timeout_s, max(1.0, bench.remaining())),
                              env=env)  # fmt: skip
        failure = None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    except subprocess.TimeoutExpired:
        proc, failure = None, f"no answer within {timeout_s:.0f} s"
    if failure is not None:
        bench.block_unsafe = True
        bench.results["errors"].append({"step": "block kernel probe", "error": failure})
        bench.log(f"block probe FAILED ({failure.splitlines()[0]}): the block forms are skipped")
        return
    for found in json.loads(proc.stdout.strip().splitlines()[-1]):
        row = {"case": "block kernel probe (own process), block vs eager fp32", **found}
        bench.results["correctness"].append(row)
        bench.log(f"block probe: {row}")


def step_correctness(bench: Bench) -> None:
    from dsrnet.models.fused import use_triton_dwconv

    os.environ["DSRNET_TRITON_AUTOTUNE"] = "0"  # one config per kernel: correctness does not need tuning
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        batch = 2 if bench.dry else 16
        # fuse()'s default mode everywhere (what the timings use), the one-kernel mode at the headline shape
        default = DEFAULT_FUSE_MODE
        cases = [
            (f"cifar stem, stride_on=dw, {default}", "cifar", {}, default),
            ("cifar stem, stride_on=dw, fused", "cifar", {}, "fused"),
            ("cifar stem, stride_on=dw, block", "cifar", {}, "block"),
            (f"cifar stem, stride_on=1x1, {default}", "cifar", {"stride_on": "1x1"}, default),
            ("cifar stem, stride_on=1x1, block", "cifar", {"stride_on": "1x1"}, "block"),
            (f"paper stem, stride_on=dw, {default}", "paper", {}, default),
        ]
        cases = [c for c in cases if not bench.skips_block(f"correctness: {c[0]}")]
        inputs = {}
        for _, stem, _, _ in cases:
            size = bench.size(32 if stem == "cifar" else 96)
            g = torch.Generator().manual_seed(1)
            inputs[stem] = torch.randn(batch, 3, size, size, generator=g).to(bench.device)
        size = bench.size(32)
        g = torch.Generator().manual_seed(2)
        x_train = torch.randn(batch, 3, size, size, generator=g).to(bench.device)
        y_train = torch.randint(0, 10, (batch,), generator=g).to(bench.device)

        def dtypes_of(stem: str, kwargs: dict) -> tuple:
            return (torch.float32, torch.bfloat16) if not kwargs and stem == "cifar" else (torch.float32,)

        def every_triton_form() -> None:  # the kernels of everything below, compiled at once (outputs garbage)
            with torch.inference_mode():
                for _, stem, kwargs, mode in cases:
                    model = build_dsrnet(bench, stem, **kwargs).to(bench.device)
                    for dtype in dtypes_of(stem, kwargs):
                        dsrnet.fuse(model, mode=mode).to(dtype)(inputs[stem].to(dtype))
            for bn_relu in (False, True):
                model = use_triton_dwconv(build_dsrnet(bench, "cifar").to(bench.device).train(), bn_relu=bn_relu)
                nn.functional.cross_entropy(model(x_train), y_train).backward()

        precompile(bench, every_triton_form)
        for name, stem, kwargs, mode in cases:
            model = build_dsrnet(bench, stem, **kwargs).to(bench.device)
            x = inputs[stem]
            with torch.inference_mode():
                ref_feats = model.forward_features(x)
                ref_logits = model.forward_head(ref_feats)
                for dtype in dtypes_of(stem, kwargs):
                    fused = dsrnet.fuse(model, mode=mode).to(dtype)
                    feats = fused.forward_features(x.to(dtype))
                    row = _compare(name, dtype, ref_logits, ref_feats, fused.forward_head(feats), feats)
                    if dtype == torch.bfloat16:  # the eager model in bf16 too: what bf16 itself costs
                        eager16 = build_dsrnet(bench, stem, **kwargs).to(bench.device, torch.bfloat16)
                        f16 = eager16.forward_features(x.to(dtype))
                        ref16 = _compare(name, dtype, ref_logits, ref_feats, eager16.forward_head(f16), f16)
                        row["eager_bf16_vs_fp32"] = {k: ref16[k] for k in ref16 if k not in ("case", "dtype")}
                    bench.results["correctness"].append(row)
                    bench.log(f"correctness: {row}")
        # Training-step gradients, Triton depthwise conv (alone, and with the BatchNorm + ReLU before it in its
        # kernel), against the same step in fp64 (eager; train mode, batch statistics). Not against eager fp32: at
        # initialisation this network's fp32 gradients are themselves several percent off fp64 in their largest
        # entries (batch-statistics BatchNorm over 4x4 maps amplifies rounding; 2026-11-27's H200 run saw 0.14
        # between two correct fp32 forms), so the check asks that the Triton form's error be of eager fp32's size
        # (at most 4x it: two correct fp32 forms round differently; a wrong kernel is off by orders of magnitude).
        def gradients(model: nn.Module, dtype: torch.dtype) -> dict:
            model = model.to(bench.device, dtype).train()
            nn.functional.cross_entropy(model(x_train.to(dtype)), y_train).backward()
            return {n: p.grad.double() for n, p in model.named_parameters()}

        exact = gradients(build_dsrnet(bench, "cifar"), torch.float64)
        eager = grad_errors(gradients(build_dsrnet(bench, "cifar"), torch.float32), exact)
        for bn_relu in (False, True):
            model = use_triton_dwconv(build_dsrnet(bench, "cifar").to(bench.device).train(), bn_relu=bn_relu)
            got = grad_errors(gradients(model, torch.float32), exact)
            form = "use_triton_dwconv(bn_relu=True)" if bn_relu else "use_triton_dwconv"
            row = {"case": f"training step gradients, {form} fp32 vs eager fp64", "dtype": "float32", **got,
                   **{f"eager_fp32_{k}": v for k, v in eager.items()},
                   "within_eager_fp32_error": got["grad_norm_rel_err"] <= 4 * eager["grad_norm_rel_err"] + 1e-6}
            bench.results["correctness"].append(row)  # fmt: skip
            bench.log(f"correctness: {row}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        os.environ.pop("DSRNET_TRITON_AUTOTUNE", None)


#: (stride, dilation) of every depthwise conv geometry the kernel-config check runs: DSRNet-50's (rates 1-3 at
#: stride 1, rate 2 at stride 2) and one where sliding rows do not apply (rate 1 at stride 2: pixel tiles).
DW_GEOMETRIES = ((1, 1), (1, 2), (1, 3), (2, 2), (2, 1))


def step_depthwise_configs(bench: Bench) -> None:
    """Every autotune config of the depthwise kernels run by itself against PyTorch's conv, one row per kernel and
    config: ``dw_fwd`` (forward with bias + ReLU in fp32, and in bf16 with a fused model's packed weight; with the
    BatchNorm + ReLU prologue; a stride-1 conv's input gradient), ``dw_bwd_weight`` (the weight gradient, with and
    without the prologue), ``dw_bwd_input`` (a strided conv's input gradient). fp32 with TF32 off: max relative
    error <= 1e-4; bf16: 2e-2 (against fp32 on the same bf16 inputs); a NaN fails. The correctness step runs each
    kernel's first config only and the timed steps whichever the autotuner picks (by time alone), so a config
    wrong on the GPU alone (compiled code the interpreter does not run) would otherwise go unseen; a config that
    fails here is still offered to the autotuner in the steps after: its timings are not to be trusted."""
    tk = getattr(ops, "_tk", None)
    if tk is None:
        return
    nn_f = nn.functional
    g = torch.Generator().manual_seed(3)
    # channels, pixel counts and columns no block size divides, so that every partial-tile mask is in play
    n, c, size = (2, 20, 7) if bench.dry else (3, 100, 13)
    dev = bench.device
    x = torch.randn(n, c, size, size, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
    w, b, centre, scale, shift = (torch.randn(*shape, generator=g).to(dev) for shape in ((c, 1, 3, 3), (c,), (c,),
                                                                                          (c,), (c,)))  # fmt: skip
    x16, b16 = x.to(torch.bfloat16), b.to(torch.bfloat16)
    w16 = w.to(torch.bfloat16).reshape(c, 9).t().contiguous().t().view(c, 1, 3, 3)  # fuse()'s packed [9, C]
    a = nn_f.relu((x - centre.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    grads = {geo: torch.randn(n, c, ops._out_size(size, geo[0]), ops._out_size(size, geo[0]), generator=g).to(dev)
             for geo in DW_GEOMETRIES}  # fmt: skip
    tolerance = {"forward_bf16": 2e-2}  # 1e-4 for the rest (fp32)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        want = {}
        for (stride, dil), gy in grads.items():
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            gx, gw = torch.autograd.grad(nn_f.conv2d(xr, wr, None, stride, dil, dil, c), (xr, wr), gy)
            (gwa,) = torch.autograd.grad(nn_f.conv2d(a, wr, None, stride, dil, dil, c), wr, gy)
            want[stride, dil] = {
                "forward": nn_f.relu(nn_f.conv2d(x, w, b, stride, dil, dil, c)),
                "forward_bf16": nn_f.relu(nn_f.conv2d(x16.float(), w16.float(), b16.float(), stride, dil, dil, c)),
                "forward_bn_relu": nn_f.conv2d(a, w, None, stride, dil, dil, c),
                "grad_input": gx, "grad_weight": gw, "grad_weight_bn_relu": gwa,
            }  # fmt: skip
        packed = ops._pack_affine(x, centre, scale, shift)

        def outputs(kernel: str, config=None) -> dict:
            got = {}
            for (stride, dil), gy in grads.items():
                if config is not None and config.kwargs.get("ROWS") and not tk.slides(1, stride, dil):
                    continue  # there this config runs as the pixel tile of the same size, checked on its own
                if kernel == "dw_fwd":
                    got[stride, dil, "forward"] = ops.dwconv2d(x, w, b, stride, dil, True)
                    got[stride, dil, "forward_bf16"] = ops.dwconv2d(x16, w16, b16, stride, dil, True)
                    got[stride, dil, "forward_bn_relu"] = ops.dwconv2d_affine_relu(x, centre, scale, shift, w,
                                                                                   stride, dil)  # fmt: skip
                    if stride == 1:  # the stride-1 input gradient runs this kernel over the reversed taps
                        got[stride, dil, "grad_input"] = ops.dwconv2d_grad_input(gy, w, size, size, stride, dil)
                elif kernel == "dw_bwd_input":
                    if stride > 1:
                        got[stride, dil, "grad_input"] = ops.dwconv2d_grad_input(gy, w, size, size, stride, dil)
                else:
                    got[stride, dil, "grad_weight"] = ops.dwconv2d_grad_weight(gy, x, stride, dil)
                    got[stride, dil, "grad_weight_bn_relu"] = ops.dwconv2d_grad_weight(gy, x, stride, dil, packed)
            return got

        def rel_error(key, got) -> float:
            ref = want[key[:2]][key[2]].float()
            return ((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()

        autotune = os.environ.get("DSRNET_TRITON_AUTOTUNE")
        for kernel in ("dw_fwd", "dw_bwd_weight", "dw_bwd_input"):
            lazy = getattr(tk, kernel)
            configs = lazy.configs
            if bench.dry:  # the interpreter's time: the first pixel tile and the first sliding-row config
                configs = [configs[0], *[cf for cf in configs if cf.kwargs.get("ROWS")][:1]]
            precompile(bench, lambda kernel=kernel: outputs(kernel))  # every config at once, in worker processes
            try:
                for config in configs:  # (the dry run's interpreter runs it as its one config)
                    with lazy.offering([config], config):
                        os.environ["DSRNET_TRITON_AUTOTUNE"] = "0"  # this config alone, untimed
                        got = outputs(kernel, config)
                    errors = {key: rel_error(key, t) for key, t in got.items()}
                    over = {k: math.inf if math.isnan(e) else e / tolerance.get(k[2], 1e-4)  # in tolerances; NaN worst
                            for k, e in errors.items()}  # fmt: skip
                    worst = max(over, key=over.get)
                    dtypes = sorted({"bfloat16" if k[2].endswith("_bf16") else "float32" for k in errors}, reverse=True)
                    row = {"case": f"{kernel} config {_config_label(config)}", "dtype": ", ".join(dtypes),
                           "max_rel_err": errors[worst], "worst": "s{} d{} {}".format(*worst), "ok": over[worst] <= 1}
                    bench.results["correctness"].append(row)
                    bench.log(f"correctness: {row}")
            finally:
                if autotune is None:
                    os.environ.pop("DSRNET_TRITON_AUTOTUNE", None)
                else:
                    os.environ["DSRNET_TRITON_AUTOTUNE"] = autotune
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _config_label(config) -> str:
    """An autotune config as one short string: its meta-parameters, warps and stages."""
    meta = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{meta} w{config.num_warps} s{config.num_stages}"


def grad_errors(got: dict, exact: dict) -> dict:
    """How far ``got``'s gradients are from ``exact``'s: over all parameters together (norm of the difference over
    the norm of the exact ones) and the worst parameter by max |diff| / max |exact|."""
    diff2 = sum(float((got[n] - g).pow(2).sum()) for n, g in exact.items())
    norm2 = sum(float(g.pow(2).sum()) for g in exact.values())
    worst = max(exact, key=lambda n: float((got[n] - exact[n]).abs().max() / exact[n].abs().max().clamp_min(1e-30)))
    rel = float((got[worst] - exact[worst]).abs().max() / exact[worst].abs().max().clamp_min(1e-30))
    return {"grad_norm_rel_err": (diff2 / max(norm2, 1e-300)) ** 0.5, "max_rel_grad_diff": rel, "worst_param": worst}


def decode_test_split(webp_dir: Path, data_dir: Path) -> Path:
    """CIFAR-10's test split alone, decoded from the project's lossless WebP copy into ``data_dir/cifar10/test.npz``
    and checked against its SHA256SUMS. ``webp_dir`` holds ``test_*.webp``, ``labels.json``, ``SHA256SUMS`` and the
    copy's own ``decode.py``, whose ``split`` reads the mosaics (its ``main`` wants the training set too). The test set
    is all this script needs, and at ~17 MB it travels in the same call as the repository: no staging calls."""
    import hashlib
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("cifar10_decode", webp_dir / "decode.py")
    decoder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decoder)
    images = decoder.split("test")
    labels = np.asarray(json.loads((webp_dir / "labels.json").read_text())["test"], dtype=np.int64)
    sums = dict(line.split()[::-1] for line in (webp_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    for key, array in (("images", images), ("labels", labels)):
        if hashlib.sha256(array.tobytes()).hexdigest() != sums.get(f"test/{key}"):
            raise ValueError(f"{webp_dir}: test/{key} does not match SHA256SUMS (copy damaged or incomplete)")
    out = data_dir / "cifar10" / "test.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".tmp.npz"), images=images, labels=labels)
    os.replace(out.with_suffix(".tmp.npz"), out)
    return out


def step_trained_agreement(bench: Bench) -> None:
    """Issue 10's accuracy target: the fused model with the shipped CIFAR-10 weights against the eager model on the
    CIFAR-10 test set (all 10,000 images; in a dry run 8 images through the PyTorch fallback of the kernels:
    the interpreter runs the full-size model far too slowly, and the other steps check the kernels): top-1 of each, top-1 agreement, max |logit diff|."""
    from dsrnet.data import load_split

    test_npz = Path(bench.args.data_dir) / "cifar10" / "test.npz"
    if not test_npz.is_file() and bench.args.cifar10_test is not None:
        bench.log(f"trained agreement: decoding the test split in {bench.args.cifar10_test}")
        decode_test_split(Path(bench.args.cifar10_test), Path(bench.args.data_dir))
    if not test_npz.is_file():
        bench.results["skipped"].append({"step": "trained agreement", "reason": f"no {test_npz} (stage CIFAR-10)"})
        bench.log(f"trained agreement: skipped, no {test_npz}")
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    os.environ["DSRNET_TRITON_AUTOTUNE"] = "0"  # agreement, not speed: skip tuning runs at these new shapes
    if bench.dry:
        os.environ["DSRNET_DISABLE_TRITON"] = "1"
    try:
        test = load_split("cifar10", "test", bench.args.data_dir)
        n = 8 if bench.dry else len(test.labels)
        model = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).to(bench.device).eval()
        mean = torch.tensor(model.pretrained_cfg["mean"], device=bench.device).view(1, 3, 1, 1)
        std = torch.tensor(model.pretrained_cfg["std"], device=bench.device).view(1, 3, 1, 1)
        images = torch.from_numpy(test.images[:n]).to(bench.device).permute(0, 3, 1, 2).float().div(255)
        images = (images - mean) / std
        labels = torch.from_numpy(test.labels[:n]).to(bench.device)
        forms = {
            # the unfused model in bf16: what bf16 alone changes, so a fused bf16 form's own error can be told apart
            "eager bf16 channels_last": to_bf16_cl(bench, copy.deepcopy(model)),
            "fused fp32": dsrnet.fuse(model),
            "fused bf16 channels_last": dsrnet.fuse(to_bf16_cl(bench, copy.deepcopy(model))),  # .to() is in place
            "fused block fp32": dsrnet.fuse(model, mode="block"),
            "fused block bf16 channels_last": dsrnet.fuse(to_bf16_cl(bench, copy.deepcopy(model)), mode="block"),
        }
        forms = {k: v for k, v in forms.items() if not bench.skips_block(f"trained agreement: {k}")}
        with torch.inference_mode():
            ref = torch.cat([model(x) for x in images.split(1000)]).float()
            ref_bf16 = None
            for name, form in forms.items():
                dtype = next(form.parameters()).dtype
                out = torch.cat(
                    [form(x.to(dtype).contiguous(memory_format=torch.channels_last)) for x in images.split(1000)]
                ).float()
                row = {
                    "case": f"shipped dsrnet50_cifar.c10 on CIFAR-10 test, {name} vs eager fp32",
                    "dtype": str(dtype).removeprefix("torch."),
                    "images": n,
                    "top1_eager": 100.0 * (ref.argmax(1) == labels).float().mean().item(),
                    "top1_form": 100.0 * (out.argmax(1) == labels).float().mean().item(),
                    "top1_agreement": (out.argmax(1) == ref.argmax(1)).float().mean().item(),
                    "max_abs_logit_diff": (out - ref).abs().max().item(),
                    "max_abs_logit": ref.abs().max().item(),
                }
                if name.startswith("eager bf16"):
                    ref_bf16 = out
                elif dtype == torch.bfloat16 and ref_bf16 is not None:  # fusion's own error, bf16 against bf16
                    row["top1_agreement_vs_eager_bf16"] = (out.argmax(1) == ref_bf16.argmax(1)).float().mean().item()
                    row["max_abs_logit_diff_vs_eager_bf16"] = (out - ref_bf16).abs().max().item()
                bench.results["correctness"].append(row)
                bench.log(f"trained agreement: {row}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        os.environ.pop("DSRNET_DISABLE_TRITON", None)
        os.environ.pop("DSRNET_TRITON_AUTOTUNE", None)


# ---------------------------------------------------------------------------------------------------------------
# 3. inference timing
# ---------------------------------------------------------------------------------------------------------------
def make_form(bench: Bench, form: str, stem: str) -> nn.Module:
    if form == "resnet50_compiled_tuned":
        return compile_tuned(bench, to_bf16_cl(bench, build_resnet(stem)))
    if form.startswith("resnet50"):
        return compile_model(bench, to_bf16_cl(bench, build_resnet(stem)))
    model = to_bf16_cl(bench, build_dsrnet(bench, stem))
    if form.endswith("_shifts"):  # depthwise convs as shifted multiply-adds, fused by inductor
        use_shifted_dwconv(model)
    if form.startswith("dsrnet_compiled_tuned"):
        return compile_tuned(bench, model)
    if form.startswith("dsrnet_compiled"):
        return compile_model(bench, model)
    if form.startswith("dsrnet_fused"):
        return dsrnet.fuse(model, mode=fuse_mode(form))
    return model


#: timed fused forms -> ``dsrnet.fuse`` mode; ``dsrnet_fused`` is whatever ``fuse`` does by default;
#: ``dsrnet_fused_sweep`` the default mode with the sweep's candidate configs beside the library's, and
#: ``dsrnet_fused_chain_nodw`` chain with every depthwise conv as its own kernel, ``dsrnet_fused_tma`` the default
#: mode with its 1x1 GEMMs through TMA tensor descriptors where they can, ``dsrnet_fused_tiles`` the default mode
#: with the depthwise kernels as pixel tiles only (no sliding-row configs: what those gain), ``*_pdl`` with
#: ``ops.PDL`` on (programmatic dependent launch) (:func:`form_settings`).
FUSED_FORMS = {"dsrnet_fused": None, "dsrnet_fused_onekernel": "fused", "dsrnet_fused_split": "split",
               "dsrnet_fused_auto": "auto", "dsrnet_fused_block": "block", "dsrnet_fused_chain": "chain",
               "dsrnet_fused_chain_nodw": "chain", "dsrnet_fused_sweep": DEFAULT_FUSE_MODE,
               "dsrnet_fused_tma": DEFAULT_FUSE_MODE, "dsrnet_fused_tiles": DEFAULT_FUSE_MODE,
               "dsrnet_fused_pdl": DEFAULT_FUSE_MODE, "dsrnet_fused_chain_pdl": "chain"}  # fmt: skip


@contextlib.contextmanager
def tma_gemms():
    """``ops.GEMM_TMA`` on inside (the 1x1 GEMMs through TMA tensor descriptors where they can), restored after."""
    before, ops.GEMM_TMA = ops.GEMM_TMA, True
    try:
        yield
    finally:
        ops.GEMM_TMA = before


@contextlib.contextmanager
def pixel_tiles_only():
    """The depthwise kernels' autotuners without their sliding-row configs inside (the pixel tiles alone, as the
    forward ran before those existed; a stride-1 input gradient still runs on the forward kernel, not on
    ``dw_bwd_input`` as it did then: an inference form's comparison), restored after; each rebuilt on its next
    launch."""
    tk = getattr(ops, "_tk", None)
    with contextlib.ExitStack() as undo:
        for lazy in () if tk is None else (tk.dw_fwd, tk.dw_bwd_weight):
            undo.enter_context(lazy.offering([c for c in lazy.configs if not c.kwargs.get("ROWS")]))
        yield


@contextlib.contextmanager
def form_settings(form: str):
    """What a form changes in the library while it is built, compiled, tuned and timed, undone afterwards.
    ``*_sweep``: the autotuners of the 1x1 GEMM and the depthwise kernel also get ``SWEEP_CONFIGS`` (bf16; the
    persistent GEMM configs among them); yields a callable giving the configs the autotuners picked meanwhile (the
    whole model's answer to kernel_shapes.py --sweep's per-shape one), as ``*_tma`` does for its kernel, ``None``
    for every other form.
    ``*_nodw``: ``ops.CHAIN_DW_MAX_WIDTH = 0`` (chain's depthwise convs as their own kernels: what computing them in
    the chain kernel gains). ``*_tma``: ``ops.GEMM_TMA = True`` (the stride-1 1x1s without a downsample GEMM by
    ``pw_gemm_tma``: operand, residual and output tiles moved by Hopper's TMA). ``*_tiles``: the depthwise kernels
    as pixel tiles only (:func:`pixel_tiles_only`). ``*_pdl``: ``ops.PDL = True`` (each kernel launched while
    the one before it finishes; a CUDA graph captures the launches so)."""
    base = form.removesuffix("+cudagraph")
    tk = getattr(ops, "_tk", None)
    with contextlib.ExitStack() as undo:
        if base.endswith("_pdl"):
            undo.callback(setattr, ops, "PDL", ops.PDL)
            ops.PDL = True
        if base.endswith("_tiles"):
            undo.enter_context(pixel_tiles_only())
        if base.endswith("_nodw"):
            undo.callback(setattr, ops, "CHAIN_DW_MAX_WIDTH", ops.CHAIN_DW_MAX_WIDTH)
            ops.CHAIN_DW_MAX_WIDTH = 0
        if base.endswith("_tma"):
            undo.enter_context(tma_gemms())
            if tk is not None:  # which TMA configs won, per shape (none at all: no 1x1 could use TMA)
                yield lambda: {"pw_gemm_tma": tk.autotune_picks()["pw_gemm_tma"]}
                return
        if base == "dsrnet_fused" and tk is not None:  # which depthwise configs the default form picked, per shape
            yield lambda: {"dw_fwd": tk.autotune_picks()["dw_fwd"]}
            return
        if not base.endswith("_sweep") or tk is None:
            yield None
            return
        widened = tk.widen_configs(2)
        undo.callback(tk.restore_configs, widened)
        yield lambda: {name: picks for name, picks in tk.autotune_picks().items() if name in widened}


def fuse_mode(form: str, row: dict | None = None) -> str:
    """The ``dsrnet.fuse`` mode of a fused form (``+cudagraph`` rows included). A row records it (``fuse_mode``);
    rows written before it did (2026-11-27's H200 run) used ``dsrnet_fused`` for the one-kernel mode, then the
    default."""
    if row is not None and "fuse_mode" in row:
        return row["fuse_mode"]
    base = form.removesuffix("+cudagraph")
    if base == "dsrnet_fused":
        return "fused" if row is not None else DEFAULT_FUSE_MODE
    return FUSED_FORMS[base]


def against_fp32(bench: Bench, stem: str, x: torch.Tensor, logits: torch.Tensor, n: int = 256) -> dict:
    """Every timed DSRNet form checked where it is timed (the correctness step covers ``fuse``'s default mode and the
    one-kernel mode, not ``auto``): its bf16 logits on the first ``n`` images against the eager model in fp32 (TF32
    off). The eager bf16 form's row gives the scale bf16 alone explains."""
    ref_model = build_dsrnet(bench, stem).to(bench.device, memory_format=torch.channels_last)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = ref_model(x[:n].float())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    with torch.inference_mode():
        # the same model in bf16: the error bf16 alone explains on these inputs (random weights put nearly every
        # image in one class, so top-1 agreement cannot see a broken form; this ratio can)
        rounding = float((to_bf16_cl(bench, ref_model)(x[:n]).float() - ref).abs().max())
    got = logits[:n].float()
    diff = float((got - ref).abs().max())
    return {"max_logit_diff_vs_fp32": diff, "max_abs_logit_fp32": float(ref.abs().max()),
            "top1_agree_vs_fp32": float((got.argmax(1) == ref.argmax(1)).float().mean()),
            "diff_over_eager_bf16": round(diff / max(rounding, 1e-12), 2)}  # fmt: skip


class AutoPicks:
    """How many distinct block shapes of one ``fuse(mode="auto")`` model ran split / block: the measurements
    (``dsrnet.models.fused.auto_choices``, all of them kept in results.json as ``auto_choices``) of the block
    shapes and input buckets this model's blocks met while the context was open. Not every measurement at the same
    batch size: another input size's (or an earlier model's) shapes are not this form's."""

    def __init__(self, model: nn.Module):
        from dsrnet.models.fused import FusedDSRBlock

        self.keys: set[tuple] = set()
        self.blocks = [m for m in model.modules() if isinstance(m, FusedDSRBlock) and m.mode == "auto"]

    def __enter__(self) -> AutoPicks:
        self.hooks = [b.register_forward_pre_hook(self._seen) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()

    def _seen(self, block: nn.Module, args: tuple) -> None:
        geometry, bucket, dtype, device = block._auto_key(args[0])
        self.keys.add((geometry, bucket, str(dtype), str(device)))

    def counts(self) -> dict[str, int]:
        from dsrnet.models.fused import AUTO_CANDIDATES, auto_choices

        seen = [c for c in auto_choices() if (c["block_shape"], c["pixel_bucket"], c["dtype"], c["device"]) in self.keys]
        return {mode: sum(c["mode"] == mode for c in seen) for mode in AUTO_CANDIDATES}


def step_inference(bench: Bench, stem: str, image: int, batch: int, forms: tuple[str, ...], graphs: bool) -> None:
    size, b = bench.size(image), bench.batch(batch)
    for form in forms:
        if bench.remaining() < 5:
            raise BudgetExceeded
        if bench.skips_block(f"inference {stem}/{size} b{b}: {form}"):
            continue
        try:
            time_inference_form(bench, stem, size, b, batch, form, graphs)
        except Exception as err:  # one failing form (a new kernel's first GPU run) costs only its own rows
            if bench.alarm_fired:  # the budget's alarm, surfacing inside a library call as its own error
                raise
            bench.results["errors"].append({"step": f"inference {stem}/{size} b{b}: {form}", "error": repr(err),
                                            "traceback": traceback.format_exc()[-3000:]})  # fmt: skip
            bench.log(f"ERROR inference {form}: {err!r}")
            bench.save()
            if not cuda_context_usable(bench):  # a fault poisons the context: every later form would fail with it
                bench.log(f"CUDA context lost after {form}: the step ends here")
                raise


def cuda_context_usable(bench: Bench) -> bool:
    """Whether the device still runs work after a form failed (a kernel fault, e.g. an illegal address, leaves the
    process's CUDA context unusable); always on a CPU."""
    if bench.device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize()
        return True
    except Exception:
        return False


def time_inference_form(bench: Bench, stem: str, size: int, b: int, batch: int, form: str, graphs: bool) -> None:
    """One form of :func:`step_inference`: build, first call, timed calls (and as a CUDA graph), rows."""
    with form_settings(form) as sweep_picks:
        base = peak_memory_start(bench)
        model = make_form(bench, form, stem)
        x = torch.randn(b, 3, size, size, device=bench.device, dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)

        def run(model=model, x=x):
            return model(x)

        with torch.inference_mode():
            pre = precompile(bench, run) if "fused" in form else {}
            picks = AutoPicks(model)
            t0 = time.monotonic()
            profiled_first = form in ("dsrnet_fused", "dsrnet_fused_block") and bench.device.type == "cuda"
            with picks:  # first call: compilation (what precompile left) / autotuning
                if profiled_first:
                    # where a first call's tens of seconds go (compiling, loading kernels, timing configs); the
                    # profiler's own cost is in first_call_s
                    first: list[torch.Tensor] = []

                    def first_call(run=run, first=first):
                        first.append(run()[:256].clone())

                    python_profile(bench, f"{form} first call, {stem} stem, {size} px, batch {b}", first_call,
                                   calls=1, rows=45, sort="cumulative")  # fmt: skip
                    logits = first[0]
                else:
                    logits = run()[:256].clone()
            bench.sync()
            first_s = time.monotonic() - t0
            peak_memory_restart(bench)
            repeats = 30 if batch <= 128 else 15
            timing = time_ms(bench, run, warmup=5, repeats=repeats)
            mem = peak_memory_mib(bench, base)  # before the check below builds its fp32 reference model
            check = against_fp32(bench, stem, x, logits) if form.startswith("dsrnet") else {}
            del logits
            rows = [(form, timing, mem)]
            if graphs and bench.device.type == "cuda":
                try:
                    torch.cuda.reset_peak_memory_stats()  # the graph's own peak, over the same base as the form's
                    replay = cuda_graph(run)
                    graph_timing = time_ms(bench, replay, warmup=5, repeats=repeats)
                    rows.append((form + "+cudagraph", graph_timing, peak_memory_mib(bench, base)))
                except Exception as err:  # a form that cannot be captured is reported, not fatal
                    bench.results["errors"].append({"step": f"cudagraph {form}", "error": repr(err)})
        picked = sweep_picks() if sweep_picks else None
    for name, t, mem in rows:
        row = {
            "form": name, "stem": stem, "image": size, "batch": b, "dtype": "bfloat16", "channels_last": True,
            "ms_per_batch": round(t["median_ms"], 4), "p25_ms": round(t["p25_ms"], 4),
            "p75_ms": round(t["p75_ms"], 4), "repeats": t["repeats"],
            "images_per_s": round(b / (t["median_ms"] / 1e3), 1),
            "peak_mem_mib": mem, "first_call_s": round(first_s, 1), **check, **pre,
            "step": getattr(bench, "current_step", None),  # decision_rows compares rows of one step only
        }  # fmt: skip
        if profiled_first:  # its first_call_s includes cProfile's cost (profiles.txt has the profile)
            row["first_call_profiled"] = True
        if form.startswith("dsrnet_fused"):
            row["fuse_mode"] = fuse_mode(form)
        if row.get("fuse_mode") == "auto":
            row["auto_picks"] = picks.counts()
        if picked is not None:
            if form.removesuffix("+cudagraph").endswith("_sweep"):
                row["sweep_configs"] = True
            row["autotune_picks"] = picked
        bench.results["inference"].append(row)
        bench.log(f"inference: {row}")
    del model, run
    bench.save()


# ---------------------------------------------------------------------------------------------------------------
# 4. profiles
# ---------------------------------------------------------------------------------------------------------------
def profile_top10(bench: Bench, label: str, fn, calls: int = 3) -> float | None:
    """torch.profiler over ``calls`` calls of ``fn`` (already warmed up): top-10 kernels by device time. Returns the
    GPU's kernel time per call in ms (``None`` off a GPU): set beside the timed wall time, it says whether the host
    kept the GPU busy (the H200 run of 2026-11-27: DSRNet's training step took 46 ms with ~20 ms of kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = bench.device.type == "cuda"
    bench.sync()
    with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        bench.sync()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=sort, row_limit=10, max_name_column_width=70)
    bench.profiles.append(f"== {label}, {calls} calls ==\n{table}")
    if not cuda:
        return None
    from torch.autograd import DeviceType

    # kernels only: not CPU ops (whose device time is their kernels', counted once already) nor user annotations
    kernels = [e for e in averages if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False)]
    kinds = kernel_time_by_kind([(e.key, e.self_device_time_total, e.count) for e in kernels], calls)
    bench.results.setdefault("kernel_time_by_kind", {})[label] = kinds
    bench.profiles.append(f"== {label}: kernel time by kind, ms per call ==\n" + "\n".join(
        f"{k:<44} {v['ms']:9.3f} ms {v['share_pct']:5.1f} % {v['kernels']:5d} kernels" for k, v in kinds.items()))
    return sum(e.self_device_time_total for e in kernels) / calls / 1e3


#: (kind, pattern on the kernel's name), first match wins: dsrnet's own Triton kernels by name, inductor's kernels,
#: the optimiser, then the libraries' convolutions, GEMMs and cuDNN's other kernels, PyTorch's own. The top-10 table
#: covers ~40 % of a training step's kernel time (H200, 2026-11-27); these sums cover all of it.
KERNEL_KINDS = [
    ("dsrnet depthwise (Triton)", r"^_dw_(fwd|bwd)"),
    ("dsrnet 1x1 GEMM (Triton)", r"^_pw_(gemm|chain)"),
    ("dsrnet fused block (Triton)", r"^_(dw_pw|dsr_block)"),
    ("dsrnet stem (Triton)", r"^_direct_conv"),
    # inductor's before the libraries': its fused kernels' names can hold "convolution" (a BatchNorm after a conv)
    ("inductor: fused reductions (BatchNorm statistics, ...)", r"^triton_(red|per)_"),
    ("inductor: fused elementwise (BatchNorm apply, ReLU, ...)", r"^triton_poi_"),
    ("inductor: GEMM / conv templates", r"^triton_tem_"),
    ("optimiser (foreach / multi-tensor)", r"^triton_for_|foreach|multi_tensor|sgd|adam"),
    ("convolution: weight gradient (cuDNN)", r"wgrad"),
    ("convolution: input gradient (cuDNN)", r"dgrad"),
    ("convolution: forward (cuDNN)", r"fprop|conv|implicit_gemm"),
    ("GEMM (cuBLAS / CUTLASS)", r"gemm|cutlass|nvjet|sm90_xmma|sm80_xmma"),
    ("cuDNN layout / BatchNorm", r"cudnn"),
    ("PyTorch elementwise, reductions, copies", r"copy|memcpy|memset|fill|elementwise_kernel|cat_|reduce_kernel"),
]


def kernel_time_by_kind(kernels: list[tuple[str, float, int]], calls: int) -> dict[str, dict]:
    """``(name, self device time in us, launches)`` of a profile's kernels grouped by :data:`KERNEL_KINDS` (``other``
    for the rest), per call: ms, share of the total, launches; largest first."""
    import re

    sums: dict[str, list[float]] = {}
    for name, us, count in kernels:
        kind = next((k for k, pattern in KERNEL_KINDS if re.search(pattern, name, re.IGNORECASE)), "other")
        acc = sums.setdefault(kind, [0.0, 0])
        acc[0] += us
        acc[1] += count
    total = sum(v[0] for v in sums.values()) or 1.0
    ranked = sorted(sums.items(), key=lambda kv: -kv[1][0])
    return {k: {"ms": round(us / calls / 1e3, 4), "share_pct": round(100 * us / total, 1), "kernels": int(n / calls)}
            for k, (us, n) in ranked}  # fmt: skip


def step_profiles(bench: Bench, stem: str, image: int, batch: int) -> None:
    size, b = bench.size(image), bench.batch(batch)
    for form in ("dsrnet_fused", "dsrnet_fused_block", "dsrnet_eager"):
        if bench.skips_block(f"profile: {form}"):
            continue
        model = make_form(bench, form, stem)
        x = torch.randn(b, 3, size, size, device=bench.device, dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            profile_top10(bench, f"{form} forward, {stem} stem, {size} px, batch {b}, bf16", lambda m=model, x=x: m(x))
        del model


def python_profile(bench: Bench, label: str, fn, calls: int, rows: int = 25, sort: str = "tottime") -> None:
    """cProfile over ``calls`` calls of ``fn``: the host's Python functions by own time (``sort="cumulative"``:
    time including callees), into profiles.txt (where a host-bound step's time goes, which the kernel profile
    cannot show)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    done = 0
    try:  # a call that raises (or the budget alarm) still leaves the profiler off and what it saw written
        for _ in range(calls):
            fn()
            done += 1
        bench.sync()
    finally:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(rows)
        ended = "" if done == calls else f" (ended early: {done} of {calls} calls finished)"
        order = "own" if sort == "tottime" else sort
        bench.profiles.append(f"== {label}, {calls} calls, host Python by {order} time (cProfile){ended} ==\n"
                              f"{text.getvalue()}")  # fmt: skip


def host_us_per_call(bench: Bench, fn, calls: int) -> float:
    """Host time per call of ``fn`` in us: calls queued back to back with no synchronisation until the clock is
    read, so with tiny tensors (a few us of GPU work per kernel) it is the host's cost of issuing them."""
    for _ in range(max(3, calls // 10)):
        fn()
    bench.sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = time.perf_counter() - t0
    bench.sync()
    return 1e6 * host / calls


def step_host_cost(bench: Bench) -> None:
    """Where a kernel launch's host time goes. The H200 run of 2026-11-27 found ~130 us per launch (split at batch
    128 without a CUDA graph: 6.84 ms for ~1 ms of GPU work and 52 launches), which also caps batch 1024 and
    leaves DSRNet's training step waiting on the host: one tiny launch of each kind against PyTorch's own ops, the
    op's body without the custom-op dispatch, a fused model's whole forward, and a Python profile of the op."""
    from dsrnet.kernels import ops
    from dsrnet.models.fused import FusedDSRBlock

    dev, dtype = bench.device, torch.bfloat16
    calls = 5 if bench.dry else 300
    g = torch.Generator(device="cpu").manual_seed(0)

    def tensor(*shape, channels_last=False):
        t = torch.randn(*shape, generator=g).to(dev, dtype)
        return t.contiguous(memory_format=torch.channels_last) if channels_last else t

    x = tensor(1, 64, 4, 4, channels_last=True)
    w_kn, bias = tensor(64, 64), tensor(64)
    w_conv = w_kn.t().contiguous()[:, :, None, None]
    w_dw, b_dw = tensor(64, 1, 3, 3), tensor(64)
    body = ops._BODIES[ops.pointwise_conv]  # what a fused model's forward calls where nothing traces (ops.run)
    forms = {
        "aten add (PyTorch's dispatch, for reference)": lambda: torch.add(x, x),
        "cuDNN 1x1 conv2d": lambda: nn.functional.conv2d(x, w_conv, bias),
        "ops.pointwise_conv (custom op: dispatch, checks, Triton launch)": (
            lambda: ops.pointwise_conv(x, w_kn, bias, None, 1, True)),
        "pointwise_conv's body (no custom-op dispatch)": lambda: body(x, w_kn, bias, None, 1, True),
        "ops.dwconv2d (custom op)": lambda: ops.dwconv2d(x, w_dw, b_dw, 1, 1, True),
    }  # fmt: skip
    rows = []
    with torch.inference_mode():
        for name, fn in forms.items():
            fn()  # compiles and autotunes at this shape
            rows.append({"form": name, "host_us_per_call": round(host_us_per_call(bench, fn, calls), 1)})
        model = make_form(bench, "dsrnet_fused", "cifar")
        image = tensor(1, 3, bench.size(32), bench.size(32), channels_last=True)
        launches = 1 + 3 * sum(isinstance(m, FusedDSRBlock) for m in model.modules())
        model(image)
        per_forward = host_us_per_call(bench, lambda: model(image), max(2, calls // 10))
        rows.append({"form": f"fuse(dsrnet50_cifar) forward, batch 1 ({launches} Triton launches + head)",
                     "host_us_per_call": round(per_forward, 1),
                     "host_us_per_triton_launch": round(per_forward / launches, 1)})  # fmt: skip
        python_profile(bench, "host cost: ops.pointwise_conv, 1x64x4x4 bf16", calls=calls,
                       fn=forms["ops.pointwise_conv (custom op: dispatch, checks, Triton launch)"])
    bench.results["host_cost"] = rows
    for row in rows:
        bench.log(f"host cost: {row}")


def stem_forms(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, k: int, stride: int, pad: int, dil: int):
    from dsrnet.kernels import ops

    packed = ops.pack_direct(w)
    return {
        "direct_conv (Triton)": lambda: ops.direct_conv(x, packed, bias, k, stride, pad, dil, True),
        "cuDNN conv + bias, ReLU": lambda: torch.relu_(nn.functional.conv2d(x, w, bias, stride, pad, dil)),
    }


def step_stem(bench: Bench) -> None:
    """The fused model's stem kernel alone (``dsrnet::direct_conv``: folded conv + bias + ReLU, one pass) against
    what it replaced (cuDNN conv with bias, then ReLU), bf16 channels_last, both stems at their timed sizes: whether
    the kernel earns its place (it replaced ~8 % of the fused model's time, BENCHMARKS.md)."""
    for stem, image in (("cifar", 32), ("paper", 96)):
        size, b = bench.size(image), bench.batch(1024)
        conv = build_dsrnet(bench, stem).conv1
        k, stride, pad, dil = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        w = conv.weight.detach().to(bench.device, torch.bfloat16)
        bias = torch.randn(w.shape[0], device=bench.device, dtype=torch.bfloat16)
        x = torch.randn(b, 3, size, size, device=bench.device, dtype=torch.bfloat16)
        forms = stem_forms(x.contiguous(memory_format=torch.channels_last), w, bias, k, stride, pad, dil)
        with torch.inference_mode():
            ref = forms["cuDNN conv + bias, ReLU"]().float()
            for name, fn in forms.items():
                pre = precompile(bench, fn) if "Triton" in name else {}
                out = fn()
                bench.sync()
                t = time_ms(bench, fn, warmup=5, repeats=20)
                gb = (x.numel() + out.numel()) * 2 / 1e9  # read the image, write the map once (bf16)
                row = {"form": name, "stem": stem, "image": size, "batch": b, "ms": round(t["median_ms"], 4),
                       "floor_gb": round(gb, 4), "gb_per_s": round(gb / (t["median_ms"] / 1e3), 1),
                       "max_rel_diff": float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)),
                       **pre}  # fmt: skip
                bench.results.setdefault("stem", []).append(row)
                bench.log(f"stem: {row}")


# ---------------------------------------------------------------------------------------------------------------
# 5. training step
# ---------------------------------------------------------------------------------------------------------------
def step_training(bench: Bench, forms: tuple[str, ...], batch: int = 512) -> None:
    from dsrnet.models.fused import use_triton_dwconv

    size, b = bench.size(32), bench.batch(batch)
    for form in forms:
        if bench.remaining() < 5:
            raise BudgetExceeded
        base = peak_memory_start(bench)
        torch.manual_seed(0)
        if form.startswith("resnet50"):
            model = build_resnet("cifar")
        else:
            model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, **bench.model_kwargs())
        model = model.to(bench.device, memory_format=torch.channels_last).train()
        if "triton_dw" in form:
            use_triton_dwconv(model, bn_relu=form.endswith("_bn_relu"))
        if form.endswith("_shifts"):  # depthwise convs as shifted multiply-adds, fused by inductor fwd + bwd
            use_shifted_dwconv(model)
        if "_linear" in form:  # 1x1 convs as matmuls in the model: inductor sees the backward's GEMMs too
            use_matmul_pointwise(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if form.endswith("_1x1mm") and bench.args.compile_backend == "inductor":  # 1x1 convs as matmuls (training)
            fwd = torch.compile(model, options={"conv_1x1_as_mm": True}, dynamic=False)
        elif form.endswith("_autotune") and bench.args.compile_backend == "inductor":
            # dsrnet train --compile-mode max-autotune: with channels_last inductor lowers the forward's stride-1 1x1
            # convs to matmuls, times its Triton GEMM templates against cuBLAS and may fuse the pointwise work around
            # them (BatchNorm apply, ReLU) into a template's prologue / epilogue; the backward's convolution_backward
            # stays cuDNN (torch 2.11-2.14); forward and backward replayed as CUDA graphs.
            fwd = torch.compile(model, mode="max-autotune", dynamic=False)
        elif form.endswith("_cudagraphs") and bench.args.compile_backend == "inductor":
            # forward and backward replayed as CUDA graphs: no host launch cost per kernel (dsrnet train
            # --compile-mode reduce-overhead)
            fwd = torch.compile(model, mode="reduce-overhead", dynamic=False)
        else:
            fwd = compile_model(bench, model) if "compiled" in form else model
        x = torch.randn(b, 3, size, size, device=bench.device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), device=bench.device)
        autocast = torch.autocast(bench.device.type, dtype=torch.bfloat16)

        def train_step(fwd=fwd, opt=opt, x=x, y=y, autocast=autocast):
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = nn.functional.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()

        def forward_backward(model=model, x=x, y=y, autocast=autocast):  # the eager model: no optimiser step
            with autocast:
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)

        # The Triton dw kernels (forward + both backward passes) compiled in parallel before the first step. The
        # pass's outputs are garbage, so it never steps the optimiser; the BN statistics it touches are not timed.
        pre = precompile(bench, forward_backward) if "triton_dw" in form else {}
        t0 = time.monotonic()
        train_step()
        bench.sync()
        first_s = time.monotonic() - t0
        peak_memory_restart(bench)
        t = time_ms(bench, train_step, warmup=3, repeats=10)
        kernel_ms = None
        if not form.endswith(("_1x1mm", "_cudagraphs", "_autotune")):  # where a step's time goes (vs ResNet-50's)
            kernel_ms = profile_top10(bench, f"{form} training step, {size} px, batch {b}", train_step, calls=2)
            if "triton_dw" in form:  # 2026-11-27: the GPU busy 44 % of this step; where the host's time goes
                python_profile(bench, f"{form} training step, {size} px, batch {b}", train_step, calls=2, rows=40)
        row = {
            "form": form, "step": getattr(bench, "current_step", None),  # decision_rows: rows of one step only
            "image": size, "batch": b, "precision": "bf16 autocast, fp32 weights", "channels_last": True,
            "ms_per_step": round(t["median_ms"], 3), "p25_ms": round(t["p25_ms"], 3), "p75_ms": round(t["p75_ms"], 3),
            "images_per_s": round(b / (t["median_ms"] / 1e3), 1), "peak_mem_mib": peak_memory_mib(bench, base),
            "first_call_s": round(first_s, 1), **pre,
        }  # fmt: skip
        if kernel_ms is not None:  # the GPU's share of the step: well below 1, the host is what it waits for
            row["gpu_kernel_ms_per_step"] = round(kernel_ms, 3)
            row["gpu_busy_fraction"] = round(kernel_ms / t["median_ms"], 3)
        bench.results["training"].append(row)
        bench.log(f"training: {row}")
        del model, opt, fwd, train_step
        bench.save()


# ---------------------------------------------------------------------------------------------------------------
# 6. roofline
# ---------------------------------------------------------------------------------------------------------------
def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 0


def traffic_per_image(model: nn.Module, x: torch.Tensor) -> dict:
    """Modelled activation bytes for one forward pass (weights excluded, no cache effects).

    ``floor``: each residual block reads its input once and writes its output once, plus the stem.
    ``own``: every unfused module (conv, BN, ReLU, ...) reads its inputs and writes its output; a
    :class:`FusedDSRBlock` reads x, writes and re-reads the 1x1 output, reads the shortcut input and writes its
    output, and in ``split`` mode also writes and re-reads the depthwise output (``chain``: as split, but a block
    whose first 1x1 the previous block's last kernel computed does not read x for it, and up to
    ``CHAIN_DW_MAX_WIDTH`` channels the depthwise output is not written); in ``block`` mode it reads x once and
    writes its output once (its intermediates and its re-reads of x are modelled as L2 hits). On a GPU, block and
    chain run a block with fewer output pixels than ``BLOCK_MIN_PIXELS_PER_SM`` per SM as split, which this CPU
    count at batch 1 does not see: at batch 128 that is layers 3-4, a small share of the bytes.
    """
    from torchvision.models.resnet import Bottleneck

    from dsrnet.models.dsrnet import DSRBlock
    from dsrnet.models.fused import FusedDSRBlock, FusedDSRNet, FusedStage

    block_types = (DSRBlock, FusedDSRBlock, Bottleneck)
    counts = {"floor": 0, "own": 0}
    hooks, inside_fused, block_in = [], set(), {}
    for m in model.modules():
        if isinstance(m, FusedDSRBlock):
            inside_fused.update(id(c) for c in m.modules() if c is not m)

    def block_hook(mod, inp, out):
        counts.setdefault("stem_out", _nbytes(inp))  # the first block's input: written once by the stem
        block_in[id(mod)] = _nbytes(inp)
        counts["floor"] += _nbytes(inp) + _nbytes(out)
        if isinstance(mod, FusedDSRBlock) and mod.separable:
            x_bytes = _nbytes(inp)
            y1 = x_bytes // max(1, mod.w1.shape[0]) * mod.w1.shape[1] // (mod.stride_1x1**2)
            if mod.mode == "auto":
                raise ValueError("fuse(mode='auto') runs what it measures faster on the GPU: its traffic is not modelled")
            if mod.mode == "block":  # one kernel: x read once, the output written once (intermediates stay in L2)
                counts["own"] += x_bytes + _nbytes(out)
                return
            counts["own"] += x_bytes + 2 * y1 + x_bytes // (mod.ds_stride**2) + _nbytes(out)
            if mod.mode == "split" or (mod.mode == "chain" and mod.width > ops.CHAIN_DW_MAX_WIDTH):
                counts["own"] += 2 * (y1 // (mod.stride_dw**2))

    def leaf_hook(mod, inp, out):
        counts["own"] += _nbytes(inp) + _nbytes(out)

    for m in model.modules():
        if isinstance(m, block_types):
            hooks.append(m.register_forward_hook(block_hook))
        elif not list(m.children()) and id(m) not in inside_fused:
            hooks.append(m.register_forward_hook(leaf_hook))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    # chain: a linked block's first 1x1 does not read its input (the hooks above unlinked the blocks: counted here)
    links = [pair for stage in model.modules() if isinstance(stage, FusedStage)
             for pair in zip(stage[:-1], stage[1:], strict=True)]  # fmt: skip
    if isinstance(model, FusedDSRNet):  # and from stage to stage
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        links += [(a[-1], b[0]) for a, b in zip(stages, stages[1:], strict=False) if isinstance(a, FusedStage)
                  and isinstance(b, FusedStage) and len(a) and len(b)]  # fmt: skip
    counts["own"] -= sum(block_in.get(id(b), 0) for a, b in links if a.chains_into(b))
    return {"floor": counts["floor"] + _nbytes(x) + counts.get("stem_out", 0), "own": counts["own"]}


def flops_per_image(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _grouped_conv_backward_flop(grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups,
                                output_mask, out_shape, **kwargs) -> int:  # fmt: skip
    """``aten.convolution_backward``'s FLOPs with the weight gradient of a grouped conv divided by its groups:
    torch's own formula (``torch.utils.flop_counter.conv_backward_flop``, torch 2.11-2.14) counts that gradient as
    if every input channel met every output channel, 64-512x a depthwise conv's true count (DSRNet-50 at 32 px:
    3.99 GFLOP of conv backward per image instead of 2.79)."""
    from torch.utils.flop_counter import conv_backward_flop

    formula = getattr(conv_backward_flop, "__wrapped__", None)  # the formula on shapes, under its shape wrapper

    def count(mask: list[bool]) -> int:
        args = (grad_out, x, w, bias, stride, padding, dilation, transposed, output_padding, groups, mask)
        if formula is not None:
            return formula(*args, out_shape=out_shape, **kwargs)
        return conv_backward_flop(*args, out_val=out_shape, **kwargs)  # the wrapper passes shapes through

    return count([output_mask[0], False, False]) + count([False, output_mask[1], False]) // groups


def train_flops_per_image(model: nn.Module, size: int) -> int:
    """FLOPs of one training step's forward and backward (cross-entropy) per image, counted at batch 2 (BatchNorm
    in training mode needs more than one value per channel); grouped convs' weight gradients counted as such."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    x = torch.randn(2, 3, size, size)
    counter = FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _grouped_conv_backward_flop})  # fmt: skip
    with counter:
        nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return int(counter.get_total_flops()) // 2


def step_per_image(bench: Bench) -> None:
    """FLOPs and modelled bytes per image for each model and input size that was timed (and the training step's
    FLOPs at the training rows' size). Counted on the CPU (the counts depend on shapes and dtypes only): this step
    runs after the budget's end with no alarm, and on the GPU a batch of 1 would autotune the fused kernels for a
    new shape."""
    seen = {(r["stem"], r["image"]) for r in bench.results["inference"]} or {("cifar", bench.size(32))}
    trained = {r["image"] for r in bench.results["training"]}
    seen |= {("cifar", size) for size in trained}
    cpu = torch.device("cpu")
    for stem, size in sorted(seen):
        x = torch.randn(1, 3, size, size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        eager = build_dsrnet(bench, stem).to(cpu, torch.bfloat16, memory_format=torch.channels_last)
        resnet = build_resnet(stem).to(cpu, torch.bfloat16, memory_format=torch.channels_last)
        entry = {
            "dsrnet_flops": flops_per_image(eager, x),
            "resnet50_flops": flops_per_image(resnet, x),
            "dsrnet_eager_bytes": traffic_per_image(eager, x),
            # auto's traffic depends on what it picks on the GPU: not modelled
            "dsrnet_fused_bytes_by_mode": {m: traffic_per_image(dsrnet.fuse(eager, mode=m), x)
                                           for m in ("split", "fused", "block", "chain")},
            "dsrnet_fused_chain_nodw_bytes": _nodw_traffic(eager, x),
            "resnet50_bytes": traffic_per_image(resnet, x),
        }
        if stem == "cifar" and size in trained:
            entry["dsrnet_train_flops"] = train_flops_per_image(build_dsrnet(bench, stem), size)
            entry["resnet50_train_flops"] = train_flops_per_image(build_resnet(stem), size)
        bench.results["per_image"][f"{stem}/{size}"] = entry
        bench.log(f"per image {stem}/{size}: {entry}")


def _nodw_traffic(model: nn.Module, x: torch.Tensor) -> dict:
    """The ``dsrnet_fused_chain_nodw`` form's modelled traffic: chain with every depthwise conv its own kernel."""
    with form_settings("dsrnet_fused_chain_nodw"):
        return traffic_per_image(dsrnet.fuse(model, mode="chain"), x)


def roofline_rows(results: dict) -> list[dict]:
    ceil = results.get("ceilings") or {}
    bw, peak = ceil.get("copy_bandwidth_GBps"), ceil.get("bf16_matmul_TFLOPs")
    rows = []
    for r in results["inference"]:
        per = results["per_image"].get(f"{r['stem']}/{r['image']}")
        if not per or not bw or not peak:
            continue
        is_resnet = r["form"].startswith("resnet50")
        flops = per["resnet50_flops"] if is_resnet else per["dsrnet_flops"]
        traffic = per["resnet50_bytes"] if is_resnet else per["dsrnet_eager_bytes"]
        unmodelled = "compiled" in r["form"]
        if r["form"].startswith("dsrnet_fused"):
            by_mode, mode = per["dsrnet_fused_bytes_by_mode"], fuse_mode(r["form"], r)
            unmodelled = mode not in by_mode  # auto: its traffic depends on what it picked (the floor does not)
            traffic = by_mode.get(mode, traffic)
            if r["form"].removesuffix("+cudagraph").endswith("_nodw"):  # (rows of runs before it was counted: none)
                traffic = per.get("dsrnet_fused_chain_nodw_bytes", traffic)
                unmodelled = "dsrnet_fused_chain_nodw_bytes" not in per
        ips = r["images_per_s"]
        row = {
            "form": r["form"], "stem": r["stem"], "image": r["image"], "batch": r["batch"],
            "gflop_per_image": round(flops / 1e9, 4),
            "floor_mb_per_image": round(traffic["floor"] / 1e6, 3),
            "modelled_mb_per_image": None if unmodelled else round(traffic["own"] / 1e6, 3),
            "compute_fraction": round(flops * ips / (peak * 1e12), 4),
            "floor_bandwidth_fraction": round(traffic["floor"] * ips / (bw * 1e9), 4),
            "modelled_bandwidth_fraction": None if unmodelled else round(traffic["own"] * ips / (bw * 1e9), 4),
        }  # fmt: skip
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(none)\n"
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


#: What a timed form decides against the form it varies (same call and step, stem, size, batch; CUDA-graph rows
#: against CUDA-graph rows): (form, against, the edit if the form is faster, the edit if it is not, whether only the
#: CUDA-graph rows decide: dependent launch changes what the GPU does between kernels, which a host-bound call
#: without a graph cannot show).
DECISIONS = (
    ("dsrnet_fused", "dsrnet_fused_tiles",
     "keep the sliding-row depthwise configs that won (the default row's autotune_picks: ROWS > 0)",
     "drop the sliding-row configs (_DW_ROWS_CONFIGS, the ROWS entries of _DWW_CONFIGS): each costs first-call "
     "autotuning", False),
    ("dsrnet_fused_chain", "dsrnet_fused", 'DEFAULT_FUSE_MODE = "chain" (dsrnet.models)',
     'keep DEFAULT_FUSE_MODE = "split"', False),
    ("dsrnet_fused_chain", "dsrnet_fused_chain_nodw", "keep ops.CHAIN_DW_MAX_WIDTH = 128",
     "ops.CHAIN_DW_MAX_WIDTH = 0 (the chain kernel's depthwise convs as their own kernels)", False),
    ("dsrnet_fused_tma", "dsrnet_fused", "ops.GEMM_TMA = True", "keep ops.GEMM_TMA = False", False),
    ("dsrnet_fused_sweep", "dsrnet_fused",
     "move the sweep's winning configs (its row's autotune_picks) into _GEMM_CONFIGS / _DW_FWD_CONFIGS",
     "keep the library's configs", False),
    ("dsrnet_fused_pdl", "dsrnet_fused", "ops.PDL = True", "keep ops.PDL = False", True),
    ("dsrnet_fused_chain_pdl", "dsrnet_fused_chain", "ops.PDL = True (if chain is the default)",
     "keep ops.PDL = False for chain", True),
)
#: The same for the training step (rows of one step, batch and size): (form, against, edit if faster, edit if not).
TRAINING_DECISIONS = (
    ("dsrnet_compiled_triton_dw_autotune", "dsrnet_compiled_triton_dw_cudagraphs",
     "fast.yaml: `dwconv: triton` + `compile_mode: max-autotune`, once benchmarks/train_speed.py --arms "
     "fast,fast+triton_dw+cudagraphs,fast+triton_dw+max-autotune agrees over a whole run (its first epoch's "
     "autotuning included)",
     "keep inductor's default GEMMs (compile_mode: reduce-overhead with the Triton depthwise convs)"),
    ("dsrnet_compiled_triton_dw_linear_cudagraphs", "dsrnet_compiled_triton_dw_cudagraphs",
     "the 1x1 convs as matmuls cost nothing with cuBLAS: try `pointwise: matmul` in the whole loop "
     "(train_speed.py --arms fast,fast+triton_dw+cudagraphs,fast+triton_dw+matmul+cudagraphs)",
     "as matmuls the 1x1 convs are slower with inductor's default GEMMs: only with max-autotune, if at all"),
    # one change at a time: the matmul form under max-autotune against the conv form under max-autotune ...
    ("dsrnet_compiled_triton_dw_linear_autotune", "dsrnet_compiled_triton_dw_autotune",
     "with max-autotune the matmul form gains (the backward's GEMMs through inductor): prefer `pointwise: matmul` "
     "wherever max-autotune is used",
     "with max-autotune the matmul form loses: keep the 1x1 convs as convs"),
    # ... and against the shipped candidate (reduce-overhead, convs): what fast.yaml would change by
    ("dsrnet_compiled_triton_dw_linear_autotune", "dsrnet_compiled_triton_dw_cudagraphs",
     "fast.yaml candidate: `pointwise: matmul` (if the row above gains, else not) + `compile_mode: max-autotune`, "
     "once train_speed.py --arms fast,fast+triton_dw+cudagraphs,fast+triton_dw+matmul+max-autotune agrees over a "
     "whole run",
     "keep compile_mode: reduce-overhead"),
    ("resnet50_compiled_autotune", "resnet50_compiled_cudagraphs",
     "compare DSRNet with ResNet-50 max-autotune too (the stronger baseline: x_resnet50_autotune)",
     "none (ResNet-50's CUDA-graph row stays the baseline)"),
)
#: The least difference of medians a verdict other than a tie needs (besides interquartile ranges apart): a CUDA
#: graph's repeats spread by ~0.2-0.6 %, so two forms running the same kernels (split and auto picking split,
#: 2026-11-27) can land just apart; a change of defaults must pay for its risk and its first-call autotuning.
DECISION_MIN_GAIN = 0.02


def _decide(question: str, compare: str, key: str, a: dict, b: dict, if_faster: str, if_not: str) -> dict:
    """Row ``a`` against row ``b`` of the same step (``key``: their median ms; p25_ms / p75_ms their interquartile
    range); the row names the step, as a pair timed in two steps gets a verdict from each."""
    gain = b[key] / a[key]
    if a["p75_ms"] < b["p25_ms"] and gain >= 1 + DECISION_MIN_GAIN:
        verdict, edit = "faster", if_faster
    elif b["p75_ms"] < a["p25_ms"] and gain <= 1 / (1 + DECISION_MIN_GAIN):
        verdict, edit = "slower", if_not
    else:
        verdict, edit = "tie", f"none (interquartile ranges overlap or medians within {DECISION_MIN_GAIN:.0%})"
    return {"question": question, "compare": compare, "ms": f"{a[key]} vs {b[key]}", "x": round(gain, 3),
            "verdict": verdict, "edit": edit, "step": a.get("step")}


def decision_rows(results: dict) -> list[dict]:
    """The plan's open questions answered by this call's rows (:data:`DECISIONS`). A form is ``faster`` or
    ``slower`` than the one it varies only where their interquartile ranges of repeated timings do not overlap and
    their medians differ by :data:`DECISION_MIN_GAIN` or more, a ``tie`` otherwise (no edit). Compared only within
    one step (the same form timed in a later step, minutes on, is another measurement). Also a row for the
    depthwise configs the per-config check marked not ok, per form that compiled kernels again after precompiling,
    and how many depthwise shapes (bf16) a sliding-row config won."""
    rows = []
    bad = [r["case"] for r in results.get("correctness", []) if r.get("ok") is False]
    if bad:  # before anything else: the timings after them may have run a wrong config
        rows.append({"question": "depthwise configs wrong on this GPU", "compare": "; ".join(bad),
                     "verdict": "not ok", "edit": "remove (or fix) these configs first; then time again"})
    inf = results.get("inference", [])
    index = {(r.get("step"), r["form"], r["stem"], r["image"], r["batch"]): r for r in inf}
    for (form, against, if_faster, if_not, graphs_only), graph in itertools.product(DECISIONS, ("", "+cudagraph")):
        if graphs_only and not graph:
            continue
        for (step, name, stem, image, batch), a in index.items():
            b = index.get((step, against + graph, stem, image, batch))
            if name == form + graph and b is not None:
                rows.append(_decide(f"{form}{graph} vs {against}{graph}", f"{stem}/{image} b{batch}", "ms_per_batch",
                                    a, b, if_faster, if_not))
    train = {(r.get("step"), r["form"], r["image"], r["batch"]): r for r in results.get("training", [])}
    for form, against, if_faster, if_not in TRAINING_DECISIONS:
        for (step, name, image, batch), a in train.items():
            b = train.get((step, against, image, batch))
            if name == form and b is not None:
                rows.append(_decide(f"{form} vs {against}", f"training {image} px b{batch}", "ms_per_step", a, b,
                                    if_faster, if_not))
    picks = {json.dumps(p["key"], sort_keys=True): p for r in inf if r["form"] == "dsrnet_fused"
             for p in (r.get("autotune_picks") or {}).get("dw_fwd", []) if "torch.bfloat16" in p["key"]["dtypes"]}
    if picks:  # each shape once (every row records the tuner's picks so far), the timed bf16 shapes only
        won = sum(1 for p in picks.values() if p["config"].get("ROWS"))
        rows.append({"question": "dw_fwd shapes (bf16) a sliding-row config won", "compare": f"{won} of {len(picks)}",
                     "verdict": "", "edit": ""})
    recompiled = {r["form"].removesuffix("+cudagraph"): r["precompile_recompiled"]
                  for r in inf + results.get("training", []) if r.get("precompile_recompiled")}  # fmt: skip
    for form, n in recompiled.items():
        rows.append({"question": f"{form}: kernels compiled again after precompiling", "compare": str(n),
                     "verdict": "not ok", "edit": "the precompile pass's disk-cache keys still miss (see log.txt)"})
    return rows


#: The training table's ratio columns: a row's images/s over that ResNet-50 form's (of the same step where it ran).
TRAINING_BASELINES = {
    "x_resnet50": "resnet50_compiled", "x_resnet50_1x1mm": "resnet50_compiled_1x1mm",
    "x_resnet50_cudagraphs": "resnet50_compiled_cudagraphs", "x_resnet50_autotune": "resnet50_compiled_autotune",
    "x_resnet50_linear_autotune": "resnet50_compiled_linear_autotune",
}  # fmt: skip


def render_markdown(results: dict) -> str:
    env = results.get("environment", {})
    inf = [dict(r) for r in results["inference"]]
    for r in inf:  # ratio to ResNet-50 compiled (same stem, size, batch; CUDA-graph rows to CUDA-graph rows)
        key = "resnet50_compiled+cudagraph" if r["form"].endswith("+cudagraph") else "resnet50_compiled"
        ref = [q for q in inf if q["form"] == key and (q["stem"], q["image"], q["batch"]) ==
               (r["stem"], r["image"], r["batch"])]  # fmt: skip
        r["x_resnet50"] = round(r["images_per_s"] / ref[0]["images_per_s"], 3) if ref else None
        tuned = [q for q in inf if q["form"] == "resnet50_compiled_tuned" and (q["stem"], q["image"], q["batch"])
                 == (r["stem"], r["image"], r["batch"])]  # fmt: skip
        r["x_resnet50_tuned"] = round(r["images_per_s"] / tuned[0]["images_per_s"], 3) if tuned else None
    for r in inf:
        if r["form"].startswith("dsrnet_fused"):
            r["fuse_mode"] = fuse_mode(r["form"], r)
    train = [dict(r) for r in results["training"]]

    def train_ref(form: str, row: dict) -> list[dict]:  # the baseline row of the same step where there is one
        rows = [q for q in train if q["form"] == form]
        return [q for q in rows if q.get("step") == row.get("step")] or rows

    peak = (results.get("ceilings") or {}).get("bf16_matmul_TFLOPs")
    for r in train:
        for column, baseline in TRAINING_BASELINES.items():
            ref = train_ref(baseline, r)
            r[column] = round(r["images_per_s"] / ref[0]["images_per_s"], 3) if ref else None
        per = results["per_image"].get(f"cifar/{r['image']}", {})
        flops = per.get("resnet50_train_flops" if r["form"].startswith("resnet50") else "dsrnet_train_flops")
        if flops and peak:  # the fwd + bwd FLOPs per image, and the fraction of the matmul rate they reach
            r["train_gflop_per_image"] = round(flops / 1e9, 3)
            r["compute_fraction"] = round(flops * r["images_per_s"] / (peak * 1e12), 4)
    decisions = decision_rows(results)
    lines = [
        "# Fused DSRNet benchmark (issue 10)",
        "",
        f"Command: `{results['command']}`" + ("  (DRY RUN: CPU, Triton interpreter, tiny model: not timings)"
                                                if results["dry_run"] else ""),
        f"Device: {env.get('device')}; torch {env.get('torch')}, Triton {env.get('triton')}, "
        f"CUDA {env.get('cuda')}; elapsed {results.get('elapsed_s')} s of a {results['budget_s']} s budget.",
        f"Measured ceilings: {results.get('ceilings')}",
        *([f"Per-image FLOPs and bytes (roofline) counted afterwards on a CPU (they depend on shapes only): "
           f"`{results['rerendered']}`"] if results.get("rerendered") else []),
        "",
        *(["## What these rows decide (x: the first form's images/s over the second's)",
            _table(decisions, ["question", "compare", "ms", "x", "verdict", "edit", "step"])] if decisions else []),
        "## Correctness (fused / Triton vs eager fp32 reference)",
        _table(results["correctness"], ["case", "dtype", "max_abs_logit_diff", "max_abs_logit",
                                        "max_rel_feature_diff", "top1_agreement", "grad_norm_rel_err",
                                        "eager_fp32_grad_norm_rel_err", "max_rel_grad_diff",
                                        "eager_fp32_max_rel_grad_diff", "within_eager_fp32_error",
                                        "images", "top1_eager", "top1_form", "top1_agreement_vs_eager_bf16",
                                        "max_abs_logit_diff_vs_eager_bf16", "max_rel_err", "worst", "ok"]),
        "## Inference (bf16, channels_last; median of repeats after warm-up)",
        _table(inf, ["form", "fuse_mode", "stem", "image", "batch", "ms_per_batch", "images_per_s", "x_resnet50",
                     "x_resnet50_tuned", "auto_picks",
                     "peak_mem_mib", "precompile_s", "precompile_recompiled", "first_call_s", "first_call_profiled",
                     "max_logit_diff_vs_fp32", "diff_over_eager_bf16",
                     "top1_agree_vs_fp32"]),
        "peak_mem_mib: above what was allocated before the form was built, over its calls after the first (whose "
        "compilation and autotuning are not the form's). diff_over_eager_bf16: the form's max logit difference from "
        "eager fp32 over eager bf16's own on the same inputs (~1: bf16 rounding; random weights put almost every "
        "image in one class, so top1_agree_vs_fp32 cannot see a broken form, the trained-agreement rows can).",
        '## `fuse(mode="auto")`: split vs one-kernel block, per block shape (ms per call, median of its repeats)',
        _table(results.get("auto_choices", []), ["block_shape", "input", "dtype", "split_ms", "block_ms",
                                                 "block_max_rel_diff", "mode"]),
        "block_shape = (input channels, width, output channels, stride of the first 1x1, of the depthwise conv, "
        "dilation, projection shortcut, its stride); block_max_rel_diff = block's output against split's on the "
        "same input (auto never picks a block that differs beyond rounding).",
        "",
        "## Host cost per launch (tiny shapes: the host's time to issue each call, queued without synchronising)",
        _table(results.get("host_cost", []), ["form", "host_us_per_call", "host_us_per_triton_launch"]),
        "Python profile of the Triton op: profiles.txt.",
        "",
        "## The stem alone: folded conv + bias + ReLU (bf16, channels_last)",
        _table(results.get("stem", []), ["form", "stem", "image", "batch", "ms", "floor_gb", "gb_per_s",
                                         "max_rel_diff", "precompile_s"]),
        "## Training step at 32 px (fwd + bwd + SGD, bf16 autocast)",
        _table(train, ["form", "batch", "ms_per_step", "images_per_s", "x_resnet50", "x_resnet50_1x1mm",
                       "x_resnet50_cudagraphs", "x_resnet50_autotune", "x_resnet50_linear_autotune",
                       "gpu_kernel_ms_per_step", "gpu_busy_fraction",
                       "train_gflop_per_image", "compute_fraction", "peak_mem_mib", "precompile_s", "precompile_recompiled", "first_call_s"]),
        "gpu_kernel_ms_per_step: the kernels' time per step in the profile of two steps after the timed ones; "
        "gpu_busy_fraction: that over ms_per_step (well below 1: the step waits for the host, not the GPU).",
        "## Roofline (per image; fractions of the measured copy bandwidth and bf16 matmul rate)",
        _table(roofline_rows(results), ["form", "stem", "image", "batch", "gflop_per_image", "floor_mb_per_image",
                                        "modelled_mb_per_image", "compute_fraction", "floor_bandwidth_fraction",
                                        "modelled_bandwidth_fraction"]),
        "floor = every block reads its input once and writes its output once (activations only); modelled = the "
        "form's own kernels (unfused: every conv/BN/ReLU reads and writes; fused: the stem in one kernel, then per "
        "block 2 kernels (one-kernel mode) or 3 (split: the depthwise output written and read back), or one (block: "
        "input read once, output written once); auto's depends on its picks (not modelled).",
        "",
        "## Skipped steps / errors",
        _table(results["skipped"], ["step", "estimate_s", "left_s", "reason"]),
        _table([{"step": e["step"], "error": e["error"][:200]} for e in results["errors"]], ["step", "error"]),
        "Kernel profiles: profiles.txt; everything: results.json.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def rerender(folder: Path, args: argparse.Namespace, argv: list[str]) -> int:
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
        results["inference"], results["training"], results["per_image"], results["dry_run"]  # noqa: B018 (needed)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"fused_gpu: error: {path} is not a fused_gpu.py results.json ({type(err).__name__}: {err}); fix: "
              f"pass the folder a fused_gpu.py call returned", file=sys.stderr)  # fmt: skip
        return 2
    args.out, args.dry_run, args.budget_s = str(folder), results["dry_run"], results.get("budget_s", 0.0)
    bench = Bench(args)
    bench.results = results
    trained = {f"cifar/{r['image']}" for r in results.get("training", [])}
    if (not results["per_image"] or any("dsrnet_fused_bytes_by_mode" not in v for v in results["per_image"].values())
            or any("dsrnet_train_flops" not in results["per_image"].get(k, {}) for k in trained)):  # fmt: skip
        # none, or counted before the split mode's traffic or the training FLOPs were (recounted: shapes only)
        results["per_image"] = {}
        step_per_image(bench)
        results["rerendered"] = "PYTHONPATH=src python3 " + shlex.join(["benchmarks/fused_gpu.py", *argv])
    results["roofline"] = roofline_rows(results)
    _write(path, json.dumps(results, indent=1, default=str))
    _write(folder / "results.md", render_markdown(results))
    print(f"fused_gpu: rewrote {path} and {folder / 'results.md'}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
def full_plan() -> list[tuple]:
    """Every step of a run as (name, estimate in seconds on an H100, function, its arguments...), most valuable
    first, compile-heavy last; a step that no longer fits the budget is skipped and listed."""
    return [
        ("environment", 1, step_environment),
        ("ceilings", 5, step_ceilings),
        ("block kernel probe (own process)", 60, step_block_probe),
        ("correctness", 40, step_correctness),
        ("depthwise kernels, every autotune config", 40, step_depthwise_configs),
        ("trained agreement (shipped weights, CIFAR-10 test)", 25, step_trained_agreement),
        # The default (dsrnet_fused: split since the H200 run of 2026-11-27), its challenger (block) and the
        # per-shape choice between them (auto) in the first step; the one-kernel mode, measured slower, at the end.
        # Within every inference step ResNet-50 compiled (the ratio's reference) and the default fused form come
        # first, the block kernel's forms last: a fault of it at a shape the probe did not run would poison this
        # process's CUDA context, and with it every row after. Also as CUDA graphs: at batch 1024 the host's launches
        # took about as long as split's kernels (H200 run of 2026-11-27), so a graph shows what the kernels allow.
        ("inference cifar/32 b1024 (+cudagraph): fused, fused block, fused auto, eager, resnet50 compiled", 280,
         step_inference, "cifar", 32, 1024,
         ("resnet50_compiled", "dsrnet_fused", "dsrnet_eager", "dsrnet_fused_block", "dsrnet_fused_auto"), True),
        # The sweep's candidate configs (persistent 1x1 GEMMs, fewer stages, the residual loaded first, more
        # depthwise tiles) in the whole model, against the library's in the same call: what kernel_shapes.py --sweep
        # finds per shape, as images/s (rows record the configs the autotuners picked).
        # mode="chain" (each block's last kernel also computes the next block's first 1x1, so its input is not read
        # back for it, and up to 128 channels the depthwise conv, so its output is not written), also with the
        # depthwise convs as their own kernels; all against the default in the same call.
        # And the default mode with its 1x1 GEMMs through TMA tensor descriptors (ops.GEMM_TMA), and with its
        # depthwise convs as pixel tiles only (what the sliding-row configs, untimed until this step, gain).
        ("inference cifar/32 b1024 (+cudagraph): fused chain (+ without its depthwise convs), fused with TMA GEMMs, "
         "fused with pixel-tile depthwise convs only, fused with the sweep configs", 280, step_inference, "cifar", 32,
         1024, ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_tiles", "dsrnet_fused_chain", "dsrnet_fused_tma",
                "dsrnet_fused_chain_nodw", "dsrnet_fused_sweep"), True),
        # ops.PDL (programmatic dependent launch: each kernel launched while the one before it finishes, waiting in
        # its first instruction) where it can matter most: batch 128 as a CUDA graph, ~1 ms for ~50 kernels.
        ("dependent launch: inference cifar/32 at batch 128 (+cudagraph), fused and fused chain, with and without",
         100,
         step_inference, "cifar", 32, 128, ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_pdl",
                                            "dsrnet_fused_chain", "dsrnet_fused_chain_pdl"), True),
        ("profiles cifar/32 b1024", 10, step_profiles, "cifar", 32, 1024),
        ("host cost per kernel launch (tiny shapes)", 15, step_host_cost),
        # The training target's comparison (ResNet-50 compiled against DSRNet compiled with the Triton depthwise
        # kernels), before batch 128. The steps before it took ~410 s in the H200 run of 2026-11-27 (the batch-1024
        # step 268 s of it, block's first call 139 s), so a full run's first call rarely reaches it: name the
        # training steps with --only in a call of their own (as that session did).
        ("training 32px b512: resnet50 compiled, dsrnet compiled + triton dw", 130, step_training,
         ("resnet50_compiled", "dsrnet_compiled_triton_dw")),
        # The H200 run of 2026-11-27 measured that step at 0.56x ResNet-50 with the GPU busy ~44 % of DSRNet's step
        # (20 ms of kernels in 46 ms; ResNet-50: 21 ms in 26): CUDA graphs take the host out, for both networks.
        ("training 32px b512: dsrnet (+ triton dw), resnet50 compiled with CUDA graphs (reduce-overhead)", 200,
         step_training, ("resnet50_compiled_cudagraphs", "dsrnet_compiled_triton_dw_cudagraphs",
                         "dsrnet_compiled_cudagraphs")),
        ("inference cifar/32 b128 (+cudagraph)", 90, step_inference, "cifar", 32, 128,
         ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_chain", "dsrnet_eager", "dsrnet_fused_block",
          "dsrnet_fused_auto"), True),
        ("training 32px b512: dsrnet compiled with shifted depthwise convs", 80, step_training,
         ("dsrnet_compiled_shifts",)),
        ("stem kernel vs cuDNN, cifar/32 and paper/96 b1024", 20, step_stem),
        # Then the forms that say where DSRNet's training time goes.
        ("training 32px b512: dsrnet compiled, dsrnet eager, + triton dw", 150, step_training,
         ("dsrnet_compiled", "dsrnet_eager", "dsrnet_eager_triton_dw")),
        ("training 32px b512: dsrnet compiled + triton dw with the BatchNorm + ReLU before it in its kernel", 80,
         step_training, ("dsrnet_compiled_triton_dw_bn_relu",)),
        ("inference paper/96 b1024: fused, fused chain, fused block, eager, resnet50 compiled", 90, step_inference,
         "paper", 96, 1024, ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_chain", "dsrnet_eager",
                             "dsrnet_fused_block"), False),
        ("inference paper/96 b128 (+cudagraph)", 80, step_inference, "paper", 96, 128,
         ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_chain", "dsrnet_eager", "dsrnet_fused_block"), True),
        ("inference cifar/32 b1024: dsrnet compiled, + shifted depthwise convs", 80, step_inference,
         "cifar", 32, 1024, ("dsrnet_compiled", "dsrnet_compiled_shifts"), False),
        ("training 32px b512: dsrnet, resnet50 compiled with 1x1 convs as matmuls", 150, step_training,
         ("resnet50_compiled_1x1mm", "dsrnet_compiled_1x1mm")),
        # The training target's other route: inductor's own GEMM templates for the forward's 1x1 convs (max-autotune
        # lowers the stride-1 ones to matmuls under channels_last; the backward stays cuDNN) with the pointwise work
        # fused around them, against the CUDA-graph rows of the same step (max-autotune replays graphs too); ResNet-50's
        # max-autotune last (its 3x3 convs' templates are autotuned too). Autotuning every GEMM of the forward and
        # backward takes minutes on the first call: a call of its own.
        ("training 32px b512: dsrnet + triton dw, resnet50 compiled with max-autotune (Triton GEMM templates, "
         "CUDA graphs)", 420, step_training,
         ("resnet50_compiled_cudagraphs", "dsrnet_compiled_triton_dw_cudagraphs", "dsrnet_compiled_triton_dw_autotune",
          "resnet50_compiled_autotune")),
        # The same with each 1x1 conv a matmul in the model's own code (dsrnet.use_matmul_pointwise: F.linear on the
        # channels-last pixels), so the backward's GEMMs reach inductor too (as convs they stay cuDNN's
        # convolution_backward): with inductor's default GEMMs (cuBLAS, CUDA graphs: does the form itself cost
        # anything?) and with max-autotune (templates with the pointwise work fused, forward and backward).
        ("training 32px b512: 1x1 convs as matmuls (forward and backward GEMMs to inductor), dsrnet + triton dw, "
         "resnet50, CUDA graphs and max-autotune", 540, step_training,
         ("resnet50_compiled_cudagraphs", "dsrnet_compiled_triton_dw_cudagraphs",
          "dsrnet_compiled_triton_dw_linear_cudagraphs", "dsrnet_compiled_triton_dw_autotune",
          "dsrnet_compiled_triton_dw_linear_autotune", "resnet50_compiled_linear_autotune")),
        ("inference cifar/32 b1024: dsrnet (+ shifted depthwise convs), resnet50 compiled tuned (freezing, 1x1 as mm, "
         "max-autotune)", 240, step_inference, "cifar", 32, 1024,
         ("resnet50_compiled_tuned", "dsrnet_compiled_tuned", "dsrnet_compiled_tuned_shifts"), False),
        ("inference cifar/32 b1024: fused one-kernel", 40, step_inference,
         "cifar", 32, 1024, ("dsrnet_fused_onekernel",), False),
        ("inference paper/224 b128 (+cudagraph)", 100, step_inference, "paper", 224, 128,
         ("resnet50_compiled", "dsrnet_fused", "dsrnet_fused_chain", "dsrnet_eager", "dsrnet_fused_auto"), True),
    ]  # fmt: skip


def select_steps(plan: list[tuple], only: str) -> list[tuple]:
    """``--only``: the environment and ceilings steps and those named, ';'-separated (step names hold commas); a
    full step name selects that step alone, anything else every step whose name contains it. ValueError (the
    message names the fix) where it names nothing, or a part matches no step."""
    wanted = [w.strip() for w in only.split(";") if w.strip()]
    if not wanted:
        raise ValueError("--only names no step; fix: drop --only, or name steps")
    names = [p[0] for p in plan]
    picked = {n for w in wanted for n in ([w] if w in names else [n for n in names if w in n])}
    unmatched = [w for w in wanted if w not in names and not any(w in n for n in names)]
    if unmatched:
        raise ValueError(f"--only {'; '.join(unmatched)} matches no step; fix: use (parts of) these names, "
                         f"';'-separated: {' | '.join(names)}")  # fmt: skip
    return [p for p in plan if p[2] in (step_environment, step_ceilings) or p[0] in picked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for results.json, results.md, profiles.txt, log.txt")
    parser.add_argument(
        "--rerender", metavar="DIR", help="no GPU: a returned folder whose run was cut short before its roofline: "
        "count the per-image FLOPs/bytes on this CPU and rewrite DIR/results.json and results.md (log and profiles "
        "untouched)"
    )
    parser.add_argument("--budget-s", type=float, default=500.0, help="stop starting new work after this many s")
    parser.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes: finds bugs")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; eager in dry run)")
    parser.add_argument("--data-dir", default="/root/data", help="holds cifar10/test.npz (trained agreement step)")
    parser.add_argument(
        "--cifar10-test", default=None, help="folder with the WebP copy's test_*.webp, labels.json, SHA256SUMS and "
        "decode.py: decoded into --data-dir when that holds no cifar10/test.npz (carried in the same call)"
    )
    parser.add_argument(
        "--only", default=None, help="';'-separated step names or parts of them: run only those plan steps (with the "
        "environment and ceilings); a full name selects that step alone; a part that matches nothing is an error"
    )
    args = parser.parse_args(argv)
    if args.rerender is not None:
        if args.out is not None or args.only is not None or args.dry_run:
            parser.error("--rerender reads a returned folder and runs nothing: drop --out/--only/--dry-run")
        return rerender(Path(args.rerender), args, sys.argv[1:] if argv is None else argv)
    if args.out is None:
        parser.error("--out is required (or --rerender DIR)")
    if args.compile_backend is None:
        args.compile_backend = "eager" if args.dry_run else "inductor"
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run on a CPU", file=sys.stderr)
        return 2
    plan = full_plan()
    if args.only is not None:
        try:
            plan = select_steps(plan, args.only)
        except ValueError as err:
            print(f"fused_gpu: error: {err}", file=sys.stderr)
            return 2
    if args.dry_run:  # fuse(mode="auto") times each candidate once under the interpreter, as time_ms does here
        from dsrnet.models import fused

        fused.AUTO_WARMUP, fused.AUTO_REPEATS = 0, 1
    bench = Bench(args)
    watchdog = bench.start_watchdog()
    bench.start_alarm()
    done = 0
    try:
        for name, estimate, fn, *fn_args in plan:
            # Steps named by --only run whatever their estimate: the caller chose them for this call, and a step
            # cut by the budget keeps the rows it finished (a skip would return nothing at all).
            bench.step(name, 0 if args.dry_run or args.only is not None else estimate, fn, bench, *fn_args)
            done += 1
    except BudgetExceeded:
        bench.log("budget reached: writing what was measured")
        for name, *_ in plan[done + 1 :]:
            bench.results["skipped"].append({"step": name, "reason": "not started: budget reached"})
    finally:
        signal.alarm(0)
        bench.deadline = float("inf")  # the reserve: FLOPs/bytes per image take seconds and feed the roofline
        bench.step("per-image FLOPs and bytes", 0, step_per_image, bench)
        bench.results["roofline"] = roofline_rows(bench.results)
        bench.save()
        watchdog.cancel()
    bench.log(f"done in {time.monotonic() - T0:.0f}s; results in {bench.out}")
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Results are written; skip interpreter teardown, which can wait on torch.compile's worker pools after a
    # budget stop in the middle of a compilation.
    os._exit(rc)
