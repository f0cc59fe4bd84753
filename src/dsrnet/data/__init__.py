"""Datasets of the paper (CIFAR-10, CIFAR-100, STL-10: :mod:`.datasets`) and the device-resident loader
(:mod:`.loader`)."""

from dsrnet.data.datasets import (
    DATASETS,
    ArraySplit,
    DatasetInfo,
    channel_stats,
    default_data_dir,
    load_split,
    require_every_class,
    subset_per_class,
)
from dsrnet.data.loader import PAD_FILLS, DeviceLoader, crop_flip, cutout

__all__ = [
    "DATASETS",
    "PAD_FILLS",
    "ArraySplit",
    "DatasetInfo",
    "DeviceLoader",
    "channel_stats",
    "crop_flip",
    "cutout",
    "default_data_dir",
    "load_split",
    "require_every_class",
    "subset_per_class",
]
