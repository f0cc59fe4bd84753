"""Inference with a trained model: rebuild it from a checkpoint, evaluate it on its test split (``dsrnet eval``),
classify image files (``dsrnet predict``).

A checkpoint is checked before anything is built from it (:func:`dsrnet.run.checkpoint.load_checkpoint`), its
weights' shapes are compared with the model its fields describe on the ``meta`` device (no memory), and a checkpoint
with NaN/Inf weights is refused: a diverged run is never evaluated or served.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsrnet import data as D
from dsrnet.device import PRECISIONS, resolve_device
from dsrnet.errors import DsrnetError, check_int
from dsrnet.models import build_model
from dsrnet.report.plots import plot_confusion
from dsrnet.run.atomic import atomic_write_json, atomic_write_text
from dsrnet.run.checkpoint import check_state_fits, load_checkpoint, load_model_state
from dsrnet.run.rundir import RunDir
from dsrnet.train.evaluate import evaluate

__all__ = ["evaluate_checkpoint", "load_image", "model_from_checkpoint", "predict"]

#: Images larger than this many pixels are refused before they are decoded (PIL's own limit, as an error).
MAX_IMAGE_PIXELS = 8192 * 8192


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the trained model (eval mode, on ``device``) from a checkpoint path or loaded dict; returns
    ``(model, checkpoint)``. A checkpoint whose fields or weights do not describe a working model of a known
    dataset -- or whose weights are not finite -- raises :class:`DsrnetError` before any memory is allocated."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    info = D.DATASETS.get(ckpt.get("dataset"))
    if info is None:
        raise DsrnetError(
            f"checkpoint {ckpt['path']} names an unknown dataset {ckpt.get('dataset')!r}; fix: use a checkpoint "
            f"written by `dsrnet train`"
        )
    if ckpt["num_classes"] != info.num_classes or ckpt["image_size"] != info.image_size:
        raise DsrnetError(
            f"checkpoint {ckpt['path']} says {ckpt['num_classes']} classes at {ckpt['image_size']} px, but "
            f"{info.name} has {info.num_classes} at {info.image_size} px; fix: use an unedited checkpoint"
        )
    with torch.device("meta"):
        skeleton = build_model(ckpt["model"], ckpt["num_classes"], ckpt["model_kwargs"])
    check_state_fits(skeleton, ckpt)
    model = build_model(ckpt["model"], ckpt["num_classes"], ckpt["model_kwargs"])
    load_model_state(model, ckpt, require_finite=True)
    return model.to(resolve_device(device)).eval(), ckpt


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str = "auto",
    batch_size: int = 500,
    precision: str = "fp32",
    test_subset_per_class: int | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """``dsrnet eval``: top-1/3/5 error, per-class accuracy and the confusion matrix of a checkpoint on its
    dataset's test split, written to ``out_dir`` (default ``<run>/eval``) as ``metrics.json``,
    ``per_class.csv``, ``confusion.csv`` and ``confusion.png``. Returns the metrics dict."""
    check_int("batch_size", batch_size)
    if test_subset_per_class is not None:
        check_int("test_subset_per_class", test_subset_per_class)
    if precision not in PRECISIONS:
        raise DsrnetError(f"bad value for precision: {precision!r}; fix: use one of {', '.join(PRECISIONS)}")
    model, ckpt = model_from_checkpoint(checkpoint, device)
    out = Path(out_dir) if out_dir is not None else RunDir(Path(ckpt["path"]).parent).eval
    RunDir(out).check_writable()  # before the evaluation, not after it
    dev = next(model.parameters()).device
    test = D.load_split(ckpt["dataset"], "test", data_dir, download=download)
    if test_subset_per_class:  # the run's seed picks the same images its test subset had
        test = test.subset_per_class(test_subset_per_class, ckpt["config"]["seed"])
    loader = D.DeviceLoader(
        test.images,
        test.labels,
        batch_size=batch_size,
        train=False,
        device=dev,
        mean=ckpt["mean"],
        std=ckpt["std"],
    )
    classes = list(ckpt["classes"])
    res = evaluate(model, loader, num_classes=ckpt["num_classes"], precision=precision, confusion=True)
    conf = res.pop("confusion").numpy()
    totals = conf.sum(axis=1)
    per_class = [
        {
            "class": c,
            "correct": int(conf[i, i]),
            "total": int(totals[i]),
            "accuracy": 100.0 * conf[i, i] / totals[i] if totals[i] else float("nan"),
        }
        for i, c in enumerate(classes)
    ]
    metrics = {
        "checkpoint": ckpt["path"],
        "model": ckpt["model"],
        "dataset": ckpt["dataset"],
        "epoch": int(ckpt["epoch"]),
        "test_images": res["n"],
        "test_loss": res["loss"],
        **{k: res[k] for k in ("top1", "top3", "top5", "top1_error", "top3_error", "top5_error")},
        "per_class_accuracy": {r["class"]: r["accuracy"] for r in per_class},
    }
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(
        out / "per_class.csv",
        "class,correct,total,accuracy\n"
        + "".join(f"{r['class']},{r['correct']},{r['total']},{r['accuracy']:.4f}\n" for r in per_class),
    )
    header = "true\\predicted," + ",".join(classes) + "\n"
    rows = "".join(f"{c}," + ",".join(str(int(v)) for v in conf[i]) + "\n" for i, c in enumerate(classes))
    atomic_write_text(out / "confusion.csv", header + rows)
    plot_confusion(conf, classes, out / "confusion.png", f"{ckpt['model']} on {ckpt['dataset']}")
    metrics["out_dir"] = str(out)
    return metrics


def _to_rgb(im):
    """An 8-bit RGB copy of ``im``. High-bit-depth images (16-bit PNG: modes ``I;16*``/``I``, float ``F``) are
    scaled to 0-255 from their full range, not clipped at 255 as PIL's ``convert("RGB")`` would."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0  # 65535 -> 255
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file -> (size, size, 3) uint8 RGB: shorter side resized to ``size`` (bicubic), centre cut."""
    from PIL import Image, UnidentifiedImageError

    check_int("image size", size, 1)
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DsrnetError(
                    f"image {path} is {im.width}x{im.height} pixels, more than this reads "
                    f"({MAX_IMAGE_PIXELS:,}); fix: downscale it first"
                )
            im = _to_rgb(im)
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except FileNotFoundError:
        raise DsrnetError(f"image {path} not found; fix: pass existing image files") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DsrnetError(f"cannot read image {path} ({err}); fix: pass a PNG/JPEG/... image file") from None


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    top_k: int = 5,
    device: str = "auto",
) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class name, probability) pairs for each image file, any size: the shorter side is resized to
    the checkpoint's image size and the centre cropped, then normalised with the training mean/std."""
    check_int("top_k", top_k)
    if not images:
        raise DsrnetError("no images given; fix: pass one or more image files")
    model, ckpt = model_from_checkpoint(checkpoint, device)
    dev = next(model.parameters()).device
    size = int(ckpt["image_size"])
    batch = torch.from_numpy(np.stack([load_image(p, size) for p in images])).to(dev)
    mean = torch.tensor(ckpt["mean"], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"], device=dev).view(1, 3, 1, 1)
    x = (batch.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    probs = model(x).float().softmax(dim=1)
    k = min(top_k, probs.shape[1])
    p, idx = probs.topk(k, dim=1)
    classes = ckpt["classes"]
    return [
        [(classes[j], float(q)) for q, j in zip(pr.tolist(), ix.tolist(), strict=True)]
        for pr, ix in zip(p, idx, strict=True)
    ]
