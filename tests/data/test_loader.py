"""The on-device augmenting loader (Section 4.2): normalisation, exact crops and flips, the pad fills, Cutout,
determinism per (seed, epoch), disjoint DDP shards, and its bad-argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsrnet.data import DeviceLoader, crop_flip
from dsrnet.errors import DsrnetError

# --------------------------------------------------------------------------------------------- the loader


def _loader(n=50, size=8, **kw):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 5
    kw.setdefault("batch_size", 8)
    kw.setdefault("train", True)
    return images, labels, DeviceLoader(images, labels, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **kw)


def _to_uint8(x: torch.Tensor, loader: DeviceLoader) -> torch.Tensor:
    return ((x - loader._shift) / loader._scale).round().clamp(0, 255).to(torch.uint8)


def test_eval_loader_is_plain_normalisation_in_order():
    images, labels, loader = _loader(n=21, train=False, batch_size=8)
    xs, ys = zip(*loader, strict=True)
    assert [len(y) for y in ys] == [8, 8, 5] and len(loader) == 3
    x = torch.cat(xs)
    mean, std = torch.tensor((0.5, 0.4, 0.3)), torch.tensor((0.2, 0.25, 0.3))
    ref = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean.view(1, 3, 1, 1)) / std.view(
        1, 3, 1, 1
    )
    assert x.dtype == torch.float32 and x.shape == (21, 3, 8, 8)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat(ys), torch.from_numpy(labels))
    assert torch.equal(torch.cat([y for _, y in loader]), torch.cat(ys))  # every pass identical


def test_train_shapes_labels_and_len():
    images, labels, loader = _loader(n=50, batch_size=8)
    assert len(loader) == 7 and loader.num_samples == 50
    idx = loader.epoch_indices(0)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(8, 3, 8, 8)] * 6 + [(2, 3, 8, 8)]
    y = torch.cat([y for _, y in batches])
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels)[idx])
    assert sorted(idx.tolist()) == list(range(50))
    _, _, dl = _loader(n=50, batch_size=8, drop_last=True)
    assert len(dl) == 6 and sum(len(y) for _, y in dl) == 48


def test_flips_are_exact_without_padding():
    images, _, loader = _loader(n=64, pad=0, batch_size=64)
    idx = loader.epoch_indices(0)
    x, _ = next(iter(loader))
    got = _to_uint8(x, loader)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)[idx]
    same = (got == src).flatten(1).all(1)
    flipped = (got == src.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all()
    assert 10 < int(flipped.sum()) < 54  # about half flipped
    _, _, nf = _loader(n=64, pad=0, flip=False, batch_size=64)
    idx = nf.epoch_indices(0)
    x, _ = next(iter(nf))
    assert torch.equal(_to_uint8(x, nf), torch.from_numpy(images).permute(0, 3, 1, 2)[idx])


def test_crop_flip_matches_explicit_slicing():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8, generator=g)
    pad = 3
    dy = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (16,), generator=g)
    dy[0], dx[0], dy[1], dx[1] = 0, 0, 2 * pad, 2 * pad  # both extreme corners
    fl = torch.rand(16, generator=g) < 0.5
    out = crop_flip(x, pad, dy, dx, fl)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(16):
        ref = padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 12]
        assert torch.equal(out[i], ref.flip(-1) if fl[i] else ref)


def test_loader_crops_stay_inside_padded_image():
    """Every augmented image is one of the (2*pad+1)^2 * 2 windows of its zero-padded source, and the offsets
    cover the full range."""
    pad = 2
    images, _, loader = _loader(n=40, size=6, pad=pad, batch_size=40)
    idx = loader.epoch_indices(0)
    x, _ = next(iter(loader))
    got = _to_uint8(x, loader)
    padded = torch.nn.functional.pad(torch.from_numpy(images).permute(0, 3, 1, 2), (pad,) * 4)
    offsets = set()
    for i, j in enumerate(idx.tolist()):
        hits = []
        for a in range(2 * pad + 1):
            for b in range(2 * pad + 1):
                window = padded[j, :, a : a + 6, b : b + 6]
                hits += [
                    (a, b, f) for f, w in ((False, window), (True, window.flip(-1))) if torch.equal(got[i], w)
                ]
        assert hits, f"sample {i} is not a window of its padded source"
        offsets.update((a, b) for a, b, _ in hits)
    assert {a for a, _ in offsets} == set(range(2 * pad + 1))


def test_same_seed_same_batches_other_seed_or_epoch_differs():
    def run(seed, epoch):
        _, _, ld = _loader(n=30, batch_size=7, seed=seed)
        ld.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in ld]

    a, b = run(5, 2), run(5, 2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    c, d = run(6, 2), run(5, 3)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in d]))
    # Without set_epoch, successive passes advance the epoch instead of repeating the same order.
    _, _, ld = _loader(n=30, batch_size=30)
    first, second = next(iter(ld))[1], next(iter(ld))[1]
    assert not torch.equal(first, second) and ld.epoch == 2


def test_ranks_get_disjoint_slices_of_one_permutation():
    n, ws = 103, 4
    per_rank = []
    for rank in range(ws):
        _, _, ld = _loader(n=n, batch_size=5, rank=rank, world_size=ws, seed=9)
        ld.set_epoch(4)
        assert ld.num_samples == n // ws == 25 and len(ld) == 5
        idx = ld.epoch_indices()
        assert torch.equal(torch.cat([y for _, y in ld]), torch.from_numpy(np.arange(n) % 5)[idx])
        per_rank.append(set(idx.tolist()))
    assert sum(len(s) for s in per_rank) == len(set().union(*per_rank)) == (n // ws) * ws
    # Evaluation splits all images over the ranks, each exactly once.
    evals = [DeviceLoader(*_loader(n=n)[:2], batch_size=5, train=False, mean=(0,) * 3, std=(1,) * 3, rank=r,
                          world_size=ws).epoch_indices().tolist() for r in range(ws)]  # fmt: skip
    assert sorted(sum(evals, [])) == list(range(n))


def test_channels_last_and_uint8_tensor_input():
    images = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8)
    ld = DeviceLoader(images, torch.arange(10), batch_size=4, train=True, mean=(0.5,) * 3, std=(0.5,) * 3,
                      channels_last=True)  # fmt: skip
    x, y = next(iter(ld))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (4, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch size must be a positive integer"),
        ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size"),
        ({"std": (0.2, 0.0, 0.2)}, "std > 0"),
        ({"pad": -1}, "pad must be"),
        ({"world_size": 11, "rank": 0}, "cannot give each of 11 ranks"),
        ({"batch_size": 16, "drop_last": True}, "leaves no batch"),
    ],
)
def test_loader_bad_arguments(kwargs, match):
    args = {"batch_size": 4, "train": True, "mean": (0.5,) * 3, "std": (0.2,) * 3, **kwargs}
    with pytest.raises(DsrnetError, match=match):
        DeviceLoader(np.zeros((10, 8, 8, 3), np.uint8), np.zeros(10, np.int64), **args)


def test_loader_bad_arrays():
    kw = {"batch_size": 4, "train": True, "mean": (0.5,) * 3, "std": (0.2,) * 3}
    with pytest.raises(DsrnetError, match="must be uint8"):
        DeviceLoader(np.zeros((10, 8, 8, 3), np.float32), np.zeros(10), **kw)
    with pytest.raises(DsrnetError, match="must be uint8"):
        DeviceLoader(np.zeros((10, 3, 8, 8), np.uint8), np.zeros(10, np.int64), **kw)
    with pytest.raises(DsrnetError, match="matching 10 images"):
        DeviceLoader(np.zeros((10, 8, 8, 3), np.uint8), np.zeros(9, np.int64), **kw)


def test_pad_fill_mean_pads_with_zero_after_normalisation_and_changes_nothing_else():
    _, _, black = _loader(n=32, pad=3, pad_fill="zero")
    _, _, mean = _loader(n=32, pad=3, pad_fill="mean")
    xb, yb = next(iter(black))
    xm, ym = next(iter(mean))
    assert torch.equal(yb, ym)
    padded = xb != xm  # the same crops and flips: only the padded border differs
    assert padded.any()
    assert torch.all(xm[padded] == 0)  # the mean colour, exactly
    assert torch.allclose(xb[padded], black._shift.expand_as(xb)[padded])  # black: (0 - mean) / std
    # Every crop offset in [0, 2 * pad] away from the centre pads the border rows/columns it shifts in.
    interior = (slice(None), slice(None), slice(3, 5), slice(3, 5))
    assert torch.equal(xb[interior], xm[interior])
    with pytest.raises(DsrnetError, match="pad_fill must be one of zero, mean, reflect"):
        _loader(pad_fill="wrap")


# ------------------------------------------------------------------------------------------ reflect padding


def _reflect_index(p: int, pad: int, n: int) -> int:
    """Source index of padded position ``p`` under reflection without repeating the edge: -1 -> 1, n -> n - 2."""
    i = p - pad
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


def test_crop_flip_reflect_pads_with_the_mirrored_image():
    h, w, pad = 5, 6, 3
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w)
    dy, dx = torch.tensor([0, 2 * pad]), torch.tensor([0, 2 * pad])  # the two extreme corners
    out = crop_flip(x, pad, dy, dx, torch.tensor([False, True]), mode="reflect")
    for i in range(2):
        rows = [_reflect_index(dy[i].item() + r, pad, h) for r in range(h)]
        cols = [_reflect_index(dx[i].item() + c, pad, w) for c in range(w)]
        ref = x[i][:, rows][:, :, cols]
        assert torch.equal(out[i], ref.flip(-1) if i == 1 else ref)
    assert out[0, 0, 0, 0] == x[0, 0, pad, pad]  # top-left corner of the padded image: the pixel (pad, pad) away
    # The default (zero) mode is unchanged.
    assert torch.equal(crop_flip(x, pad, dy, dx, torch.tensor([False, False]))[0, :, :pad, :], torch.zeros(3, pad, w))


def test_loader_reflect_fill_gives_windows_of_the_reflected_image():
    pad, size = 2, 6
    images, _, loader = _loader(n=24, size=size, pad=pad, batch_size=24, pad_fill="reflect")
    idx = loader.epoch_indices(0)
    _, draws = loader._plan(0)
    x, _ = next(iter(loader))
    got = _to_uint8(x, loader)
    src = torch.from_numpy(images).permute(0, 3, 1, 2)
    for i, j in enumerate(idx.tolist()):
        rows = [_reflect_index(draws["dy"][i].item() + r, pad, size) for r in range(size)]
        cols = [_reflect_index(draws["dx"][i].item() + c, pad, size) for c in range(size)]
        ref = src[j][:, rows][:, :, cols]
        assert torch.equal(got[i], ref.flip(-1) if draws["flip"][i] else ref), i
    # The same draws as the other fills: only the border differs from black padding.
    _, _, black = _loader(n=24, size=size, pad=pad, batch_size=24)
    xb, _ = next(iter(black))
    inner = (slice(None), slice(None), slice(pad, size - pad), slice(pad, size - pad))
    assert torch.equal(xb[inner], x[inner]) and not torch.equal(xb, x)
    with pytest.raises(DsrnetError, match="pad 6 cannot be reflected in a 6-pixel image"):
        _loader(size=6, pad=6, pad_fill="reflect")


# -------------------------------------------------------------------------------------------------- cutout


def _constant_loader(n=40, size=8, **kw):
    """Every pixel 200 (far from the mean colour), so only Cutout makes zeros after normalisation."""
    images = np.full((n, size, size, 3), 200, np.uint8)
    kw = {"batch_size": n, "train": True, "pad": 0, **kw}
    return DeviceLoader(images, np.arange(n) % 5, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **kw)


def test_cutout_zeroes_one_clipped_square_per_image_at_the_drawn_centre():
    size, side = 8, 5
    loader = _constant_loader(size=size, cutout=side)
    loader.set_epoch(3)
    _, draws = loader._plan(3)
    x, _ = next(iter(loader))
    zero = x == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # all channels of a pixel, or none
    areas = set()
    for i in range(len(x)):
        top, left = draws["cy"][i].item() - side // 2, draws["cx"][i].item() - side // 2
        want = torch.zeros(size, size, dtype=torch.bool)
        want[max(top, 0) : top + side, max(left, 0) : left + side] = True  # the square, clipped at the borders
        assert torch.equal(zero[i, 0], want), i
        areas.add(int(want.sum()))
    assert side * side in areas and min(areas) < side * side  # whole squares and clipped ones
    assert x[~zero].abs().min() > 0.5  # everything else is the normalised 200
    # Centres vary across images and epochs; the same (seed, epoch) gives the same squares.
    assert len({(cy.item(), cx.item()) for cy, cx in zip(draws["cy"], draws["cx"], strict=True)}) > 10
    again = _constant_loader(size=size, cutout=side)
    again.set_epoch(3)
    assert torch.equal(next(iter(again))[0], x)
    again.set_epoch(4)
    assert not torch.equal(next(iter(again))[0], x)


def test_cutout_is_train_only_and_keeps_the_crop_and_flip_draws():
    assert not (next(iter(_constant_loader(cutout=8, train=False)))[0] == 0).any()  # never at evaluation
    _, _, plain = _loader(n=32, pad=3)
    _, _, cut = _loader(n=32, pad=3, cutout=4)
    _, _, off = _loader(n=32, pad=3, cutout=0)
    (xp, yp), (xc, yc), (xo, yo) = next(iter(plain)), next(iter(cut)), next(iter(off))
    assert torch.equal(xo, xp) and torch.equal(yo, yp)  # cutout=0 is the loader without it
    changed = xc != xp
    assert torch.equal(yc, yp) and changed.any() and torch.all(xc[changed] == 0)  # same crops, flips, order
    assert int((xc == 0).flatten(1).any(1).sum()) == len(xc)  # every image got its square


@pytest.mark.parametrize(
    ("cutout", "match"),
    [(-1, "cutout must be a non-negative integer"), (True, "cutout must be"), (2.5, "cutout must be"),
     (9, "cutout 9 is larger than the 8-pixel image")],
)  # fmt: skip
def test_cutout_bad_values(cutout, match):
    with pytest.raises(DsrnetError, match=match) as err:
        _loader(cutout=cutout)
    assert "\n" not in str(err.value)
