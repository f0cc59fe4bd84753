"""GPU campaign of issue 9: one prepared command per stage, each fitting a few minutes of GPU time.

    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage dsrnet|bench|baselines|ablation|recipe --out DIR \
        --budget-s S [--data-dir D] [--dry-run] [...]
    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --assemble RETURNED_DIR [...] --out-dir results/gpu/cifar10

Runs from the repository root with no install (the GPU box has Python 3.12, torch 2.11, torchvision 0.26, Triton 3.6,
timm, safetensors, PyYAML, matplotlib). Every stage goes through the project's own library calls
(:func:`dsrnet.train.train`, :func:`dsrnet.bench.measure.run_bench`, :func:`dsrnet.paper.runner.reproduce` /
``ablate``), stops itself before ``--budget-s`` (margin kept for writing results; a SIGALRM watchdog at the budget's
end as a last resort) and leaves at most 8 files of at most 15 MiB each in ``--out`` (at most one folder deep), the
device tool's limits. What did not fit is listed in the summary printed as the last stdout line (and in
``campaign.json`` where a slot is free).

Stages (in order of value):

* ``dsrnet`` -- ``dsrnet50_cifar``, fast recipe (bf16, channels_last, torch.compile on CUDA), full CIFAR-10, seed 0.
  The number of epochs is fixed BEFORE training (changing it mid-run would bend the LR schedule): a 2-epoch warm-up
  run through ``train()`` measures the steady s/epoch (train + test) and the first epoch's extra (compilation, cold
  caches); epochs = what fits ``min(--target-train-s, time left)``; ``--epochs N`` skips the warm-up. As a safety
  net the run gets a ``deadline`` with the ``schedule`` rule (:class:`~dsrnet.train.config.TrainConfig`): a run
  whose rest can no longer finish in time stops (from its second epoch on) with ``"stopped_early": true`` in
  final.json (truncated schedule: never report it as a full-schedule result, never ship its weights).
  ``--dwconv triton`` (or ``triton_bn_relu``) trains (warm-up included) with the Triton depthwise conv (``TrainConfig.dwconv``,
  recorded in config.yaml, final.json and the summary); use it only once ``benchmarks/fused_gpu.py`` has shown
  the Triton training step faster than the default (torch) on the card in question; ``--compile-mode
  reduce-overhead`` likewise (CUDA graphs, ``TrainConfig.compile_mode``). ``--arms A B ...`` trains with
  those recipe arms' changes applied together (:data:`RECIPE_ARMS`; checked before anything runs, contradicting
  arms refused), for new shipped weights once the ``recipe`` stage has picked its winners; recorded in
  config.yaml and ``campaign.json``. ``--eval-every N`` scores the test set only every N epochs and after the
  last (``TrainConfig.eval_every``; the training is the same): the epochs are planned with the warm-up's test
  pass counted only that often, so more of them fit the target (a test pass is ~7 % of an epoch, ~14 % with a
  weight average).
  OUT: ``final.json``, ``metrics.jsonl``, ``config.yaml`` and the weights as a weights-only dsrnet checkpoint
  (the training checkpoint without optimizer/scheduler/scaler/RNG state) split by :mod:`dsrnet.run.shards` into
  ``dsrnet50_cifar.c10.pt.partNN`` (<= 15 MiB) + ``dsrnet50_cifar.c10.pt.manifest.json``: 8 files.
* ``bench`` -- ``run_bench`` on CUDA: DSRNet-50 vs ResNet-50, cifar stem @ 32 px and paper stem @ 96 px, batch 128
  and 1024, fp32 eager and bf16 channels_last compiled, inference and train step; then the other baselines. Each
  group is skipped (and recorded as skipped) when its estimated cost (compilation dominates) no longer fits.
  OUT: ``bench_cuda.{csv,json,md}``, ``campaign.json``.
* ``baselines`` -- ``resnet50_cifar``, ``resnext50_32x4d_cifar`` with the recipe and epochs of the ``dsrnet`` stage
  (``--like DSRNET_OUT/config.yaml`` or ``final.json``; or ``--epochs``), through ``dsrnet.paper.runner.reproduce``
  (trained, then timed as ``reproduce`` times: inference, fp32 eager, batch 128, 32 px, median of 30 after 10
  warm-up calls, no compilation). No warm-up run: each model starts while ``--min-run-s`` are left and trains
  under the deadline's ``schedule`` rule (``--bench-reserve-s`` kept for its timing), so it either completes its
  schedule or stops (from its second epoch on) and is skipped with its measured pace (:func:`train_to_the_end`). Then, in the same call and with the same settings
  (:func:`dsrnet.paper.runner.bench_models`), it times every other model of ``--bench-models`` (default: DSRNet-50
  and the rest of the paper's comparison, DSRNet first, each only while ``--bench-s`` is left; expected to take seconds
  each, not yet measured on a GPU; a dry run: DSRNet only): DSRNet's run came from the
  ``dsrnet`` stage, and a table compares timings from one card in one call only. OUT: ``runs.json``
  (:func:`dsrnet.paper.assemble.write_bundle`: the call's ``call_id``, card and settings, and per model the text of
  its ``final.json``, ``config.yaml``, ``metrics.jsonl`` (trained models) and ``bench.json`` (every timed model),
  verbatim; one file whatever the number of models: ~22-32 KiB for one 67-epoch run in the dry run) and
  ``campaign.json``. No weights.
* ``ablation`` -- ``no_dilation``, ``full_3x3``, ``stem_paper`` (cifar-stem DSRNet otherwise), same recipe and
  epochs, one seed each, through ``dsrnet.paper.runner.ablate``. OUT: ``table.md``, ``summary.json``,
  ``<variant>/metrics.jsonl``, ``campaign.json``.
* ``recipe`` -- short runs of recipe ARMS (:data:`RECIPE_ARMS`: each a TrainConfig override and/or DSRNet model
  kwargs on top of ``--like``'s recipe; ``--arms`` picks and orders them, default all, most informative first:
  ``base combo cutout16 mean_pad ema no_dw_wd reflect_pad drop_path01 ls02 lr_half no_dilation stem_rate1``), all at ``--epochs N`` (the fast
  schedule at that length) with one seed (``--seed``, default ``--like``'s), one after the other through
  ``dsrnet.train.train``, each as a whole schedule or not at all (as the baselines: no warm-up; the ``schedule``
  rule stops an arm that cannot fit from its second epoch on); the shipped run overfits (train top-1 99.8 %,
  7.63 % test error at 67 epochs) and the arms look for what closes the gap to 5.5 %. Every arm is checked before
  anything is decoded or trained (names, TrainConfig keys this checkout has, values, model kwargs): one refused
  arm refuses the call in one line (exit 2). OUT: ``recipe.md`` (arm, what changed, FINAL-epoch top-1/top-3 error and their delta vs
  ``base``, final train top-1, s/epoch, epochs, wall s; command, card, versions, seed; what was skipped and why),
  ``recipe.json`` (the same, machine-readable), ``runs.json`` (every trained arm's
  ``config.yaml``, ``final.json``, ``metrics.jsonl``: :func:`dsrnet.paper.assemble.write_bundle`), ``campaign.json``.
  One seed per arm at a short length is a lead, not a result: below ~0.3 pp is noise.

Data: ``--data-dir`` (default /root/data) must hold ``cifar10/{train,test}.npz``; if it does not and
``--decoder`` (default /root/c10/decode.py) exists, the script runs it first (~5 s).

GPU session, exact commands. The device tool sends the checkout the session started in (main: merge this first)
plus the paths named in ``carry``, at most 64 MiB per call, so CIFAR-10 (~98 MB) travels in parts; the machine keeps
``/root/c10`` only while it stays warm (~30 s after a call), so make the staging calls back to back::

    ../shared/tools/stage-cifar10.sh 3     # here, in the main checkout: fills the git-ignored .gpu-data/1..3

    run(carry=[".gpu-data/1"], timeout_s=120, command="mkdir -p /root/c10 && cp .gpu-data/1/* /root/c10/")
    run(carry=[".gpu-data/2"], timeout_s=120, command="mkdir -p /root/c10 && cp .gpu-data/2/* /root/c10/")
    run(carry=[".gpu-data/3"], timeout_s=600, command="mkdir -p /root/c10 && cp .gpu-data/3/* /root/c10/ && "
        "PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage dsrnet --out $OUT "
        "--budget-s 540")

The last call decodes /root/c10 into /root/data (~5 s) and runs the stage; 540 s leaves the call 60 s of its 600.
(The repository's own files, shipped weights included, are ~26 MiB: keep 3 parts so that each call stays under the
tool's 64 MiB.) Other stages, on the same warm machine (the decoded data is still in /root/data) or after staging
again on a fresh one::

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage bench --out $OUT --budget-s 540
    # the dsrnet stage's returned config.yaml is committed at results/gpu/dsrnet/config.yaml:
    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage baselines \
        --like results/gpu/dsrnet/config.yaml --models resnet50 --out $OUT --budget-s 540
    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage ablation \
        --like results/gpu/dsrnet/config.yaml --variants no_dilation --out $OUT --budget-s 540

A baseline or variant counts only if ALL its epochs ran (a truncated schedule is no comparison), so the epochs
of the ``dsrnet`` stage decide whether a ResNet-50 (about twice DSRNet's MACs at 32 px) fits one call: if it must,
give the ``dsrnet`` stage ``--target-train-s`` (or ``--epochs``) small enough; a model that cannot fit stops from
its second epoch on and the ``baselines`` stage reports its measured pace. With 15 minutes of device time per
session (starts and idle time included), two stages fit a session when each gets ~380 s: the first session (H200,
2026-11-26) ran ``dsrnet`` (``--budget-s 560``: 391 s) and ``bench`` (``--budget-s 370``: 337 s) back to back on
one warm machine, 785 s of device time with the machine's start (34 s) and two staging calls.

The summary (plan, timings, what was skipped, files, ``call_id``) is the last line on stdout and in
``campaign.json`` where a slot is left. The returned files land read-only under ``files_at``; copy them into
``results/`` (e.g. ``results/gpu/baselines-<call_id>/``).

Next GPU session (``baselines``), after staging the data as above (the last staging call runs it). Guesses, not
measurements: from the first session's H200 bench (ResNet-50 inference at 86.5k images/s, bf16, compiled), a
training epoch of ResNet-50 at batch 512 should take ~2 s and one of ResNeXt-50 ~3 s, so 67 epochs of both plus
their cold compilations may fit one call; a model that cannot fit stops from its second epoch on and is reported with
its pace, and the call returns early (the rest of the session goes to ``benchmarks/fused_gpu.py`` on the same warm
machine). ``--eval-every 5`` scores the test set every 5th epoch and after the last (the table needs only the
final epoch's; the training is the same), leaving more of the call to training::

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage baselines \
        --like results/gpu/dsrnet/config.yaml --models resnet50 resnext50_32x4d --eval-every 5 --out $OUT \
        --budget-s 560

then what did not fit (later ``resnet101``, ``resnext101_32x8d``) in later calls. Every such call times DSRNet and
the whole comparison again, so its ``runs.json`` alone gives the table's time row.

Recipe arms (towards <= 5.5 % error in <= 6 min of training; a CPU without the data checks the arms in seconds:
the call stops at "no CUDA device" once they pass)::

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage recipe \
        --like results/gpu/dsrnet/config.yaml --epochs 20 --out $OUT --budget-s 540

Guessed from the first session's H200 timings (not yet measured for this stage): 20 epochs are ~80 s of training
per arm (3.66 s/epoch + 0.26 s of test pass) plus its compilation, cold for the first arm (~100 s, as the first
session's warm-up run) and ~20 s with Inductor's warm caches after it, so about 4 arms fit 540 s in the default order
(``base combo cutout16 mean_pad``; ``combo`` and ``ema`` report a weight average and the plain weights, at the cost
of a second test pass per epoch; the architecture arms ``no_dilation`` and ``stem_rate1`` come last: they
compile anew, and a CPU lead saw no effect of the cifar stem's dilation, results/recipe-leads); an H100 fits
fewer. Put the arms that matter most first (``--arms``); a second call with ``--arms`` the rest. Copy the returned
files to ``results/gpu/recipe-<call_id>/``.

The paper's table, here afterwards (no GPU, nothing trained or timed; :mod:`dsrnet.paper.assemble`)::

    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --assemble results/gpu/dsrnet \
        results/gpu/baselines-CALL1 [results/gpu/baselines-CALL2 ...] --out-dir results/gpu/cifar10 \
        [--dsrnet-eval results/gpu/dsrnet/eval-cpu] [--bench-call CALL_ID]

It writes ``results/gpu/cifar10/{table.md,table.csv,summary.json,params.png,pareto.png,curves.png,assembled.json}``
and ``runs/<arch>/{config.yaml,final.json,metrics.jsonl,bench.json}`` with ``dsrnet.paper.tables``' writer (the
same as ``dsrnet reproduce``); rows only for models trained; timings all from one call (the newest that timed every
trained model, or ``--bench-call``). It refuses (one line) runs of other recipe/epochs/seed/stem, runs stopped
early, a model trained twice, or timings of different calls/cards. A later ``dsrnet reproduce --dataset cifar10
--recipe fast --epochs 67 --stem cifar --device cuda --out-dir results/gpu/cifar10`` on a GPU treats the assembled
runs as finished (no retraining; no re-timing while the bench settings and the setup -- card, torch, threads --
match, else every row is timed again there; the timings of the models it trains then come from another call:
assemble again instead to keep one call's timings).

Weights, here afterwards (shards joined and checked, exported fp16 with the final epoch's accuracy, read back; it
prints the sha256 and the ``SHIPPED`` entry to paste into ``src/dsrnet/models/weights.py``)::

    PYTHONPATH=src python3 benchmarks/ship_weights.py FILES_AT --tag dsrnet50_cifar.<name>   # new weights
    PYTHONPATH=src python3 benchmarks/ship_weights.py FILES_AT --force       # replace the shipped .c10 file

Dry run (CPU, tiny widths, a few images per class, 1-2 epochs, no compilation), e.g.::

    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage dsrnet --dry-run --data-dir /tmp/c10data \
        --out /tmp/campaign-dry/dsrnet --budget-s 120
    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage baselines --dry-run --data-dir /tmp/c10data \
        --like /tmp/campaign-dry/dsrnet/config.yaml --models resnet50 --out /tmp/campaign-dry/b1 --budget-s 300
    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --assemble /tmp/campaign-dry/dsrnet /tmp/campaign-dry/b1 \
        --out-dir /tmp/campaign-dry/cifar10
    PYTHONPATH=src python3 benchmarks/gpu_campaign.py --stage recipe --dry-run --data-dir /tmp/c10data \
        --like results/gpu/dsrnet/config.yaml --epochs 2 --arms base no_dilation mean_pad ls02 \
        --out /tmp/campaign-dry/recipe --budget-s 120
"""

