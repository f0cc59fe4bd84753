"""Training: the run config and recipes (:mod:`.config`), the loop (:mod:`.loop`), test-set metrics
(:mod:`.evaluate`), the weight average (:mod:`.ema`) and DDP plumbing (:mod:`.distributed`)."""

from dsrnet.train.config import (
    LEGACY_DEFAULTS,
    RECIPES,
    RESUME_MUTABLE,
    TrainConfig,
    load_config_file,
    resume_config,
)
from dsrnet.train.evaluate import evaluate
from dsrnet.train.loop import lr_factor, train

__all__ = [
    "LEGACY_DEFAULTS",
    "RECIPES",
    "RESUME_MUTABLE",
    "TrainConfig",
    "evaluate",
    "load_config_file",
    "lr_factor",
    "resume_config",
    "train",
]
