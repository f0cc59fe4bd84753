#!/usr/bin/env python3
"""Turn what a GPU ``dsrnet`` stage returned into a weights file the package can ship (issue 9).

    PYTHONPATH=src python3 benchmarks/ship_weights.py RETURNED_DIR [--tag dsrnet50_cifar.c10] [--dtype fp16] \\
        [--into src/dsrnet/weights] [--shards NAME] [--force]

``RETURNED_DIR`` holds what ``benchmarks/gpu_campaign.py --stage dsrnet`` leaves in ``$OUT``: the weights-only
checkpoint in shards (``<name>.pt.partNN`` + ``<name>.pt.manifest.json``; ``--shards`` names them where the folder
holds several), ``final.json``, and ``config.yaml`` / ``metrics.jsonl`` when they fitted (the checkpoint holds
both). The shards are joined (every part's and the whole file's SHA-256 checked) into a temporary run folder, the
run's ``final.json`` is checked against the checkpoint (model, arguments, epochs: it must be that run's), and the
weights are exported with :func:`dsrnet.infer.export_weights` (the FINAL epoch's accuracy from ``final.json``; a
run stopped early is refused, as its schedule was cut short) to ``--into/<tag>.safetensors`` (``--tag``: the new
weights' name, whose model part must be the run's model; an existing file is replaced only with ``--force``), read
back and rebuilt as a model. Printed: the file's sha256 and size, and the ``SHIPPED`` entry for
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

OPTIONAL_RUN_FILES = ("config.yaml", "metrics.jsonl")  # left out of OUT when the shards need the room


def _manifest(returned: Path, shards: str | None) -> Path:
    """The shards' manifest: ``<shards>.pt.manifest.json``, or the folder's only ``*.pt.manifest.json``."""
    if shards is not None:
        manifest = returned / f"{shards}.pt.manifest.json"
        if not manifest.is_file():
            raise DsrnetError(f"{returned} lacks {manifest.name}; fix: pass --shards with the name of its shards")
        return manifest
    found = sorted(returned.glob("*.pt.manifest.json"))
    if len(found) != 1:
        raise DsrnetError(
            f"{returned} holds {len(found)} shard manifests ({', '.join(p.name for p in found) or 'none'}); fix: pass "
            f"the folder the dsrnet stage returned (its $OUT), with --shards NAME where it holds several"
        )
    return found[0]


def ship(returned: Path, tag: str, into: Path, dtype: str = "fp16", *, shards: str | None = None,
         force: bool = False) -> dict:  # fmt: skip
    """Join, check and export the weights of ``returned`` as ``into/<tag>.safetensors``; returns what to paste."""
    from dsrnet.infer import export_weights
    from dsrnet.models.weights import load_trained, read_weights
    from dsrnet.report.markdown import read_json
    from dsrnet.run.checkpoint import load_checkpoint
    from dsrnet.run.shards import join_parts

    manifest = _manifest(returned, shards)
    if not (returned / "final.json").is_file():
        raise DsrnetError(f"{returned} lacks final.json; fix: pass the folder the dsrnet stage returned (its $OUT)")
    final = read_json(returned / "final.json")
    if not isinstance(final, dict) or not isinstance(final.get("model"), str):
        raise DsrnetError(f"{returned / 'final.json'} is not a run's final.json; fix: pass the folder the dsrnet "
                          f"stage returned")  # fmt: skip
    if final.get("stopped_early"):
        raise DsrnetError(f"{returned} is a run stopped early (truncated schedule); fix: ship a finished run")
    if tag.split(".")[0] != final["model"] or tag.count(".") != 1:
        raise DsrnetError(f"tag {tag!r} is not <model>.<name> for this run's model {final['model']}; fix: pass "
                          f"--tag {final['model']}.<name>")  # fmt: skip
    out = into / f"{tag}.safetensors"
    if out.exists() and not force:
        raise DsrnetError(f"{out} exists (weights the package may ship, under their checksum); fix: pass another "
                          f"--tag, or --force to replace it")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        join_parts(manifest, run / "checkpoint.pt")
        ckpt = load_checkpoint(run)
        theirs = (final["model"], final.get("model_kwargs") or {}, final.get("epochs_done", final.get("epochs")))
        ours = (ckpt["model"], ckpt.get("model_kwargs") or {}, ckpt.get("epoch"))
        if theirs != ours:
            raise DsrnetError(
                f"{returned / 'final.json'} is of another run than the checkpoint (model, arguments, epochs: "
                f"{theirs} vs {ours}); fix: put the final.json the same dsrnet stage returned beside its shards"
            )
        shutil.copy2(returned / "final.json", run / "final.json")
        for name in OPTIONAL_RUN_FILES:
            if (returned / name).is_file():
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
    p.add_argument("--shards", default=None, help="name of the shards (<name>.pt.manifest.json) where there are several")
    p.add_argument("--force", action="store_true", help="replace an existing <tag>.safetensors")
    args = p.parse_args(argv)
    try:
        info = ship(args.returned, args.tag, args.into, args.dtype, shards=args.shards, force=args.force)
    except DsrnetError as err:
        print(f"ship_weights.py: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
