"""``dsrnet export-weights``: flags -> :func:`dsrnet.infer.export_weights` -> the file written."""

from __future__ import annotations

import argparse


def configure(name: str, p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write the trained model of a run (its folder or checkpoint.pt) as a safetensors weights file: weights only, "
        "fp16 by default, with the metadata that rebuilds and preprocesses it (model, classes, mean/std, input size) "
        "and cites it (dataset, recipe, epochs, seed, final-epoch top-1/top-3). Load it with "
        "dsrnet.create_model(name, checkpoint_path=FILE) or `dsrnet predict --checkpoint FILE`."
    )
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder or its checkpoint.pt")
    p.add_argument("out", metavar="OUT.safetensors", help="the weights file to write")
    p.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16", help="dtype of the stored weights")
    p.set_defaults(func=_cmd_export_weights)


def _cmd_export_weights(args: argparse.Namespace) -> int:
    import hashlib

    from dsrnet.infer import export_weights

    path = export_weights(args.source, args.out, dtype=args.dtype)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}  sha256 {digest}  ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
