"""``dsrnet export``: flags -> :func:`dsrnet.export.export_model` -> one summary line."""

from __future__ import annotations

import argparse


def configure(name: str, p: argparse.ArgumentParser) -> None:
    from dsrnet.export.formats import DEFAULT_TOLERANCE, FORMATS
    from dsrnet.export.quantize import QUANTIZERS

    p.description = (
        "Export a registered model (random weights), a weights tag (the shipped trained model, e.g. "
        "dsrnet50_cifar.c10), a training run (folder or checkpoint.pt) or a .safetensors weights file with "
        "BatchNorm folded, a dynamic batch dimension and the normalisation "
        "metadata inside the file; the file is loaded back and compared with PyTorch (max abs diff printed, "
        "error above the tolerance). --int8 quantises the ONNX file (post-training, static) on real CIFAR-10 "
        "training images and keeps the fp32 file next to it as NAME.fp32.onnx."
    )
    p.add_argument(
        "source",
        metavar="MODEL_OR_RUN_OR_WEIGHTS",
        help="registry name (random weights), weights tag (e.g. dsrnet50_cifar.c10), run folder, .pt or .safetensors",
    )
    p.add_argument("--format", choices=FORMATS, default="onnx", help="file format to write (default: onnx)")
    p.add_argument("--out", required=True, help="file to write (.onnx, .pt for TorchScript, .pt2)")
    p.add_argument("--int8", action="store_true", help="post-training static int8 quantisation (ONNX only)")
    p.add_argument(
        "--calib-images",
        type=int,
        default=300,
        help="CIFAR-10 training images to calibrate on (default: 300)",
    )
    p.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default=None,
        help="int8 tool (default: ort; nncf: made for OpenVINO, see dsrnet.export.quantize)",
    )
    p.add_argument("--data-dir", default=None, help="dataset folder holding cifar10/ (default: $DSRNET_DATA, else ~/.cache/dsrnet/data)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's/run's)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a registry model (default 10)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="max |exported - PyTorch| allowed, relative to the largest logit (default: %(default)s)",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from dsrnet.export import export_model

    result = export_model(
        args.source, args.out, format=args.format, int8=args.int8, calib_images=args.calib_images,
        data_dir=args.data_dir, quantizer=args.quantizer, image_size=args.image_size,
        num_classes=args.num_classes, tolerance=args.tolerance,
    )  # fmt: skip
    print(result.summary())
    return 0
