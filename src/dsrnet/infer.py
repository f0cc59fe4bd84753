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
from dsrnet.export.backends import BACKENDS as ENGINES
from dsrnet.models.preprocess import resize_crop, transforms
from dsrnet.models.weights import load_trained, model_from_checkpoint
from dsrnet.report.plots import plot_confusion
from dsrnet.run.atomic import atomic_write_json, atomic_write_text
from dsrnet.run.checkpoint import exported_kind
from dsrnet.run.rundir import RunDir, export_target
from dsrnet.train.evaluate import evaluate

__all__ = [
    "DEFAULT_WEIGHTS",
    "evaluate_checkpoint",
    "export_weights",
    "load_image",
    "model_from_checkpoint",
    "open_image",
    "predict",
    "transforms",
]

#: ``dsrnet eval`` batch sizes: large on a GPU; small on a CPU, where batches of 500 32x32 images ran 2x slower than
#: 32 (2-vCPU Xeon, DSRNet-50: the large activations are allocated and returned to the OS at every batch).
EVAL_BATCH_GPU = 500
EVAL_BATCH_CPU = 32

#: Images larger than this many pixels are refused before they are decoded (PIL's own limit, as an error).
MAX_IMAGE_PIXELS = 8192 * 8192


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | None = None,
    download: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    precision: str = "fp32",
    test_subset_per_class: int | None = None,
    out_dir: str | os.PathLike | None = None,
    backend: str | None = None,
) -> dict:
    """``dsrnet eval``: top-1/3/5 error, per-class accuracy and the confusion matrix of a trained model on its
    dataset's test split, written to ``out_dir`` (default ``<run>/eval``, or ``<file>.eval/`` for an exported
    file) as ``metrics.json``, ``per_class.csv``, ``confusion.csv`` and ``confusion.png``. Returns the metrics.

    ``checkpoint``: a run folder or its checkpoint, or (with a CPU ``backend``) a file written by ``dsrnet export``
    -- e.g. an int8 ONNX file, so its accuracy is checked by the same command as the original's. ``backend``:
    ``torch`` (any device), ``onnxruntime`` / ``openvino`` / ``torch-compile`` (CPU, fp32, and bf16 on openvino
    and torch-compile; see :mod:`dsrnet.export.backends`), ``auto`` (the fastest installed CPU backend on a CPU, else torch), ``fused``
    (a DSRNet in :func:`dsrnet.fuse`'s inference form, any device; with ``precision`` bf16/fp16 its weights are cast
    to that type, as its kernels compute in the weights' dtype); ``None``: torch, or for an exported file torch
    does not run (ONNX) ``auto``. ``batch_size``: default :data:`EVAL_BATCH_GPU` on a GPU, :data:`EVAL_BATCH_CPU`
    on a CPU."""
    if batch_size is not None:
        check_int("batch_size", batch_size)
    if test_subset_per_class is not None:
        check_int("test_subset_per_class", test_subset_per_class)
    if precision not in PRECISIONS:
        raise DsrnetError(f"bad value for precision: {precision!r}; fix: use one of {', '.join(PRECISIONS)}")
    model, info = _model_on_backend(checkpoint, backend, device, precision)
    if info["backend"] == "fused" and precision != "fp32":  # its kernels run in the weights' dtype (no autocast)
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    ckpt = info.get("checkpoint") or {}
    source = Path(info["name"])
    default_out = RunDir(source.parent).eval if ckpt else source.with_name(source.name + ".eval")
    out = Path(out_dir) if out_dir is not None else default_out
    RunDir(out).check_writable()  # before the evaluation, not after it
    if not info.get("dataset"):
        raise DsrnetError(f"{checkpoint} does not name its dataset; fix: export it from a `dsrnet train` run")
    dev = info["device"]
    if batch_size is None:
        batch_size = EVAL_BATCH_GPU if torch.device(dev).type == "cuda" else EVAL_BATCH_CPU
    test = D.load_split(info["dataset"], "test", data_dir, download=download)
    D.require_every_class(test, info["dataset"], "test", data_dir)
    if test_subset_per_class:  # the run's seed (its exports record it) picks the images its test subset had
        seed = info.get("seed")
        test = test.subset_per_class(
            test_subset_per_class, 0 if seed is None else int(seed), what="--test-subset-per-class (test split)"
        )
    images = test.images
    if images.shape[1] != info["image_size"]:  # a model exported/trained at another size: predict's resize
        images = _resized(images, info["image_size"])
    loader = D.DeviceLoader(
        images,
        test.labels,
        batch_size=batch_size,
        train=False,
        device=dev,
        mean=info["mean"],
        std=info["std"],
    )
    if info["backend"] == "fused":
        _compile_fused_kernels(model, next(iter(loader))[0])
    classes = [str(c) for c in info["classes"]]
    if not classes:  # a file without class names: its dataset's, when the counts agree
        dataset_classes = D.DATASETS[info["dataset"]].classes
        outputs = info.get("num_classes")  # the file's own record (a file from `dsrnet export` too)
        if outputs not in (None, len(dataset_classes)):
            raise DsrnetError(f"{checkpoint} has {outputs} outputs and no class names, and {info['dataset']} has "
                              f"{len(dataset_classes)} classes; fix: evaluate a model of that dataset")  # fmt: skip
        classes = list(dataset_classes)
    res = evaluate(model, loader, num_classes=len(classes), precision=precision, confusion=True)
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
        "checkpoint": info["name"],
        "model": info.get("model"),
        "dataset": info["dataset"],
        "epoch": int(ckpt["epoch"]) if "epoch" in ckpt else None,
        "backend": info["backend"],
        "precision": precision,
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
    plot_confusion(conf, classes, out / "confusion.png", f"{info.get('model')} on {info['dataset']} ({info['backend']})")
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