from __future__ import annotations

import time

T0 = time.time()  # the budget counts from the process start, imports included

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

STAGES = ("dsrnet", "bench", "baselines", "ablation", "recipe")
MAX_FILES = 8
MAX_FILE_BYTES = 15 * 2**20
DSRNET_MODEL = "dsrnet50_cifar"
WEIGHTS_NAME = "dsrnet50_cifar.c10.pt"
DEFAULT_BASELINES = ("resnet50", "resnext50_32x4d")
DEFAULT_VARIANTS = ("no_dilation", "full_3x3", "stem_paper")
#: Settings copied from the dsrnet stage's config.yaml into the baseline / ablation runs ("same recipe and epochs").
RECIPE_KEYS = (
    "recipe", "epochs", "batch_size", "lr", "weight_decay", "momentum", "nesterov", "label_smoothing", "schedule",
    "milestones", "warmup_epochs", "bn_bias_weight_decay", "drop_last", "precision", "channels_last", "pad_fill",
    "cutout", "dw_weight_decay", "zero_init_residual", "ema_decay", "seed", "subset_per_class",
    "test_subset_per_class",
)  # fmt: skip
#: Dry run: the same code paths on a CPU in seconds (fp32 NCHW even when --like names a bf16 GPU run).
DRY_TRAIN = {"subset_per_class": 4, "test_subset_per_class": 2, "batch_size": 20, "device": "cpu",
             "precision": "fp32", "channels_last": False}  # fmt: skip
DRY_DSRNET_KWARGS = {"widths": [8, 16, 32, 64]}
#: Dry run: the reproduce runner's timing, but one call of a small batch (full-width baselines on a CPU).
DRY_BENCH = {"warmup": 0, "repeats": 1, "batch_size": 8}
#: The models a baselines call times besides the ones it trains (the rest of the paper's comparison).
BENCH_COMPARISON = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
#: Cost guesses for a bench group before anything was measured (s; compilation dominates a compiled group).
#: Per model; once a kind was measured, 1.2x its slowest measured group per model is used instead.
FIRST_GUESS_S = {("eager", "inference"): 15.0, ("eager", "train"): 20.0, ("compiled", "inference"): 60.0,
                 ("compiled", "train"): 100.0}  # fmt: skip

log = logging.getLogger("gpu_campaign")


class BudgetExceeded(BaseException):
    """Raised by the watchdog (SIGALRM) when the whole budget is spent. A BaseException (as KeyboardInterrupt), so
    that the ``except Exception`` of library code (a checkpoint reader turning any error into "bad input", a
    bench group recording a failure and going on) does not take it for an error of its own."""


class Budget:
    """Wall-clock budget from the process start: ``deadline`` leaves ``margin_s`` for writing the results."""

    def __init__(self, budget_s: float, margin_s: float) -> None:
        self.start, self.budget_s, self.margin_s = T0, budget_s, margin_s
        self.end = T0 + budget_s
        self.deadline = self.end - margin_s

    def left(self) -> float:
        return self.deadline - time.time()


# --------------------------------------------------------------------------------------------------------- data


