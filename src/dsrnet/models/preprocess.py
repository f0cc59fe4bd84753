"""The evaluation preprocessing of a trained model: what ``dsrnet predict`` / ``dsrnet eval`` feed a model and what
its torchvision weights' ``transforms()`` return (:mod:`dsrnet.models.torchvision_weights`).

Imports torchvision only when a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class EvalTransforms(torch.nn.Module):
    """A trained model's evaluation preprocessing, as torchvision's ``ImageClassification`` preset: a side longer
    than :data:`MAX_ASPECT` times the shorter one cut around the centre, the shorter side resized to
    ``resize_size``, the centre ``crop_size`` crop, float in [0, 1], normalised with ``mean`` / ``std`` (skipped
    where they are None). Takes a PIL image, a ``(C, H, W)`` or a batched ``(B, C, H, W)`` uint8 tensor. As in
    torchvision, the attributes are read at every call: setting one changes what the pipeline does."""

    def __init__(self, *, crop_size: int, resize_size: int | None = None, mean: Sequence[float] | None,
                 std: Sequence[float] | None, interpolation=INTERPOLATION, antialias: bool = True) -> None:  # fmt: skip
        from torchvision.transforms import InterpolationMode

        super().__init__()
        if (mean is None) != (std is None):
            raise DsrnetError("normalising needs both mean and std; fix: pass both, or neither to skip it")
        self.crop_size = [crop_size]
        self.resize_size = [crop_size if resize_size is None else resize_size]
        self.mean, self.std = (None, None) if mean is None else (list(mean), list(std))
        # a name or an InterpolationMode; PIL's integer constants pass through, as torchvision's resize takes them
        self.interpolation = InterpolationMode(interpolation) if isinstance(interpolation, str) else interpolation
        self.antialias = antialias

    def forward(self, image):
        from torchvision.transforms import v2
        from torchvision.transforms.v2 import functional as F

        image = F.resize(cut_long_side(image), self.resize_size, interpolation=self.interpolation,
                         antialias=self.antialias)  # fmt: skip
        image = v2.ToImage()(F.center_crop(image, self.crop_size))  # (a tv_tensors.Video stays one)
        image = F.to_dtype(image, torch.float32, scale=True)
        return image if self.mean is None else F.normalize(image, self.mean, self.std)

    def __repr__(self) -> str:
        fields = ("crop_size", "resize_size", "mean", "std", "interpolation", "antialias")
        return f"{type(self).__name__}(\n" + "".join(f"    {f}={getattr(self, f)}\n" for f in fields) + ")"

    def describe(self) -> str:
        """The pipeline in words, as torchvision's presets' ``describe()``."""
        norm = (f"normalized using ``mean={self.mean}`` and ``std={self.std}``" if self.mean is not None
                else "not normalized")  # fmt: skip
        return (f"Accepts ``PIL.Image``, batched ``(B, C, H, W)`` and single ``(C, H, W)`` uint8 image "
                f"``torch.Tensor`` objects. A side longer than {MAX_ASPECT} times the shorter one is first cut "
                f"around the centre; the images are then resized to ``resize_size={self.resize_size}`` (shorter "
                f"side) using ``interpolation={self.interpolation}``"
                f"{' with antialiasing' if self.antialias else ' without antialiasing'}, followed by a central crop "
                f"of ``crop_size={self.crop_size}``. Finally the values are rescaled to ``[0.0, 1.0]`` and {norm}.")


def transforms(image_size: int, mean: Sequence[float], std: Sequence[float], *, normalize: bool = True,
               antialias: bool | None = True, crop_size: int | None = None, resize_size: int | None = None,
               interpolation=INTERPOLATION) -> EvalTransforms:  # fmt: skip
    """The evaluation preprocessing of a trained model (:class:`EvalTransforms`): what ``dsrnet predict`` /
    ``eval`` feed it and what its torchvision weights' ``transforms()`` return, taking the keyword arguments
    torchvision's preset takes: ``crop_size`` and ``resize_size`` (both ``image_size`` unless given; a
    ``crop_size`` alone sets both), ``interpolation`` (bicubic, as the weights were evaluated) and ``antialias``
    (torchvision's reference scripts pass ``antialias=True``; None, torchvision's other spelling, means the same;
    False is refused: the weights were evaluated with antialiasing)."""
    if antialias is False:
        raise DsrnetError("these weights' preprocessing resizes with antialiasing, as they were evaluated; fix: drop "
                          "antialias=False")  # fmt: skip
    crop = image_size if crop_size is None else crop_size
    return EvalTransforms(crop_size=crop, resize_size=crop if resize_size is None else resize_size,
                          mean=mean if normalize else None, std=std if normalize else None,
                          interpolation=interpolation, antialias=True)  # fmt: skip
