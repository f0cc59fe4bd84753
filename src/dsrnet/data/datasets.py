"""Datasets of the paper (Section 4.1-4.2: CIFAR-10, CIFAR-100, STL-10): where the arrays come from and how they are checked.

Where the arrays come from, in this order (:func:`load_split`):

1. the array cache ``DATA_DIR/<name>/{train,test}.npz`` with ``images`` (N,H,W,3) uint8 RGB and ``labels`` (N,)
   int64 (CIFAR-100 also ``coarse_labels``) -- the format ``shared/data/cifar10/decode.py`` writes;
2. the official layout inside ``DATA_DIR`` (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``,
   also accepted one level down as ``DATA_DIR/<name>/<folder>/``); the array cache is written after the first read;
3. torchvision's download (``download=True``, i.e. ``--download``), which fetches and md5-checks the official
   archive into ``DATA_DIR`` and is then read as in 2.

Why the official files are parsed here rather than through ``torchvision.datasets.CIFAR10/100/STL10``: those
classes refuse any file whose md5 differs from the published one, so they cannot read the small files the test
suite generates in exactly the official formats, and STL-10's class md5-hashes the 2.7 GB unlabeled split even to
read the 5,000 training images. The parsers below follow torchvision's readers byte for byte (pickles loaded with
``encoding="latin1"``; STL-10's column-major ``*_X.bin`` and 1-based ``*_y.bin``), and add what torchvision leaves
out: shape, dtype, size and label-range checks with one-line errors. torchvision is used for the download, where
its archive md5 check is exactly what is wanted.

The official CIFAR files are Python pickles. They are read with a restricted unpickler that accepts only the
NumPy and builtin types the real files contain, so a doctored ``data_batch_1`` cannot run code (torchvision's
readers, and a plain ``pickle.load``, would run it).

The augmenting loader that puts a split on the device is :mod:`dsrnet.data.loader`.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write, remove_stale_temp_files

__all__ = [
    "DATASETS",
    "ArraySplit",
    "DatasetInfo",
    "channel_stats",
    "default_data_dir",
    "load_split",
    "require_every_class",
    "subset_per_class",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset. ``pad`` is the zero padding before the random crop: 4 px is the usual CIFAR
    recipe; the paper does not state STL-10's amount (Section 4.5), 12 px keeps the same 1/8-of-the-side ratio."""

    name: str
    num_classes: int
    image_size: int
    pad: int
    classes: tuple[str, ...]


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter
    palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road
    rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower
    sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split()  # noqa: SIM905 (a word list reads better than quoted strings)
)
CIFAR100_COARSE_CLASSES = tuple(
    """aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices
    household_furniture insects large_carnivores large_man-made_outdoor_things
    large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals non-insect_invertebrates
    people reptiles small_mammals trees vehicles_1 vehicles_2""".split()  # noqa: SIM905
)
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 32, 4, CIFAR10_CLASSES),
    "cifar100": DatasetInfo("cifar100", 100, 32, 4, CIFAR100_CLASSES),
    "stl10": DatasetInfo("stl10", 10, 96, 12, STL10_CLASSES),
}

# Folder each official archive unpacks to, and the torchvision class that downloads it.
_OFFICIAL_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}
_TV_CLASS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10"}
_STL_PIXELS = 3 * 96 * 96