def ensure_data(data_dir: Path, decoder: Path) -> dict:
    from dsrnet.errors import DsrnetError

    c10 = data_dir / "cifar10"
    if (c10 / "train.npz").is_file() and (c10 / "test.npz").is_file():
        return {"data_dir": str(data_dir), "decoded": False}
    if not decoder.is_file():
        raise DsrnetError(
            f"no CIFAR-10 in {c10} (train.npz, test.npz) and no decoder at {decoder}; fix: stage the data "
            f"(../shared/tools/stage-cifar10.sh, copy the parts to {decoder.parent}) or pass --data-dir"
        )
    t0 = time.time()
    subprocess.run([sys.executable, str(decoder), str(data_dir)], check=True, stdout=sys.stderr)  # stdout: summary
    return {"data_dir": str(data_dir), "decoded": True, "decode_s": round(time.time() - t0, 1)}


# ------------------------------------------------------------------------------------------------------ training


def run_settings(args, budget: Budget) -> dict:
    """The training settings shared by every run of a stage (the same for DSRNet and the baselines)."""
    s: dict = {"recipe": "fast", "seed": 0}
    if args.like:
        s.update(like_settings(Path(args.like)))
    if args.seed is not None:  # an explicit --seed wins over --like's
        s["seed"] = args.seed
    if args.epochs:
        s["epochs"] = args.epochs
    if args.eval_every is not None:
        s["eval_every"] = args.eval_every
    if args.dry_run:
        s.update(DRY_TRAIN)
    s["data_dir"] = str(args.data_dir)
    return s


def like_settings(path: Path) -> dict:
    """Recipe and epochs of an earlier run: its config.yaml (everything) or final.json (the main values)."""
    import yaml

    from dsrnet.errors import DsrnetError

    if path.is_dir():
        path = path / "config.yaml" if (path / "config.yaml").is_file() else path / "final.json"
    if not path.is_file():
        raise DsrnetError(f"--like {path}: no such file; fix: pass the dsrnet stage's config.yaml or final.json")
    sibling = path.with_name("final.json")
    final = json.loads(sibling.read_text()) if sibling.is_file() else {}
    if final.get("stopped_early"):
        raise DsrnetError(f"--like {path} is a run stopped early (truncated schedule); fix: use a finished run")
    if path.suffix in (".yaml", ".yml"):
        cfg = yaml.safe_load(path.read_text())
        return {k: cfg[k] for k in RECIPE_KEYS if cfg.get(k) is not None}
    final = json.loads(path.read_text())
    if final.get("stopped_early"):
        raise DsrnetError(f"--like {path} is a run stopped early (truncated schedule); fix: use a finished run")
    return {k: final[k] for k in ("recipe", "epochs", "batch_size", "lr", "seed") if k in final}


def dsrnet_model_kwargs(args, baselines: bool) -> dict | None:
    """DSRNet's model arguments in the baselines/ablation stages. The baselines stage only times DSRNet, and times
    it as the dsrnet stage trained it: ``--like``'s arguments (an arm's drop_path_rate or dilation), or
    ``--assemble`` would find the timing of another network than the run. The ablation stage trains its variants
    with the stage's own arguments (a dry run's narrow widths, else none)."""
    kwargs = DRY_DSRNET_KWARGS if args.dry_run else None
    if baselines and args.like:
        kwargs = like_model_kwargs(Path(args.like)) or kwargs
    return kwargs or None


def like_model_kwargs(path: Path) -> dict | None:
    """The model arguments of the run ``--like`` names (its config.yaml's, else its final.json's); None when it
    records none."""
    import yaml

    if path.is_dir():
        path = path / "config.yaml" if (path / "config.yaml").is_file() else path / "final.json"
    values = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    kwargs = values.get("model_kwargs") if isinstance(values, dict) else None
    return dict(kwargs) if isinstance(kwargs, dict) else None


def train_config(model: str, out_dir: Path, settings: dict, model_kwargs: dict | None = None, **over):
    """The TrainConfig ``dsrnet.paper.runner`` would build for ``model`` (so ``reproduce`` recognises the run)."""
    from dsrnet.train import TrainConfig

    kw = {"progress": False, "tensorboard": False, **settings, **over}
    return TrainConfig.from_recipe(
        model=model, dataset="cifar10", model_kwargs=dict(model_kwargs or {}), out_dir=str(out_dir), **kw
    )


def warmup(model: str, work: Path, settings: dict, model_kwargs: dict | None, budget: Budget) -> dict:
    """A 2-epoch run through ``train()`` into a scratch folder: steady s/epoch (epoch 2: train + test) and the
    first epoch's extra time (compilation, cuDNN autotuning). The real run's compilation reuses Inductor's caches,
    so using the cold extra for planning errs on the safe side."""
    from dsrnet.train import train

    out = work / "warmup" / model
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    # Both epochs scored, so that the test pass's compilation falls in the first one and the second is steady.
    cfg = train_config(model, out, {**settings, "epochs": 2, "eval_every": 1}, model_kwargs, deadline=budget.deadline)
    train(cfg)
    _reset_compiler()
    m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r["epoch_time_s"] + r["eval_time_s"] for r in m]
    steady = per_epoch[-1]
    extra = max(0.0, per_epoch[0] - steady) if len(per_epoch) > 1 else 0.0
    res = {"s_per_epoch": round(steady, 3), "first_epoch_extra_s": round(extra, 2),
           "eval_s": round(m[-1]["eval_time_s"], 3), "warmup_wall_s": round(time.time() - t0, 1),
           "epochs_measured": len(m)}  # fmt: skip
    log.info("warm-up %s: %.2f s/epoch steady, first epoch +%.1f s, %.0f s wall", model, steady, extra,
             res["warmup_wall_s"])  # fmt: skip
    return res


def _reset_compiler() -> None:
    """Forget Dynamo's compiled frames (Inductor's on-disk caches stay): every new model instance of a class adds
    a cache entry to its ``forward``, and past ``torch._dynamo.config.recompile_limit`` Dynamo silently runs it
    eagerly, which would mislabel a "compiled" timing."""
    import torch

    torch._dynamo.reset()


def epochs_that_fit(available_s: float, timing: dict, slack: float, eval_every: int = 1) -> int:
    """Epochs of ``timing`` (a warm-up's: each epoch scored) that fit ``available_s`` when the test set is scored
    only every ``eval_every`` epochs (0: after the last only) and always after the last: the warm-up's test pass
    (``eval_s``) counted once per scored epoch."""
    eval_s = timing.get("eval_s", 0.0) if eval_every != 1 else 0.0  # else it stays inside s_per_epoch
    per_epoch = (timing["s_per_epoch"] - eval_s + (eval_s / eval_every if eval_every else 0.0)) * (1.0 + slack)
    return max(0, math.floor((available_s - timing["first_epoch_extra_s"] - eval_s) / per_epoch))


def timing_for(model, args, work, settings, model_kwargs, budget, summary) -> dict:
    """The warm-up's timing of ``model``, or the one given with ``--s-per-epoch`` (the dsrnet stage's epochs)."""
    if args.s_per_epoch:
        return {"s_per_epoch": args.s_per_epoch, "first_epoch_extra_s": args.first_epoch_extra_s, "given": True}
    t = warmup(model, work, settings, model_kwargs, budget)
    summary.setdefault("warmups", {})[model] = t
    return t


def train_to_the_end(cfg, deadline: float, min_run_s: float) -> str | None:
    """Train ``cfg`` into its (emptied) folder only as a whole schedule: started while at least ``min_run_s`` are
    left before ``deadline``, and under the deadline's ``schedule`` rule, which stops the run from its second
    epoch on as soon as the rest, at the last epoch's pace, cannot end in time (:class:`~dsrnet.train.config.TrainConfig`).
    So no warm-up run is needed to decide whether it fits, and one that does not costs about two epochs. Returns
    ``None`` when the run finished, else why not; a stopped run's folder is removed (a truncated schedule is no
    result: its pace is in the reason)."""
    from dataclasses import replace

    from dsrnet.train import train

    left = deadline - time.time()
    if left < min_run_s:
        return f"{left:.0f} s left, less than --min-run-s {min_run_s:.0f} (a compilation and two epochs)"
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    _reset_compiler()
    final = train(replace(cfg, deadline=deadline, deadline_rule="schedule"))
    if not final["stopped_early"]:
        return None
    last = json.loads(Path(cfg.out_dir, "metrics.jsonl").read_text().splitlines()[-1])
    pace = last["epoch_time_s"]  # training only: the stop epoch's (forced) test pass may be the compiling first one
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    return (f"cannot finish {final['epochs']} epochs in the {left:.0f} s it had: stopped by the deadline after "
            f"{final['epochs_done']} (last epoch {pace:.1f} s of training, ~{final['epochs'] * pace:.0f} s for the "
            f"whole schedule's training; its last test pass {last['eval_time_s']:.1f} s)")


def weights_only_checkpoint(run_dir: Path, dest: Path) -> Path:
    """The training checkpoint without optimizer/scheduler/scaler/RNG state, written with ``save_checkpoint``
    and read back with ``load_checkpoint`` (which checks it). With a weight average (``ema_decay``) the model
    weights are the average (what is evaluated and shipped); the raw trained weights are dropped too (they would
    double the file, more parts than can come back)."""
    from dsrnet.run.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(run_dir)
    drop = {"optimizer_state", "scheduler_state", "scaler_state", "rng_state", "path", "format", "version",
            "train_model_state", "ema_updates"}  # fmt: skip
    save_checkpoint(dest, {k: v for k, v in ckpt.items() if k not in drop})
    load_checkpoint(dest)
    return dest


