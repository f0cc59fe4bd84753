"""The evaluation preprocessing (``dsrnet predict`` / ``eval``, and torchvision weights' ``transforms()``)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def test_a_thin_strip_is_cut_before_it_is_resized_and_ordinary_images_are_untouched():
    """A 1x100000 PNG (far under the pixel limit) was resized to 32 x 3,200,000 pixels (1.3 GB) before the crop."""
    from torchvision.transforms import InterpolationMode, v2

    from dsrnet.models.preprocess import INTERPOLATION, MAX_ASPECT, cut_long_side, transforms

    strip = Image.new("RGB", (1, 100_000), (200, 10, 10))
    assert cut_long_side(strip).size == (1, MAX_ASPECT)
    assert cut_long_side(torch.zeros(3, 5, 100_000)).shape == (3, 5, 5 * MAX_ASPECT)
    assert transforms(32, [0.5] * 3, [0.5] * 3)(strip).shape == (3, 32, 32)
    rng = np.random.default_rng(0)
    for w, h in ((200, 150), (MAX_ASPECT * 32, 32), (17, 300)):  # up to 64:1: exactly torchvision's pipeline
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert cut_long_side(im) is im
        plain = v2.Compose([v2.Resize(32, interpolation=InterpolationMode(INTERPOLATION), antialias=True),
                            v2.CenterCrop(32), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])  # fmt: skip
        assert torch.equal(transforms(32, [0, 0, 0], [1, 1, 1])(im), plain(im))


def test_the_pipeline_takes_what_torchvisions_preset_takes():
    """A ``tv_tensors.Video`` stays one, PIL's integer interpolation constants work as in torchvision's resize, and
    a mean without a std is one clear error."""
    import pytest
    from torchvision import tv_tensors

    from dsrnet.errors import DsrnetError
    from dsrnet.models.preprocess import transforms

    bicubic = transforms(32, [0.4] * 3, [0.2] * 3)
    video = tv_tensors.Video(torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8))
    out = bicubic(video)
    assert isinstance(out, tv_tensors.Video) and out.shape == (2, 3, 32, 32)
    assert torch.equal(transforms(32, [0.4] * 3, [0.2] * 3, interpolation=3)(video), out)  # PIL.Image.BICUBIC
    with pytest.raises(DsrnetError, match="both mean and std"):
        transforms(32, [0.4] * 3, None)
