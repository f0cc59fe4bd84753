"""Data layer: official formats (generated here byte for byte), the real CIFAR-10, the on-device augmenting loader,
and every bad-input case the issue lists."""

from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import struct
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from dsrnet.data import DATASETS, DeviceLoader, channel_stats, load_split, subset_per_class
from dsrnet.data import datasets as data
from dsrnet.errors import DsrnetError

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------- official-format generators


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC -> the official (N, 3072) rows: 1024 red, then green, then blue values, each plane row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


class _Python2Pickler(pickle._Pickler):
    """Writes what the official files hold, protocol-2 pickles from Python 2's cPickle: every string, text and the
    arrays' raw bytes alike, as a Python 2 ``str`` (``BINSTRING``; Python 3 writes bytes as ``_codecs.encode``
    calls), and NumPy's reconstructor under its old module name ``numpy.core.multiarray`` (``numpy._core`` today)."""

    def save_binstring(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj, name=None) -> None:
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core."):
            old = "numpy.core." + module.removeprefix("numpy._core.")
            self.write(pickle.GLOBAL + f"{old}\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_binstring, str: save_binstring}


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def _dump_python3(path: Path, obj) -> None:
    """The same data as Python 3 writes it at protocol 2 (re-saved copies of the official files)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar10(
    root: Path, n_per_batch: int = 6, n_test: int = 7
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    tr_x, tr_y = [], []
    for i in range(1, 6):
        x = RNG.integers(0, 256, (n_per_batch, 32, 32, 3), dtype=np.uint8)
        y = RNG.integers(0, 10, n_per_batch)
        d = {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(v) for v in y],
            "data": _cifar_rows(x),
            "filenames": [f"img_{i}_{j}.png" for j in range(n_per_batch)],
        }
        _dump(folder / f"data_batch_{i}", d)
        tr_x.append(x)
        tr_y.append(y)
    out["train"] = (np.concatenate(tr_x), np.concatenate(tr_y))
    x = RNG.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
    y = RNG.integers(0, 10, n_test)
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": list(map(int, y)),
                                  "data": _cifar_rows(x), "filenames": [f"t{j}.png" for j in range(n_test)]})  # fmt: skip
    out["test"] = (x, y)
    _dump(folder / "batches.meta", {"num_cases_per_batch": n_per_batch, "label_names": list(data.CIFAR10_CLASSES),
                                    "num_vis": 3072})  # fmt: skip
    (folder / "readme.html").write_text("<html></html>")
    return out


def make_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = RNG.integers(0, 100, n)
        coarse = RNG.integers(0, 20, n)
        d = {
            "filenames": [f"{split}_{j}.png" for j in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": list(map(int, fine)),
            "coarse_labels": list(map(int, coarse)),
            "data": _cifar_rows(x),
        }
        _dump(folder / split, d)
        out[split] = (x, fine, coarse)
    _dump(folder / "meta", {"fine_label_names": list(data.CIFAR100_CLASSES),
                            "coarse_label_names": list(data.CIFAR100_COARSE_CLASSES)})  # fmt: skip
    return out


def _stl_bytes(images: np.ndarray) -> bytes:
    """NHWC -> STL-10's column-major layout: per image 3 planes, each stored column by column."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def make_stl10(root: Path, n_train: int = 4, n_test: int = 3, n_unlabeled: int = 5) -> dict:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = RNG.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(x))
        if split != "unlabeled":
            y = RNG.integers(1, 11, n).astype(np.uint8)  # 1-based on disk
            (folder / f"{split}_y.bin").write_bytes(y.tobytes())
            out[split] = (x, y.astype(np.int64) - 1)
        else:
            out[split] = (x, None)
    (folder / "class_names.txt").write_text("\n".join(data.STL10_CLASSES) + "\n")
    (folder / "fold_indices.txt").write_text("0 1\n2 3\n")
    return out


# ----------------------------------------------------------------------------------------- official formats


def test_cifar10_official_pickles(tmp_path):
    ref = make_cifar10(tmp_path)
    for split in ("train", "test"):
        got = load_split("cifar10", split, tmp_path)
        x, y = ref[split]
        assert got.images.dtype == np.uint8 and got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.images, x)
        np.testing.assert_array_equal(got.labels, y)
        assert got.classes == data.CIFAR10_CLASSES
    assert len(load_split("cifar10", "train", tmp_path)) == 30  # 5 batches, in batch order


