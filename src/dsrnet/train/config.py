"""What a training run depends on: :class:`TrainConfig`, the two recipes, YAML files and the resume policy.

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
al. 2023), Nesterov momentum, label smoothing 0.1, no weight decay on BatchNorm parameters and biases, residual blocks
that start as identities (``zero_init_residual``: the last BatchNorm scale of each block zeroed, Goyal et al. 2017;
on CPU it removed a first-epoch blow-up, see ``results/recipe-leads``), and on
CUDA bf16 autocast, channels_last and ``torch.compile`` (on a CPU those three fall back to fp32 / NCHW / eager
unless asked for explicitly). 40 epochs by default: a rough prototype reached 93.4 % in 90 epochs; see
BENCHMARKS.md for what this one measures. ``drop_last`` keeps every step's batch shape fixed so the compiled
graph is never re-traced.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dsrnet import data as D
from dsrnet.device import PRECISIONS, resolve_device
from dsrnet.errors import DsrnetError
from dsrnet.models import DWCONVS, POINTWISE, list_models
from dsrnet.run.checkpoint import check_resume_fields, load_checkpoint
from dsrnet.run.rundir import differences

__all__ = [
    "COMPILE_MODES",
    "DEADLINE_RULES",
    "DWCONVS",
    "LEGACY_DEFAULTS",
    "POINTWISE",
    "PRECISIONS",
    "RECIPES",
    "RESUME_MUTABLE",
    "SCHEDULES",
    "TrainConfig",
    "load_config_file",
    "resume_config",
]


#: Learning-rate factor at each milestone of the ``step`` schedule (Section 4.2: "reduce it by a factor of
#: 1/10").
STEP_GAMMA = 0.1




SCHEDULES = ("step", "cosine", "linear")

#: What a ``deadline`` stops (``TrainConfig.deadline_rule``): ``"epoch"`` ends a run after the epoch whose successor
#: would end past it (as many epochs as fit: a truncated schedule); ``"schedule"`` also ends it as soon as the rest
#: of its schedule can no longer end in time, so a time-boxed run either completes or stops within ~2 epochs.
DEADLINE_RULES = ("epoch", "schedule")

#: ``torch.compile`` modes a run may use (``TrainConfig.compile_mode``): ``reduce-overhead`` replays each step's
#: kernels as CUDA graphs (no per-kernel launch cost on the host); the ``max-autotune`` modes time GEMM/conv templates.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
        "pad_fill": "zero",
        "zero_init_residual": False,
        "cutout": 0,
        "dw_weight_decay": True,
        "ema_decay": 0.0,
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
        "pad_fill": "zero",
        "zero_init_residual": True,
        "cutout": 0,
        "dw_weight_decay": True,
        "ema_decay": 0.0,
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
        "compile_mode",  # how the same model is compiled: speed only
        "tensorboard",
        "checkpoint_every",
        "eval_every",  # when the test set is scored, not what is trained
        "deadline",
        "deadline_rule",
        "dwconv",  # the same math either way (fp32 within ~1e-4): switching it mid-run only changes the speed
        "pointwise",  # likewise (the same parameters and function)
    }
)

#: The value each field added after the first release had implicitly before it existed: a run saved without the
#: field compares equal to a config that sets it to this (``RunDir.check_compatible``), e.g. black crop padding.
LEGACY_DEFAULTS = {
    "pad_fill": "zero",
    "zero_init_residual": False,
    "cutout": 0,
    "dw_weight_decay": True,
    "ema_decay": 0.0,
    "init_weights": None,
    "pointwise": "conv",
}

#: Model arguments that make a network something other than a classifier of the dataset's classes.
NOT_FOR_TRAINING = frozenset({"features_only", "out_indices", "num_classes", "pretrained", "checkpoint_path"})
#: Seeds are stored as int64 by torch; larger ones cannot seed it.
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` hyper-parameters take the ``recipe``'s defaults
    (:data:`RECIPES`), so ``TrainConfig(recipe="fast", model="dsrnet50_cifar")`` is the fast recipe; after
    construction every field is concrete and validated (bad values raise :class:`DsrnetError`).

    ``batch_size`` and ``lr`` are for the global batch (all DDP ranks together). ``milestones`` are epochs
    (step schedule only; default 50 % and 75 % of ``epochs``). ``device="auto"`` resolves to ``cuda`` when
    available. ``resume``: ``"auto"`` (or ``True``) continues from ``out_dir/checkpoint.pt`` (``dsrnet train
    --resume`` starts the run instead when the folder holds none yet); a path names a checkpoint or run folder.
    ``subset_per_class`` / ``test_subset_per_class``: train / test on that many images per class (quick runs),
    picked by ``seed`` (so runs of other seeds are also scored on other images). ``model_kwargs`` go to
    :func:`dsrnet.create_model` (e.g.
    ``{"widths": [8, 16, 32, 64]}``). ``pad_fill``: what the random crop pads with, ``"zero"`` (black),
    ``"mean"`` (the mean colour) or ``"reflect"`` (the image mirrored at its borders; :mod:`dsrnet.data.loader`).
    ``cutout``: side in pixels of the square set to the mean colour in each training image after the crop and flip
    (DeVries & Taylor 2017, who use 16 on CIFAR-10); 0 (both recipes) is off. ``zero_init_residual``: start every
    residual block as an identity (its last BatchNorm scale zeroed, Goyal et al. 2017), for the models that have
    such blocks; ``model_kwargs`` may still set it per model. ``dw_weight_decay``: ``False`` exempts the weights of
    depthwise convs from weight decay ("very little or no weight decay on the depthwise filters since there are
    so few parameters in them", Howard et al. 2017, MobileNets, Section 3.3); ``True`` (both recipes) decays them
    like every other conv weight. ``ema_decay``: above 0, an exponential moving average of the weights and
    BatchNorm statistics (:class:`dsrnet.train.ema.WeightEma`, updated after every optimiser step with that decay,
    warmed up over the first steps) is the model the run reports: its test metrics are ``test_*`` in
    ``metrics.jsonl`` and ``final.json``, its weights are the checkpoint's ``model_state`` (what eval, predict,
    export and ``load_trained`` use); the optimised weights' own test metrics are logged as ``raw_test_*``, so one
    run shows what the average changed. The average lags by about ``1 / (1 - ema_decay)`` steps (0.998: ~500 steps,
    ~5 epochs of CIFAR-10 at batch 512). 0 (both recipes) is off. Changing any of these on resume is refused, as
    for every recipe value.

    ``eval_every``: score the test set after every this many epochs, and always after the last one (and after an
    epoch at which the ``deadline`` stops the run); 0 = after the last one only. The other epochs' rows in
    ``metrics.jsonl`` have no ``test_*`` keys (and ``eval_time_s`` 0). Scoring changes nothing in the training,
    so it may differ on resume; it saves time where a test pass is a sizeable part of an epoch (on one H200, 0.26 s
    of 3.9 s at 32 px; twice that with ``ema_decay``, which scores both weights).

    ``deadline``: a wall-clock time (Unix seconds, ``time.time()``) after which training stops at the end of the
    current epoch, as a safety net for time-boxed runs (choose ``epochs`` to fit; this only catches overruns). A run
    stopped so has a truncated learning-rate schedule: its ``final.json`` says ``"stopped_early": true`` with the
    epochs done, it does not count as finished (:attr:`dsrnet.run.rundir.RunDir.finished`), and resuming it
    without a deadline completes the planned schedule. ``deadline_rule`` (:data:`DEADLINE_RULES`): ``"epoch"``
    stops only when the next epoch would end past the deadline; ``"schedule"`` stops as soon as the remaining
    epochs, at the pace of the last one measured end to end (wall time between two epoch ends: train, test,
    checkpoint; known from the second epoch on, after the first one's compilation), would end past it. A time-boxed
    run that has to finish its schedule to be of any use (a result for a table, shipped weights) then costs about
    two epochs when it cannot, instead of the whole budget for a truncated schedule.

    ``compile_mode`` (:data:`COMPILE_MODES`, with ``compile``): ``torch.compile``'s mode; only the speed differs.
    ``"reduce-overhead"`` records the forward and backward passes as CUDA graphs (the training step's fixed batch
    shape, ``drop_last``, makes that possible), removing the host's per-kernel launch cost.

    ``dwconv``: what computes the depthwise 3x3 convs (:data:`DWCONVS`). ``"torch"``: PyTorch's conv.
    ``"shifts"``: nine shifted multiply-adds (:mod:`dsrnet.models.shifted_dwconv`), which ``torch.compile`` fuses
    with the BatchNorm and ReLU around them, forward and backward; for compiled runs (eager, it is slower than
    ``"torch"``); same parameters and checkpoints, any device. ``"triton"``: the NHWC Triton kernels, forward and both backward passes (:func:`dsrnet.use_triton_dwconv`)
    applied before channels_last, ``torch.compile`` and DDP; only for models with depthwise 3x3 convs (DSRNet,
    MobileNetV2), any other model is an error. Parameters and ``state_dict`` keys stay those of the plain
    model, so checkpoints load anywhere (eval, predict, export, ``load_trained``). Where the kernels cannot
    run (no CUDA, no Triton, ``DSRNET_DISABLE_TRITON=1``) the same ops fall back to PyTorch's convs. Only the
    speed differs (the numbers agree within float tolerance), so a resumed run may change it
    (:data:`RESUME_MUTABLE`); it keeps the saved value unless told otherwise. ``"triton_bn_relu"``: the same, and
    in each DSR block the BatchNorm + ReLU before the depthwise conv run inside its kernel (their statistics are
    known by then), so the normalised activations never go to memory; DSRNet only, not with ``sync_bn`` (whose
    statistics span processes).

    ``pointwise``: what computes the plain 1x1 convs (:data:`POINTWISE`). ``"conv"``: ``nn.Conv2d``.
    ``"matmul"``: a matmul over the channels-last pixels (:func:`dsrnet.use_matmul_pointwise`), so that
    ``torch.compile`` sees the backward's GEMMs too (as convs they stay cuDNN's ``convolution_backward``) and, with
    ``compile_mode="max-autotune"``, may fuse the BatchNorm / ReLU work around them into its GEMM templates. Same
    parameters, checkpoints and function (to rounding); any model, any device; only the speed differs (untimed on a
    GPU so far: ``benchmarks/train_speed.py``). A model without a plain 1x1 conv is an error.

    ``init_weights``: fine-tuning -- start from these weights instead of a random initialisation: a shipped
    weights tag (``"dsrnet50_cifar.c10"``), a ``.safetensors`` file (``dsrnet export-weights``) or a ``dsrnet
    train`` checkpoint / run folder (:func:`dsrnet.models.weights.load_initial_weights`). They must be of the same
    network (``model`` and ``model_kwargs``); the classifier is kept when its shape matches and re-initialised when
    the dataset has another number of classes (timm's rule). Applied once, when the run starts; a resumed run
    continues from its own checkpoint.
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
    compile_mode: str = "default"
    sync_bn: bool = False
    out_dir: str | None = None
    resume: str | None = None
    subset_per_class: int | None = None
    test_subset_per_class: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    progress: bool = True
    tensorboard: bool = True
    checkpoint_every: int = 1
    eval_every: int = 1
    pad_fill: str | None = None
    zero_init_residual: bool | None = None
    cutout: int | None = None
    dw_weight_decay: bool | None = None
    ema_decay: float | None = None
    deadline: float | None = None
    deadline_rule: str = "epoch"
    dwconv: str = "torch"
    pointwise: str = "conv"
    init_weights: str | None = None

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
            # 50 % and 75 % of the run, once each (a 2-epoch run would otherwise divide the rate by 100 at once);
            # none in a 1-epoch run (a milestone at the last epoch would never apply)
            halves = sorted({m for m in (max(1, e // 2), max(1, (3 * e) // 4)) if m < e})
            self.milestones = halves if self.schedule == "step" else []
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
            all(1 <= m <= self.epochs for m in ms) and all(a < b for a, b in zip(ms, ms[1:], strict=False)),
            "milestones",
            ms,
            f"strictly ascending epochs in 1..{self.epochs} (a repeated one would divide the rate again)",
        )
        if ms and ms[-1] == self.epochs and (tuple(ms), self.epochs) not in _WARNED_MILESTONES:
            # taken (runs before 2026-11-27 recorded [1] for 1 epoch), but said, once per setting
            _WARNED_MILESTONES.add((tuple(ms), self.epochs))
            logging.getLogger("dsrnet").warning(
                f"milestone {ms[-1]} = epochs never applies (the rate drops after epoch m, from epoch m + 1 on); "
                + (f"a new run can drop it, or use milestones below {self.epochs}" if self.epochs > 1
                   else "a 1-epoch run has none that applies")  # fmt: skip
            )
        _check(0 <= self.seed <= MAX_SEED, "seed", self.seed, f"an integer in 0..{MAX_SEED}")
        # BatchNorm cannot normalise one image per process in training mode.
        _check(self.batch_size >= 2, "batch_size", self.batch_size, "an integer >= 2 (BatchNorm needs 2+ images)")
        bad = sorted(NOT_FOR_TRAINING & set(self.model_kwargs))
        _check(
            not bad,
            "model_kwargs",
            self.model_kwargs,
            f"no {', '.join(bad)} (training builds a classifier of the dataset's classes)",
        )
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
        _check(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0 (0 = the last epoch only)")
        _check(self.pad_fill in D.PAD_FILLS, "pad_fill", self.pad_fill, f"one of {', '.join(D.PAD_FILLS)}")
        side = D.DATASETS[self.dataset].image_size
        _check(0 <= self.cutout <= side, "cutout", self.cutout, f"an integer in 0..{side} (pixels; 0 = off)")
        _check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in [0, 1) (0 = off)")
        _check(self.dwconv in DWCONVS, "dwconv", self.dwconv, f"one of {', '.join(DWCONVS)}")
        _check(self.pointwise in POINTWISE, "pointwise", self.pointwise, f"one of {', '.join(POINTWISE)}")
        if self.dwconv == "triton_bn_relu" and self.sync_bn:
            raise DsrnetError(
                "dwconv=triton_bn_relu computes each BatchNorm's statistics on this process's batch, which "
                "sync_bn would average across processes; fix: drop --sync-bn or use --dwconv triton"
            )
        _check(  # 1e11 s is the year 5138: a larger value is a time in milliseconds, i.e. no time box at all
            self.deadline is None or 0 < self.deadline < 1e11, "deadline", self.deadline,
            "a Unix time in seconds (> 0; not milliseconds)",
        )
        _check(self.compile_mode in COMPILE_MODES, "compile_mode", self.compile_mode, f"one of {', '.join(COMPILE_MODES)}")
        if self.compile_mode != "default" and not self.compile:  # it would be recorded and do nothing
            raise DsrnetError(f"compile_mode={self.compile_mode} only applies with compile; fix: add --compile (or "
                              f"drop --compile-mode)")  # fmt: skip
        _check(self.deadline_rule in DEADLINE_RULES, "deadline_rule", self.deadline_rule,
               f"one of {', '.join(DEADLINE_RULES)}")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


#: (milestones, epochs) already warned of in this process: a config is built several times per command.
_WARNED_MILESTONES: set[tuple] = set()


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


def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """``yaml.safe_load`` that refuses a key given twice (PyYAML would silently keep the last value)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} appears twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


