"""The evaluation preprocessing of a trained model: what ``dsrnet predict`` / ``dsrnet eval`` feed a model and what
its torchvision weights' ``transforms()`` return (:mod:`dsrnet.models.torchvision_weights`).

Imports torchvision only when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from dsrnet.errors import DsrnetError

#: How an image is resized to the model's input (torchvision's ``InterpolationMode`` value); the models'
#: ``pretrained_cfg["interpolation"]`` says the same, so timm's ``resolve_data_config`` pipeline agrees.
INTERPOLATION = "bicubic"
#: The widest aspect ratio :func:`transforms` resizes whole: a 1x100000 strip (far below the pixel limit) resized
#: by its shorter side would be 32 x 3,200,000 pixels, so a longer side is first cut to this many times the shorter
#: one, around the centre the final crop keeps (up to 64:1 nothing changes).
MAX_ASPECT = 64


def cut_long_side(image):
    """The centre of a PIL image (or (..., H, W) tensor) with its longer side at most :data:`MAX_ASPECT` times the
    shorter one; the image itself when it already is."""
    w, h = image.size if hasattr(image, "size") and not isinstance(image, torch.Tensor) else image.shape[-1:-3:-1]
    cw, ch = min(w, MAX_ASPECT * h), min(h, MAX_ASPECT * w)
    if (cw, ch) == (w, h):
        return image
    left, top = (w - cw) // 2, (h - ch) // 2
    if isinstance(image, torch.Tensor):
        return image[..., top : top + ch, left : left + cw]
    return image.crop((left, top, left + cw, top + ch))


def resize_crop(size: int):
    """Shorter side resized to ``size`` (:data:`INTERPOLATION`, antialiased; a strip first cut by
    :func:`cut_long_side`), then the centre ``size`` x ``size`` crop."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([cut_long_side, v2.Resize(size, interpolation=InterpolationMode(INTERPOLATION), antialias=True),
                       v2.CenterCrop(size)])  # fmt: skip


def transforms(image_size: int, mean: Sequence[float], std: Sequence[float], *, normalize: bool = True,
               antialias: bool | None = True):  # fmt: skip
    """The evaluation preprocessing of a trained model, as torchvision's ``weights.transforms()``: shorter side
    resized to ``image_size`` (bicubic, antialiased; a strip wider than :data:`MAX_ASPECT`:1 cut first), centre
    crop, float in [0, 1], normalised with the training ``mean``/``std``. Takes a PIL image (or uint8 tensor),
    returns a (3, S, S) float tensor; its ``crop_size``, ``resize_size``, ``mean``, ``std``, ``interpolation``,
    ``antialias`` and ``describe()`` say so as torchvision's presets do (read-only here). ``antialias``: taken as torchvision's transforms take it (its reference
    scripts pass ``antialias=True``; None, torchvision's other spelling, means the same); the resize always
    antialiases, as the weights were evaluated."""
    if antialias is False:
        raise DsrnetError("these weights' preprocessing resizes with antialiasing, as they were evaluated; fix: drop "
                          "antialias=False")  # fmt: skip
    from torchvision.transforms import InterpolationMode, v2

    steps = [*resize_crop(image_size).transforms, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(list(mean), list(std)))
    pipeline = v2.Compose(steps)
    # What torchvision's ImageClassification preset exposes (code reads weights.transforms().crop_size, .mean, ...,
    # and prints .describe()); the resize and the crop are the same size here. Read-only descriptions: unlike
    # torchvision's preset, setting them changes nothing (build another with transforms(size, mean, std)).
    pipeline.crop_size, pipeline.resize_size = [image_size], [image_size]
    pipeline.mean, pipeline.std = (list(mean), list(std)) if normalize else (None, None)
    pipeline.interpolation, pipeline.antialias = InterpolationMode(INTERPOLATION), True
    pipeline.describe = partial(_describe, image_size, pipeline.mean, pipeline.std)  # a partial: it pickles
    return pipeline


def _describe(image_size: int, mean: list[float] | None, std: list[float] | None) -> str:
    """:func:`transforms`' pipeline in words, as torchvision's presets' ``describe()``."""
    norm = f"normalized using ``mean={mean}`` and ``std={std}``" if mean is not None else "not normalized"
    return (f"Accepts ``PIL.Image``, batched ``(B, C, H, W)`` and single ``(C, H, W)`` uint8 image ``torch.Tensor`` "
            f"objects. A side longer than "
            f"{MAX_ASPECT} times the shorter one is first cut around the centre; the images are then resized to "
            f"``resize_size=[{image_size}]`` (shorter side) using ``interpolation=InterpolationMode."
            f"{INTERPOLATION.upper()}`` with antialiasing, followed by a central crop of ``crop_size=[{image_size}]``. "
            f"Finally the values are rescaled to ``[0.0, 1.0]`` and {norm}.")