def test_cifar_pixel_orientation_independent_of_our_transpose(tmp_path):
    """One marked byte at the official offset (plane c, row r, column k -> c*1024 + r*32 + k) must land at
    images[0, r, k, c]; this does not reuse the loader's own reshape."""
    make_cifar10(tmp_path, n_per_batch=1, n_test=1)
    folder = tmp_path / "cifar-10-batches-py"
    d = _load(folder / "test_batch")
    d["data"][:] = 0
    c, r, k = 2, 5, 17
    d["data"][0, c * 1024 + r * 32 + k] = 255
    _dump(folder / "test_batch", d)
    got = load_split("cifar10", "test", tmp_path).images
    assert got[0, r, k, c] == 255 and int(got.sum()) == 255


def test_python2_written_and_python3_resaved_pickles_load_alike(tmp_path):
    """The official files are Python 2 pickles (NumPy's reconstructor as ``numpy.core.multiarray``, strings and the
    pixel bytes as ``BINSTRING``); copies re-saved by Python 3 name ``numpy._core`` and encode bytes through
    ``_codecs``. Both are allowed by the restricted unpickler and give the same arrays."""
    ref = make_cifar10(tmp_path / "py2")
    raw = (tmp_path / "py2" / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert b"numpy.core.multiarray" in raw and "BINSTRING" in {op.name for op, _, _ in pickletools.genops(raw)}
    shutil.copytree(tmp_path / "py2" / "cifar-10-batches-py", tmp_path / "py3" / "cifar-10-batches-py")
    for batch in (tmp_path / "py3" / "cifar-10-batches-py").glob("*_batch*"):
        _dump_python3(batch, _load(batch))
    assert b"numpy._core.multiarray" in (tmp_path / "py3" / "cifar-10-batches-py" / "test_batch").read_bytes()
    for root in ("py2", "py3"):
        got = load_split("cifar10", "test", tmp_path / root)
        np.testing.assert_array_equal(got.images, ref["test"][0])
        np.testing.assert_array_equal(got.labels, ref["test"][1])
        assert got.classes == data.CIFAR10_CLASSES


def test_official_formats_agree_with_torchvision_readers(tmp_path, monkeypatch):
    """torchvision's own readers (md5 check switched off, as the files are small) decode the same arrays."""
    c10, c100, stl = make_cifar10(tmp_path), make_cifar100(tmp_path), make_stl10(tmp_path)
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tvd.stl10, "check_integrity", lambda *a, **k: True)
    tv = tvd.CIFAR10(str(tmp_path), train=True)
    np.testing.assert_array_equal(tv.data, c10["train"][0])
    np.testing.assert_array_equal(load_split("cifar10", "train", tmp_path).images, tv.data)
    tv = tvd.CIFAR100(str(tmp_path), train=False)
    np.testing.assert_array_equal(load_split("cifar100", "test", tmp_path).images, tv.data)
    np.testing.assert_array_equal(load_split("cifar100", "test", tmp_path).labels, tv.targets)
    assert c100["test"][0].shape == tv.data.shape
    tv = tvd.STL10(str(tmp_path), split="train")
    got = load_split("stl10", "train", tmp_path)
    np.testing.assert_array_equal(got.images, tv.data.transpose(0, 2, 3, 1))  # torchvision keeps NCHW
    np.testing.assert_array_equal(got.labels, tv.labels)
    np.testing.assert_array_equal(got.images, stl["train"][0])