def open_image(path: str | os.PathLike):
    """Any image file -> an 8-bit RGB PIL image, upright as a viewer shows it (EXIF orientation applied: phone
    photos store the pixels rotated); too large, unreadable or missing files are one-line errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise DsrnetError(
                    f"image {path} is {im.width}x{im.height} pixels, more than this reads "
                    f"({MAX_IMAGE_PIXELS:,}); fix: downscale it first"
                )
            return _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DsrnetError(f"image {path} not found; fix: pass existing image files") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DsrnetError(f"cannot read image {path} ({err}); fix: pass a PNG/JPEG/... image file") from None


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N,H,W,3) images at ``size`` x ``size``, resized as :func:`transforms` resizes one image for
    ``predict`` (the same PIL resize and crop), so ``eval`` scores a model at its own input size as ``predict``
    feeds it."""
    from PIL import Image

    resize = resize_crop(size)
    return np.stack([np.asarray(resize(Image.fromarray(im)), dtype=np.uint8) for im in images])


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Any image file -> (size, size, 3) uint8 RGB: shorter side resized to ``size`` (bicubic), centre cut."""
    check_int("image size", size, 1)
    return np.asarray(resize_crop(size)(open_image(path)), dtype=np.uint8)


#: What ``dsrnet predict`` uses when no model is named: the shipped CIFAR-10 weights.
DEFAULT_WEIGHTS = "dsrnet50_cifar.c10"
#: ``predict --backend auto``: from this many images on, exporting a model for a faster CPU backend pays off. The
#: temporary ONNX export of DSRNet-50 takes ~7.5 s on one thread of a 2-vCPU Xeon and then saves ~10-14 ms per
#: 32-px image against eager PyTorch: break-even at ~550-800 images.
AUTO_BACKEND_MIN_IMAGES = 1000
#: Inference backends of ``eval`` / ``predict``: ``torch`` and the CPU engines of :mod:`dsrnet.export`, and
#: ``fused``: a DSRNet in :func:`dsrnet.fuse`'s inference form on any device (BatchNorm folded, NHWC, each DSR block
#: run by fused Triton kernels on CUDA; PyTorch's ops with the same numerics elsewhere).
BACKENDS = ("auto", *ENGINES, "fused")
#: Exported forms only PyTorch runs (``dsrnet export --format torchscript / exported-program``).
_TORCH_EXPORTS = ("TorchScript", "an ExportedProgram")


def _exported_kind(source) -> str | None:
    """The kind of model file ``dsrnet export`` wrote (:func:`dsrnet.run.checkpoint.exported_kind`), else None."""
    if not isinstance(source, str | os.PathLike):
        return None
    kind = exported_kind(source)
    return None if kind == "safetensors weights" else kind


def _is_exported(source) -> bool:
    return _exported_kind(source) is not None


def _model_on_backend(source, backend: str | None, device: str, precision: str = "fp32") -> tuple[nn.Module, dict]:
    """``(model, info)``: the trained model as an ``nn.Module`` running on ``backend`` and what its preprocessing
    needs (:func:`dsrnet.models.weights.load_trained`'s info, plus ``backend``, ``device`` and, for a training
    checkpoint, ``checkpoint``). ``precision``: a CPU engine's float precision (bf16 where
    :data:`dsrnet.export.backends.BF16_BACKENDS` run it); the torch and fused backends take it elsewhere."""
    if backend is not None and backend not in BACKENDS:
        raise DsrnetError(f"unknown backend {backend!r}; fix: choose one of {', '.join(BACKENDS)}")
    dev = resolve_device(device)
    kind = _exported_kind(source)
    if backend is None:  # torch, or for an exported file torch does not run (ONNX) the fastest CPU engine
        backend = "auto" if kind is not None and kind not in _TORCH_EXPORTS else "torch"
    if kind == "OpenVINO IR":
        raise DsrnetError(
            f"{source} is OpenVINO IR, which carries none of dsrnet's metadata (classes, preprocessing); fix: pass the "
            f".onnx file it was converted from, with --backend openvino"
        )
    if kind is not None:
        from dsrnet.export.formats import check_export_name

        check_export_name(source)  # a misnamed file: the rename, before any backend is picked for it
    if backend == "auto":
        from dsrnet.export.backends import best_cpu_backend

        # An exported file runs on a CPU engine wherever it is (TorchScript and ExportedProgram files on PyTorch
        # only); a model on CUDA stays with torch.
        backend = "torch" if kind in _TORCH_EXPORTS else best_cpu_backend() if dev.type == "cpu" or kind else "torch"
    if kind in _TORCH_EXPORTS and backend != "torch":
        raise DsrnetError(f"{source} is {kind}, which only PyTorch runs; fix: pass --backend torch (or auto)")
    if kind in _TORCH_EXPORTS:  # read onto the CPU (its constants too): it runs there, on a GPU host as well
        if str(device) == "auto":
            dev = torch.device("cpu")
        elif dev.type != "cpu":
            raise DsrnetError(f"{source} is {kind}, which dsrnet runs on the CPU; fix: pass --device cpu (or run the "
                              f"checkpoint it was exported from on {dev.type})")  # fmt: skip
    if backend == "fused":
        return _fused_model(source, dev)
    if backend != "torch" and str(device) == "auto":
        dev = torch.device("cpu")  # the CPU engines' device, when none was asked for
    if backend != "torch" and dev.type != "cpu":
        raise DsrnetError(f"backend {backend} runs on the CPU; fix: pass --device cpu, or --backend torch")
    if kind is not None:
        if backend == "torch" and kind not in _TORCH_EXPORTS:
            raise DsrnetError(f"{source} is an exported file; fix: pass --backend onnxruntime or openvino")
        from dsrnet.export.backends import RunnerModule, load_predictor

        runner, meta = load_predictor(source, backend=backend, precision=precision)
        info = {**meta, "name": str(source), "model": meta.get("model") or meta.get("arch")}
        return RunnerModule(runner), {**info, "backend": backend, "device": dev}
    model, info = load_trained(source, str(dev) if backend == "torch" else "cpu")
    if backend != "torch":
        from dsrnet.export.backends import RunnerModule, load_runner

        model = RunnerModule(load_runner(backend, model, image_size=info["image_size"], precision=precision))
    return model, {**info, "backend": backend, "device": dev}


def _fused_model(source, dev: torch.device) -> tuple[nn.Module, dict]:
    """``backend="fused"``: the trained DSRNet of ``source`` in :func:`dsrnet.fuse`'s inference form on ``dev``."""
    from dsrnet.models.dsrnet import DSRNet
    from dsrnet.models.fused import fuse

    if _is_exported(source):
        raise DsrnetError(f"{source} is an exported file; fix: pass --backend onnxruntime or openvino (fused runs "
                          f"a trained DSRNet: a run folder, checkpoint, weights file or tag)")  # fmt: skip
    model, info = load_trained(source, str(dev))
    if not isinstance(model, DSRNet):
        raise DsrnetError(f"backend fused runs DSRNet models, {source} holds {info.get('model')}; fix: pass "
                          f"--backend torch")  # fmt: skip
    return fuse(model), {**info, "backend": "fused", "device": dev}