#: The recipe files shipped inside the package (``dsrnet/configs/<name>.yaml``), usable by name: ``--config fast``.
SHIPPED_CONFIGS = ("fast", "paper", "cpu-smoke")


def shipped_config_path(name: str) -> Path:
    """The installed file of the shipped config ``name`` (``fast``, ``paper``, ``cpu-smoke``; ``.yaml`` optional)."""
    stem = name.removesuffix(".yaml")
    if stem not in SHIPPED_CONFIGS:
        raise DsrnetError(f"no shipped config {name!r}; fix: use one of {', '.join(SHIPPED_CONFIGS)} or a YAML path")
    return Path(__file__).resolve().parent.parent / "configs" / f"{stem}.yaml"


def load_config_file(path: str | os.PathLike) -> dict:
    """A YAML mapping of config fields (dashes or underscores); unknown keys and bad YAML raise. ``path`` is a YAML
    file or, when no such file exists, the name of a shipped config (:data:`SHIPPED_CONFIGS`: ``fast``,
    ``fast.yaml``), read from the installed package."""
    import yaml

    path = Path(path).expanduser()
    if path.is_dir():
        raise DsrnetError(f"config file {path} is a folder; fix: pass a YAML file to --config")
    if not path.is_file() and len(path.parts) == 1 and path.name.removesuffix(".yaml") in SHIPPED_CONFIGS:
        path = shipped_config_path(path.name)
    if not path.is_file():
        raise DsrnetError(
            f"config file {path} not found; fix: pass an existing YAML file to --config, or a shipped config "
            f"name ({', '.join(SHIPPED_CONFIGS)})"
        )
    try:
        values = yaml.load(path.read_text(), Loader=_unique_key_loader())
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
    normalised: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normalised:  # batch-size and batch_size: the same setting twice, one value silently lost
            raise DsrnetError(f"config file {path} sets {name} twice (as {key!r} and as another spelling); fix: keep "
                              f"one of them")  # fmt: skip
        normalised[name] = value
    values = normalised
    unknown = sorted(set(values) - set(_KINDS))
    if unknown:
        raise DsrnetError(
            f"unknown key(s) {', '.join(unknown)} in config file {path}; fix: use only {', '.join(_KINDS)}"
        )
    return values