def stage_dsrnet(
    args, budget: Budget, work: Path, summary: dict, arms: dict | None = None
) -> list[tuple[Path, str]]:
    from dsrnet.run.shards import split_file
    from dsrnet.train import train

    settings = {**run_settings(args, budget), "dwconv": args.dwconv, "compile_mode": args.compile_mode}
    summary["dwconv"], summary["compile_mode"] = args.dwconv, args.compile_mode
    kwargs = DRY_DSRNET_KWARGS if args.dry_run else {}
    if arms:  # the recipe stage's winners, trained with together (shipped weights of an improved recipe)
        train_over, model_over = combined_arms(arms)
        settings.update(train_over)
        kwargs = {**kwargs, **model_over}
        summary["arms"] = {"names": list(arms), "train": train_over, "model": model_over}
    post_s = args.post_s if args.post_s is not None else 15.0
    if args.epochs:
        epochs, plan = args.epochs, {"epochs_from": "--epochs"}
    else:
        timing = timing_for(DSRNET_MODEL, args, work, settings, kwargs, budget, summary)
        available = min(args.target_train_s, budget.left() - post_s)
        epochs = min(args.max_epochs, epochs_that_fit(available, timing, args.slack, settings.get("eval_every", 1)))
        plan = {"epochs_from": "warm-up" if "given" not in timing else "--s-per-epoch", "timing": timing,
                "available_s": round(available, 1), "target_train_s": args.target_train_s}  # fmt: skip
        if epochs < 1:
            summary["skipped"] = [{"what": DSRNET_MODEL, "why": f"not one epoch fits in {available:.0f} s"}]
            return []
    plan["epochs"] = epochs
    summary["plan"] = plan
    log.info("training %s for %d epochs (%.0f s left of the budget)", DSRNET_MODEL, epochs, budget.left())
    run_dir = work / "runs" / DSRNET_MODEL
    # The schedule rule: a run that could not end in time stops within ~2 epochs instead of being cut short at the
    # end (weights of a truncated schedule are not shipped), leaving the rest of the call's time to what follows.
    cfg = train_config(DSRNET_MODEL, run_dir, {**settings, "epochs": epochs}, kwargs,
                       deadline=budget.deadline - post_s, deadline_rule="schedule")  # fmt: skip
    t0 = time.time()
    final = train(cfg)
    summary["train_wall_s"] = round(time.time() - t0, 1)
    keys = ("top1_error", "top3_error", "epochs", "epochs_done", "stopped_early", "train_time_s",
            "median_epoch_time_s", "dwconv", "compile_mode")
    summary["final"] = {k: final.get(k) for k in keys}
    if final.get("stopped_early"):
        summary["warning"] = "stopped early by the deadline: truncated schedule, NOT a full-schedule result"
    weights = weights_only_checkpoint(run_dir, work / WEIGHTS_NAME)
    shard_dir = work / "shards"
    shutil.rmtree(shard_dir, ignore_errors=True)
    manifest = split_file(weights, shard_dir, max_bytes=args.shard_bytes)
    parts = [shard_dir / p["file"] for p in json.loads(manifest.read_text())["parts"]]
    summary["weights"] = {"file": WEIGHTS_NAME, "bytes": weights.stat().st_size, "parts": len(parts)}
    if len(parts) + 2 > MAX_FILES:  # never bring back half a checkpoint
        raise RuntimeError(f"{WEIGHTS_NAME} needs {len(parts)} parts: more than {MAX_FILES - 2} cannot come back")
    # Priority: final.json, the whole weights, then config.yaml and metrics.jsonl (both also inside the checkpoint:
    # "config" and "history"). dsrnet50_cifar: 46.7 MiB of fp32 weights = 4 parts, so all 8 files come back.
    return [
        (run_dir / "final.json", "final.json"),
        (manifest, manifest.name),
        *[(p, p.name) for p in parts],
        (run_dir / "config.yaml", "config.yaml"),
        (run_dir / "metrics.jsonl", "metrics.jsonl"),
    ]


def stage_paper_runs(args, budget: Budget, work: Path, summary: dict) -> list[tuple[Path, str]]:
    """``baselines`` (reproduce) and ``ablation`` (ablate): each model/variant trained only if its whole schedule
    fits what is left of the budget."""
    from dsrnet.models import stem_variant
    from dsrnet.paper import runner

    settings = run_settings(args, budget)
    if "epochs" not in settings:
        from dsrnet.errors import DsrnetError

        raise DsrnetError("the baselines/ablation stages need the dsrnet stage's epochs; fix: pass --like or --epochs")
    summary["settings"] = {k: v for k, v in settings.items() if k != "data_dir"}
    baselines = args.stage == "baselines"
    out = work / ("reproduce" if baselines else "ablate")
    bench_settings = DRY_BENCH if args.dry_run else {}
    if baselines:
        names = args.models or list(DEFAULT_BASELINES)
        jobs = [(n, stem_variant(n, args.stem), {}) for n in names]
    else:
        names = args.variants or list(DEFAULT_VARIANTS)
        variants = {v.name: v for v in runner.ablation_variants(args.stem)}
        dry_kw = DRY_DSRNET_KWARGS if args.dry_run else {}
        jobs = [(n, stem_variant("dsrnet50", variants[n].stem or args.stem), {**dry_kw, **variants[n].kwargs})
                for n in names]  # fmt: skip
    common = {"stem": args.stem, "out": out, "train": {**settings, "deadline": budget.deadline - 5},
              "bench_settings": bench_settings, "model_kwargs": dsrnet_model_kwargs(args, baselines),
              "command": " ".join(sys.argv)}  # fmt: skip
    done, skipped = [], []
    post_s = args.post_s if args.post_s is not None else 15.0
    deadline = budget.deadline - post_s - (args.bench_reserve_s if baselines else 0.0)
    for name, arch, kwargs in jobs:
        key = arch if baselines else name  # the runner's run folder: runs/<arch> (reproduce), runs/<variant>
        t0 = time.time()
        # One checkpoint, at the end: ResNet-50's is 188 MB, ~0.3 s a save (5 % of the call over 67 epochs), and a
        # run of this stage is never resumed (checkpoint_every is resume-mutable: reproduce still recognises it).
        cfg = train_config(arch, out / "runs" / key, settings, kwargs, checkpoint_every=settings["epochs"])
        why = train_to_the_end(cfg, deadline, args.min_run_s)
        if why:
            skipped.append({"what": name, "why": why})
            log.info("skip %s: %s", name, why)
            continue
        # The finished run is the runner's own (same config and folder): it is not trained again, only timed.
        if baselines:
            runner.reproduce("cifar10", models=[arch], **common)  # arch: the --stem variant just trained
        else:
            runner.ablate("cifar10", variants=[name], **common)
        done.append({"what": name, "arch": arch, "wall_s": round(time.time() - t0, 1)})
        if baselines:  # in OUT at once: should the call hang past the device tool's limit, this run still returns
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle_runs(out, {**summary, "done": done}), args.out / "runs.json")
    if not baselines and len(done) > 1:  # one table of every finished variant (nothing is retrained)
        runner.ablate("cifar10", variants=[d["what"] for d in done], **common)
    summary["done"], summary["skipped"] = done, skipped
    files = []
    if baselines:
        summary["timed"] = bench_comparison(args, out, common, [d["arch"] for d in done], budget)
        bundle = bundle_runs(out, summary)
        files.append((bundle, bundle.name))
    else:
        if done:
            files += [(out / "table.md", "table.md"), (out / "summary.json", "summary.json")]
        files += [(out / "runs" / d["what"] / "metrics.jsonl", f"{d['what']}/metrics.jsonl") for d in done]
    return files


def bench_comparison(args, out: Path, common: dict, trained: list[str], budget: Budget) -> list[str]:
    """Time, in this call and with the reproduce runner's own settings, every model of ``--bench-models`` that the
    call did not train (DSRNet first: its run came from the dsrnet stage), so that this call's timings make the
    whole time-per-batch column of the table (see ``--assemble``); the trained ones were timed after training."""
    from dsrnet.models import stem_variant
    from dsrnet.paper import runner

    names = args.bench_models or ([DSRNET_MODEL] if args.dry_run else [DSRNET_MODEL, *BENCH_COMPARISON])
    todo = [n for n in dict.fromkeys(stem_variant(n, args.stem) for n in names) if n not in trained]
    timed = list(trained)
    for arch in todo:
        if budget.left() < args.bench_s:
            log.info("no time left to time %s (%.0f s left)", arch, budget.left())
            continue
        runner.bench_models("cifar10", [arch], stem=args.stem, out=out, train=common["train"],
                            bench_settings=common["bench_settings"], model_kwargs=common["model_kwargs"])  # fmt: skip
        timed.append(arch)
    return timed


