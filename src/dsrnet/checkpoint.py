"""Checkpoints and run files: atomic writes, ``weights_only`` loading, RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that ``torch.load(...,
weights_only=True)`` reads it without trusting the file (no pickled classes). It carries everything needed to
continue training bit for bit (model, optimizer, scheduler, grad scaler, RNG states, epoch, metric history,
the resolved config) and to rebuild the model and its preprocessing without any other file (model name and
kwargs, number and names of classes, image size, normalisation mean/std).

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed over the target
with ``os.replace``: a crash or SIGKILL at any moment leaves either the old file or the new one, never half of
one.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsrnet.errors import DsrnetError

FORMAT = "dsrnet-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"

__all__ = [
    "CHECKPOINT_NAME",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call ``write(f)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------ RNG


def get_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as ``weights_only``-loadable values."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA states only where this machine has as many GPUs)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _to_lists(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return [_to_lists(o) for o in obj]
    return obj


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (plus the format tag) atomically with ``torch.save``."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a dsrnet checkpoint with ``weights_only=True``. ``path`` may be the file or a run folder holding
    ``checkpoint.pt``. A missing, truncated, foreign or unsafe file raises :class:`DsrnetError`."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise DsrnetError(
            f"checkpoint {path} not found; fix: pass the checkpoint.pt of a run (or its run folder) written by "
            f"`dsrnet train`"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncation, foreign pickles and non-allowlisted classes surface as many types
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DsrnetError(
            f"checkpoint {path} cannot be read safely ({type(err).__name__}: {msg[:200]}); fix: use an intact "
            f"checkpoint written by `dsrnet train` (a run killed mid-write keeps its previous checkpoint.pt)"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DsrnetError(
            f"{path} is not a dsrnet checkpoint; fix: pass a checkpoint.pt written by `dsrnet train`"
        )
    if ckpt.get("version") != VERSION:
        raise DsrnetError(
            f"{path} has checkpoint format version {ckpt.get('version')}, this dsrnet reads {VERSION}; fix: use "
            f"the dsrnet version that wrote it"
        )
    ckpt["path"] = str(path)
    return ckpt