def test_cifar100_official_with_coarse_labels_and_cache(tmp_path):
    ref = make_cifar100(tmp_path)
    got = load_split("cifar100", "train", tmp_path)
    x, fine, coarse = ref["train"]
    np.testing.assert_array_equal(got.images, x)
    np.testing.assert_array_equal(got.labels, fine)
    np.testing.assert_array_equal(got.coarse_labels, coarse)
    assert got.classes == data.CIFAR100_CLASSES and len(got.classes) == 100
    with np.load(tmp_path / "cifar100" / "train.npz") as z:  # the cache keeps the coarse labels too
        np.testing.assert_array_equal(z["coarse_labels"], coarse)


def test_stl10_official_binaries(tmp_path):
    ref = make_stl10(tmp_path)
    for split in ("train", "test"):
        got = load_split("stl10", split, tmp_path)
        np.testing.assert_array_equal(got.images, ref[split][0])
        np.testing.assert_array_equal(got.labels, ref[split][1])
        assert got.labels.min() >= 0 and got.labels.max() <= 9
    assert got.classes == data.STL10_CLASSES


def test_stl10_column_major_marker(tmp_path):
    """STL-10 stores each plane column by column: byte c*9216 + col*96 + row is pixel (row, col, c)."""
    make_stl10(tmp_path, n_train=1)
    raw = np.zeros(3 * 96 * 96, np.uint8)
    c, r, k = 1, 3, 70
    raw[c * 9216 + k * 96 + r] = 200
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(raw.tobytes())
    got = load_split("stl10", "train", tmp_path).images
    assert got[0, r, k, c] == 200 and int(got.sum()) == 200


def test_stl10_unlabeled_is_lazy_and_not_cached(tmp_path):
    ref = make_stl10(tmp_path)
    got = load_split("stl10", "unlabeled", tmp_path)
    assert isinstance(got.images.base, np.memmap) or isinstance(got.images, np.memmap)
    assert got.images.shape == (5, 96, 96, 3)
    np.testing.assert_array_equal(np.asarray(got.images), ref["unlabeled"][0])
    assert (got.labels == -1).all()
    assert not (tmp_path / "stl10" / "unlabeled.npz").exists()
    with pytest.raises(DsrnetError, match="unknown split"):
        load_split("cifar10", "unlabeled", tmp_path)


def test_official_read_writes_cache_which_is_then_used(tmp_path):
    ref = make_cifar10(tmp_path)
    load_split("cifar10", "train", tmp_path)
    load_split("cifar10", "test", tmp_path)
    names = sorted(p.name for p in (tmp_path / "cifar10").iterdir())
    assert names == ["test.npz", "train.npz"]  # and no temp files
    for p in (tmp_path / "cifar-10-batches-py").iterdir():
        p.unlink()
    got = load_split("cifar10", "train", tmp_path)  # from the cache alone now
    np.testing.assert_array_equal(got.images, ref["train"][0])


def test_official_layout_one_level_down(tmp_path):
    ref = make_cifar10(tmp_path / "cifar10")
    np.testing.assert_array_equal(load_split("cifar10", "test", tmp_path).labels, ref["test"][1])


def test_data_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("DSRNET_DATA", str(tmp_path / "d"))
    assert data.default_data_dir() == tmp_path / "d"
    monkeypatch.delenv("DSRNET_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "xdg" / "dsrnet" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_data_dir() == Path.home() / ".cache" / "dsrnet" / "data"
    monkeypatch.setenv("DSRNET_DATA", str(tmp_path))
    make_cifar10(tmp_path)
    assert len(load_split("cifar10", "test")) == 7  # data_dir=None -> $DSRNET_DATA


def test_download_uses_torchvision_then_parses(tmp_path, monkeypatch):
    calls = []

    def fake_cifar10(root, train=True, download=False):  # stands in for the network
        calls.append((root, train, download))
        make_cifar10(Path(root))

    monkeypatch.setattr(tvd, "CIFAR10", fake_cifar10)
    with pytest.raises(DsrnetError, match="--download"):
        load_split("cifar10", "train", tmp_path)
    assert calls == []
    assert len(load_split("cifar10", "train", tmp_path, download=True)) == 30
    assert calls == [(str(tmp_path), False, True)]


def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tvd, "STL10", offline)
    with pytest.raises(DsrnetError, match=r"download of stl10 .* failed .*URLError.*fix: check the network"):
        load_split("stl10", "train", tmp_path, download=True)