def bundle_runs(out: Path, summary: dict) -> Path:
    """``runs.json``: the run files of every model trained and the bench.json of every model timed in this call
    (:func:`dsrnet.paper.assemble.write_bundle`), under the call's id: one file, whatever the number of models."""
    from dsrnet.paper.assemble import BUNDLE_NAME, write_bundle

    runs = {p.name: p for p in sorted((out / "runs").glob("*")) if p.is_dir()} if (out / "runs").is_dir() else {}
    header = {k: summary.get(k) for k in ("call_id", "stage", "dry_run", "started", "versions", "settings")}
    header["device_name"] = summary.get("gpu") or summary.get("device_name")
    return write_bundle(out / BUNDLE_NAME, runs, header)


# -------------------------------------------------------------------------------------------------------- recipe


class Arm(NamedTuple):
    """One arm of the ``recipe`` stage: ``train`` overrides the stage's TrainConfig settings, ``model`` is added to
    the model kwargs; ``tests`` says what it tests, ``reference`` what motivates it."""

    train: dict
    model: dict
    tests: str
    reference: str


#: The ``recipe`` stage's built-in arms, most informative first (the default order; ``base`` anchors every delta).
#: Each arm changes the shipped recipe (``--like results/gpu/dsrnet/config.yaml``: 7.63 % final top-1 error at
#: 67 epochs, train top-1 99.8 %, i.e. overfitting) in one respect, except ``combo``.
RECIPE_ARMS: dict[str, Arm] = {
    "base": Arm({}, {}, "the shipped recipe itself: the anchor of every delta",
                "results/gpu/dsrnet (fast recipe, 7.63 % at 67 epochs)"),
    "combo": Arm({"cutout": 16, "dw_weight_decay": False, "pad_fill": "mean", "ema_decay": 0.995}, {},
                 "cutout16 + no_dw_wd + mean_pad together, whether the three add up; reported with ema's weight "
                 "average, and without it in the 'without EMA' column (the average does not change the training)",
                 "the arms below"),
    "cutout16": Arm({"cutout": 16}, {},
                    "stronger augmentation against the overfitting: a random 16x16 square of each training image "
                    "blanked", "DeVries & Taylor 2017, Improved Regularization of CNNs with Cutout (16 px, CIFAR-10)"),
    "mean_pad": Arm({"pad_fill": "mean"}, {},
                    "the random crop pads with the mean colour (0 after normalisation) instead of black",
                    "results/recipe-leads: better on 4 of 4 seeds by 0.2-1.5 pp (CPU, tiny widths, 2k images)"),
    "ema": Arm({"ema_decay": 0.995}, {},
               "the reported weights are a moving average of the trained ones over the last ~200 steps (~2 "
               "epochs at batch 512; 10 % of a 20-epoch arm); the same training as base, so its row also gives the "
               "plain weights' error again (a second measurement of base, up to GPU nondeterminism)",
               "Polyak & Juditsky 1992; timm's --model-ema; the shipped run's test error swung by up to 10 points"),
    "no_dw_wd": Arm({"dw_weight_decay": False}, {},
                    "no weight decay on the depthwise 3x3 kernels (9 weights per channel)",
                    "Howard et al. 2017, MobileNets, Sec. 3.3 (little or no weight decay on depthwise filters)"),
    "reflect_pad": Arm({"pad_fill": "reflect"}, {}, "the random crop pads by reflecting the image (no flat border)",
                       "Zagoruyko & Komodakis 2016, Wide Residual Networks, Sec. 4 (reflection padding)"),
    "drop_path01": Arm({}, {"drop_path_rate": 0.1},
                       "stochastic depth: block i of 16 skips its residual branch with probability 0.1 * i / 15 "
                       "in training (a regulariser of deep residual nets, off in the paper)",
                       "Huang et al. 2016, Deep Networks with Stochastic Depth; timm's ResNet recipes"),
    "ls02": Arm({"label_smoothing": 0.2}, {}, "stronger label smoothing, 0.1 -> 0.2, against over-confidence",
                "Szegedy et al. 2016 (Inception-v3, Sec. 7); Mueller et al. 2019, When does label smoothing help?"),
    "lr_half": Arm({"lr": 0.2}, {}, "half the peak learning rate (0.4 -> 0.2 at batch 512): the shipped run's test "
                   "error swung by up to 10 points until its last ~10 epochs",
                   "results/gpu/dsrnet/metrics.jsonl (the shipped run's test curve)"),
    "no_dilation": Arm({}, {"stem_dilation": 1, "down_dilation": 1, "block_dilations": [1]},
                       "the paper's dilation at 32 px: the last stage's map is 4x4, where rate-3 taps mostly read "
                       "padding; every rate 1",
                       "results/cifar10-ablate-5k/table.md (paper stem at 32 px: 9 pp LOWER error without dilation); "
                       "but with the cifar stem a CPU lead saw no difference (results/recipe-leads), hence last"),
    "stem_rate1": Arm({}, {"stem_dilation": 1},
                      "the stem's rate 3 alone: on the cifar stem a rate-3 3x3 conv reads the raw image at 3-px "
                      "gaps (no neighbouring pixels), the in-stage rates stay",
                      "isolates the stem's part of no_dilation (Section 4.2: 'dilated rate=3 in the first layer')"),
}  # fmt: skip
#: Settings every arm shares: an arm that changed one would not be comparable (or not be a recipe change).
SHARED_KEYS = frozenset({
    "model", "dataset", "data_dir", "download", "epochs", "seed", "subset_per_class", "test_subset_per_class",
    "device", "out_dir", "resume", "deadline", "model_kwargs",
})  # fmt: skip
#: Spread of one seed's top-1 error on 10,000 test images (binomial SD at ~7 % error: 0.26 pp).
NOISE_PP = 0.3
RECIPE_FILES = ("recipe.md", "recipe.json", "runs.json")


def recipe_arms(args) -> dict[str, Arm]:
    """The requested arms, checked BEFORE anything is decoded or trained: known names, TrainConfig keys this
    checkout has, no shared setting changed, values TrainConfig accepts, model kwargs the model takes. Every
    problem is named in one DsrnetError line. For the ``dsrnet`` stage (the arms whose changes it trains with,
    together) each arm is checked at one placeholder epoch, its epochs not being known yet."""
    from dataclasses import fields

    from dsrnet.errors import DsrnetError
    from dsrnet.models import create_model, stem_variant
    from dsrnet.train import TrainConfig

    names = list(dict.fromkeys(args.arms or RECIPE_ARMS))
    unknown = [n for n in names if n not in RECIPE_ARMS]
    if unknown:
        raise DsrnetError(f"unknown recipe arm(s) {', '.join(unknown)}; fix: choose from {' '.join(RECIPE_ARMS)}")
    if args.stage == "recipe":
        settings = recipe_settings(args)
    else:  # the dsrnet stage: --epochs if given, else a placeholder long enough for --like's warm-up
        settings = run_settings(args, None)
        settings["epochs"] = args.epochs or max(1, math.ceil(2 * (settings.get("warmup_epochs") or 0)))
    known = {f.name for f in fields(TrainConfig)}
    arch = stem_variant(DSRNET_MODEL, args.stem)
    problems, ok = [], []
    for name in names:
        arm = RECIPE_ARMS[name]
        missing = sorted(set(arm.train) - known)
        shared = sorted(set(arm.train) & SHARED_KEYS)
        if missing:
            problems.append(f"{name} sets {', '.join(missing)}, which this checkout's TrainConfig lacks")
        elif shared:
            problems.append(f"{name} changes {', '.join(shared)}, which every arm shares")
        else:
            try:
                train_config(arch, Path("unused"), settings, arm_model_kwargs(arm, args.dry_run), **arm.train)
                create_model(arch, num_classes=10, device="meta", **arm_model_kwargs(arm, args.dry_run))
            except Exception as err:  # any refusal of the arm's values or kwargs is the arm's problem
                head, _, fix = (str(err).splitlines() or [type(err).__name__])[0].partition("; fix: ")
                problems.append(f"{name}: {head}" + (f" ({fix})" if fix else ""))
            else:
                ok.append(name)
    if problems:
        fix = f"--arms {' '.join(ok)}" if ok else "fix the arms"
        raise DsrnetError(f"recipe arm(s) refused before training: {'; '.join(problems)}; fix: correct or leave "
                          f"those arms out ({fix})")  # fmt: skip
    return {n: RECIPE_ARMS[n] for n in names}


def combined_arms(arms: dict[str, Arm]) -> tuple[dict, dict]:
    """The TrainConfig overrides and model kwargs of ``arms`` applied together (the ``dsrnet`` stage's
    ``--arms``); two arms that set one key to different values are refused."""
    from dsrnet.errors import DsrnetError

    train_over, model_over = {}, {}
    for arm in arms.values():
        for mine, theirs in ((train_over, arm.train), (model_over, arm.model)):
            clash = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
            if clash:
                raise DsrnetError(f"--arms {' '.join(arms)} set {', '.join(clash)} differently; fix: keep one of them")
            mine.update(theirs)
    return train_over, model_over