def resume_config(checkpoint: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The config saved in ``checkpoint`` (a file or run folder), set up to resume it; a field the checkpoint
    predates takes its :data:`LEGACY_DEFAULTS` value, not the recipe's. ``overrides`` may change only
    :data:`RESUME_MUTABLE` fields; any other value that differs from the checkpoint's raises. The saved
    ``deadline`` is not kept (a wall-clock time of the call that stopped the run: kept, it would stop every
    resume after one epoch); pass one again to time-box the resumed run."""
    ckpt = load_checkpoint(checkpoint)
    check_resume_fields(ckpt)
    unknown = sorted(set(ckpt["config"]) - set(_KINDS))
    if unknown:  # written by a newer dsrnet (or edited): its run depends on settings this version cannot apply
        raise DsrnetError(
            f"checkpoint {ckpt['path']} has settings this dsrnet does not know ({', '.join(unknown)}); fix: resume it "
            f"with the dsrnet version that wrote it (or a newer one)"
        )
    saved = {**LEGACY_DEFAULTS, **ckpt["config"]}  # a field the checkpoint predates: the value it ran with
    _check_resume_overrides(saved, overrides, ckpt["path"])
    saved["deadline"] = None  # the time box of the call that stopped it; a resume gets a new one or none
    if overrides.get("compile") is False and "compile_mode" not in overrides:
        saved["compile_mode"] = "default"  # --no-compile on a compiled run: its mode goes with it
    saved.update(overrides)
    saved["resume"] = ckpt["path"]
    if "out_dir" not in overrides:
        saved["out_dir"] = str(Path(ckpt["path"]).parent)
    return TrainConfig(**saved)


def _check_resume_overrides(saved: dict, overrides: dict, path: str) -> None:
    saved = {**LEGACY_DEFAULTS, **saved}  # a checkpoint from before a field existed ran with its legacy value
    wanted = {
        k: _coerce(k, _KINDS[k], v) for k, v in overrides.items() if k not in RESUME_MUTABLE and k in saved
    }
    for key in ("model", "model_kwargs", "dataset"):
        if key in wanted and differences(saved, {key: wanted[key]}):
            raise DsrnetError(
                f"checkpoint {path} is for {saved['model']} {saved['model_kwargs'] or ''} on "
                f"{saved['dataset']}, not {key}={wanted[key]!r}; fix: drop --{key.replace('_', '-')} or start a "
                f"new run (another --out-dir, no --resume)"
            )
    for key, want in wanted.items():
        if differences(saved, {key: want}):
            raise DsrnetError(
                f"{key}={want!r} differs from the checkpoint's {saved[key]!r} ({path}); fix: drop that setting "
                f"to continue the saved run, or start a new run (another --out-dir, no --resume)"
            )