# ------------------------------------------------------------------------------------------ real CIFAR-10


def test_real_cifar10(cifar10_dir):
    train = load_split("cifar10", "train", cifar10_dir)
    test = load_split("cifar10", "test", cifar10_dir)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    mean, std = channel_stats(train.images)
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=1e-3)
    np.testing.assert_allclose(std, (0.2470, 0.2435, 0.2616), atol=1e-3)
    sub = train.subset_per_class(50, seed=3)
    assert np.bincount(sub.labels).tolist() == [50] * 10
    # A training epoch visits every image exactly once.
    loader = DeviceLoader(train.images, train.labels, batch_size=1000, train=True, mean=mean, std=std, seed=0)
    assert torch.cat([y for _, y in loader]).bincount().tolist() == [5000] * 10
    # With the training statistics the (unaugmented) test split comes out near zero mean, unit std per channel.
    ev = DeviceLoader(test.images, test.labels, batch_size=2500, train=False, mean=mean, std=std)
    x = torch.cat([x for x, _ in ev]).transpose(0, 1).reshape(3, -1).double()
    assert x.mean(1).abs().max() < 0.02 and (x.std(1) - 1).abs().max() < 0.02


def test_subset_per_class():
    labels = np.repeat(np.arange(4), [10, 12, 7, 9])
    idx = subset_per_class(labels, 5, seed=1)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5, 5]
    assert np.all(np.diff(idx) > 0)  # ascending, no repeats
    assert np.array_equal(idx, subset_per_class(labels, 5, seed=1))
    assert not np.array_equal(idx, subset_per_class(labels, 5, seed=2))
    with pytest.raises(DsrnetError, match="class 2 has only 7"):
        subset_per_class(labels, 8, seed=0)
    with pytest.raises(DsrnetError, match="positive integer"):
        subset_per_class(labels, 0, seed=0)
    # A class with no image at all was left out (a 4-class subset of a 5-class split), unless the count is known.
    assert len(subset_per_class(labels, 5, seed=1)) == 20
    with pytest.raises(DsrnetError, match="class 4 has no image at all"):
        subset_per_class(labels, 5, seed=1, num_classes=5)


def test_channel_stats_matches_float_reference():
    x = RNG.integers(0, 256, (20, 5, 7, 3), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(0), rtol=1e-12)


def test_datasets_table():
    assert {k: (v.num_classes, v.image_size, v.pad, len(v.classes)) for k, v in DATASETS.items()} == {
        "cifar10": (10, 32, 4, 10),
        "cifar100": (100, 32, 4, 100),
        "stl10": (10, 96, 12, 10),
    }


# ------------------------------------------------------------------------------------------------ bad input


def _npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_missing_dataset_names_search_layout_and_fix(tmp_path):
    with pytest.raises(DsrnetError) as err:
        load_split("cifar100", "train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    for part in (str(tmp_path / "cifar100" / "train.npz"), "(train split)", "cifar-100-python", "--download", "uint8",
                 "coarse_labels", "--data-dir"):  # fmt: skip
        assert part in msg, part