@dataclass
class ArraySplit:
    """One split in memory: ``images`` (N,H,W,3) uint8 RGB, ``labels`` (N,) int64 (-1 for STL-10's unlabeled
    split), ``classes`` the class names; CIFAR-100 also carries its 20-way ``coarse_labels``."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    coarse_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> ArraySplit:
        """The images at ``indices``, in that order (e.g. the output of :func:`subset_per_class`)."""
        indices = np.asarray(indices, dtype=np.int64)
        coarse = None if self.coarse_labels is None else self.coarse_labels[indices]
        return ArraySplit(
            np.ascontiguousarray(self.images[indices]), self.labels[indices], self.classes, coarse
        )

    def subset_per_class(self, n: int, seed: int = 0, *, what: str = "subset per class") -> ArraySplit:
        """``n`` images per class of every class the split names, chosen by :func:`subset_per_class` (``what``
        names the setting in errors)."""
        return self.take(subset_per_class(self.labels, n, seed, what=what, num_classes=len(self.classes)))


def default_data_dir() -> Path:
    """``$DSRNET_DATA`` if set, else the per-user cache folder ``${XDG_CACHE_HOME:-~/.cache}/dsrnet/data``."""
    env = os.environ.get("DSRNET_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "dsrnet" / "data"


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DsrnetError(f"unknown dataset {name!r}; fix: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------------------------------- loading


def load_split(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> ArraySplit:
    """Load one split (``"train"`` or ``"test"``; STL-10 also ``"unlabeled"``) as arrays, validated.

    Sources in order: the array cache, the official layout (then the cache is written, atomically), torchvision's
    download if ``download``. STL-10's 100k unlabeled split is not cached: it comes back memory-mapped from
    ``unlabeled_X.bin`` (a lazy (N,96,96,3) view, 2.7 GB if materialised), so it costs nothing until indexed.
    Anything missing, truncated or malformed raises :class:`DsrnetError` with one line saying what and how to fix.
    """
    info = _info(name)
    splits = ("train", "test", "unlabeled") if name == "stl10" else ("train", "test")
    if split not in splits:
        raise DsrnetError(f"unknown split {split!r} for {name}; fix: choose one of {', '.join(splits)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if root.is_file():  # e.g. the cache file itself
        above = root.parent.parent if root.parent.name == info.name else root.parent
        raise DsrnetError(
            f"the data folder {root} is a file; fix: pass the folder that contains {info.name}/ (--data-dir {above})"
        )
    cache = root / name / f"{split}.npz"
    if cache.is_file():
        return _read_cache(cache, info, split)
    folder = _find_official(root, info)
    own_folder = root.name in (_OFFICIAL_FOLDER[info.name], info.name)  # the dataset's own folder, not the one above
    # ... and holding its files: a download would put a second copy inside it, so the hint comes first
    holds_files = any((root / f).is_file() for f in (f"{split}.npz", "batches.meta", "meta", "train_X.bin"))
    if folder is None and download and not (own_folder and holds_files):
        _download(root, info)
        folder = _find_official(root, info)
    if folder is None:
        if own_folder:
            raise DsrnetError(
                f"dataset {info.name} ({split} split) not found: the data folder {root} is the dataset's own "
                f"folder; fix: pass the folder that contains {root.name}/ (--data-dir {root.parent})"
            )
        raise DsrnetError(_missing_message(root, info, split, download))
    data = _read_official(folder, info, split)
    if split != "unlabeled":
        _write_cache(cache, data)
    return data


def _missing_message(root: Path, info: DatasetInfo, split: str, download: bool) -> str:
    folder = _OFFICIAL_FOLDER[info.name]
    s = info.image_size
    extra = " and CIFAR-100 optionally coarse_labels (N,) int64" if info.name == "cifar100" else ""
    how = (
        "the download left no usable files there"
        if download
        else "rerun with --download (needs network access)"
    )
    return (
        f"dataset {info.name} ({split} split) not found: searched {root / info.name / split}.npz (array cache) and "
        f"{root / folder}/, {root / info.name / folder}/ (official layout); fix: {how}, or unpack the official "
        f"archive so that {root / folder}/ exists, or write {root / info.name}/train.npz and test.npz holding "
        f"images (N,{s},{s},3) uint8 RGB and labels (N,) int64{extra}; choose the folder with --data-dir or "
        f"$DSRNET_DATA"
    )


def _find_official(root: Path, info: DatasetInfo) -> Path | None:
    folder = _OFFICIAL_FOLDER[info.name]
    for cand in (root / folder, root / info.name / folder):
        if cand.is_dir():
            return cand
    return None


def _download(root: Path, info: DatasetInfo) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV_CLASS[info.name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        # The smallest split keeps the post-download in-memory load cheap; the archive holds every split.
        if info.name == "stl10":
            cls(str(root), split="test", download=True)
        else:
            cls(str(root), train=False, download=True)
    # Network failures surface as URLError, OSError or RuntimeError depending on where they hit.
    except Exception as err:
        raise DsrnetError(
            f"download of {info.name} into {root} failed ({type(err).__name__}: {err}); fix: check the network, "
            f"or fetch the official archive yourself and unpack it into {root}"
        ) from err


def _read_cache(path: Path, info: DatasetInfo, split: str) -> ArraySplit:
    fix = f"delete {path} to rebuild it from the official files, or write it again"
    classes = info.classes
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array saved under the .npz name
            raise DsrnetError(
                f"{path} is one array, not an .npz archive of images and labels; fix: {fix}"
            )
        with loaded as z:
            keys = set(z.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise DsrnetError(f"{path} lacks the array(s) {', '.join(sorted(missing))}; fix: {fix}")
            images, labels = z["images"], z["labels"]
            coarse = z["coarse_labels"] if "coarse_labels" in keys else None
            if "classes" in keys:  # the names the official files carried (they may differ from the built-in)
                classes = tuple(str(c) for c in z["classes"])
    except DsrnetError:
        raise
    # zlib.error: a compressed archive (np.savez_compressed) with damaged bytes
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as err:
        raise DsrnetError(
            f"{path} is unreadable or truncated ({type(err).__name__}: {err}); fix: {fix}"
        ) from err
    if len(classes) != info.num_classes:
        raise DsrnetError(f"{path}: {len(classes)} class names, expected {info.num_classes}; fix: {fix}")
    return _validated(info, split, images, labels, classes, coarse, str(path), fix)


def _validated(
    info: DatasetInfo,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    coarse: np.ndarray | None,
    where: str,
    fix: str,
) -> ArraySplit:
    """Shapes, dtypes, sizes and label ranges, or one error line naming ``where`` and ``fix``."""
    s = info.image_size
    if images.dtype != np.uint8:
        raise DsrnetError(
            f"{where}: images have dtype {images.dtype}, expected uint8 (0-255 RGB); fix: {fix}"
        )
    if images.ndim != 4 or images.shape[1:] != (s, s, 3):
        raise DsrnetError(
            f"{where}: images have shape {images.shape}, expected (N, {s}, {s}, 3) for {info.name} "
            f"(height, width, RGB last); fix: {fix}"
        )
    if len(images) == 0:
        raise DsrnetError(f"{where}: the {split} split holds no images; fix: {fix}")
    labels = _checked_labels(
        labels, len(images), -1 if split == "unlabeled" else info.num_classes, where, fix
    )
    if coarse is not None:
        coarse = _checked_labels(
            coarse, len(images), len(CIFAR100_COARSE_CLASSES), where + " (coarse_labels)", fix
        )
    return ArraySplit(images, labels, tuple(classes), coarse)


def _checked_labels(labels: np.ndarray, n: int, num_classes: int, where: str, fix: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DsrnetError(
            f"{where}: labels have shape {labels.shape} and dtype {labels.dtype}, expected (N,) integers; fix: {fix}"
        )
    if len(labels) != n:
        raise DsrnetError(
            f"{where}: {n} images but {len(labels)} labels, expected one label per image; fix: {fix}"
        )
    labels = labels.astype(np.int64, copy=False)
    if num_classes < 0:  # unlabeled
        return labels
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DsrnetError(f"{where}: labels span {lo}..{hi}, expected 0..{num_classes - 1}; fix: {fix}")
    return labels


def _write_cache(path: Path, data: ArraySplit) -> None:
    """Write the array cache atomically (temp file + ``os.replace``), so a crash never leaves half a file; a
    read-only data dir only costs the speed-up, hence a warning, not an error."""
    arrays = {"images": data.images, "labels": data.labels}
    if data.coarse_labels is not None:
        arrays["coarse_labels"] = data.coarse_labels
    arrays["classes"] = np.array(data.classes)  # the official files' names; fixed-width unicode: no pickle
    remove_stale_temp_files(path.parent)  # an earlier run killed mid-write left its temp file
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as err:
        warnings.warn(
            f"could not write the array cache {path} ({err}); the official files will be read each time",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------------------- official formats


def _read_official(folder: Path, info: DatasetInfo, split: str) -> ArraySplit:
    if info.name == "stl10":
        return _read_stl10(folder, info, split)
    return _read_cifar(folder, info, split)


def _official_fix(info: DatasetInfo, folder: Path) -> str:
    return (
        f"replace {folder} with a fresh copy of the official {info.name} archive (or delete it and rerun with "
        f"--download)"
    )


class _ForbiddenPickle(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Only what the official CIFAR pickles (and NumPy's own array pickles) contain: dicts, lists, bytes, str,
    ints and NumPy arrays. Any other global -- ``os.system``, ``builtins.eval``, ... -- is refused, never called."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _ForbiddenPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, info: DatasetInfo, folder: Path) -> dict:
    fix = _official_fix(info, folder)
    if not path.is_file():
        raise DsrnetError(f"{path} is missing from the official {info.name} layout; fix: {fix}")
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()  # the official files are Python 2 pickles
    except _ForbiddenPickle as err:
        raise DsrnetError(
            f"{path} is not an official CIFAR pickle: it asks to run {err} (a doctored file would run code here); "
            f"refused; fix: {fix}"
        ) from None
    # Truncation surfaces as EOFError, UnpicklingError, ValueError, ... depending on where the file is cut.
    except Exception as err:
        raise DsrnetError(
            f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}: {err}); fix: {fix}"
        ) from err
    if not isinstance(obj, dict):
        raise DsrnetError(
            f"{path} holds a {type(obj).__name__}, expected the official CIFAR dict; fix: {fix}"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(d: dict, key: str, path: Path, info: DatasetInfo, folder: Path):
    if key not in d:
        raise DsrnetError(
            f"{path} lacks the key {key!r} (has {', '.join(map(str, d))}); fix: {_official_fix(info, folder)}"
        )
    return d[key]


def _read_cifar(folder: Path, info: DatasetInfo, split: str) -> ArraySplit:
    fix = _official_fix(info, folder)
    if info.name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        files = ["train" if split == "train" else "test"]
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    images, labels, coarse = [], [], []
    for fname in files:
        path = folder / fname
        d = _unpickle(path, info, folder)
        data = np.asarray(_field(d, "data", path, info, folder))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) == 0:
            raise DsrnetError(
                f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) (1024 R, G, B values per "
                f"row, N > 0); fix: {fix}"
            )
        lab = np.asarray(_field(d, label_key, path, info, folder))
        lab = _checked_labels(lab, len(data), info.num_classes, str(path), fix)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
        if info.name == "cifar100":
            c = np.asarray(_field(d, "coarse_labels", path, info, folder))
            coarse.append(_checked_labels(c, len(data), len(CIFAR100_COARSE_CLASSES), str(path), fix))
    classes = info.classes
    meta_path = folder / meta_file
    if meta_path.is_file():  # the names are informative only: the label ids are what training uses
        names = _field(_unpickle(meta_path, info, folder), names_key, meta_path, info, folder)
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
            raise DsrnetError(
                f"{meta_path}: {names_key!r} is a {type(names).__name__}, expected a list of names; fix: {fix}"
            )
        if len(names) != info.num_classes:
            raise DsrnetError(
                f"{meta_path}: {len(names)} class names, expected {info.num_classes} for {info.name}; fix: {fix}"
            )
        try:
            classes = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
        except UnicodeDecodeError:
            raise DsrnetError(f"{meta_path}: a class name is not UTF-8 text; fix: {fix}") from None
    return _validated(
        info,
        split,
        np.ascontiguousarray(np.concatenate(images)),
        np.concatenate(labels),
        classes,
        np.concatenate(coarse) if coarse else None,
        str(folder),
        fix,
    )


def _read_stl10(folder: Path, info: DatasetInfo, split: str) -> ArraySplit:
    fix = _official_fix(info, folder)
    x_path = folder / f"{split}_X.bin"
    if not x_path.is_file():
        raise DsrnetError(f"{x_path} is missing from the official stl10 layout; fix: {fix}")
    size = x_path.stat().st_size
    if size == 0 or size % _STL_PIXELS:
        raise DsrnetError(
            f"{x_path} has {size} bytes, not a whole number of 96x96x3 images ({_STL_PIXELS} bytes each): it is "
            f"truncated or not STL-10; fix: {fix}"
        )
    n = size // _STL_PIXELS
    # Column-major per image, as written by the MATLAB exporter: (N, C, W, H) in C order -> (N, H, W, C).
    raw = np.memmap(x_path, dtype=np.uint8, mode="r", shape=(n, 3, 96, 96))
    images = raw.transpose(0, 3, 2, 1)
    if split == "unlabeled":
        labels = np.full(n, -1, dtype=np.int64)
    else:
        images = np.ascontiguousarray(images)
        del raw
        y_path = folder / f"{split}_y.bin"
        if not y_path.is_file():
            raise DsrnetError(f"{y_path} is missing from the official stl10 layout; fix: {fix}")
        y = np.fromfile(y_path, dtype=np.uint8)
        if len(y) != n:
            raise DsrnetError(
                f"{y_path} holds {len(y)} labels but {x_path} holds {n} images: one of them is truncated; fix: {fix}"
            )
        if len(y) and (y.min() < 1 or y.max() > info.num_classes):
            raise DsrnetError(
                f"{y_path}: labels span {y.min()}..{y.max()}, expected 1..10 (1-based); fix: {fix}"
            )
        labels = y.astype(np.int64) - 1
    classes = info.classes
    names_path = folder / "class_names.txt"
    if names_path.is_file():
        try:
            text = names_path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DsrnetError(f"{names_path} is not UTF-8 text (one class name per line); fix: {fix}") from None
        names = tuple(line.strip() for line in text.splitlines() if line.strip())
        if len(names) != info.num_classes:
            raise DsrnetError(
                f"{names_path}: {len(names)} class names, expected {info.num_classes}; fix: {fix}"
            )
        classes = names
    return _validated(info, split, images, labels, classes, None, str(folder), fix)


# --------------------------------------------------------------------------------------------- subsets, stats


def require_every_class(data: ArraySplit, name: str, split: str, data_dir: str | os.PathLike | None) -> None:
    """Raise unless ``data`` (split ``split`` of dataset ``name``) holds an image of every class: a model trained
    without one would never predict it, and a test split without one is scored over the others, and nothing else
    would say so."""
    info = _info(name)
    absent = sorted(set(range(info.num_classes)) - set(np.unique(data.labels).tolist()))
    if absent:
        raise DsrnetError(
            f"the {name} {split} split in {data_dir or default_data_dir()} has no image of class {absent[0]} "
            f"({info.classes[absent[0]]}){' and others' if len(absent) > 1 else ''}; fix: rebuild its array cache "
            f"from the official files (delete {name}/{split}.npz there)"
        )


def subset_per_class(
    labels: np.ndarray, n: int, seed: int = 0, *, what: str = "subset per class", num_classes: int | None = None
) -> np.ndarray:
    """Indices of the first ``n`` images of each class after a shuffle seeded by ``seed``, returned in ascending
    order (so the subset keeps the split's order). Raises if some class has fewer than ``n`` images (with
    ``num_classes``, a class 0..num_classes-1 with no image at all counts too, instead of being left out); ``what``
    names the setting (e.g. the flag and split) in the errors."""
    labels = np.asarray(labels)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DsrnetError(f"{what} must be a positive integer, got {n!r}")
    if labels.ndim != 1 or len(labels) == 0:
        raise DsrnetError(f"{what} needs a non-empty 1-D label array, got shape {labels.shape}")
    if labels.min() < 0:
        raise DsrnetError(f"{what} needs labelled images (got label -1: the unlabeled split)")
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    by_class = np.argsort(shuffled, kind="stable")  # stable: within a class, keeps the seeded shuffle order
    classes, starts, counts = np.unique(shuffled[by_class], return_index=True, return_counts=True)
    absent = sorted(set(range(num_classes or 0)) - set(classes.tolist()))
    if absent:
        raise DsrnetError(
            f"{what}: {n} images per class asked, but class {absent[0]} has no image at all; fix: use a split that "
            f"holds every class, or all images (no subset)"
        )
    if counts.min() < n:
        worst = classes[counts.argmin()]
        raise DsrnetError(
            f"{what}: {n} images per class asked, but class {worst} has only {counts.min()} images; fix: use at most "
            f"{counts.min()} per class, or all images (no subset)"
        )
    take = (starts[:, None] + np.arange(n)[None, :]).ravel()
    return np.sort(order[by_class[take]])


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std of uint8 RGB images (N,H,W,3), in [0,1].

    Computed exactly from 256-bin histograms, which is fast (about 0.4 s for CIFAR-10's train split) and needs no
    float copy of the images; used for the normalisation the paper applies (Section 4.2)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.size == 0:
        raise DsrnetError(
            f"channel stats need non-empty uint8 (N,H,W,3) images, got {images.dtype} {images.shape}"
        )
    # torch.bincount counts uint8 directly; np.bincount would first widen all N*H*W values to int64.
    with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: only read
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(np.ascontiguousarray(images)).view(-1, 3)
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(3):
        hist = torch.bincount(flat[:, c].contiguous(), minlength=256).numpy().astype(np.float64)
        total = hist.sum()
        m = float((hist * levels).sum() / total)
        var = float((hist * (levels - m) ** 2).sum() / total)
        mean.append(m)
        std.append(math.sqrt(var))
    return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])