def recipe_settings(args) -> dict:
    """The settings every arm starts from: ``--like``'s recipe at ``--epochs`` (a dry run: at most 2) and one seed.
    The schedule is the fast recipe's at that length (linear warm-up of at most 2 epochs and at most half the run,
    as ``TrainConfig`` sets it for any length, then linear decay to zero at the last epoch)."""
    from dsrnet.errors import DsrnetError

    settings = run_settings(args, None)
    if "epochs" not in settings:
        raise DsrnetError("the recipe stage needs the arms' epochs; fix: pass --epochs N (or --like with epochs)")
    if args.dry_run:
        settings["epochs"] = min(settings["epochs"], args.max_epochs)
    if settings.get("warmup_epochs") is not None:  # --like's 2 warm-up epochs, kept within a shorter run
        settings["warmup_epochs"] = min(settings["warmup_epochs"], settings["epochs"] / 2)
    return settings


def arm_model_kwargs(arm: Arm, dry_run: bool) -> dict:
    return {**(DRY_DSRNET_KWARGS if dry_run else {}), **arm.model}


def arm_changes(arm: Arm) -> str:
    """What an arm changes, as text: ``cutout=16, pad_fill=mean; model: stem_dilation=1``."""
    text = lambda d: ", ".join(f"{k}={json.dumps(v)}" for k, v in d.items())  # noqa: E731
    parts = ([text(arm.train)] if arm.train else []) + ([f"model: {text(arm.model)}"] if arm.model else [])
    return "; ".join(parts) or "nothing (--like's recipe)"


def stage_recipe(args, budget: Budget, work: Path, summary: dict, arms: dict[str, Arm]) -> list[tuple[Path, str]]:
    """``recipe``: each arm trains the same architecture (unless it changes the model), epochs and seed with its
    overrides, one after the other; results after each arm. No warm-up: every arm starts while at least
    ``--min-run-s`` are left and trains under the deadline's ``schedule`` rule (:func:`train_to_the_end`), so an
    arm whose whole schedule cannot fit stops from its second epoch on and is reported as not trained, with its pace.
    Dynamo is reset before each arm so the recompile limit never turns a run eager; Inductor's caches make the
    recompilation of an identical graph cheap (loss, augmentation and optimizer lie outside the compiled model).
    """
    from dsrnet.models import stem_variant

    settings = recipe_settings(args)
    epochs = settings["epochs"]
    summary["settings"] = {k: v for k, v in settings.items() if k != "data_dir"}
    summary["arms"] = list(arms)
    arch = stem_variant(DSRNET_MODEL, args.stem)
    out = work / "recipe"
    out.mkdir(parents=True, exist_ok=True)
    post_s = args.post_s if args.post_s is not None else 5.0  # small text files only
    deadline = budget.deadline - post_s
    rows, skipped = [], []
    files = [(out / name, name) for name in RECIPE_FILES]

    for name, arm in arms.items():
        run_dir = out / "runs" / name
        log.info("arm %s (%s): %d epochs, %.0f s left", name, arm_changes(arm), epochs, deadline - time.time())
        t0 = time.time()
        try:
            why = train_to_the_end(
                train_config(arch, run_dir, settings, arm_model_kwargs(arm, args.dry_run), checkpoint_every=epochs,
                             **arm.train),
                deadline, args.min_run_s,
            )  # fmt: skip
        except BudgetExceeded:
            raise
        except Exception as err:  # one failing arm must not lose the others' results
            _raise_if_budget_stop(err)  # the watchdog's stop, wrapped by the compiler
            why = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            log.warning("arm %s failed:\n%s", name, traceback.format_exc())
            if "cuda" in settings.get("device", "cuda"):
                _empty_cuda_cache()
        if why:
            skipped.append({"arm": name, "why": why})
            log.info("arm %s not trained: %s", name, why)
        else:
            rows.append(recipe_row(name, arm, run_dir, time.time() - t0))
        write_recipe(out, rows, skipped, arms, settings, arch, args, summary)
    write_recipe(out, rows, skipped, arms, settings, arch, args, summary)
    summary["done"] = [r["arm"] for r in rows]
    summary["skipped"] = skipped
    return files


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def recipe_row(name: str, arm: Arm, run_dir: Path, wall_s: float) -> dict:
    """One arm's FINAL-epoch numbers (the last line of its metrics.jsonl; never the best epoch)."""
    import statistics

    m = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((run_dir / "final.json").read_text())
    last = m[-1]
    return {
        "arm": name, "changed": arm_changes(arm), "train_overrides": arm.train, "model_kwargs": arm.model,
        "top1_error": last["test_top1_error"], "top3_error": last["test_top3_error"],
        "raw_top1_error": last.get("raw_test_top1_error"),  # an ema arm's trained weights without the average
        "train_top1": last["train_top1"], "test_loss": last["test_loss"], "epoch": last["epoch"],
        "epochs": final["epochs"],
        "s_per_epoch": round(statistics.median(r["epoch_time_s"] for r in m), 3), "wall_s": round(wall_s, 1),
        "test_images": final["test_images"], "device": final["device"], "torch": final["torch"],
    }  # fmt: skip