def test_unknown_names(tmp_path):
    with pytest.raises(DsrnetError, match="unknown dataset 'mnist'; fix: choose one of cifar10, cifar100, stl10"):
        load_split("mnist", "train", tmp_path)
    with pytest.raises(DsrnetError, match="unknown split 'val'"):
        load_split("cifar10", "val", tmp_path)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.zeros((4, 32, 32, 3), np.float32), "labels": np.zeros(4, np.int64)}, "dtype float32"),
        (
            {"images": np.zeros((4, 28, 28, 3), np.uint8), "labels": np.zeros(4, np.int64)},
            r"shape \(4, 28, 28, 3\)",
        ),
        (
            {"images": np.zeros((4, 3, 32, 32), np.uint8), "labels": np.zeros(4, np.int64)},
            r"expected \(N, 32, 32, 3\)",
        ),
        (
            {"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(3, np.int64)},
            "4 images but 3 labels",
        ),
        (
            {"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.array([0, 1, 2, 10])},
            r"labels span 0\.\.10",
        ),
        (
            {"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.array([0, -1, 2, 3])},
            r"labels span -1\.\.3",
        ),
        ({"images": np.zeros((4, 32, 32, 3), np.uint8), "labels": np.zeros(4, np.float32)}, "dtype float32"),
        ({"images": np.zeros((4, 32, 32, 3), np.uint8)}, "lacks the array"),
        ({"images": np.zeros((0, 32, 32, 3), np.uint8), "labels": np.zeros(0, np.int64)}, "holds no images"),
    ],
)
def test_bad_array_cache(tmp_path, arrays, match):
    path = tmp_path / "cifar10" / "test.npz"
    _npz(path, **arrays)
    with pytest.raises(DsrnetError, match=match) as err:
        load_split("cifar10", "test", tmp_path)
    assert str(path) in str(err.value) and "fix:" in str(err.value)


def test_train_test_image_size_mismatch(tmp_path):
    _npz(
        tmp_path / "stl10" / "train.npz",
        images=np.zeros((2, 96, 96, 3), np.uint8),
        labels=np.zeros(2, np.int64),
    )
    _npz(
        tmp_path / "stl10" / "test.npz",
        images=np.zeros((2, 32, 32, 3), np.uint8),
        labels=np.zeros(2, np.int64),
    )
    assert len(load_split("stl10", "train", tmp_path)) == 2
    with pytest.raises(DsrnetError, match=r"expected \(N, 96, 96, 3\) for stl10"):
        load_split("stl10", "test", tmp_path)


def test_truncated_cache(tmp_path):
    path = tmp_path / "cifar10" / "train.npz"
    _npz(path, images=np.ones((50, 32, 32, 3), np.uint8), labels=np.zeros(50, np.int64))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DsrnetError, match=r"unreadable or truncated .* fix: delete"):
        load_split("cifar10", "train", tmp_path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(DsrnetError, match="unreadable or truncated"):
        load_split("cifar10", "train", tmp_path)
    np.save(path.with_suffix(".npy"), np.ones((5, 32, 32, 3), np.uint8))  # one array under the .npz name
    path.with_suffix(".npy").replace(path)
    with pytest.raises(DsrnetError, match=r"one array, not an \.npz archive .* fix: delete"):
        load_split("cifar10", "train", tmp_path)


def test_damaged_compressed_cache_is_one_error(tmp_path):
    # np.savez_compressed caches load too; damaged deflate data raises zlib.error, not an OSError/ValueError.
    path = tmp_path / "cifar10" / "test.npz"
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez_compressed(path, images=rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), labels=np.arange(50) % 10)
    raw = path.read_bytes()
    for pos in range(100, len(raw) - 200, 500):  # find damage that reaches the inflater (not only the CRC check)
        path.write_bytes(raw[:pos] + b"\x00\xff" * 4 + raw[pos + 8 :])
        try:
            with np.load(path) as z:
                z["images"], z["labels"]
        except Exception as err:  # noqa: BLE001 (looking for the zlib case)
            if type(err).__module__ == "zlib":
                break
    else:
        pytest.fail("no damage position gave a zlib.error")
    with pytest.raises(DsrnetError, match=r"unreadable or truncated \(error: .* fix: delete"):
        load_split("cifar10", "test", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar-10-batches-py"])
def test_data_dir_pointing_at_the_dataset_folder_names_its_parent(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(DsrnetError, match=rf"is the dataset's own folder; fix: .*--data-dir {tmp_path}\)"):
        load_split("cifar10", "test", tmp_path / name)


def test_download_into_the_dataset_folder_holding_its_files_names_its_parent_and_downloads_nothing(tmp_path,
                                                                                                 monkeypatch):  # fmt: skip
    """With --download the hint was skipped: ~170 MB fetched into cifar10/, a second copy in cifar10/cifar10/."""
    import dsrnet.data.datasets as datasets

    own = tmp_path / "cifar10"
    own.mkdir()
    (own / "test.npz").write_bytes(b"an array cache one level too deep")
    monkeypatch.setattr(datasets, "_download", lambda *a: pytest.fail("downloaded into the dataset's own folder"))
    with pytest.raises(DsrnetError, match=rf"is the dataset's own folder; fix: .*--data-dir {tmp_path}\)"):
        load_split("cifar10", "test", own, download=True)


def test_data_dir_that_is_a_file_names_the_folder_to_pass(tmp_path):
    cache = tmp_path / "cifar10" / "test.npz"  # the cache file itself, given as --data-dir
    cache.parent.mkdir()
    cache.write_bytes(b"x")
    with pytest.raises(DsrnetError, match=rf"data folder {cache} is a file; fix: .*--data-dir {tmp_path}\)$"):
        load_split("cifar10", "test", cache)


def test_official_class_names_survive_the_cache(tmp_path):
    make_stl10(tmp_path)
    names = [f"c{i}" for i in range(10)]
    (tmp_path / "stl10_binary" / "class_names.txt").write_text("\n".join(names) + "\n")
    first = load_split("stl10", "train", tmp_path)
    assert (tmp_path / "stl10" / "train.npz").is_file()
    again = load_split("stl10", "train", tmp_path)  # now from the array cache
    assert first.classes == again.classes == tuple(names)


def test_class_names_that_are_not_utf8_are_one_error(tmp_path):
    make_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "class_names.txt").write_bytes(b"\xff\xfe bad\n" * 10)
    with pytest.raises(DsrnetError, match=r"class_names\.txt is not UTF-8 text .*; fix: replace .* official stl10"):
        load_split("stl10", "train", tmp_path)


def test_subset_error_names_the_setting():
    with pytest.raises(DsrnetError, match=r"^--test-subset-per-class \(test split\): 5 images per class asked"):
        subset_per_class(np.arange(20) % 10, 5, what="--test-subset-per-class (test split)")


def test_truncated_cifar_pickle_fails_and_writes_no_cache(tmp_path):
    make_cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DsrnetError, match="data_batch_3 is truncated or not a CIFAR pickle"):
        load_split("cifar10", "train", tmp_path)
    assert not (tmp_path / "cifar10").exists()
    p.unlink()
    with pytest.raises(DsrnetError, match="data_batch_3 is missing"):
        load_split("cifar10", "train", tmp_path)
    assert len(load_split("cifar10", "test", tmp_path)) == 7  # the intact split still loads


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(data=d["data"][:, :3000]), r"'data' is uint8 \(6, 3000\)"),
        (lambda d: d.update(data=d["data"].astype(np.int16)), "'data' is int16"),
        (lambda d: d.update(labels=d["labels"][:-1]), "6 images but 5 labels"),
        (lambda d: d.update(labels=[10] * len(d["labels"])), r"labels span 10\.\.10, expected 0\.\.9"),
        (lambda d: d.pop("data"), "lacks the key 'data'"),
        (lambda d: d.update(data=d["data"][:0], labels=[]), r"'data' is uint8 \(0, 3072\).*N > 0"),
    ],
)
def test_malformed_cifar_batch(tmp_path, edit, match):
    make_cifar10(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    d = _load(p)
    edit(d)
    _dump(p, d)
    with pytest.raises(DsrnetError, match=match):
        load_split("cifar10", "train", tmp_path)
    assert not (tmp_path / "cifar10").exists()


def test_bad_cifar100_and_meta(tmp_path):
    make_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    d = _load(folder / "test")
    d["coarse_labels"] = [20] * len(d["coarse_labels"])
    _dump(folder / "test", d)
    with pytest.raises(DsrnetError, match=r"labels span 20\.\.20, expected 0\.\.19"):
        load_split("cifar100", "test", tmp_path)
    _dump(folder / "meta", {"fine_label_names": ["a", "b"], "coarse_label_names": []})
    with pytest.raises(DsrnetError, match="2 class names, expected 100"):
        load_split("cifar100", "train", tmp_path)
    _dump(folder / "meta", {"fine_label_names": 100, "coarse_label_names": []})
    with pytest.raises(DsrnetError, match="'fine_label_names' is a int, expected a list of names"):
        load_split("cifar100", "train", tmp_path)


def test_bad_stl10_files(tmp_path):
    make_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    x = folder / "train_X.bin"
    raw = x.read_bytes()
    x.write_bytes(raw[:-1000])
    with pytest.raises(DsrnetError, match="not a whole number of 96x96x3 images"):
        load_split("stl10", "train", tmp_path)
    x.write_bytes(raw[: 3 * 27648])  # whole images, but one fewer than labels
    with pytest.raises(DsrnetError, match="holds 4 labels but .* holds 3 images"):
        load_split("stl10", "train", tmp_path)
    x.write_bytes(raw)
    (folder / "train_y.bin").write_bytes(bytes([0, 1, 2, 3]))
    with pytest.raises(DsrnetError, match=r"labels span 0\.\.3, expected 1\.\.10 \(1-based\)"):
        load_split("stl10", "train", tmp_path)
    (folder / "test_y.bin").unlink()
    with pytest.raises(DsrnetError, match="test_y.bin is missing"):
        load_split("stl10", "test", tmp_path)
    assert not (tmp_path / "stl10").exists()


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    make_cifar10(tmp_path)
    real_savez = np.savez

    def dies_midway(f, **arrays):
        real_savez(f, **arrays)
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_split("cifar10", "test", tmp_path)
    assert list((tmp_path / "cifar10").iterdir()) == []  # neither the cache nor its temp file

    def replace_fails(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(np, "savez", real_savez)
    monkeypatch.setattr(os, "replace", replace_fails)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = load_split("cifar10", "test", tmp_path)  # read-only data dir: still loads, warns once
    assert len(got) == 7 and any("could not write the array cache" in str(m.message) for m in w)
    assert list((tmp_path / "cifar10").iterdir()) == []


class _RunsCode:
    """What a doctored CIFAR pickle would hold: unpickling it calls ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_doctored_cifar_pickle_never_runs_code(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "PWNED"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    d = _load(batch)
    d["labels"] = _RunsCode(marker)
    _dump(batch, d)
    with pytest.raises(DsrnetError, match=r"asks to run posix\.system .*refused") as err:
        load_split("cifar10", "train", tmp_path)
    assert not marker.exists() and "\n" not in str(err.value)
    assert not (tmp_path / "cifar10" / "train.npz").exists()


def test_stale_cache_temp_file_of_a_killed_process_is_removed(tmp_path):
    import subprocess
    import sys

    make_cifar10(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "cifar10").mkdir()
    leftover = tmp_path / "cifar10" / f".train.npz.{dead.pid}.tmp"
    leftover.write_bytes(b"\0" * 1000)
    load_split("cifar10", "train", tmp_path)
    assert not leftover.exists() and (tmp_path / "cifar10" / "train.npz").is_file()
