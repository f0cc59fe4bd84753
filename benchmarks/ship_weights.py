#!/usr/bin/env python3
"""Turn what a GPU ``dsrnet`` stage returned into a weights file the package can ship (issue 9).

    PYTHONPATH=src python3 benchmarks/ship_weights.py RETURNED_DIR [--tag dsrnet50_cifar.c10] [--dtype fp16] \\
        [--into src/dsrnet/weights]

``RETURNED_DIR`` holds what ``benchmarks/gpu_campaign.py --stage dsrnet`` leaves in ``$OUT``: the weights-only
checkpoint in shards (``<tag>.pt.partNN`` + ``<tag>.pt.manifest.json``), ``final.json``, ``config.yaml`` and
``metrics.jsonl``. The shards are joined (every part's and the whole file's SHA-256 checked) into a temporary run
folder next to the run's files, exported with :func:`dsrnet.infer.export_weights` (the FINAL epoch's accuracy from
``final.json``; a run stopped early is refused, as its schedule was cut short) to ``--into/<tag>.safetensors``,
read back and rebuilt as a model. Printed: the file's sha256 and size, and the ``SHIPPED`` entry for
``src/dsrnet/models/weights.py`` (with the run's ``model_kwargs`` when it had any). Then, by hand: paste the entry,
``dsrnet eval --checkpoint <tag> --data-dir DATA`` on a CPU, and update ``src/dsrnet/weights/README.md``,
BENCHMARKS.md and the README with the numbers and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from dsrnet.errors import DsrnetError

RUN_FILES = ("final.json", "config.yaml", "metrics.jsonl")


def ship(returned: Path, tag: str, into: Path, dtype: str = "fp16") -> dict:
    """Join, export and check the weights of ``returned`` as ``into/<tag>.safetensors``; returns what to paste."""
    from dsrnet.infer import export_weights
    from dsrnet.models.weights import load_trained, read_weights
    from dsrnet.run.shards import join_parts

    manifest = returned / f"{tag}.pt.manifest.json"
    missing = [p.name for p in (manifest, *(returned / f for f in RUN_FILES)) if not p.is_file()]
    if missing:
        raise DsrnetError(
            f"{returned} lacks {', '.join(missing)}; fix: pass the folder the dsrnet stage returned (its $OUT), "
            f"with --tag naming its shards"
        )
    final = json.loads((returned / "final.json").read_text())
    if final.get("stopped_early"):
        raise DsrnetError(f"{returned} is a run stopped early (truncated schedule); fix: ship a finished run")
    out = into / f"{tag}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        join_parts(manifest, run / "checkpoint.pt")
        for name in RUN_FILES:
            shutil.copy2(returned / name, run / name)
        export_weights(run, out, dtype=dtype)
    state, meta = read_weights(out)
    load_trained(out)  # rebuilds the model from the file alone, as predict/eval will
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    keep = ("model", "num_classes", "class_names", "mean", "std", "input_size", "dataset")
    entry_meta = {k: meta[k] for k in keep if meta.get(k) is not None}
    if meta.get("model_kwargs"):
        entry_meta["model_kwargs"] = meta["model_kwargs"]
    return {
        "file": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha,
        "tensors": len(state),
        "top1": meta.get("top1"),
        "top3": meta.get("top3"),
        "epochs": meta.get("epochs"),
        "shipped_entry": {"name": tag, "file": out.name, "sha256": sha, "metadata": entry_meta},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("returned", type=Path, help="the folder the GPU dsrnet stage returned")
    p.add_argument("--tag", default="dsrnet50_cifar.c10", help="weights tag (default: dsrnet50_cifar.c10)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="stored dtype (default: fp16)")
    p.add_argument("--into", type=Path, default=Path("src/dsrnet/weights"), help="where the .safetensors goes")
    args = p.parse_args(argv)
    try:
        info = ship(args.returned, args.tag, args.into, args.dtype)
    except DsrnetError as err:
        print(f"ship_weights.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
