"""Post-training static int8 quantisation of an exported ONNX model, calibrated on real CIFAR-10 images.

Two quantisers write an ONNX file with QuantizeLinear/DequantizeLinear (QDQ) pairs:

* ``"ort"`` (default) -- :func:`onnxruntime.quantization.quantize_static`: QDQ format, per-channel int8
  weights, uint8 activations (the recommended x86 setting: u8s8 is what VNNI's ``vpdpbusd`` multiplies),
  MinMax calibration. onnxruntime AND OpenVINO both run the file with int8 kernels;
* ``"nncf"`` -- :func:`nncf.quantize` (OpenVINO's Neural Network Compression Framework) on the ONNX graph:
  its ``PERFORMANCE`` preset (symmetric) and fast bias correction, made for OpenVINO. onnxruntime runs its
  file too (``dsrnet eval --backend onnxruntime`` gives the same top-1 as OpenVINO on it), but its int8 speed there
  is not measured (``benchmarks/cpu_backends.py --quantizer nncf`` times it on OpenVINO only).

Why ``"ort"`` is the default: on OpenVINO both files run at the same speed within noise (2-core AVX-512
Xeon, ``benchmarks/cpu_backends.py --quantizer nncf``, BENCHMARKS.md), and the ``"ort"`` file is the one whose
int8 speed is measured on both engines -- one int8 file for every backend, the same quantisation choice for every
model.

Calibration images are drawn ``calib_images // 10`` per class from CIFAR-10's training split (seeded), resized
to the model's input size when it is not 32 px, and normalised with the model's mean/std. The int8 model is
then compared with the fp32 one on held-out test images: top-1 agreement and max |int8 - fp32| are reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dsrnet.errors import DsrnetError
from dsrnet.export.source import METADATA_KEY

QUANTIZERS = ("ort", "nncf")
DEFAULT_QUANTIZER = "ort"
_CALIB_BATCH = 32
CHECK_IMAGES = 200


def cifar10_batch(
    split: str,
    n: int,
    *,
    data_dir: str | os.PathLike | None,
    image_size: int,
    mean,
    std,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real CIFAR-10 images (``n // 10`` per class, seeded): a normalised NCHW float32 batch, labels."""
    from dsrnet import data as D

    if isinstance(n, bool) or not isinstance(n, int) or n < 10:
        raise DsrnetError(f"calibration needs at least 10 images (one per class), got {n!r}; fix: pass "
                          f"--calib-images 10 or more")  # fmt: skip
    try:
        images = D.load_split("cifar10", split, data_dir)
    except DsrnetError as err:
        raise DsrnetError(
            f"int8 calibration/checks use real CIFAR-10 images and none were found ({str(err).split('; fix:')[0]}); "
            f"fix: pass "
            f"--data-dir with cifar10/{split}.npz or the official cifar-10-batches-py/"
        ) from None
    sub = images.subset_per_class(n // 10, seed)
    x = torch.from_numpy(sub.images).permute(0, 3, 1, 2).float() / 255.0
    if image_size != x.shape[-1]:  # bicubic, as predict/eval resize (dsrnet.models.preprocess.INTERPOLATION)
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(), torch.from_numpy(sub.labels)


def _input_name(onnx_path: Path) -> str:
    import onnx

    model = onnx.load_model(str(onnx_path), load_external_data=False)
    return model.graph.input[0].name


def _quantize_ort(fp32: Path, out: Path, calib: torch.Tensor) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = _input_name(fp32)
    batches = [calib[i : i + _CALIB_BATCH].numpy() for i in range(0, len(calib), _CALIB_BATCH)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {name: b}

    # quantize_static logs advice ("consider pre-processing") on the root logger at WARNING for every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        root.setLevel(level)


def _quantize_nncf(fp32: Path, out: Path, calib: torch.Tensor) -> None:
    import onnx

    try:
        import nncf
    except ImportError:
        raise DsrnetError(
            "the nncf quantiser is not installed; fix: pip install 'dsrnet[openvino]'"
        ) from None
    model = onnx.load_model(str(fp32))
    name = model.graph.input[0].name
    batches = [calib[i : i + _CALIB_BATCH].numpy() for i in range(0, len(calib), _CALIB_BATCH)]
    dataset = nncf.Dataset(batches, lambda b: {name: b})
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout holds the results alone
        quantized = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(batches),  # NNCF counts dataset items, here batches
            fast_bias_correction=True,
        )
    onnx.save_model(quantized, str(out))


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    calib_images: int = 300,
    data_dir: str | os.PathLike | None = None,
    quantizer: str | None = None,
    image_size: int = 32,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    seed: int = 0,
    check_images: int = CHECK_IMAGES,
) -> dict[str, Any]:
    """Quantise ``fp32_path`` to ``out`` (see the module docstring); return what was done and the check's
    numbers.

    The metadata props of the fp32 file are copied into the int8 file, plus ``precision = int8`` and the
    quantiser used."""
    import onnx

    from dsrnet.export.formats import require

    require("onnxruntime", "onnx")
    quantizer = quantizer or DEFAULT_QUANTIZER
    if quantizer not in QUANTIZERS:
        raise DsrnetError(f"unknown quantizer {quantizer!r}; fix: choose one of {', '.join(QUANTIZERS)}")
    fp32_path, out = Path(fp32_path), Path(out)
    calib, _ = cifar10_batch(
        "train", calib_images, data_dir=data_dir, image_size=image_size, mean=mean, std=std, seed=seed
    )
    tmp = out.with_name(f".tmp-{out.name}")
    try:
        (_quantize_ort if quantizer == "ort" else _quantize_nncf)(fp32_path, tmp, calib)
        fp32_model = onnx.load_model(str(fp32_path), load_external_data=False)
        q_model = onnx.load_model(str(tmp))
        props = {p.key: p.value for p in fp32_model.metadata_props}
        props.update({"precision": "int8", "quantizer": quantizer, "calibration_images": str(len(calib))})
        meta = json.loads(props.get(METADATA_KEY, "{}"))
        meta.update({"precision": "int8", "quantizer": quantizer, "calibration_images": str(len(calib))})
        props[METADATA_KEY] = json.dumps(meta)
        del q_model.metadata_props[:]
        onnx.helper.set_model_props(q_model, props)
        onnx.save_model(q_model, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    # NNCF's ONNX output quantises depthwise-conv inputs per channel, which only OpenVINO runs.
    backend = "openvino" if quantizer == "nncf" else "onnxruntime"
    check = compare_int8(fp32_path, out, data_dir=data_dir, image_size=image_size, mean=mean, std=std,
                         n=check_images, seed=seed, backend=backend)  # fmt: skip
    return {"quantizer": quantizer, "calibration_images": len(calib), "fp32_path": str(fp32_path), **check}


def compare_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None,
    image_size: int,
    mean,
    std,
    n: int = CHECK_IMAGES,
    seed: int = 0,
    backend: str = "onnxruntime",
) -> dict[str, Any]:
    """Top-1 agreement, top-1 accuracy of each, the Pearson correlation of the logits and max |int8 - fp32| of
    two ONNX files on ``n`` CIFAR-10 test images (``n // 10`` per class)."""
    from dsrnet.export.backends import load_runner

    x, labels = cifar10_batch(
        "test", n, data_dir=data_dir, image_size=image_size, mean=mean, std=std, seed=seed
    )
    fp32, int8 = load_runner(backend, fp32_path), load_runner(backend, int8_path)
    a = torch.cat([fp32(x[i : i + 50]) for i in range(0, len(x), 50)])
    b = torch.cat([int8(x[i : i + 50]) for i in range(0, len(x), 50)])
    corr = float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])
    return {
        "check_images": len(x),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "fp32_top1": float((a.argmax(1) == labels).float().mean()),
        "int8_top1": float((b.argmax(1) == labels).float().mean()),
        "logit_correlation": corr,
        "max_abs_diff": float((a - b).abs().max()),
    }
