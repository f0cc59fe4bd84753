"""The GPU-resident augmenting loader (Section 4.2: "randomly cropped, flipped, and normalized").

:class:`DeviceLoader` keeps a whole split as one uint8 tensor on the training device and augments each batch there
(random crop of the zero-padded image, horizontal flip, per-channel normalisation; for STL-10 "zero-padding ... then
randomly crop the image to 96*96", Section 4.5), so data loading costs a few small kernels per batch and no host work
at all.

What the crop pads with (``pad_fill``): ``"zero"`` pads the image with black pixels (zero in pixel space, the paper's
"zero-padding" read literally); ``"mean"`` pads with the dataset's mean colour, i.e. with zeros AFTER normalisation,
which is what a network padding its own normalised input sees at its borders; ``"reflect"`` mirrors the image at
its borders (``F.pad(mode="reflect")``, the edge pixel not repeated), as several fast CIFAR trainers do. Which trains
better is a recipe question (see ``results/recipe-leads``); ``"zero"`` is the default.

Cutout (``cutout``, off by default): after the crop and flip, one square of ``cutout`` x ``cutout`` pixels per
training image, its centre uniform over the image and the square clipped at the borders, is set to 0 after
normalisation, i.e. to the mean colour (DeVries & Taylor 2017, "Improved Regularization of Convolutional Neural
Networks with Cutout"; 16 px on CIFAR-10).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dsrnet.errors import DsrnetError

__all__ = ["PAD_FILLS", "DeviceLoader", "crop_flip", "cutout"]

#: What the random crop pads with: black pixels, the mean colour (= 0 after normalisation), or the image mirrored
#: at its borders.
PAD_FILLS = ("zero", "mean", "reflect")


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) well and identically in every process, unlike Python's salted hash().
    return int(
        np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, epoch]).generate_state(1)[0]
    )


class DeviceLoader:
    """Iterate over a whole split held as one uint8 tensor on ``device``, yielding ``(x, y)``: ``x`` float32
    (B,3,H,W) normalised with ``mean``/``std`` (in [0,1] units), ``y`` int64 (B,), both on ``device``.

    ``train=True``: a fresh permutation each epoch, random crop of the image padded by ``pad`` on each side
    (with black, ``pad_fill="zero"``, the mean colour, ``pad_fill="mean"``, or the mirrored image,
    ``pad_fill="reflect"``; module docstring), a horizontal flip with probability 1/2 (Section 4.2; STL-10
    Section 4.5) and, with ``cutout > 0``, one ``cutout``-pixel square per image set to the mean colour (DeVries &
    Taylor 2017), all computed on ``device`` in a handful of batched kernels. The randomness is drawn on the CPU
    from ``(seed, epoch)``, so batches are the same on every device and every rank. ``train=False``: fixed order,
    no augmentation.

    Epochs: each ``iter()`` uses the current epoch and then advances it by one; :meth:`set_epoch` sets it
    explicitly (as with ``DistributedSampler``), so forgetting it never repeats the same order.

    DDP (``rank``/``world_size``): every rank draws the same global permutation and takes the positions
    ``rank, rank + world_size, ...`` of it, so the ranks' samples are disjoint. For training each rank gets
    ``N // world_size`` samples (at most ``world_size - 1`` images, different ones each epoch, are left out) so all
    ranks run the same number of steps; for evaluation the ranks split all ``N`` images (sizes may differ by one).
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        train: bool,
        device: str | torch.device = "cpu",
        mean: tuple[float, float, float] | list[float],
        std: tuple[float, float, float] | list[float],
        pad: int = 4,
        flip: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        pad_fill: str = "zero",
        cutout: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DsrnetError(f"batch size must be a positive integer, got {batch_size!r}")
        if not (
            isinstance(world_size, int)
            and world_size >= 1
            and isinstance(rank, int)
            and 0 <= rank < world_size
        ):
            raise DsrnetError(
                f"rank {rank!r} / world size {world_size!r} invalid: need 0 <= rank < world_size"
            )
        if not isinstance(pad, int) or pad < 0:
            raise DsrnetError(f"pad must be a non-negative integer, got {pad!r}")
        if pad_fill not in PAD_FILLS:
            raise DsrnetError(f"pad_fill must be one of {', '.join(PAD_FILLS)}, got {pad_fill!r}")
        if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
            raise DsrnetError(f"cutout must be a non-negative integer (0 = off), got {cutout!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise DsrnetError(f"mean and std need 3 values each with std > 0, got mean={mean!r} std={std!r}")
        with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: they are copied, never written
            warnings.simplefilter("ignore", UserWarning)
            images_t = torch.as_tensor(images)
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if images_t.dtype != torch.uint8 or images_t.ndim != 4 or images_t.shape[-1] != 3:
            raise DsrnetError(
                f"loader images must be uint8 (N,H,W,3), got {images_t.dtype} {tuple(images_t.shape)}"
            )
        if labels_t.ndim != 1 or len(labels_t) != len(images_t) or labels_t.is_floating_point():
            raise DsrnetError(
                f"loader labels must be (N,) integers matching {len(images_t)} images, got "
                f"{labels_t.dtype} {tuple(labels_t.shape)}"
            )
        n = len(images_t)
        if n == 0:
            raise DsrnetError("loader got an empty split")
        side = min(images_t.shape[1:3])
        if cutout > side:
            raise DsrnetError(f"cutout {cutout} is larger than the {side}-pixel image; fix: use 0..{side}")
        if train and pad_fill == "reflect" and pad >= side:
            raise DsrnetError(
                f"pad {pad} cannot be reflected in a {side}-pixel image; fix: use pad < {side} or another pad_fill"
            )
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.pad = pad if train else 0
        self.flip = flip and train
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.pad_fill = pad_fill
        self.cutout = cutout if train else 0
        self.epoch = 0
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.num_total = n
        self.num_samples = n // world_size if train else len(range(rank, n, world_size))
        if self.num_samples == 0:
            raise DsrnetError(f"{n} images cannot give each of {world_size} ranks at least one sample")
        if drop_last and self.num_samples < batch_size:
            raise DsrnetError(
                f"drop_last with batch size {batch_size} leaves no batch of {self.num_samples} samples per rank; "
                f"fix: lower the batch size or drop drop_last"
            )
        # NCHW once, on the device: one 150 MB copy for CIFAR's train split, then only gathers per batch.
        self.images = images_t.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = labels_t.to(self.device, torch.int64)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # x_norm = (u8 / 255 - mean) / std = u8 * scale + shift: one fused multiply-add per element.
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration (shuffle order and augmentation draw from ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def _plan(self, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's indices for ``epoch`` and its per-sample augmentation draws, on the CPU: crop offsets
        ``dy``/``dx``, ``flip`` flags and, with cutout, the square's centre ``cy``/``cx`` (none for evaluation)."""
        n, ws = self.num_total, self.world_size
        if not self.train:
            return torch.arange(self.rank, n, ws), {}
        g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        perm = torch.randperm(n, generator=g)
        draws = {
            "dy": torch.randint(0, 2 * self.pad + 1, (n,), generator=g),
            "dx": torch.randint(0, 2 * self.pad + 1, (n,), generator=g),
            "flip": (torch.rand(n, generator=g) < 0.5) & self.flip,
        }
        if self.cutout:  # drawn after the crop and flip, which therefore do not depend on it
            h, w = self.images.shape[-2:]
            draws["cy"] = torch.randint(0, h, (n,), generator=g)
            draws["cx"] = torch.randint(0, w, (n,), generator=g)
        pos = torch.arange(self.rank, self.num_samples * ws, ws)  # the same global draw, sliced per rank
        return perm[pos], {k: v[pos] for k, v in draws.items()}

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """Indices into the split that this rank visits in ``epoch`` (default: the next epoch), in batch order."""
        return self._plan(self.epoch if epoch is None else epoch)[0][: len(self) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx, draws = self._plan(epoch)
        non_blocking = self.device.type == "cuda"
        idx = idx.to(self.device, non_blocking=non_blocking)
        draws = {k: v.to(self.device, non_blocking=non_blocking) for k, v in draws.items()}
        sequential = not self.train and self.world_size == 1
        bs = self.batch_size
        for b in range(len(self)):
            sl = slice(b * bs, (b + 1) * bs)
            if sequential:  # evaluation on one rank: plain views, no gather
                xb, yb = self.images[sl], self.labels[sl]
            else:
                ib = idx[sl]
                xb, yb = self.images.index_select(0, ib), self.labels.index_select(0, ib)
            augment = self.train and (self.pad or self.flip)
            crop = {k: draws[k][sl] for k in ("dy", "dx", "flip")} if augment else {}
            if augment and self.pad_fill == "zero":  # pad the uint8 image with black, then normalise
                xb = crop_flip(xb, self.pad, **crop)
            x = torch.addcmul(self._shift, xb.to(torch.float32), self._scale)
            if augment and self.pad_fill == "mean":  # normalise, then pad with 0 = the mean colour, exactly
                x = crop_flip(x, self.pad, **crop)
            elif augment and self.pad_fill == "reflect":  # per-pixel normalisation commutes with the mirroring
                x = crop_flip(x, self.pad, **crop, mode="reflect")
            if self.cutout:
                x = cutout(x, self.cutout, draws["cy"][sl], draws["cx"][sl])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, yb


def crop_flip(
    x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, mode: str = "constant"
) -> torch.Tensor:
    """Batched random crop + horizontal flip: sample ``i`` of ``x`` (B,C,H,W) is padded by ``pad`` on every side
    (with zeros, or ``mode="reflect"``: mirrored at the borders, as :func:`torch.nn.functional.pad`), cut at rows
    ``dy[i]..dy[i]+H`` and columns ``dx[i]..dx[i]+W`` (offsets in ``[0, 2*pad]``), then mirrored left-right where
    ``flip[i]``. One pad and one gather for the whole batch; the flip is folded into the gather's column index, so
    it costs nothing and is exact."""
    b, c, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode) if pad else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy.view(b, 1) + ar_h  # (B,H)
    cols = dx.view(b, 1) + torch.where(flip.view(b, 1), (w - 1) - ar_w, ar_w)  # (B,W)
    lin = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    return xp.reshape(b, c, hp * wp).gather(2, lin).view(b, c, h, w)


def cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Batched Cutout (DeVries & Taylor 2017): in sample ``i`` of ``x`` (B,C,H,W) the ``size`` x ``size`` square
    at rows ``cy[i] - size//2 ..`` and columns ``cx[i] - size//2 ..``, clipped at the borders, is set to 0 in every
    channel (on normalised input: the mean colour). Two comparisons and one masked fill for the whole batch."""
    b, _, h, w = x.shape
    top, left = (cy - size // 2).view(b, 1), (cx - size // 2).view(b, 1)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    in_rows = (ar_h >= top) & (ar_h < top + size)  # (B,H)
    in_cols = (ar_w >= left) & (ar_w < left + size)  # (B,W)
    return x.masked_fill((in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w)), 0.0)
