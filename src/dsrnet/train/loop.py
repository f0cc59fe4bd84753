"""The training loop behind ``dsrnet train``: one run of a :class:`~dsrnet.train.config.TrainConfig` into a run
folder (:class:`~dsrnet.run.rundir.RunDir`: ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt``, ``final.json``,
``tb/``). ``metrics.jsonl`` holds one JSON object per epoch; its ``lr`` is the rate at the epoch's first step; epochs
that ``eval_every`` skips have no ``test_*`` keys.
Accuracies and errors are in percent. The train loss is the optimised (label-smoothed) loss; the test loss is plain
cross-entropy. ``final.json`` holds the FINAL epoch's metrics, never a best-on-test pick. With ``ema_decay`` > 0
the reported model is the weight average (:mod:`dsrnet.train.ema`): ``test_*`` and ``model_state`` are its, the
optimised weights are ``raw_test_*`` and the checkpoint's ``train_model_state``.

Time-boxed runs: with ``config.deadline`` (Unix time) the loop stops after an epoch when the next one (estimated by
the last epoch's train + test time) would end past the deadline. It checkpoints that epoch and writes ``final.json``
with ``"stopped_early": true``, ``epochs_done`` and the planned ``epochs``: the learning-rate schedule was cut short
(for ``linear``/``cosine`` the rate never reached zero), so such a run is NOT a full-schedule result and does not count
as finished; resuming it without a deadline completes the schedule. With ``config.deadline_rule="schedule"`` it
also stops, from the second epoch on, as soon as the rest of the schedule at the pace of the last epoch (wall time
from one epoch's end to the next: train, test, checkpoint) would end past the deadline.

Progress goes to the ``dsrnet.train`` logger (stderr under the CLI); the function returns the final metrics.

Safety: the run folder is locked while a process trains into it; a run never overwrites another run's folder;
a non-finite training loss, test loss or weight stops the run before that state is checkpointed, so the checkpoint
on disk is always the last good one.

Distributed: under ``torchrun --nproc_per_node N -m dsrnet train ...`` each rank trains on its disjoint shard
of every epoch's global permutation (:class:`dsrnet.data.DeviceLoader`) with ``--batch-size`` as the GLOBAL
batch (``batch_size // N`` per rank), DistributedDataParallel averages the gradients (nccl on GPU, gloo on
CPU), each rank evaluates its shard of the test set and the counts are summed with ``all_reduce``; only rank 0
logs and writes. BatchNorm statistics are per rank unless ``--sync-bn`` (CUDA only: PyTorch's SyncBatchNorm
has no CPU kernel).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsrnet import data as D
from dsrnet.device import autocast, device_label, synchronize
from dsrnet.errors import DsrnetError
from dsrnet.models import apply_dwconv, apply_pointwise, build_model
from dsrnet.models.weights import load_initial_weights
from dsrnet.run.atomic import atomic_write_json, atomic_write_text
from dsrnet.run.checkpoint import (
    check_resume_fields,
    get_rng_state,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    set_rng_state,
)
from dsrnet.run.rundir import RunDir
from dsrnet.train.config import RESUME_MUTABLE, STEP_GAMMA, TrainConfig, _check_resume_overrides
from dsrnet.train.distributed import DistContext
from dsrnet.train.ema import WeightEma
from dsrnet.train.evaluate import evaluate

__all__ = ["lr_factor", "train"]

logger = logging.getLogger(__name__)
#: The clock ``deadline`` is compared with (Unix seconds); a name of its own so tests can drive the rule.
_wall_clock = time.time


def _param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool, decay_depthwise: bool = True
) -> list[dict]:
    """The optimiser's parameter groups: all parameters decayed (the paper's plain L2), or some exempt from weight
    decay: with ``decay_norm_and_bias=False`` the 1-D ones, BatchNorm scales/shifts and biases ("no bias decay",
    He et al. 2019, Bag of Tricks, Section 3.1; the fast recipe), with ``decay_depthwise=False`` the weights of
    depthwise convs ("very little or no weight decay on the depthwise filters since there are so few parameters
    in them", Howard et al. 2017, MobileNets, Section 3.3). Groups: ``[decayed]`` when everything is decayed (also
    a model without depthwise convs under ``decay_depthwise=False``), else ``[decayed, not decayed]``, each in
    ``model.parameters()`` order, so the same config and model always give the same structure (what resuming the
    optimizer state needs)."""
    params = [p for p in model.parameters() if p.requires_grad]
    exempt = set() if decay_norm_and_bias else {id(p) for p in params if p.ndim <= 1}
    if not decay_depthwise:
        exempt |= {id(w) for w in _depthwise_weights(model)}
    if decay_norm_and_bias and not exempt:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if id(p) not in exempt]
    no_decay = [p for p in params if id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _depthwise_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of ``model``'s depthwise convs (``groups == in_channels == out_channels > 1``), including the
    Triton ones of :func:`dsrnet.use_triton_dwconv` (an ``nn.Conv2d`` subclass holding the same parameter)."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels
    ]


def lr_factor(step: int, *, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based): linear warm-up over ``warmup_epochs``
    (``1/warm`` .. 1), then the step schedule (x0.1 at each milestone epoch), or a cosine or linear decay from 1 at
    the first step after the warm-up towards 0 at step ``total``, one past the last: the last step still learns,
    at ``1/(total - warm)`` of the peak for the linear decay."""
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return STEP_GAMMA ** sum(1 for m in cfg.milestones if epoch >= m)
    progress = (step - warm) / max(1, total - warm)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def _build(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The config's model; ``zero_init_residual`` goes to the models that take it (DSRNet, ResNet, ResNeXt) unless
    ``model_kwargs`` sets it; a model without residual blocks (MobileNetV2) has nothing to zero."""
    if cfg.zero_init_residual and "zero_init_residual" not in cfg.model_kwargs:
        try:
            return build_model(cfg.model, num_classes, {**cfg.model_kwargs, "zero_init_residual": True})
        except DsrnetError:
            pass  # the model does not take it; a bad model_kwargs fails again just below
    return build_model(cfg.model, num_classes, cfg.model_kwargs)


def _use_dwconv(model: nn.Module, cfg: TrainConfig) -> int:
    """Apply ``cfg.dwconv`` to ``model`` in place; returns how many depthwise convs it swapped (shifted form or
    Triton ops).

    The swap keeps the parameter objects and ``state_dict`` keys (:func:`dsrnet.use_triton_dwconv`), so the
    checkpoint is the plain model's; it runs before channels_last, ``torch.compile`` and DDP, which then wrap
    the swapped modules. A model with no depthwise 3x3 conv is an error rather than a silent no-op: whoever
    asks for the kernels expects them to run."""
    if cfg.dwconv == "torch":
        return 0
    swapped = apply_dwconv(model, cfg.dwconv)
    if not swapped:
        raise DsrnetError(
            f"dwconv={cfg.dwconv!r}: model {cfg.model} has no depthwise 3x3 conv to swap; fix: "
            f"drop --dwconv (= torch) or train a model with depthwise convs (dsrnet*, mobilenet_v2)"
        )
    if cfg.dwconv == "triton_bn_relu" and not _has_bn_relu_blocks(model):
        raise DsrnetError(
            f"dwconv='triton_bn_relu': model {cfg.model} has no DSR block whose BatchNorm + ReLU could move into "
            f"its depthwise kernel; fix: use --dwconv triton, or train a dsrnet* model"
        )
    return swapped


def _use_pointwise(model: nn.Module, cfg: TrainConfig) -> int:
    """Apply ``cfg.pointwise`` to ``model`` in place (after ``cfg.dwconv``, before channels_last, ``torch.compile``
    and DDP, as :func:`_use_dwconv`); returns how many 1x1 convs now run as matmuls. The parameter objects and
    ``state_dict`` keys stay, so the checkpoint is the plain model's; a model without a plain 1x1 conv is an
    error, as for ``dwconv``."""
    swapped = apply_pointwise(model, cfg.pointwise)
    if cfg.pointwise != "conv" and not swapped:
        raise DsrnetError(
            f"pointwise={cfg.pointwise!r}: model {cfg.model} has no plain 1x1 conv to compute as a matmul; fix: drop "
            f"--pointwise (= conv)"
        )
    return swapped


def _has_bn_relu_blocks(model: nn.Module) -> bool:
    from dsrnet.models.fused import BNReLUIntoDepthwiseBlock  # imports Triton: only for dwconv=triton_bn_relu

    return any(isinstance(m, BNReLUIntoDepthwiseBlock) for m in model.modules())


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _load_data(cfg: TrainConfig, dist_: DistContext, device: torch.device):
    info = D.DATASETS[cfg.dataset]
    # Before any data is read (every process makes the same check, so each stops with this line)
    if cfg.batch_size % dist_.world_size:
        raise DsrnetError(
            f"batch size {cfg.batch_size} does not split over {dist_.world_size} processes; fix: use a multiple "
            f"of {dist_.world_size} (--batch-size is the global batch)"
        )
    if cfg.batch_size // dist_.world_size < 2:  # the config checks the global batch; BatchNorm needs 2+ per process
        raise DsrnetError(
            f"batch size {cfg.batch_size} gives each of {dist_.world_size} processes 1 image per batch, and BatchNorm "
            f"needs 2 or more; fix: use --batch-size {2 * dist_.world_size} or more"
        )
    if not dist_.is_main:
        dist_.barrier()  # rank 0 downloads and writes the array cache first
    train = D.load_split(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
    test = D.load_split(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
    if dist_.is_main:
        dist_.barrier()
    for split, data in (("train", train), ("test", test)):
        D.require_every_class(data, cfg.dataset, split, cfg.data_dir)
    if cfg.subset_per_class:
        train = train.subset_per_class(cfg.subset_per_class, cfg.seed, what="subset_per_class (train split)")
    if cfg.test_subset_per_class:
        test = test.subset_per_class(
            cfg.test_subset_per_class, cfg.seed, what="test_subset_per_class (test split)"
        )
    mean, std = D.channel_stats(train.images)
    per_rank = cfg.batch_size // dist_.world_size
    common = {"device": device, "mean": mean, "std": std, "channels_last": cfg.channels_last}
    train_loader = D.DeviceLoader(
        train.images,
        train.labels,
        batch_size=per_rank,
        train=True,
        pad=info.pad,
        drop_last=cfg.drop_last,
        seed=cfg.seed,
        pad_fill=cfg.pad_fill,
        cutout=cfg.cutout,
        rank=dist_.rank,
        world_size=dist_.world_size,
        **common,
    )
    if not cfg.drop_last and train_loader.num_samples % per_rank == 1:
        # BatchNorm cannot normalise a batch of one image in training mode.
        raise DsrnetError(
            f"the last training batch would hold a single image ({train_loader.num_samples} images, batch "
            f"{per_rank} per process); fix: pass --drop-last or change --batch-size"
        )
    test_loader = D.DeviceLoader(
        test.images,
        test.labels,
        batch_size=per_rank,
        train=False,
        rank=dist_.rank,
        world_size=dist_.world_size,
        **common,
    )
    meta = {
        "classes": list(train.classes),
        "image_size": info.image_size,
        "mean": list(mean),
        "std": list(std),
        "num_classes": info.num_classes,
        "train_images": len(train),
        "test_images": len(test),
    }
    return train_loader, test_loader, meta


def _resolve_resume_path(cfg: TrainConfig) -> Path:
    if cfg.resume == "auto":
        return RunDir(cfg.out_dir).checkpoint
    p = Path(cfg.resume).expanduser()
    return RunDir(p).checkpoint if p.is_dir() else p


def _write_metrics(run_dir: RunDir, history: list[dict]) -> None:
    atomic_write_text(run_dir.metrics, "".join(json.dumps(r) + "\n" for r in history))


class _TensorBoard:
    """TensorBoard scalars when the optional ``tensorboard`` package is installed; else silently nothing."""

    def __init__(self, log_dir: Path | None, purge_step: int | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is not installed
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True, file=sys.stderr)


def train(config: TrainConfig) -> dict:
    """Train ``config.model`` on ``config.dataset`` as ``config`` says, writing the run folder described in
    the module docstring, and return the final-epoch metrics (the content of ``final.json``).

    With ``config.resume`` the run continues from the checkpoint: on a CPU, with the same thread count, it ends
    with the same weights and metrics as an uninterrupted run (every source of randomness is a function of the
    seed and the epoch, or is restored from the checkpoint); on CUDA, where cuDNN's benchmark mode may pick other
    (non-deterministic) kernels in the new process, it continues the same run, not bit for bit. A non-finite loss
    raises :class:`DsrnetError` naming the step, leaving the last checkpoint (from the last completed epoch)
    untouched. Call it under
    ``torchrun`` for DDP; it initialises (and afterwards destroys) the process group itself."""
    dist_ = DistContext()
    device = dist_.device(torch.device(config.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Fixed input shapes: let cuDNN pick the fastest kernels once; TF32 for the fp32 matmuls and convs.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Rank 0 holds the run folder's lock for the whole run: a second process training into it fails at once.
    lock = RunDir(config.out_dir).lock() if dist_.is_main else contextlib.nullcontext()
    dist_.setup(device)
    try:
        with lock:
            result = _Trainer(config, dist_, device).run()
        # Every rank done before any leaves the group: a gloo rank that destroyed its group and exited while rank 0
        # was still writing the run's last files was once aborted at exit ("terminate called without an active
        # exception", SIGABRT), failing a finished job.
        dist_.barrier()
        return result
    finally:
        dist_.teardown()


class _Trainer:
    """One run: the model, its optimiser state and data, the epoch loop, checkpoints and run files."""

    def __init__(self, cfg: TrainConfig, dist_: DistContext, device: torch.device) -> None:
        self.cfg, self.dist, self.device = cfg, dist_, device
        self.resume_from = None
        if cfg.resume:
            path = _resolve_resume_path(cfg)
            self.resume_from = load_checkpoint(path)
            check_resume_fields(self.resume_from)
            fixed = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE}
            _check_resume_overrides(self.resume_from["config"], fixed, str(path))
        self.run_dir = RunDir(cfg.out_dir)
        self.out, self.ckpt_path = self.run_dir.path, self.run_dir.checkpoint
        self.run_dir.check_writable()
        own_folder = self.resume_from is not None and Path(self.resume_from["path"]).parent.resolve() == (
            self.out.resolve()
        )
        if self.run_dir.holds_run and not own_folder:
            what = "another run" if self.resume_from is not None else "a run"
            fix = "pass --resume to continue it, or choose another --out-dir" if self.resume_from is None else (
                "resume into the checkpoint's own folder (drop --out-dir) or into an empty --out-dir"
            )
            raise DsrnetError(f"run folder {self.out} already holds {what}; fix: {fix}")
        finished = self.resume_from is not None and int(self.resume_from["epoch"]) >= cfg.epochs
        if finished and not own_folder and "optimizer_state" in self.resume_from:  # (weights only: _restore says so)
            raise DsrnetError(
                f"checkpoint {self.resume_from['path']} has trained all its {cfg.epochs} epochs: there is nothing "
                f"to resume into {self.out}; fix: use it as it is (dsrnet eval / predict / export-weights), or start "
                f"a new run from its weights with --init-weights"
            )

        _seed_everything(cfg.seed)
        self.num_classes = D.DATASETS[cfg.dataset].num_classes
        model = _build(cfg, self.num_classes)  # before the data: fail fast
        if cfg.init_weights and self.resume_from is None:  # fine-tuning; a resumed run has its own weights
            self.log(f"initial weights: {load_initial_weights(model, cfg.init_weights)}")
        swapped = _use_dwconv(model, cfg)
        self.triton_dwconvs = swapped if cfg.dwconv.startswith("triton") else 0
        if _use_pointwise(model, cfg):
            self.log(f"pointwise {cfg.pointwise}: the 1x1 convs run as matmuls over the channels-last pixels")
        self.train_loader, self.test_loader, self.meta = _load_data(cfg, dist_, device)
        if cfg.sync_bn and dist_.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: what the optimiser trains
        if self.triton_dwconvs:
            self._precompile_dwconv()
        # The weight average, when asked for, is the model the run reports and checkpoints as model_state.
        self.ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.n_params = sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.SGD(
            _param_groups(model, cfg.weight_decay, cfg.bn_bias_weight_decay, cfg.dw_weight_decay),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
        )
        self.steps_per_epoch = len(self.train_loader)
        spe = self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg=cfg, steps_per_epoch=spe)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.start_epoch, self.history = 0, []
        if self.resume_from is not None:
            self._restore(self.resume_from)
        # Compiled for speed; DDP around it for the gradient all-reduce; evaluation skips DDP (no gradients).
        self.net = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
        self.train_net = dist_.wrap(self.net, device)
        self.ema_net = None
        if self.ema is not None:
            self.ema_net = torch.compile(self.ema.module, mode=cfg.compile_mode) if cfg.compile else self.ema.module
        self.show_bar = cfg.progress and dist_.is_main and sys.stderr.isatty()
        # Reading the loss on a GPU forces a sync: the non-finite check and the progress bar look every 25
        # steps.
        self.check_every = 1 if device.type == "cpu" else 25

    def log(self, message: str) -> None:
        if self.dist.is_main:
            logger.info(message)

    def _precompile_dwconv(self) -> None:
        """Compile the Triton depthwise kernels (forward and both backward passes, every autotune config) for this
        run's batch shape in worker processes before the first step (:func:`dsrnet.kernels.precompile`; nothing on
        a CPU): a throw-away forward + backward of a copy of the model, whose BatchNorm statistics take the pass's
        garbage, on a random batch drawn with the RNG state put back afterwards, so the run itself is unchanged."""
        from dsrnet.kernels import precompile

        cfg, device, loader = self.cfg, self.device, self.train_loader

        def forward_backward() -> None:
            model = copy.deepcopy(self.model).train()
            x = torch.randn(loader.batch_size, *loader.images.shape[1:], device=device)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.precision):
                out = model(x)
            out.float().sum().backward()

        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            pass_ = precompile(forward_backward, workers=max(1, (os.cpu_count() or 1) // self.dist.world_size))
        if pass_ is not None:
            errors = f"; errors: {'; '.join(pass_.errors[:2])}" if pass_.errors else ""
            self.log(
                f"precompiled {pass_.compiled} of {len(pass_.specs)} Triton kernel configs in "
                f"{time.perf_counter() - t0:.1f} s ({pass_.recompiled} compiled again here: cache keys that did "
                f"not match the workers'){errors}"
            )

    def run(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        tb = None
        # Epochs this run folder's checkpoint holds: a resume from its own checkpoint starts with them; one from
        # another folder's (--resume A --out-dir B) has none here yet.
        own = self.resume_from is not None and Path(self.resume_from["path"]).resolve() == self.ckpt_path.resolve()
        self._checkpointed = self.start_epoch if own else 0
        if own and self.start_epoch >= cfg.epochs and self.run_dir.finished:
            # Nothing to train: the run's files stay as it ran (final.json names its own device, processes,
            # dwconv; this call's may differ).
            self.log(f"{self.out} has finished all {cfg.epochs} epochs already; its files are left as they are")
            return json.loads(self.run_dir.final.read_text())
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            if own and self.start_epoch < cfg.epochs and self.run_dir.final.exists():
                # A deadline-stopped run resumed: its stopped_early final.json no longer describes the folder
                # (final.json exists only once the run has ended); the new one comes at the end.
                self.run_dir.final.unlink()
            # The settings that repeat the run (`dsrnet train --config config.yaml`): not the call's own controls
            # (a checkpoint it resumed from, a wall-clock deadline long past by the time anyone reruns it).
            repeat = dataclasses.replace(cfg, resume=None, deadline=None)
            if self.start_epoch < cfg.epochs or not self.run_dir.config.is_file():  # (a finished run stays as it ran)
                self._run_file(self.run_dir.config, lambda: atomic_write_text(self.run_dir.config, repeat.to_yaml()))
            if self.resume_from is not None:  # drops epochs logged after the checkpoint
                self._run_file(self.run_dir.metrics, lambda: _write_metrics(self.run_dir, self.history))
            tb = _TensorBoard(self.run_dir.tensorboard if cfg.tensorboard else None, purge_step=self.start_epoch + 1)
        m = self.meta
        if self.resume_from is not None:
            self.log(f"resumed {self.resume_from['path']} at epoch {self.start_epoch}/{cfg.epochs}")
        self.log(
            f"training {cfg.model} ({self.n_params / 1e6:.2f} M params) on {cfg.dataset} ({m['train_images']} "
            f"train / {m['test_images']} test images), recipe {cfg.recipe}, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, {cfg.precision}, {device_label(self.device)}"
            + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
            + f" -> {self.out}"
        )
        if self.triton_dwconvs:
            from dsrnet.kernels import triton_usable

            if triton_usable(torch.empty(1, device=self.device)):
                runs = "Triton kernels"
            else:
                runs = "PyTorch fallback (the kernels need CUDA and Triton, and no DSRNET_DISABLE_TRITON=1)"
            self.log(f"dwconv {cfg.dwconv}: {self.triton_dwconvs} depthwise convs run the {runs}")
        self.stopped_early = False
        self._epoch_end: float | None = None  # wall time at the last epoch's deadline check (its end)
        self._last_eval_s = 0.0  # the last test pass's time
        self._evals = 0  # test passes timed so far (the first one compiles and warms caches)
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                record = {
                    "epoch": epoch + 1,
                    "lr": cfg.lr
                    * lr_factor(epoch * self.steps_per_epoch, cfg=cfg, steps_per_epoch=self.steps_per_epoch),
                    "world_size": self.dist.world_size,  # BatchNorm statistics are per process: a resume may differ
                }
                record.update(self.train_epoch(epoch))
                scored = self._scored(epoch)
                record.update(self.test() if scored else {"eval_time_s": 0.0})
                stop = epoch + 1 < cfg.epochs and self._past_deadline(record, epoch)
                if stop and not scored:  # the run ends here: its final metrics are this epoch's
                    record.update(self.test())
                self._raise_if_diverged(record)
                self.history.append(record)
                tested = (
                    f"test loss {record['test_loss']:.4f} top-1 {record['test_top1']:.2f}% top-3 "
                    f"{record['test_top3']:.2f}%  "
                    if "test_loss" in record
                    else ""
                )
                self.log(
                    f"epoch {epoch + 1}/{cfg.epochs}  lr {record['lr']:.4g}  train loss {record['train_loss']:.4f} "
                    f"top-1 {record['train_top1']:.2f}%  {tested}"
                    f"{record['images_per_s']:.0f} img/s  {record['epoch_time_s']:.1f} s"
                )
                if main:
                    tb.log(record)
                    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs or stop:
                        save_checkpoint(self.ckpt_path, self._payload(epoch + 1))
                        self._checkpointed = epoch + 1
                    self._run_file(self.run_dir.metrics, lambda: _write_metrics(self.run_dir, self.history))
                if stop:
                    self.stopped_early = True
                    why = (
                        "the rest of the schedule, at this pace, would end past the deadline (--deadline-rule "
                        "schedule)"
                        if cfg.deadline_rule == "schedule"
                        else "the next epoch would end past the deadline"
                    )
                    self.log(
                        f"stopping after epoch {epoch + 1}/{cfg.epochs}: {why}; the learning-rate schedule is "
                        f"truncated (resume without a deadline to complete it)"
                    )
                    break
        except KeyboardInterrupt:
            if self._checkpointed:
                self.log(f"interrupted in epoch {epoch + 1}/{cfg.epochs}; {self.ckpt_path} holds epoch "
                         f"{self._checkpointed}; continue with: {self._resume_command()}")  # fmt: skip
            else:
                self.log(f"interrupted in epoch {epoch + 1}/{cfg.epochs} before the first checkpoint; start again "
                         f"with the same command (or add --resume: it starts a run that has no checkpoint yet)")  # fmt: skip
            raise
        finally:
            if tb is not None:
                tb.close()
        final = self._final_metrics()
        if main:
            self._run_file(self.run_dir.final, lambda: atomic_write_json(self.run_dir.final, final))
        self.log(
            f"final (epoch {final['epochs_done']}{f' of {cfg.epochs}, stopped early' if self.stopped_early else ''}): "
            f"top-1 error {final['top1_error']:.2f}%, top-3 error "
            f"{final['top3_error']:.2f}%, top-5 error {final['top5_error']:.2f}%, {final['train_time_s']:.1f} s "
            f"training -> {self.run_dir.final}"
        )
        return final

    def train_epoch(self, epoch: int) -> dict:
        """One pass over this rank's shard; returns the train loss/top-1 (all ranks), speed and time."""
        cfg, device = self.cfg, self.device
        self.train_loader.set_epoch(epoch)
        self.train_net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n
        bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        first_step = epoch * self.steps_per_epoch + 1
        bar = _progress(self.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", self.show_bar)
        synchronize(device)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            with autocast(device, cfg.precision):
                logits = self.train_net(x)
            loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._scheduler_step()
            if self.ema is not None:
                self.ema.update()
            loss = loss.detach()
            # Remember the first non-finite step without a host sync; looked at every check_every steps.
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), first_step + i, bad_step)
            sums[0] += loss.double() * len(y)
            sums[1] += (logits.detach().argmax(1) == y).sum()
            sums[2] += len(y)
            if (i + 1) % self.check_every == 0 or i + 1 == self.steps_per_epoch:
                self._raise_if_nonfinite(bad_step, epoch)
                if self.show_bar:
                    s = sums.tolist()
                    bar.set_postfix(
                        loss=f"{s[0] / s[2]:.3f}",
                        acc=f"{100 * s[1] / s[2]:.1f}%",
                        img_s=f"{s[2] * self.dist.world_size / (time.perf_counter() - t0):.0f}",
                    )
            bar.update(1)
        synchronize(device)
        epoch_time = time.perf_counter() - t0
        bar.close()
        loss_sum, correct, n = self.dist.all_reduce(sums).tolist()
        return {
            "train_loss": loss_sum / n,
            "train_top1": 100.0 * correct / n,
            "images_per_s": n / epoch_time,
            "epoch_time_s": epoch_time,
        }

    def test(self) -> dict:
        """Test-set metrics of rank 0's model (each rank evaluates its shard; the counts are summed): ``test_*``
        of the reported model (the weight average when ``ema_decay`` > 0), ``raw_test_*`` of the optimised weights
        when they are not the reported ones."""
        t0 = time.perf_counter()
        forms = [("test", self.net, self.model)]
        if self.ema is not None:
            forms = [("test", self.ema_net, self.ema.module), ("raw_test", self.net, self.model)]
        keys = ("loss", "top1", "top3", "top5", "top1_error", "top3_error", "top5_error")
        out = {}
        for prefix, net, module in forms:
            self.dist.broadcast_buffers(module)
            ev = evaluate(net, self.test_loader, num_classes=self.num_classes, precision=self.cfg.precision)
            out.update({f"{prefix}_{k}": ev[k] for k in keys})
        out["eval_time_s"] = self._last_eval_s = time.perf_counter() - t0
        self._evals += 1
        return out

    def _scheduler_step(self) -> None:
        if not self.scaler.is_enabled():
            self.scheduler.step()
            return
        with warnings.catch_warnings():
            # GradScaler skips the optimizer step while it calibrates its scale (overflowing fp16 gradients);
            # the schedule advances regardless, as intended, and PyTorch would warn about exactly that.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()

    def _scored(self, epoch: int) -> bool:
        """Whether the test set is scored after ``epoch`` (0-based): every ``eval_every``-th and the last."""
        every = self.cfg.eval_every
        return epoch + 1 == self.cfg.epochs or (every > 0 and (epoch + 1) % every == 0)

    def _past_deadline(self, record: dict, epoch: int) -> bool:
        """Whether the next epoch, as long as this one's training plus the last test pass, would end past
        ``cfg.deadline``, or, with ``deadline_rule="schedule"``, the remaining ones at the pace of the last epoch
        measured end to end (its test pass, if any, counted only for the epochs that will be scored); one late rank
        stops them all, so every rank stops after the same epoch. With ``compile``, the first test pass compiles
        the evaluation (seconds on a GPU, against a fraction of a second later): it is counted once, never
        multiplied by the scored epochs left (with ``eval_every`` > 1 it falls after a projected epoch and stopped
        runs that fit); uncompiled, every pass costs about the same and each is counted."""
        if self.cfg.deadline is None:
            return False
        now, previous_end = _wall_clock(), self._epoch_end
        self._epoch_end = now
        need = record["epoch_time_s"] + self._last_eval_s  # the next epoch may be scored even if this one was not
        if self.cfg.deadline_rule == "schedule" and previous_end is not None:
            left = range(epoch + 1, self.cfg.epochs)
            pace = now - previous_end - record["eval_time_s"]
            scored = sum(map(self._scored, left))
            first_compiles = self.cfg.compile and self._evals == 1
            evals_s = self._last_eval_s * (min(scored, 1) if first_compiles else scored)
            need = max(need, len(left) * pace + evals_s)
        late = torch.tensor(int(now + need > self.cfg.deadline), device=self.device)
        return bool(self.dist.all_reduce(late, op="max").item())

    def _raise_if_nonfinite(self, bad_step: torch.Tensor, epoch: int) -> None:
        step = int(self.dist.all_reduce(bad_step.clone(), op="max"))  # every rank stops at the same check
        if step < 0:
            return
        raise DsrnetError(
            f"non-finite loss at step {step} (epoch {epoch + 1}); training stopped, {self._last_good()}; fix: start a new "
            f"run with a lower --lr" + (" or --precision fp32" if self.cfg.precision != "fp32" else "")
        )

    def _run_file(self, path: Path, write) -> None:
        """``write()`` one of the run's files; a full disk or lost permission is one error line that says what is
        kept (the checkpoint holds every finished epoch) and how to go on."""
        try:
            write()
        except OSError as err:
            kept = f"{self.ckpt_path} holds epoch {self._checkpointed}" if getattr(self, "_checkpointed", 0) else (
                "no checkpoint was written yet")  # fmt: skip
            raise DsrnetError(
                f"could not write {path} ({err.strerror or err}); {kept}; fix: free disk space in {path.parent} (or "
                f"fix its permissions), then continue with `{self._resume_command()}`"
            ) from None

    def _resume_command(self) -> str:
        """The command that continues this run as it was trained: under torchrun with as many processes (BatchNorm's
        statistics are per process, so another count gives another run)."""
        launch = "dsrnet train"
        if self.dist.world_size > 1:
            launch = f"torchrun --nproc_per_node {self.dist.world_size} -m dsrnet train"
        return f"{launch} --resume --out-dir {self.out}"

    def _last_good(self) -> str:
        if self.ckpt_path.exists():
            return f"last good checkpoint: {self.ckpt_path}"
        return "no checkpoint was written yet"

    def _raise_if_diverged(self, record: dict) -> None:
        """A non-finite test loss or weight after an epoch: stop before that state is checkpointed."""
        bad = [k for k in ("train_loss", "test_loss") if k in record and not math.isfinite(record[k])]
        if not bad and not all(bool(torch.isfinite(p).all()) for p in self._reported().parameters()):
            bad = ["weights"]
        if bad:
            raise DsrnetError(
                f"non-finite {' and '.join(bad)} after epoch {record['epoch']}; training stopped, "
                f"{self._last_good()}; fix: start a new run with a lower --lr"
                + (" or --precision fp32" if self.cfg.precision != "fp32" else "")
            )

    def _payload(self, epoch: int) -> dict:
        cfg, m = self.cfg, self.meta
        return {
            "epoch": epoch,
            "model": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "dataset": cfg.dataset,
            "num_classes": m["num_classes"],
            "classes": m["classes"],
            "image_size": m["image_size"],
            "mean": m["mean"],
            "std": m["std"],
            "config": cfg.to_dict(),
            "world_size": self.dist.world_size,  # BatchNorm statistics are per process: a resume should match it
            "model_state": self._reported().state_dict(),
            **(
                {"train_model_state": self.model.state_dict(), "ema_updates": self.ema.updates}
                if self.ema is not None
                else {}
            ),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "rng_state": get_rng_state(),
            "history": self.history,
            "torch_version": str(torch.__version__),
        }

    def _restore(self, ckpt: dict) -> None:
        saved_ws = ckpt.get("world_size")
        if isinstance(saved_ws, int) and saved_ws != self.dist.world_size and self.dist.is_main:
            logger.warning(
                f"checkpoint {ckpt['path']} was trained by {saved_ws} process(es), resumed by {self.dist.world_size}: "
                f"the global batch is the same, but BatchNorm's per-process statistics differ, so the run will not "
                f"match an uninterrupted one"
            )
        if self.ema is None:
            load_model_state(self.model, ckpt)
        else:  # model_state holds the average; the optimised weights are kept beside it
            if "train_model_state" not in ckpt or not isinstance(ckpt.get("ema_updates"), int):
                raise DsrnetError(
                    f"checkpoint {ckpt['path']} has no optimised weights beside its weight average "
                    f"(train_model_state, ema_updates), so it cannot be resumed; fix: resume an intact checkpoint "
                    f"written by `dsrnet train`, or start a new run"
                )
            load_model_state(self.model, {**ckpt, "model_state": ckpt["train_model_state"]})
            load_model_state(self.ema.module, ckpt)
            self.ema.updates = ckpt["ema_updates"]
        try:
            self.optimizer.load_state_dict(ckpt["optimizer_state"])
            self.scheduler.load_state_dict(ckpt["scheduler_state"])
            if ckpt["scaler_state"]:
                self.scaler.load_state_dict(ckpt["scaler_state"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise DsrnetError(
                f"checkpoint {ckpt['path']} has optimizer/scheduler state that does not fit this run ({err}); "
                f"fix: resume with the settings the run was started with"
            ) from None
        set_rng_state(ckpt["rng_state"])
        self.start_epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])

    def _reported(self) -> nn.Module:
        """The model the run evaluates as ``test_*``, checkpoints as ``model_state`` and exports."""
        return self.model if self.ema is None else self.ema.module

    def _final_metrics(self) -> dict:
        cfg, last = self.cfg, self.history[-1]
        times = [r["epoch_time_s"] for r in self.history]
        sizes = [r.get("world_size") for r in self.history]  # (None: an epoch logged before rows recorded it)
        train_time = float(sum(times))
        return {
            "model": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "dataset": cfg.dataset,
            "recipe": cfg.recipe,
            "epochs": cfg.epochs,
            "epochs_done": len(self.history),
            "stopped_early": self.stopped_early,
            **(
                {
                    "note": f"stopped by the deadline after {len(self.history)} of {cfg.epochs} epochs: the "
                    f"learning-rate schedule is truncated, so this is NOT a full-schedule result"
                }
                if self.stopped_early
                else {}
            ),
            **({"init_weights": cfg.init_weights} if cfg.init_weights else {}),  # fine-tuned: from what
            "params": self.n_params,
            "top1_error": last["test_top1_error"],
            "top3_error": last["test_top3_error"],
            "top5_error": last["test_top5_error"],
            "top1": last["test_top1"],
            "test_loss": last["test_loss"],
            "ema_decay": cfg.ema_decay,
            **(
                {  # the optimised weights, without the average: what the average changed in this run
                    "raw_top1_error": last["raw_test_top1_error"],
                    "raw_top3_error": last["raw_test_top3_error"],
                    "raw_test_loss": last["raw_test_loss"],
                }
                if self.ema is not None
                else {}
            ),
            "train_loss": last["train_loss"],
            "train_top1": last["train_top1"],
            "train_time_s": train_time,
            "s_per_epoch": train_time / len(times),
            # Steady state: the median skips epoch 1's compilation and cuDNN autotuning.
            "median_epoch_time_s": statistics.median(times),
            "eval_time_s": float(sum(r["eval_time_s"] for r in self.history)),
            "images_per_s": statistics.median(r["images_per_s"] for r in self.history),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "precision": cfg.precision,
            "channels_last": cfg.channels_last,
            "compile": cfg.compile,
            "compile_mode": cfg.compile_mode if cfg.compile else None,
            "dwconv": cfg.dwconv,
            "pointwise": cfg.pointwise,
            "train_images": self.meta["train_images"],
            "test_images": self.meta["test_images"],
            "world_size": self.dist.world_size,
            # a run resumed with another process count: how many trained each epoch (rows written before
            # 2026-11-27 hold none)
            **({"world_size_per_epoch": sizes} if len(set(sizes) - {None}) > 1 else {}),
            "device": device_label(self.device),
            "torch": str(torch.__version__),
            "seed": cfg.seed,
            "out_dir": str(cfg.out_dir),
        }