def write_recipe(out: Path, rows: list[dict], skipped: list[dict], arms: dict[str, Arm], settings: dict, arch: str,
                 args, summary: dict) -> None:  # fmt: skip
    """recipe.md, recipe.json and runs.json (every trained arm's config.yaml, final.json and metrics.jsonl) in
    ``out``; rewritten after each arm, so a call stopped by the watchdog still returns the arms it finished."""
    from dsrnet.paper.assemble import write_bundle
    from dsrnet.run.atomic import atomic_write_json, atomic_write_text

    base = next((r for r in rows if r["arm"] == "base"), None)
    for r in rows:
        r["delta_top1_vs_base_pp"] = round(r["top1_error"] - base["top1_error"], 2) if base else None
        r["delta_top3_vs_base_pp"] = round(r["top3_error"] - base["top3_error"], 2) if base else None
    command = "PYTHONPATH=src python3 benchmarks/gpu_campaign.py " + shlex.join(args.argv)
    card = summary.get("gpu") or summary.get("device_name")
    versions = summary.get("versions", {})
    header = {"call_id": summary.get("call_id"), "stage": "recipe", "dry_run": args.dry_run,
              "started": summary.get("started"), "device_name": card, "versions": versions,
              "settings": {k: v for k, v in settings.items() if k != "data_dir"}}  # fmt: skip
    doc = {**header, "command": command, "arch": arch, "epochs": settings["epochs"], "seed": settings["seed"],
           "base_arm": "base", "noise_pp": NOISE_PP, "rows": rows, "skipped": skipped,
           "arms": {n: {"changed": arm_changes(a), "train": a.train, "model": a.model, "tests": a.tests,
                        "reference": a.reference} for n, a in arms.items()}}  # fmt: skip
    atomic_write_json(out / "recipe.json", doc)
    write_bundle(out / "runs.json", {r["arm"]: out / "runs" / r["arm"] for r in rows}, header)
    atomic_write_text(out / "recipe.md", render_recipe(doc))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_recipe(doc: dict) -> str:
    pp = lambda v: "–" if v is None else f"{v:+.2f} pp"  # noqa: E731
    test_images = doc["rows"][0]["test_images"] if doc["rows"] else None
    lines = [
        f"# Recipe arms: {doc['arch']}, {doc['epochs']} epochs each, seed {doc['seed']}",
        "",
        "| arm | what changed | top-1 err (%) | Δ top-1 vs base | top-3 err (%) | Δ top-3 vs base | train top-1 (%) "
        "| top-1 err without EMA (%) | s/epoch | epochs | wall s |",
        "| :-- | :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in doc["rows"]:
        lines.append(f"| {r['arm']} | {r['changed']} | {r['top1_error']:.2f} | {pp(r['delta_top1_vs_base_pp'])} | "
                     f"{r['top3_error']:.2f} | {pp(r['delta_top3_vs_base_pp'])} | {r['train_top1']:.2f} | "
                     f"{_pct(r.get('raw_top1_error'))} | {r['s_per_epoch']:.2f} | {r['epochs']} | "
                     f"{r['wall_s']:.0f} |")  # fmt: skip
    if not doc["rows"]:
        lines.append("| (no arm trained) | | | | | | | | | | |")
    lines += [
        "",
        f"FINAL-epoch errors (never the best epoch) on {test_images or 'the'} test images; train top-1 is the last "
        "epoch's, on augmented batches; s/epoch = median training epoch (test pass excluded); wall s = the arm's "
        "whole training call, compilation included; \"without EMA\" = the trained weights of an arm that reports "
        "their moving average (`ema_decay`). Only arms that completed their schedule have a row (an arm the "
        "deadline would have cut short stops and is listed under \"Not trained\").",
        "",
        f"**One seed per arm at {doc['epochs']} epochs is a lead, not a result**: a difference below "
        f"~{doc['noise_pp']} pp (the spread of one seed's error on 10,000 test images) is noise.",
    ]
    if doc["dry_run"]:
        lines += ["", "DRY RUN (CPU, tiny widths, a few images per class): the numbers say nothing about the recipes."]
    lines += ["", "Arms:", ""] + [f"- `{n}`: {a['tests']}. Why: {a['reference']}." for n, a in doc["arms"].items()]
    if doc["skipped"]:
        lines += ["", "Not trained:", ""] + [f"- `{s['arm']}`: {s['why']}" for s in doc["skipped"]]
    s, v = doc["settings"], doc["versions"]
    keys = ("recipe", "batch_size", "lr", "weight_decay", "label_smoothing", "schedule", "warmup_epochs",
            "pad_fill", "precision")
    shared = ", ".join(f"{k} {s[k]}" for k in keys if k in s)
    lines += [
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Card: {doc['device_name']}; torch {v.get('torch')}, dsrnet {v.get('dsrnet')}, Python {v.get('python')}; "
        f"seed {doc['seed']} for every arm; call {doc['call_id']}, started {doc['started']}. Every arm's settings "
        f"unless it changes them: {shared or 'the recipe defaults'}.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- bench


def bench_groups(dry_run: bool) -> list[dict]:
    """run_bench calls in order of value: DSRNet vs ResNet-50 (both stems, 2 batch sizes, eager fp32 then compiled
    bf16 channels_last, inference and train), then the other baselines."""
    batches = (2, 4) if dry_run else (128, 1024)
    stems = (("cifar", 32), ("paper", 96))
    pair = ["dsrnet50", "resnet50"]
    groups = []
    for mode in ("inference", "train"):
        for bs in batches:
            for stem, size in stems:
                groups.append({"models": pair, "stem": stem, "size": size, "bs": bs, "mode": mode, "compiled": False})
    for bs in batches:
        for mode in ("inference", "train"):
            for stem, size in stems:
                groups.append({"models": pair, "stem": stem, "size": size, "bs": bs, "mode": mode, "compiled": True})
    others = ["mobilenet_v2"] if dry_run else ["resnext50_32x4d", "resnet101", "resnext101_32x8d", "mobilenet_v2"]
    for compiled in (False, True):
        for stem, size in stems:
            for m in others:
                groups.append({"models": [m], "stem": stem, "size": size, "bs": batches[0], "mode": "inference",
                               "compiled": compiled})  # fmt: skip
    return groups


def stage_bench(args, budget: Budget, work: Path, summary: dict) -> list[tuple[Path, str]]:
    import torch

    from dsrnet.bench.measure import (
        add_relative_latency,
        environment,
        render_markdown,
        run_bench,
        write_bench_csv,
    )
    from dsrnet.run.atomic import atomic_write_json, atomic_write_text

    device = "cpu" if args.dry_run else "cuda"
    compile_ok = not args.dry_run  # Inductor on a CPU takes minutes: the dry run measures eager only
    env = environment(device)
    rows, skipped, spent = [], [], {}
    out = work / "bench"
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_{device}"
    command = " ".join(sys.argv)

    def write() -> None:
        add_relative_latency(rows)
        md = render_markdown(rows, env, command=command) if rows else "No rows measured.\n"
        if skipped:
            md += "\nSkipped (did not fit the time budget or failed):\n\n" + "".join(
                f"- {s['group']}: {s['why']}\n" for s in skipped
            )
        write_bench_csv(out / f"{name}.csv", rows, env)
        atomic_write_json(out / f"{name}.json", {"command": command, "env": env, "rows": rows, "skipped": skipped})
        atomic_write_text(out / f"{name}.md", md)

    for g in bench_groups(args.dry_run):
        compiled = g["compiled"] and compile_ok
        kind = ("compiled" if compiled else "eager", g["mode"])
        label = (f"{'+'.join(g['models'])} {g['stem']} stem {g['size']}px bs{g['bs']} {g['mode']} "
                 f"{'bf16 channels_last compiled' if g['compiled'] else 'fp32 eager'}")  # fmt: skip
        est = len(g["models"]) * spent.get(kind, FIRST_GUESS_S[kind] * (0.05 if args.dry_run else 1.0))
        if est > budget.left():
            skipped.append({"group": label, "why": f"estimated {est:.0f} s, {budget.left():.0f} s left"})
            continue
        if compiled:
            _reset_compiler()
        t0 = time.time()
        try:
            res = run_bench(
                g["models"], sizes=[g["size"]], batch_size=g["bs"], device=device,
                precisions=["bf16" if g["compiled"] else "fp32"], channels_last=g["compiled"], compile=compiled,
                modes=[g["mode"]], stem=g["stem"], warmup=0 if args.dry_run else None,
                repeats=1 if args.dry_run else None, log=log.info,
            )  # fmt: skip
        except torch.cuda.OutOfMemoryError:
            skipped.append({"group": label, "why": "CUDA out of memory"})
            torch.cuda.empty_cache()
            continue
        except Exception as err:  # one failing group must not lose the others' results
            _raise_if_budget_stop(err)  # the watchdog's stop, wrapped by the compiler
            skipped.append({"group": label, "why": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"})
            log.warning("bench group %s failed:\n%s", label, traceback.format_exc())
            continue
        per_model = (time.time() - t0) / len(g["models"])
        spent[kind] = max(spent.get(kind, 0.0), per_model * 1.2)
        for r in res["rows"]:
            r["group_wall_s"] = round(time.time() - t0, 1)
            if g["compiled"] and not compiled:
                r["note"] = "dry run: compile skipped on CPU"
        rows.extend(res["rows"])
        write()
    write()
    summary["rows"], summary["skipped"] = len(rows), skipped
    return [(out / f"{name}.{ext}", f"{name}.{ext}") for ext in ("csv", "json", "md")]


# ------------------------------------------------------------------------------------------------------- results


def collect(files: list[tuple[Path, str]], out: Path, summary: dict) -> None:
    """Copy ``files`` (source, name in OUT) in order of priority into OUT, within the device tool's limits; then
    ``campaign.json`` if a slot is left. What does not fit is listed in the summary."""
    out.mkdir(parents=True, exist_ok=True)
    kept, left = [], []
    for src, name in files:
        if not src.is_file():
            left.append(f"{name} (missing)")
        elif src.stat().st_size > MAX_FILE_BYTES:
            left.append(f"{name} ({src.stat().st_size} bytes > {MAX_FILE_BYTES})")
        elif len(kept) >= MAX_FILES:
            left.append(f"{name} (over {MAX_FILES} files)")
        else:
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            kept.append(name)
    summary["files"], summary["left_out"] = kept, left
    summary["wall_s"] = round(time.time() - T0, 1)
    if len(kept) < MAX_FILES:
        summary["files"].append("campaign.json")
        (out / "campaign.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=STAGES, help="the GPU stage to run (or --assemble)")
    p.add_argument("--out", type=Path, help="folder for the returned files (<= 8, <= 15 MiB each)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole command")
    p.add_argument("--data-dir", type=Path, default=Path("/root/data"))
    p.add_argument("--decoder", type=Path, default=Path("/root/c10/decode.py"),
                   help="CIFAR-10 decoder run when --data-dir holds no arrays")  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny widths, a few images per class")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: --like's, else 0)")
    p.add_argument("--epochs", type=int, default=None, help="fix the epochs (dsrnet: skips the warm-up)")
    p.add_argument("--like", default=None, help="config.yaml / final.json / run folder of the dsrnet stage")
    p.add_argument("--s-per-epoch", type=float, default=None, help="dsrnet: known s/epoch: skip the warm-up run")
    p.add_argument("--first-epoch-extra-s", type=float, default=90.0, help="with --s-per-epoch: compile etc.")
    p.add_argument("--min-run-s", type=float, default=60.0,
                   help="baselines/ablation/recipe: start a run only while this much is left (a compilation and two "
                        "epochs); it stops itself after its 2nd epoch if its whole schedule cannot fit")
    p.add_argument("--target-train-s", type=float, default=360.0, help="dsrnet: training wall time to aim for")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=None, metavar="N",
                   help="score the test set every N epochs and after the last (TrainConfig.eval_every; 0: the last "
                   "only; default: every epoch); the dsrnet stage plans its epochs with it")  # fmt: skip
    p.add_argument("--slack", type=float, default=0.05, help="planning margin on s/epoch")
    p.add_argument("--margin-s", type=float, default=None, help="kept for writing results (default 5%%, >= 15 s)")
    p.add_argument("--post-s", type=float, default=None,
                   help="time reserved after training (default: 15 s, recipe: 5 s; weights, shards, tables)")
    p.add_argument("--models", nargs="+", default=None, help=f"baselines (default: {' '.join(DEFAULT_BASELINES)})")
    p.add_argument("--variants", nargs="+", default=None, help=f"ablation (default: {' '.join(DEFAULT_VARIANTS)})")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help=f"recipe: arms of RECIPE_ARMS to compare, in this order (default: {' '.join(RECIPE_ARMS)}); "
                   "dsrnet: arms whose changes the run trains with, together")
    p.add_argument("--stem", choices=("cifar", "paper"), default="cifar")
    p.add_argument("--shard-bytes", type=int, default=MAX_FILE_BYTES)
    p.add_argument("--dwconv", choices=("torch", "triton", "triton_bn_relu"), default="torch",
                   help="dsrnet stage: what computes the depthwise convs (TrainConfig.dwconv)")  # fmt: skip
    p.add_argument("--compile-mode", default="default",
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="dsrnet stage: torch.compile's mode (TrainConfig.compile_mode; reduce-overhead = CUDA "
                   "graphs), once fused_gpu.py showed it faster")  # fmt: skip
    p.add_argument("--bench-models", nargs="+", default=None, help="baselines: models timed in the call besides "
                   "the trained ones (default: dsrnet50 and the paper's comparison; dry run: dsrnet50)")
    p.add_argument("--bench-s", type=float, default=10.0, help="baselines: time one model only if this is left")
    p.add_argument("--bench-reserve-s", type=float, default=10.0,
                   help="baselines: kept after training for timing DSRNet (the others: while --bench-s is left)")
    g = p.add_argument_group("assemble (here, no GPU)")
    g.add_argument("--assemble", nargs="+", type=Path, metavar="RETURNED_DIR", default=None,
                   help="folders returned by the dsrnet stage and baselines calls: write a reproduce folder")
    g.add_argument("--out-dir", type=Path, default=Path("results/gpu/cifar10"), help="--assemble: output folder")
    g.add_argument("--bench-call", default=None, help="--assemble: the call whose timings to use (default: the "
                   "newest call that timed every trained model)")
    g.add_argument("--dsrnet-eval", type=Path, default=None,
                   help="--assemble: a `dsrnet eval` folder of DSRNet's weights (its confusion matrix)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.assemble:
        assembling = {a.dest for a in g._group_actions} | {"help"}
        given = [a.option_strings[0] for a in p._actions
                 if a.dest not in assembling and getattr(args, a.dest) != a.default]  # fmt: skip
        if given:  # silently ignored, they misled: --out wrote into the repository's results/gpu/cifar10
            p.error(f"--assemble runs no stage, so {', '.join(given)} would be ignored; fix: drop "
                    f"{'them' if len(given) > 1 else 'it'}{' (the output folder is --out-dir)' if '--out' in given else ''}")
        return args
    if not 1 <= args.shard_bytes <= MAX_FILE_BYTES:  # checked before training: a bad value lost the weights after it
        p.error(f"--shard-bytes must be in 1..{MAX_FILE_BYTES} (the largest file that comes back); got {args.shard_bytes}")
    missing = [f for f, v in (("--stage", args.stage), ("--out", args.out), ("--budget-s", args.budget_s)) if not v]
    if missing:
        p.error(f"{', '.join(missing)} required (or --assemble)")
    if args.dwconv != "torch" and args.stage != "dsrnet":
        p.error("--dwconv is for the dsrnet stage only (the baselines have no depthwise convs)")
    if args.compile_mode != "default" and args.stage != "dsrnet":
        p.error("--compile-mode is for the dsrnet stage only (the baselines keep the shipped run's settings)")
    if args.arms and args.stage not in ("recipe", "dsrnet"):
        p.error("--arms is for the recipe stage (arms to compare) and the dsrnet stage (arms to train with)")
    if args.dry_run:
        args.max_epochs = min(args.max_epochs, 2)
        args.min_run_s = min(args.min_run_s, 5.0)
    return args


def call_id() -> str:
    """Names one call of this script: its start (UTC) and a random tag (two calls in one second differ)."""
    import secrets

    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(T0)) + "-" + secrets.token_hex(4)


def assemble_main(args: argparse.Namespace) -> int:
    """``--assemble``: a reproduce results folder and the paper's table from returned folders (no GPU)."""
    from dsrnet.errors import DsrnetError
    from dsrnet.paper.assemble import assemble

    try:
        result = assemble(args.assemble, args.out_dir, bench_call=args.bench_call, dsrnet_eval=args.dsrnet_eval,
                          command=" ".join(["python", "benchmarks/gpu_campaign.py", *sys.argv[1:]]), log=log.info)
    except DsrnetError as err:
        print(f"gpu_campaign: error: {err}", file=sys.stderr)
        return 2
    print(result["table"], end="")
    for path in result["files"]:
        log.info("wrote %s", path)
    return 0


def _raise_if_budget_stop(err: BaseException) -> None:
    """Raise :class:`BudgetExceeded` if ``err`` wraps the watchdog's (a compiler's own error around it)."""
    stop = _caused_by(err, BudgetExceeded)
    if stop is not None:
        raise BudgetExceeded(str(stop)) from err


def _caused_by(err: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The ``kind`` exception in ``err``'s chain (causes and contexts), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.assemble:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
        return assemble_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    margin = args.margin_s if args.margin_s is not None else max(15.0, 0.05 * args.budget_s)
    budget = Budget(args.budget_s, margin)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"campaign-{args.stage}-"))
    summary: dict = {"stage": args.stage, "dry_run": args.dry_run, "budget_s": args.budget_s, "margin_s": margin,
                     "argv": sys.argv[1:], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0)),
                     "call_id": call_id()}  # fmt: skip

    def watchdog(signum, frame):
        # Re-armed: an exception raised inside an Inductor compile can be swallowed (a weakref callback) or
        # wrapped; it comes again every 2 s until it reaches main's handlers, which switch the alarm off.
        signal.alarm(2)
        raise BudgetExceeded(f"budget of {args.budget_s:.0f} s spent")

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(max(1, int(budget.end - time.time() - min(5.0, margin / 2))))
    files: list[tuple[Path, str]] = []
    status = 0
    from dsrnet.errors import DsrnetError

    try:
        import torch

        import dsrnet

        # Refused here (one line), before the data is decoded or anything trains, even on a machine with no GPU.
        arms = recipe_arms(args) if args.stage == "recipe" or (args.stage == "dsrnet" and args.arms) else None
        if args.stage == "dsrnet" and arms:
            combined_arms(arms)  # arms that contradict each other: refused now, not after the data step
        summary["versions"] = {"dsrnet": dsrnet.__version__, "torch": torch.__version__,
                               "python": sys.version.split()[0]}  # fmt: skip
        if torch.cuda.is_available():
            summary["gpu"] = torch.cuda.get_device_name(0)
        elif args.dry_run:
            from dsrnet.bench.measure import device_name

            summary["device_name"] = device_name(torch.device("cpu"))
        else:
            raise RuntimeError("no CUDA device; fix: run on the GPU machine, or pass --dry-run for a CPU rehearsal")
        if args.stage != "bench":
            summary["data"] = ensure_data(args.data_dir, args.decoder)
        if args.stage == "recipe":
            files = stage_recipe(args, budget, work, summary, arms)
        elif args.stage == "dsrnet":
            files = stage_dsrnet(args, budget, work, summary, arms)
        else:
            stage = {"bench": stage_bench}.get(args.stage, stage_paper_runs)
            files = stage(args, budget, work, summary)
        summary["status"] = "ok"
    except BudgetExceeded as err:
        signal.alarm(0)
        summary["status"] = f"stopped by the watchdog: {err}"
        status = 3
    except DsrnetError as err:  # bad input: one line naming the problem and the fix, no traceback
        signal.alarm(0)
        if stop := _caused_by(err, BudgetExceeded):  # a reader's "cannot read" around the watchdog's stop (context)
            summary["status"] = f"stopped by the watchdog: {stop} (inside DsrnetError)"
            status = 3
        else:
            summary["status"] = f"refused: {err}"
            print(f"gpu_campaign: error: {err}", file=sys.stderr)
            status = 2
    except Exception as err:
        signal.alarm(0)
        budget_hit = _caused_by(err, BudgetExceeded)  # e.g. Inductor's own error wrapping the watchdog's
        summary["status"] = (f"stopped by the watchdog: {budget_hit} (inside {type(err).__name__})" if budget_hit
                             else f"failed: {type(err).__name__}: {err}")  # fmt: skip
        log.error("stage %s %s:\n%s", args.stage, "stopped" if budget_hit else "failed", traceback.format_exc())
        status = 3 if budget_hit else 1
    finally:
        signal.alarm(0)
    if status and args.stage == "dsrnet" and not files:  # whatever the run left (final.json only if it finished)
        run_dir = work / "runs" / DSRNET_MODEL
        files = [(run_dir / f, f) for f in ("final.json", "metrics.jsonl", "config.yaml")]
    if status and args.stage == "baselines" and not files and (work / "reproduce" / "runs").is_dir():
        try:  # the runs that finished (and the timings taken) before the failure still come back
            bundle = bundle_runs(work / "reproduce", summary)
            files = [(bundle, bundle.name)]
        except Exception:
            log.error("could not bundle the runs:\n%s", traceback.format_exc())
    if status and args.stage == "recipe" and (work / "recipe").is_dir():  # the arms finished before the failure
        files = [(work / "recipe" / name, name) for name in RECIPE_FILES]
    if status and args.stage == "bench":
        name = "bench_cpu" if args.dry_run else "bench_cuda"
        files = [(work / "bench" / f"{name}.{e}", f"{name}.{e}") for e in ("csv", "json", "md")]
    collect(files, args.out, summary)
    print(json.dumps(summary, default=str))
    if args.work is None and not os.environ.get("CAMPAIGN_KEEP_WORK"):
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the results are written: do not wait for compile workers at interpreter shutdown
