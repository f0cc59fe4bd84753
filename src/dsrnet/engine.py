"""Training and evaluation engine behind ``dsrnet train``, ``dsrnet eval`` and ``dsrnet predict``.

Recipes (:data:`RECIPES`; every value can be overridden from the command line or a YAML file):

``paper`` -- Section 4.2 of the paper: mini-batch SGD with momentum 0.9, weight decay 5e-4 ("L2
regularization"), initial learning rate 0.1 "reduced by a factor of 1/10", batch 128 (Tables 2-4), images
"randomly cropped, flipped, and normalized", fp32. The paper gives neither the number of epochs nor when the
rate drops, so the default is the classic CIFAR ResNet schedule of He et al. (2016, Section 4.2): 64k
iterations at batch 128 (= 164 epochs) with the rate divided by 10 at 50 % and 75 % of training. Here: 160
epochs, milestones at epochs 80 and 120 (50 %/75 % of ``--epochs`` unless ``--milestones`` is given).

``fast`` -- best time-to-accuracy on one GPU, with the changes that are known to shorten CIFAR training
without changing the network: batch 512 with the learning rate scaled linearly (0.1 x 512/128 = 0.4, Goyal et
al. 2017), a 2-epoch linear warm-up (the same paper; at most half of a shorter run) then a linear decay to
zero per step (a one-cycle-style schedule; linear decay matches or beats cosine at short budgets, Defazio et
al. 2023), Nesterov momentum, label smoothing 0.1, no weight decay on BatchNorm parameters and biases, and on
CUDA bf16 autocast, channels_last and ``torch.compile`` (on a CPU those three fall back to fp32 / NCHW / eager
unless asked for explicitly). 40 epochs by default: a rough prototype reached 93.4 % in 90 epochs; see
BENCHMARKS.md for what this one measures. ``drop_last`` keeps every step's batch shape fixed so the compiled
graph is never re-traced.

Run folder (``out_dir``): ``config.yaml`` (the fully resolved config; ``dsrnet train --config config.yaml``
repeats the run), ``metrics.jsonl`` (one JSON object per epoch; its ``lr`` is the rate at the epoch's first
step), ``checkpoint.pt`` (the last one, written atomically), ``final.json`` (the FINAL epoch's metrics,
never a best-on-test pick; it exists only once the run has finished), ``tb/`` (TensorBoard events, when
``tensorboard`` is installed) and ``eval/`` (from ``dsrnet eval``). Accuracies and errors are in percent.
The train loss is the optimised (label-smoothed) loss; the test loss is plain cross-entropy.

Distributed: under ``torchrun --nproc_per_node N -m dsrnet train ...`` each rank trains on its disjoint shard
of every epoch's global permutation (:class:`dsrnet.data.DeviceLoader`) with ``--batch-size`` as the GLOBAL
batch (``batch_size // N`` per rank), DistributedDataParallel averages the gradients (nccl on GPU, gloo on
CPU), each rank evaluates its shard of the test set and the counts are summed with ``all_reduce``; only rank 0
prints and writes. BatchNorm statistics are per rank unless ``--sync-bn`` (CUDA only: PyTorch's SyncBatchNorm
has no CPU kernel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsrnet import data as D
from dsrnet.checkpoint import (
    CHECKPOINT_NAME,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from dsrnet.device import resolve_device
from dsrnet.distributed import DistContext
from dsrnet.errors import DsrnetError
from dsrnet.models import create_model, list_models

__all__ = [
    "RECIPES",
    "TrainConfig",
    "add_parser",
    "build_model",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config_file",
    "model_from_checkpoint",
    "predict",
    "resume_config",
    "train",
]

#: Learning-rate factor at each milestone of the ``step`` schedule (Section 4.2: "reduce it by a factor of
#: 1/10").
STEP_GAMMA = 0.1
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("step", "cosine", "linear")
_AMP_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: Recipe defaults; a config value left unset (``None``) takes the recipe's. See the module docstring for why.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "epochs": 160,
        "batch_size": 128,
        "lr": 0.1,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "nesterov": False,
        "label_smoothing": 0.0,
        "schedule": "step",
        "warmup_epochs": 0.0,
        "bn_bias_weight_decay": True,
        "drop_last": False,
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
    },
    "fast": {
        "epochs": 40,
        "batch_size": 512,
        "lr": 0.4,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "nesterov": True,
        "label_smoothing": 0.1,
        "schedule": "linear",
        "warmup_epochs": 2.0,
        "bn_bias_weight_decay": False,
        "drop_last": True,
        "precision": "bf16",
        "channels_last": True,
        "compile": True,
    },
}
#: Recipe values that only pay off on a GPU: on a CPU they fall back to these unless set explicitly.
_CPU_FALLBACK = {"precision": "fp32", "channels_last": False, "compile": False}

#: Config fields that may differ when a run is resumed; every other field must match the checkpoint's.
RESUME_MUTABLE = frozenset(
    {
        "data_dir",
        "download",
        "out_dir",
        "resume",
        "progress",
        "device",
        "compile",
        "tensorboard",
        "checkpoint_every",
    }
)


# ================================================================================================== config


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` hyper-parameters take the ``recipe``'s defaults
    (:data:`RECIPES`), so ``TrainConfig(recipe="fast", model="dsrnet50_cifar")`` is the fast recipe; after
    construction every field is concrete and validated (bad values raise :class:`DsrnetError`).

    ``batch_size`` and ``lr`` are for the global batch (all DDP ranks together). ``milestones`` are epochs
    (step schedule only; default 50 % and 75 % of ``epochs``). ``device="auto"`` resolves to ``cuda`` when
    available. ``resume``: ``"auto"`` (or ``True``) continues from ``out_dir/checkpoint.pt``; a path names a
    checkpoint or run folder. ``subset_per_class`` / ``test_subset_per_class``: train / test on that many
    images per class (quick runs). ``model_kwargs`` go to :func:`dsrnet.create_model` (e.g.
    ``{"widths": [8, 16, 32, 64]}``).
    """

    model: str = "dsrnet50"
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    recipe: str = "paper"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    label_smoothing: float | None = None
    schedule: str | None = None
    milestones: list[int] | None = None
    warmup_epochs: float | None = None
    bn_bias_weight_decay: bool | None = None
    drop_last: bool | None = None
    seed: int = 0
    device: str = "auto"
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    sync_bn: bool = False
    out_dir: str | None = None
    resume: str | None = None
    subset_per_class: int | None = None
    test_subset_per_class: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    progress: bool = True
    tensorboard: bool = True
    checkpoint_every: int = 1

    @classmethod
    def from_recipe(cls, recipe: str = "paper", **overrides: Any) -> TrainConfig:
        """The ``recipe``'s defaults with ``overrides`` (config field names) applied; unknown keys raise."""
        unknown = sorted(set(overrides) - set(_KINDS))
        if unknown:
            raise DsrnetError(
                f"unknown config key(s) {', '.join(unknown)}; fix: use only {', '.join(_KINDS)}"
            )
        return cls(recipe=recipe, **overrides)

    def __post_init__(self) -> None:
        if self.resume is True:
            self.resume = "auto"
        elif self.resume is False:
            self.resume = None
        for name, kind in _KINDS.items():
            setattr(self, name, _coerce(name, kind, getattr(self, name)))
        if self.recipe not in RECIPES:
            raise DsrnetError(f"unknown recipe {self.recipe!r}; fix: choose one of {', '.join(RECIPES)}")
        self.device = str(resolve_device(self.device))
        on_cpu = not self.device.startswith("cuda")
        recipe_warmup = self.warmup_epochs is None
        recipe_lr = self.lr is None
        recipe = RECIPES[self.recipe]
        for key, value in recipe.items():
            if getattr(self, key) is None:
                setattr(self, key, _CPU_FALLBACK[key] if on_cpu and key in _CPU_FALLBACK else value)
        if recipe_lr and isinstance(self.batch_size, int):
            # Linear scaling rule (Goyal et al., 2017): the recipe's lr belongs to the recipe's batch size.
            self.lr = recipe["lr"] * self.batch_size / recipe["batch_size"]
        if recipe_warmup and isinstance(self.epochs, int):
            self.warmup_epochs = min(
                self.warmup_epochs, self.epochs / 2
            )  # short runs: warm up half of it at most
        if self.milestones is None:
            e = self.epochs
            self.milestones = [max(1, e // 2), max(1, (3 * e) // 4)] if self.schedule == "step" else []
        if self.out_dir is None:
            self.out_dir = str(Path("runs") / self.dataset / f"{self.model}-{self.recipe}-seed{self.seed}")
        self._validate()

    def _validate(self) -> None:
        models = list_models()
        if self.model not in models:
            raise DsrnetError(f"unknown model {self.model!r}; fix: choose one of {', '.join(models)}")
        if self.dataset not in D.DATASETS:
            raise DsrnetError(f"unknown dataset {self.dataset!r}; fix: choose one of {', '.join(D.DATASETS)}")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(
            not (self.nesterov and self.momentum == 0), "nesterov", self.nesterov, "false when momentum is 0"
        )
        _check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {', '.join(SCHEDULES)}")
        _check(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", self.warmup_epochs, "in [0, epochs]")
        if self.schedule != "step":
            _check(not self.milestones, "milestones", self.milestones, "empty unless schedule is step")
        ms = self.milestones
        _check(
            all(1 <= m <= self.epochs for m in ms) and ms == sorted(ms),
            "milestones",
            ms,
            f"ascending epochs in 1..{self.epochs}",
        )
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        _check(
            not (self.sync_bn and not self.device.startswith("cuda")),
            "sync_bn",
            True,
            "false on CPU (SyncBatchNorm needs CUDA)",
        )
        for key in ("subset_per_class", "test_subset_per_class"):
            v = getattr(self, key)
            _check(v is None or v >= 1, key, v, "an integer >= 1 (or unset for all images)")
        _check(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "an integer >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Kind of each config field ("int", "float", "bool", "str", "list[int]", "dict"), from its annotation, for
# coercing YAML / API values; `None` always passes (= recipe default or unset).
_KINDS = {f.name: f.type.replace(" | None", "") for f in fields(TrainConfig)}


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise DsrnetError(f"bad value for {name}: {value!r}; fix: use {expected}")


def _coerce(name: str, kind: str, value: Any) -> Any:
    """``value`` as ``kind``; ``None`` passes through (= recipe default / unset)."""
    if value is None:
        return None
    try:
        if kind == "str":
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if kind == "int":
            return _as_int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            out = float(value)  # also parses YAML 1.1's unquoted "5e-4", which PyYAML reads as a string
            if not math.isfinite(out):
                raise ValueError
            return out
        if kind == "list[int]":
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, list | tuple):
                raise TypeError
            return [_as_int(v) for v in value]
        if kind == "dict":
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise TypeError
            return _plain(value)
    except (TypeError, ValueError):
        pass
    expected = {
        "str": "a string",
        "bool": "true or false",
        "int": "an integer",
        "float": "a finite number",
        "list[int]": "a list of integers such as [80, 120]",
        "dict": 'a mapping such as {"widths": [8, 16, 32, 64]}',
    }[kind]
    raise DsrnetError(f"bad value for {name}: {value!r}; fix: use {expected}")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively: the config round-trips through YAML, JSON and ``weights_only`` loads."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def load_config_file(path: str | os.PathLike) -> dict:
    """A YAML mapping of config fields (dashes or underscores); unknown keys and bad YAML raise."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise DsrnetError(f"config file {path} not found; fix: pass an existing YAML file to --config")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).replace("\n", " ")[:200]
        raise DsrnetError(
            f"config file {path} is not valid YAML ({first}); fix: correct the YAML syntax"
        ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DsrnetError(
            f"config file {path} must hold a mapping of settings; fix: write `key: value` lines"
        )
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(_KINDS))
    if unknown:
        raise DsrnetError(
            f"unknown key(s) {', '.join(unknown)} in config file {path}; fix: use only {', '.join(_KINDS)}"
        )
    return values


def resume_config(checkpoint: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The config saved in ``checkpoint`` (a file or run folder), set up to resume it. ``overrides`` may
    change only :data:`RESUME_MUTABLE` fields; any other value that differs from the checkpoint's raises."""
    ckpt = load_checkpoint(checkpoint)
    saved = dict(ckpt["config"])
    _check_resume_overrides(saved, overrides, ckpt["path"])
    saved.update(overrides)
    saved["resume"] = ckpt["path"]
    if "out_dir" not in overrides:
        saved["out_dir"] = str(Path(ckpt["path"]).parent)
    return TrainConfig(**saved)


def _check_resume_overrides(saved: dict, overrides: dict, path: str) -> None:
    for key, value in overrides.items():
        if key in RESUME_MUTABLE or key not in saved:
            continue
        want = _coerce(key, _KINDS[key], value)
        if want != saved[key]:
            if key in ("model", "model_kwargs", "dataset"):
                raise DsrnetError(
                    f"checkpoint {path} is for {saved['model']} {saved['model_kwargs'] or ''} on "
                    f"{saved['dataset']}, not {key}={want!r}; fix: drop --{key.replace('_', '-')} or start a new "
                    f"run (another --out-dir, no --resume)"
                )
            raise DsrnetError(
                f"{key}={want!r} differs from the checkpoint's {saved[key]!r} ({path}); fix: drop that setting "
                f"to continue the saved run, or start a new run (another --out-dir, no --resume)"
            )


# ================================================================================================= helpers


def build_model(name: str, num_classes: int, model_kwargs: dict | None = None) -> nn.Module:
    """:func:`dsrnet.create_model` with bad ``model_kwargs`` turned into a one-line :class:`DsrnetError`."""
    kwargs = dict(model_kwargs or {})
    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise DsrnetError(
            f"model {name!r} rejects model_kwargs {kwargs} ({err}); fix: correct --model-kwargs"
        ) from None


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AMP_DTYPE[precision])


def _param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """All parameters decayed (the paper's plain L2), or all but the 1-D ones, BatchNorm scales/shifts and
    biases ("no bias decay", He et al. 2019, Bag of Tricks, Section 3.1), which the fast recipe uses."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, *, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` for optimiser step ``step`` (0-based): linear warm-up over ``warmup_epochs``,
    then the step schedule (x0.1 at each milestone epoch), a cosine or a linear decay to zero at the last
    step."""
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ============================================================================================== evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: D.DeviceLoader,
    *,
    num_classes: int,
    precision: str = "fp32",
    confusion: bool = False,
) -> dict:
    """Test loss (cross-entropy), top-1/3/5 accuracy and error (%) of ``model`` over ``loader``; with
    ``confusion`` also the (true, predicted) count matrix as a ``(C, C)`` int64 tensor. Under DDP (``loader``
    sharded by rank) the counts of all ranks are summed, so every rank returns the whole test set's numbers.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    ks = (1, 3, 5)
    sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)  # loss, n, correct@k
    conf = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) if confusion else None
    for x, y in loader:
        with _autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += len(y)
        top = logits.topk(min(max(ks), num_classes), dim=1).indices
        hit = top == y[:, None]
        for i, k in enumerate(ks):
            sums[2 + i] += hit[:, :k].any(dim=1).sum()
        if conf is not None:
            conf += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
    if loader.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
        if conf is not None:
            dist.all_reduce(conf)
    model.train(was_training)
    sums = sums.cpu()
    n = int(sums[1])
    out = {"n": n, "loss": float(sums[0]) / n}
    for i, k in enumerate(ks):
        acc = 100.0 * float(sums[2 + i]) / n
        out[f"top{k}"] = acc
        out[f"top{k}_error"] = 100.0 - acc
    if conf is not None:
        out["confusion"] = conf.view(num_classes, num_classes).cpu()
    return out


# ================================================================================================ training


def _load_data(cfg: TrainConfig, dist_: DistContext, device: torch.device):
    info = D.DATASETS[cfg.dataset]
    if not dist_.is_main:
        dist_.barrier()  # rank 0 downloads and writes the array cache first
    train = D.load_split(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
    test = D.load_split(cfg.dataset, "test", cfg.data_dir, download=cfg.download)
    if dist_.is_main:
        dist_.barrier()
    if cfg.subset_per_class:
        train = train.subset_per_class(cfg.subset_per_class, cfg.seed)
    if cfg.test_subset_per_class:
        test = test.subset_per_class(cfg.test_subset_per_class, cfg.seed)
    mean, std = D.channel_stats(train.images)
    if cfg.batch_size % dist_.world_size:
        raise DsrnetError(
            f"batch size {cfg.batch_size} does not split over {dist_.world_size} processes; fix: use a multiple "
            f"of {dist_.world_size} (--batch-size is the global batch)"
        )
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
        return Path(cfg.out_dir) / CHECKPOINT_NAME
    p = Path(cfg.resume).expanduser()
    return p / CHECKPOINT_NAME if p.is_dir() else p


def _write_metrics(out: Path, history: list[dict]) -> None:
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))


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

    With ``config.resume`` the run continues from the checkpoint: on the same device and thread count it ends
    with the same weights and metrics as an uninterrupted run (every source of randomness is a function of the
    seed and the epoch, or is restored from the checkpoint). A non-finite loss raises :class:`DsrnetError`
    naming the step, leaving the last checkpoint (from the last completed epoch) untouched. Call it under
    ``torchrun`` for DDP; it initialises (and afterwards destroys) the process group itself."""
    dist_ = DistContext()
    device = dist_.device(torch.device(config.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Fixed input shapes: let cuDNN pick the fastest kernels once; TF32 for the fp32 matmuls and convs.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dist_.setup(device)
    try:
        return _Trainer(config, dist_, device).run()
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
            fixed = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE}
            _check_resume_overrides(self.resume_from["config"], fixed, str(path))
        self.out = Path(cfg.out_dir)
        if not self.resume_from and (
            (self.out / CHECKPOINT_NAME).exists() or (self.out / "final.json").exists()
        ):
            raise DsrnetError(
                f"run folder {self.out} already holds a run; fix: pass --resume to continue it, or choose another "
                f"--out-dir"
            )
        self.ckpt_path = self.out / CHECKPOINT_NAME

        _seed_everything(cfg.seed)
        self.num_classes = D.DATASETS[cfg.dataset].num_classes
        model = build_model(cfg.model, self.num_classes, cfg.model_kwargs)  # before the data: fail fast
        self.train_loader, self.test_loader, self.meta = _load_data(cfg, dist_, device)
        if cfg.sync_bn and dist_.enabled:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: what is checkpointed
        self.n_params = sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.SGD(
            _param_groups(model, cfg.weight_decay, cfg.bn_bias_weight_decay),
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
        self.net = torch.compile(model) if cfg.compile else model
        self.train_net = dist_.wrap(self.net, device)
        self.show_bar = cfg.progress and dist_.is_main and sys.stderr.isatty()
        # Reading the loss on a GPU forces a sync: the non-finite check and the progress bar look every 25
        # steps.
        self.check_every = 1 if device.type == "cpu" else 25

    def log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def run(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        tb = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "config.yaml", cfg.to_yaml())
            if self.resume_from is not None:
                _write_metrics(self.out, self.history)  # drops epochs logged after the checkpoint
            tb = _TensorBoard(self.out / "tb" if cfg.tensorboard else None, purge_step=self.start_epoch + 1)
        m = self.meta
        if self.resume_from is not None:
            self.log(f"resumed {self.resume_from['path']} at epoch {self.start_epoch}/{cfg.epochs}")
        self.log(
            f"training {cfg.model} ({self.n_params / 1e6:.2f} M params) on {cfg.dataset} ({m['train_images']} "
            f"train / {m['test_images']} test images), recipe {cfg.recipe}, {cfg.epochs} epochs, batch "
            f"{cfg.batch_size}, {cfg.precision}, {_device_label(self.device)}"
            + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
            + f" -> {self.out}"
        )
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                record = {
                    "epoch": epoch + 1,
                    "lr": cfg.lr
                    * lr_factor(epoch * self.steps_per_epoch, cfg=cfg, steps_per_epoch=self.steps_per_epoch),
                }
                record.update(self.train_epoch(epoch))
                record.update(self.test())
                self.history.append(record)
                self.log(
                    f"epoch {epoch + 1}/{cfg.epochs}  lr {record['lr']:.4g}  train loss {record['train_loss']:.4f} "
                    f"top-1 {record['train_top1']:.2f}%  test loss {record['test_loss']:.4f} top-1 "
                    f"{record['test_top1']:.2f}% top-3 {record['test_top3']:.2f}%  "
                    f"{record['images_per_s']:.0f} img/s  {record['epoch_time_s']:.1f} s"
                )
                if main:
                    tb.log(record)
                    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                        save_checkpoint(self.ckpt_path, self._payload(epoch + 1))
                    _write_metrics(self.out, self.history)
        finally:
            if tb is not None:
                tb.close()
        final = self._final_metrics()
        if main:
            atomic_write_json(self.out / "final.json", final)
        self.log(
            f"final (epoch {cfg.epochs}): top-1 error {final['top1_error']:.2f}%, top-3 error "
            f"{final['top3_error']:.2f}%, top-5 error {final['top5_error']:.2f}%, {final['train_time_s']:.1f} s "
            f"training -> {self.out / 'final.json'}"
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
        _sync(device)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(self.train_loader):
            with _autocast(device, cfg.precision):
                logits = self.train_net(x)
            loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._scheduler_step()
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
        _sync(device)
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
        """Test-set metrics of rank 0's model (each rank evaluates its shard; the counts are summed)."""
        t0 = time.perf_counter()
        self.dist.broadcast_buffers(self.model)
        ev = evaluate(self.net, self.test_loader, num_classes=self.num_classes, precision=self.cfg.precision)
        out = {
            f"test_{k}": ev[k]
            for k in ("loss", "top1", "top3", "top5", "top1_error", "top3_error", "top5_error")
        }
        out["eval_time_s"] = time.perf_counter() - t0
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

    def _raise_if_nonfinite(self, bad_step: torch.Tensor, epoch: int) -> None:
        step = int(self.dist.all_reduce(bad_step.clone(), op="max"))  # every rank stops at the same check
        if step < 0:
            return
        last_good = (
            f"last good checkpoint: {self.ckpt_path}"
            if self.ckpt_path.exists()
            else "no checkpoint was written yet"
        )
        raise DsrnetError(
            f"non-finite loss at step {step} (epoch {epoch + 1}); training stopped, {last_good}; fix: start a new "
            f"run with a lower --lr" + (" or --precision fp32" if self.cfg.precision != "fp32" else "")
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
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "rng_state": get_rng_state(),
            "history": self.history,
            "torch_version": str(torch.__version__),
        }

    def _restore(self, ckpt: dict) -> None:
        _load_model_state(self.model, ckpt)
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

    def _final_metrics(self) -> dict:
        cfg, last = self.cfg, self.history[-1]
        times = [r["epoch_time_s"] for r in self.history]
        train_time = float(sum(times))
        return {
            "model": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "dataset": cfg.dataset,
            "recipe": cfg.recipe,
            "epochs": cfg.epochs,
            "params": self.n_params,
            "top1_error": last["test_top1_error"],
            "top3_error": last["test_top3_error"],
            "top5_error": last["test_top5_error"],
            "top1": last["test_top1"],
            "test_loss": last["test_loss"],
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
            "train_images": self.meta["train_images"],
            "test_images": self.meta["test_images"],
            "world_size": self.dist.world_size,
            "device": _device_label(self.device),
            "torch": str(torch.__version__),
            "seed": cfg.seed,
            "out_dir": str(cfg.out_dir),
        }


def _load_model_state(model: nn.Module, ckpt: dict) -> None:
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise DsrnetError(
            f"checkpoint {ckpt['path']} does not fit model {ckpt.get('model')!r} with "
            f"model_kwargs {ckpt.get('model_kwargs')} ({first}); fix: use a checkpoint written for this model"
        ) from None


# ===================================================================================== checkpoints -> models


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the trained model (eval mode, on ``device``) from a checkpoint path or loaded dict; returns
    ``(model, checkpoint)``. A checkpoint whose weights do not fit its model raises :class:`DsrnetError`."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = build_model(ckpt["model"], ckpt["num_classes"], ckpt["model_kwargs"])
    _load_model_state(model, ckpt)
    return model.to(resolve_device(device)).eval(), ckpt


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str = "auto",
    batch_size: int = 500,
    precision: str = "fp32",
    test_subset_per_class: int | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """``dsrnet eval``: top-1/3/5 error, per-class accuracy and the confusion matrix of a checkpoint on its
    dataset's test split, written to ``out_dir`` (default ``<run>/eval``) as ``metrics.json``,
    ``per_class.csv``, ``confusion.csv`` and ``confusion.png``. Returns the metrics dict."""
    _check(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    _check(precision in PRECISIONS, "precision", precision, f"one of {', '.join(PRECISIONS)}")
    model, ckpt = model_from_checkpoint(checkpoint, device)
    dev = next(model.parameters()).device
    test = D.load_split(ckpt["dataset"], "test", data_dir, download=download)
    if test_subset_per_class:  # the run's seed picks the same images its test subset had
        test = test.subset_per_class(test_subset_per_class, ckpt["config"]["seed"])
    loader = D.DeviceLoader(
        test.images,
        test.labels,
        batch_size=batch_size,
        train=False,
        device=dev,
        mean=ckpt["mean"],
        std=ckpt["std"],
    )
    classes = list(ckpt["classes"])
    res = evaluate(model, loader, num_classes=ckpt["num_classes"], precision=precision, confusion=True)
    conf = res.pop("confusion").numpy()
    totals = conf.sum(axis=1)
    per_class = [
        {
            "class": c,
            "correct": int(conf[i, i]),
            "total": int(totals[i]),
            "accuracy": 100.0 * conf[i, i] / totals[i] if totals[i] else float("nan"),
        }
        for i, c in enumerate(classes)
    ]
    out = Path(out_dir) if out_dir is not None else Path(ckpt["path"]).parent / "eval"
    metrics = {
        "checkpoint": ckpt["path"],
        "model": ckpt["model"],
        "dataset": ckpt["dataset"],
        "epoch": int(ckpt["epoch"]),
        "test_images": res["n"],
        "test_loss": res["loss"],
        **{k: res[k] for k in ("top1", "top3", "top5", "top1_error", "top3_error", "top5_error")},
        "per_class_accuracy": {r["class"]: r["accuracy"] for r in per_class},
    }
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(
        out / "per_class.csv",
        "class,correct,total,accuracy\n"
        + "".join(f"{r['class']},{r['correct']},{r['total']},{r['accuracy']:.4f}\n" for r in per_class),
    )
    header = "true\\predicted," + ",".join(classes) + "\n"
    rows = "".join(f"{c}," + ",".join(str(int(v)) for v in conf[i]) + "\n" for i, c in enumerate(classes))
    atomic_write_text(out / "confusion.csv", header + rows)
    _plot_confusion(conf, classes, out / "confusion.png", f"{ckpt['model']} on {ckpt['dataset']}")
    metrics["out_dir"] = str(out)
    return metrics


def _plot_confusion(conf: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend and figures alone

    n = len(classes)
    rows = np.maximum(conf.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.45 * n, 24)
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(100.0 * conf / rows, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of true class")
    if n <= 20:  # with more classes the labels are unreadable; the CSV has them
        ax.set_xticks(range(n), classes, rotation=90)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(conf[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if conf[i, j] > 0.5 * rows[i, 0] else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file -> (size, size, 3) uint8 RGB: shorter side resized to ``size`` (bicubic), centre cut."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except FileNotFoundError:
        raise DsrnetError(f"image {path} not found; fix: pass existing image files") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DsrnetError(f"cannot read image {path} ({err}); fix: pass a PNG/JPEG/... image file") from None


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    top_k: int = 5,
    device: str = "auto",
) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class name, probability) pairs for each image file, any size: the shorter side is resized to
    the checkpoint's image size and the centre cropped, then normalised with the training mean/std."""
    _check(isinstance(top_k, int) and top_k >= 1, "top_k", top_k, "an integer >= 1")
    if not images:
        raise DsrnetError("no images given; fix: pass one or more image files")
    model, ckpt = model_from_checkpoint(checkpoint, device)
    dev = next(model.parameters()).device
    size = int(ckpt["image_size"])
    batch = torch.from_numpy(np.stack([_load_image(p, size) for p in images])).to(dev)
    mean = torch.tensor(ckpt["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"], device=dev).view(1, 3, 1, 1)
    x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    probs = model(x).float().softmax(dim=1)
    k = min(top_k, probs.shape[1])
    p, idx = probs.topk(k, dim=1)
    classes = ckpt["classes"]
    return [
        [(classes[j], float(q)) for q, j in zip(pr.tolist(), ix.tolist(), strict=True)]
        for pr, ix in zip(p, idx, strict=True)
    ]


# ===================================================================================================== CLI


def _recipe_help(key: str) -> str:
    vals = ", ".join(f"{r} {_fmt(RECIPES[r][key])}" for r in RECIPES)
    extra = f" on CUDA; {_fmt(_CPU_FALLBACK[key])} on CPU" if key in _CPU_FALLBACK else ""
    return f"(default: recipe's: {vals}{extra})"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``eval`` and ``predict`` to the ``dsrnet`` command line."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    S = argparse.SUPPRESS  # unset flags stay absent, so YAML values and recipe defaults can show through
    bool_ = argparse.BooleanOptionalAction

    p = sub.add_parser(
        "train",
        help="train a model (paper or fast recipe; DDP under torchrun)",
        description="Train a model on CIFAR-10/100 or STL-10 and write a run folder (config.yaml, metrics.jsonl, "
        "checkpoint.pt, final.json). Precedence: command-line flags > --config YAML > --recipe defaults. Under "
        "`torchrun --nproc_per_node N -m dsrnet train ...` it trains with DistributedDataParallel.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        default=S,
        help="YAML file of settings (keys = the long flag names); flags given here override it",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        default=S,
        help="print the resolved config as YAML and exit without training",
    )
    p.add_argument(
        "--model", default=S, help=f"model name, one of: {', '.join(list_models())} (default: dsrnet50)"
    )
    p.add_argument(
        "--model-kwargs",
        metavar="JSON",
        default=S,
        help="model constructor arguments as JSON, e.g. '{\"widths\": [8, 16, 32, 64]}' (default: {})",
    )
    p.add_argument("--dataset", default=S, help=f"one of {', '.join(D.DATASETS)} (default: cifar10)")
    p.add_argument(
        "--data-dir",
        default=S,
        help="folder holding the datasets (default: $DSRNET_DATA or ~/.cache/dsrnet/data)",
    )
    p.add_argument(
        "--download", action=bool_, default=S, help="download the dataset if missing (default: off)"
    )
    p.add_argument(
        "--recipe", default=S, help=f"one of {', '.join(RECIPES)}; fills every unset value (default: paper)"
    )
    p.add_argument("--epochs", default=S, help=f"training epochs {_recipe_help('epochs')}")
    p.add_argument(
        "--batch-size",
        default=S,
        help=f"global batch size (all processes) {_recipe_help('batch_size')}",
    )
    p.add_argument(
        "--lr",
        default=S,
        help="initial (step) / peak (cosine, linear) learning rate "
        f"{_recipe_help('lr')[:-1]}, scaled linearly when --batch-size differs from the recipe's)",
    )
    p.add_argument("--weight-decay", default=S, help=f"L2 weight decay {_recipe_help('weight_decay')}")
    p.add_argument("--momentum", default=S, help=f"SGD momentum {_recipe_help('momentum')}")
    p.add_argument(
        "--nesterov", action=bool_, default=S, help=f"Nesterov momentum {_recipe_help('nesterov')}"
    )
    p.add_argument(
        "--label-smoothing",
        default=S,
        help=f"label smoothing of the training loss {_recipe_help('label_smoothing')}",
    )
    p.add_argument(
        "--schedule",
        default=S,
        help=f"learning-rate schedule: step (x{STEP_GAMMA} at each milestone), cosine or linear decay to "
        f"zero, per step after the warm-up {_recipe_help('schedule')}",
    )
    p.add_argument(
        "--milestones",
        nargs="+",
        default=S,
        metavar="EPOCH",
        help="epochs at which the step schedule divides the lr by 10 (default: 50%% and 75%% of --epochs)",
    )
    p.add_argument(
        "--warmup-epochs",
        default=S,
        help=f"linear learning-rate warm-up length {_recipe_help('warmup_epochs')}",
    )
    p.add_argument(
        "--bn-bias-weight-decay",
        action=bool_,
        default=S,
        help=f"apply weight decay to BatchNorm parameters and biases too "
        f"{_recipe_help('bn_bias_weight_decay')}",
    )
    p.add_argument(
        "--drop-last",
        action=bool_,
        default=S,
        help=f"drop each epoch's incomplete last batch {_recipe_help('drop_last')}",
    )
    p.add_argument(
        "--seed", default=S, help="seed of initialisation, shuffling and augmentation (default: 0)"
    )
    p.add_argument(
        "--device", default=S, help="auto (cuda if available), cpu, cuda or cuda:N (default: auto)"
    )
    p.add_argument(
        "--precision",
        default=S,
        help=f"fp32, bf16 (autocast) or fp16 (autocast + grad scaling) {_recipe_help('precision')}",
    )
    p.add_argument(
        "--channels-last", action=bool_, default=S, help=f"NHWC memory format {_recipe_help('channels_last')}"
    )
    p.add_argument(
        "--compile", action=bool_, default=S, help=f"torch.compile the model {_recipe_help('compile')}"
    )
    p.add_argument(
        "--sync-bn",
        action=bool_,
        default=S,
        help="SyncBatchNorm across DDP processes (CUDA only) (default: off)",
    )
    p.add_argument(
        "--out-dir", default=S, help="run folder (default: runs/<dataset>/<model>-<recipe>-seed<seed>)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=S,
        metavar="CHECKPOINT",
        help="continue a run: from --out-dir's checkpoint.pt, or from the given checkpoint or run folder; "
        "the saved settings are used (default: off)",
    )
    p.add_argument(
        "--subset-per-class",
        default=S,
        help="train on this many images per class (quick runs) (default: all)",
    )
    p.add_argument(
        "--test-subset-per-class",
        default=S,
        help="test on this many images per class (quick runs) (default: all)",
    )
    p.add_argument(
        "--checkpoint-every",
        default=S,
        help="write checkpoint.pt every this many epochs (and after the last) (default: 1)",
    )
    p.add_argument("--progress", action=bool_, default=S, help="progress bar on a terminal (default: on)")
    p.add_argument(
        "--tensorboard",
        action=bool_,
        default=S,
        help="write TensorBoard events to <out-dir>/tb when tensorboard is installed (default: on)",
    )
    p.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/3/5 error, per-class accuracy, confusion matrix",
        description="Evaluate a checkpoint on its dataset's test split; writes metrics.json, per_class.csv, "
        "confusion.csv and confusion.png to --out-dir.",
        formatter_class=fmt,
    )
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run, or the run folder")
    e.add_argument(
        "--data-dir", default=None, help="dataset folder (None: $DSRNET_DATA or ~/.cache/dsrnet/data)"
    )
    e.add_argument("--download", action="store_true", help="download the dataset if missing")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    e.add_argument("--batch-size", default=500, help="evaluation batch size")
    e.add_argument("--precision", default="fp32", help=f"inference precision: {', '.join(PRECISIONS)}")
    e.add_argument("--test-subset-per-class", default=None, help="evaluate on this many images per class")
    e.add_argument("--out-dir", default=None, help="output folder (None: <run folder>/eval)")
    e.set_defaults(func=_cmd_eval)

    q = sub.add_parser(
        "predict",
        help="top-k classes of image files with a trained checkpoint",
        description="Classify image files of any size: the shorter side is resized to the model's input size and "
        "the centre cropped. Prints the top-k class names with probabilities.",
        formatter_class=fmt,
    )
    q.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run, or the run folder")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    q.add_argument("--top-k", default=5, help="how many classes to print per image")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    q.set_defaults(func=_cmd_predict)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run config from parsed ``train`` flags: flags > ``--config`` YAML > recipe defaults; with
    ``--resume`` the checkpoint's saved config, to which the given flags may only add :data:`RESUME_MUTABLE`
    changes."""
    given = {k: v for k, v in vars(args).items() if k in _KINDS}
    from_file = load_config_file(args.config) if getattr(args, "config", None) else {}
    explicit = {**from_file, **given}
    resume = explicit.pop("resume", None)
    if resume is None or resume is False:
        return TrainConfig.from_recipe(**explicit)
    if resume is True or resume == "auto":  # the run folder these flags would train into
        resume = TrainConfig.from_recipe(**explicit).out_dir
    return resume_config(resume, **explicit)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if getattr(args, "print_config", False):
        print(cfg.to_yaml(), end="")
        return 0
    train(cfg)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    m = evaluate_checkpoint(
        args.checkpoint,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        batch_size=_coerce("batch_size", "int", args.batch_size),
        precision=args.precision,
        test_subset_per_class=_coerce("test_subset_per_class", "int", args.test_subset_per_class),
        out_dir=args.out_dir,
    )
    print(
        f"{m['model']} on {m['dataset']} ({m['test_images']} test images, epoch {m['epoch']}): top-1 error "
        f"{m['top1_error']:.2f}%, top-3 error {m['top3_error']:.2f}%, top-5 error {m['top5_error']:.2f}%, "
        f"loss {m['test_loss']:.4f} -> {m['out_dir']}"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    results = predict(
        args.checkpoint, args.images, top_k=_coerce("top_k", "int", args.top_k), device=args.device
    )
    width = max(len(c) for r in results for c, _ in r)
    for path, res in zip(args.images, results, strict=True):
        print(path)
        for cls, prob in res:
            print(f"  {cls:<{width}}  {prob:.4f}")
    return 0