#: What a folder given to ``predict`` contributes: its files with these suffixes (any depth), in sorted order.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _compile_fused_kernels(model: nn.Module, x: torch.Tensor) -> None:
    """``backend="fused"`` on a GPU: its Triton kernels compiled for ``x``'s shape in worker processes before the
    first real batch (:func:`dsrnet.kernels.precompile`; the pass's outputs are garbage and dropped), which then only
    autotunes where it compiled ~100 kernel configs one by one (~1 s each on an H200's host). Nothing off a GPU."""
    from dsrnet.kernels import precompile

    with torch.inference_mode():
        precompile(lambda: model(x))


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """``paths`` with every folder replaced by the image files under it (:data:`IMAGE_SUFFIXES`, sorted), as
    timm's ``inference.py`` takes a folder; files are kept as given (their content decides, not their suffix)."""
    if not paths:
        raise DsrnetError("no images given; fix: pass one or more image files or folders")
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DsrnetError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)}); fix: pass "
                                  f"image files or a folder of them")  # fmt: skip
            out += found
        else:
            out.append(p)
    return out


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike | None,
    images: Sequence[str | os.PathLike],
    *,
    top_k: int = 5,
    device: str = "auto",
    backend: str = "auto",
) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class name, probability) pairs for each image file (a folder: its image files,
    :func:`image_files`), any size, with the model ``checkpoint``
    names (a checkpoint or run folder, a ``.safetensors`` file, a weights tag, a file from ``dsrnet export``;
    ``None``: the shipped CIFAR-10 weights), preprocessed by :func:`transforms` from the model's own metadata.
    ``backend``: see :func:`evaluate_checkpoint`; ``auto`` on a CPU runs exported files and batches of
    :data:`AUTO_BACKEND_MIN_IMAGES` or more images on the fastest installed CPU backend, and a few images of a
    not-yet-exported model eagerly (exporting costs seconds, more than it saves on a few images)."""
    check_int("top_k", top_k)
    images = image_files(images)
    source = DEFAULT_WEIGHTS if checkpoint is None else checkpoint
    if backend == "auto" and not _is_exported(source) and len(images) < AUTO_BACKEND_MIN_IMAGES:
        backend = "torch"
    model, info = _model_on_backend(source, backend, device)
    if str(info.get("source", "")).startswith("registry:"):  # an export of a model name: random weights
        import logging

        logging.getLogger("dsrnet").warning(
            f"{source} holds random weights (exported from a model name, not a trained run): its predictions mean "
            f"nothing; fix: export a run folder, checkpoint or weights file (dsrnet export RUN ...)"
        )
    dev = info["device"]
    prep = transforms(info["image_size"], info["mean"], info["std"])
    chunk = EVAL_BATCH_GPU if torch.device(dev).type == "cuda" else EVAL_BATCH_CPU
    results = []
    for start in range(0, len(images), chunk):  # a bounded batch: memory does not grow with the file count
        x = torch.stack([prep(open_image(p)) for p in images[start : start + chunk]]).to(dev)
        if start == 0 and info["backend"] == "fused":
            _compile_fused_kernels(model, x)
        probs = model(x).float().softmax(dim=1)
        # A model without class names (an untrained export of a registry name) is labelled by class index.
        classes = info["classes"] if len(info["classes"]) == probs.shape[1] else range(probs.shape[1])
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        results += [
            [(str(classes[j]), float(q)) for q, j in zip(pr.tolist(), ix.tolist(), strict=True)]
            for pr, ix in zip(p, idx, strict=True)
        ]
    return results


def export_weights(source: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp16") -> Path:
    """``dsrnet export-weights``: the trained model of a run folder or checkpoint as a safetensors weights file
    (:func:`dsrnet.models.weights.save_weights`) whose metadata carries everything to rebuild, preprocess and cite
    it: model name and kwargs, classes, mean/std, input size, dataset, recipe, epochs, seed, ``ema_decay`` (above 0
    the weights are the run's moving average, the model its metrics describe), and the FINAL epoch's
    top-1/top-3 accuracy (from the run's ``final.json`` when the run finished, else the checkpoint's last epoch)."""
    from dsrnet import __version__
    from dsrnet.models.weights import save_weights
    from dsrnet.report.markdown import read_json

    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise DsrnetError(f"bad value for dtype: {dtype!r}; fix: use one of {', '.join(dtypes)}")
    out = export_target(out, (".safetensors",), "OUT", source)
    model, ckpt = model_from_checkpoint(source)
    run = RunDir(Path(ckpt["path"]).parent)
    # The last epoch the test set was scored (eval_every may skip some; a finished run's final.json wins anyway).
    last = next((r for r in reversed(ckpt.get("history") or []) if "test_top1" in r), {})
    final = read_json(run.final) if run.finished else {}
    config = ckpt.get("config") or {}
    metadata = {
        "model": ckpt["model"],
        "model_kwargs": ckpt.get("model_kwargs") or {},
        "num_classes": ckpt["num_classes"],
        "class_names": list(ckpt["classes"]),
        "mean": list(ckpt["mean"]),
        "std": list(ckpt["std"]),
        "input_size": [3, ckpt["image_size"], ckpt["image_size"]],
        "dataset": ckpt.get("dataset"),
        "recipe": config.get("recipe"),
        "epochs": int(ckpt.get("epoch", 0)),
        "planned_epochs": config.get("epochs"),
        "seed": config.get("seed"),
        "ema_decay": config.get("ema_decay", 0.0),  # > 0: these are the run's weight average (train --ema-decay)
        "top1": final.get("top1", last.get("test_top1")),
        "top3": 100.0 - final["top3_error"] if "top3_error" in final else last.get("test_top3"),
        "finished": run.finished and not final.get("stopped_early", False),
        "source_torch": ckpt.get("torch_version"),
        "dsrnet_version": __version__,
    }
    return save_weights(model, out, metadata=metadata, dtype=dtypes[dtype])
