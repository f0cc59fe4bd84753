"""Checkpoints: ``weights_only`` loading, integrity and sanity checks, RNG state capture.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that ``torch.load(...,
weights_only=True)`` reads it without trusting the file (no pickled classes). It carries everything needed to
continue training bit for bit on a CPU (model, optimizer, scheduler, grad scaler, RNG states, epoch, metric history,
the resolved config) and to rebuild the model and its preprocessing without any other file (model name and
kwargs, number and names of classes, image size, normalisation mean/std). ``state_dict`` repeats ``model_state``
(the same tensors, stored once) under the key other loaders look for, e.g. ``timm.create_model(...,
checkpoint_path=...)``.

Written atomically (:mod:`dsrnet.run.atomic`). Read back, a checkpoint is checked before anything is built from it:
the CRC-32 of every record of torch's zip container (a flipped byte is refused, not evaluated), the type and range of
every field a model or a preprocessing step is built from, and the shapes of its weights against the model its
fields describe, built on the ``meta`` device first (a hand-edited width cannot allocate 40 GB).
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write
from dsrnet.run.rundir import CHECKPOINT_NAME

FORMAT = "dsrnet-checkpoint"
VERSION = 1
#: Largest input side a checkpoint may ask predict/eval to resize to (the datasets use 32 and 96).
MAX_IMAGE_SIZE = 1024

__all__ = [
    "CHECKPOINT_NAME",
    "check_model_fields",
    "check_resume_fields",
    "get_rng_state",
    "load_checkpoint",
    "load_model_state",
    "save_checkpoint",
    "set_rng_state",
]


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
    """Write ``payload`` (plus the format tag) atomically with ``torch.save``. A full disk is one clear error and
    leaves the previous checkpoint in place."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    if "model_state" in payload:  # the key timm's checkpoint_path (and most trainers) read; the same tensors
        payload["state_dict"] = payload["model_state"]  # torch.save stores shared storages once
    try:
        return atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as err:
        if isinstance(err.__context__, KeyboardInterrupt):  # torch's zip writer wraps a Ctrl-C in a RuntimeError
            raise KeyboardInterrupt from None
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if isinstance(err, RuntimeError):  # torch's zip writer names no cause for a short write (a full disk)
            first += _free_space(Path(path).parent)
        raise DsrnetError(
            f"could not write checkpoint {path} ({first}); the previous checkpoint is kept; fix: free disk space "
            f"in {Path(path).parent} (or pass another --out-dir) and resume with --resume"
        ) from None


def _free_space(folder: Path) -> str:
    """``", N MiB free there"``: the likely cause of a write torch's zip writer reports as an internal error."""
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
    except OSError:
        return ""


def _damaged_record(path: Path) -> str | None:
    """The first record of torch's zip container whose CRC-32 does not match, or ``None``."""
    with zipfile.ZipFile(path) as z:
        return z.testzip()


def exported_kind(path: str | os.PathLike) -> str | None:
    """What a file that is not a training checkpoint is, by content, else by suffix: ``"TorchScript"`` (a zip
    holding ``*/constants.pkl``), ``"an ExportedProgram"`` (``*/archive_format``), ``"ONNX"``, ``"OpenVINO IR"``,
    ``"safetensors weights"``; ``None`` otherwise (a checkpoint, or something :func:`load_checkpoint` refuses).
    Content first, so that a TorchScript file named ``.pt2`` is told apart (callers suggest the rename)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        names = []
    if any(n.endswith("/constants.pkl") for n in names):
        return "TorchScript"
    if any(n.endswith("/archive_format") for n in names):
        return "an ExportedProgram"
    if not names and path.suffix.lower() != ".onnx" and _is_onnx(path):  # (.onnx: named so below, unparsed)
        return "ONNX"
    named = {".onnx": "ONNX", ".xml": "OpenVINO IR", ".safetensors": "safetensors weights", ".pt2": "an ExportedProgram"}
    return named.get(path.suffix.lower())


def _is_onnx(path: Path) -> bool:
    """An ONNX model by its first bytes, without parsing the file: a protobuf ``ModelProto`` starts with field 1,
    ``ir_version`` (tag 0x08, a small varint), followed by another of its fields (producer name, domain, graph,
    opset import, ...). Only names a misnamed file; nothing is loaded on its strength."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 0x7F and head[2] in _MODELPROTO_TAGS


#: Tags of ``ModelProto`` fields 2-8 and 14 (producer_name, producer_version, domain, model_version, doc_string,
#: graph, opset_import, metadata_props), one of which follows ``ir_version`` in every exporter's output.
_MODELPROTO_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a dsrnet checkpoint with ``weights_only=True``. ``path`` may be the file or a run folder holding
    ``checkpoint.pt``. A missing, truncated, damaged (CRC mismatch), foreign or unsafe file, or one whose fields are
    not what ``dsrnet train`` writes, raises :class:`DsrnetError`."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return as_checkpoint(read_torch_file(path, map_location), path)


def read_torch_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """What ``torch.save`` wrote to ``path`` (its zip format), read with ``weights_only=True`` after the CRC of every
    record is checked: a missing, truncated, damaged, exported or unsafe file raises :class:`DsrnetError`."""
    if not path.is_file():
        raise DsrnetError(
            f"checkpoint {path} not found; fix: pass the checkpoint.pt of a run (or its run folder) written by "
            f"`dsrnet train`"
        )
    kind = exported_kind(path)
    if kind is not None:  # a model from `dsrnet export` / `export-weights`: say so, not "cannot be read safely"
        raise DsrnetError(
            f"{path} is {kind} (a model for inference), not a training checkpoint; fix: pass it where such files are "
            f"read (dsrnet eval / predict --checkpoint; create_model(checkpoint_path=...) or --init-weights for "
            f"safetensors), or pass a checkpoint.pt written by `dsrnet train`"
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80":  # a pickle: torch.save's legacy format, never what dsrnet train writes
        raise DsrnetError(
            f"{path} is in torch.save's legacy (non-zip) format, not a checkpoint written by `dsrnet train`; fix: "
            f"pass a run folder or its checkpoint.pt (weights of your own: a .safetensors file or --init-weights)"
        )
    if magic != b"PK\x03\x04":  # torch.save's zip container; a cut-off checkpoint still starts like one
        raise DsrnetError(
            f"{path} is not a checkpoint (not the zip archive torch.save writes); fix: pass a run folder or its "
            f"checkpoint.pt written by `dsrnet train`"
        )
    try:
        bad = _damaged_record(path)
        # argparse.Namespace: the one class timm's train.py puts in its checkpoints (its `args`), a plain container
        # timm's own loader allows too
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True) if bad is None else None
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise _unreadable(path, err) from None
        raise DsrnetError(
            f"checkpoint {path} cannot be read safely: it holds pickled objects beyond tensors and plain values, which "
            f"could run code when loaded, so it is refused; fix: use a checkpoint written by `dsrnet train` (weights "
            f"of your own: a .safetensors file)"
        ) from None
    except Exception as err:  # truncation, foreign pickles and non-allowlisted classes surface as many types
        raise _unreadable(path, err) from None
    if bad is not None:
        raise DsrnetError(
            f"checkpoint {path} is damaged (checksum mismatch in record {bad}); fix: use an intact copy of it"
        )
    return ckpt


def is_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is what ``dsrnet train`` writes (its format marker; fields unchecked)."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def as_checkpoint(ckpt: Any, path: Path) -> dict:
    """``ckpt`` (loaded from ``path``) checked as a dsrnet checkpoint: its format, version and model fields."""
    if not is_checkpoint(ckpt):
        raise DsrnetError(
            f"{path} is not a dsrnet checkpoint; fix: pass a checkpoint.pt written by `dsrnet train`"
        )
    if ckpt.get("version") != VERSION:
        raise DsrnetError(
            f"{path} has checkpoint format version {ckpt.get('version')}, this dsrnet reads {VERSION}; fix: use "
            f"the dsrnet version that wrote it"
        )
    ckpt["path"] = str(path)
    check_model_fields(ckpt)
    return ckpt


def _unreadable(path: Path, err: Exception) -> DsrnetError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return DsrnetError(
        f"checkpoint {path} cannot be read safely ({type(err).__name__}: {msg[:200]}); fix: use an intact "
        f"checkpoint written by `dsrnet train` (a run killed mid-write keeps its previous checkpoint.pt)"
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bad_field(ckpt: dict, key: str, expected: str) -> DsrnetError:
    shown = repr(ckpt.get(key, "<missing>"))
    return DsrnetError(
        f"checkpoint {ckpt.get('path')} has a bad {key!r} field ({shown[:80]}; expected {expected}); fix: use a "
        f"checkpoint written by `dsrnet train`, not a hand-edited one"
    )


def _triple(v: Any) -> bool:
    """3 finite numbers (a per-channel mean or std)."""
    return (
        isinstance(v, list | tuple)
        and len(v) == 3
        and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )


#: The most classes a classifier here may have (a bound on what a file may ask to allocate).
MAX_NUM_CLASSES = 100_000
#: The largest input size an exported file may record (``dsrnet export --image-size``): larger than a checkpoint's
#: training size (detection-sized inputs), small enough that a doctored file cannot ask for a 20000-px resize.
MAX_EXPORT_IMAGE_SIZE = 4096


def check_preprocessing(where: str, fix: str, *, num_classes: Any, classes: Any, image_size: Any, mean: Any,
                        std: Any, classes_optional: bool = False,
                        max_image_size: int = MAX_IMAGE_SIZE) -> None:  # fmt: skip
    """The fields an exported file or a weights file gives inference (classes, input size, normalisation) checked
    as :func:`check_model_fields` checks a checkpoint's, before anything is built or an image resized: one
    :class:`DsrnetError` naming the field, not a traceback (nor a 20000-px resize). ``classes_optional``: an
    empty list is allowed (a model without class names, labelled by index; or with ``num_classes`` 0, pooled
    features)."""
    n_ok = _is_int(num_classes) and (1 if not classes_optional else 0) <= num_classes <= MAX_NUM_CLASSES
    checks = (
        ("num_classes", num_classes, n_ok, f"an integer in {0 if classes_optional else 1}..{MAX_NUM_CLASSES}"),
        ("classes", classes, isinstance(classes, list) and all(isinstance(c, str) for c in classes)
         and ((n_ok and len(classes) == num_classes) or (classes_optional and not classes)),
         f"a list of {num_classes} class names"),
        ("image_size", image_size, _is_int(image_size) and 8 <= image_size <= max_image_size,
         f"an integer in 8..{max_image_size}"),
        ("mean", mean, _triple(mean), "3 finite numbers"),
        ("std", std, _triple(std) and all(s > 0 for s in std), "3 finite numbers > 0"),
    )  # fmt: skip
    for key, value, ok, expected in checks:
        if not ok:
            raise DsrnetError(f"{where} has a bad {key} ({repr(value)[:80]}; expected {expected}); {fix}")


def check_model_fields(ckpt: dict) -> None:
    """Check the fields a model and its preprocessing are built from, before anything is built."""
    if not isinstance(ckpt.get("model"), str):
        raise _bad_field(ckpt, "model", "a model name")
    if not isinstance(ckpt.get("model_kwargs", {}), dict):
        raise _bad_field(ckpt, "model_kwargs", "a mapping")
    n = ckpt.get("num_classes")
    if not (_is_int(n) and 1 <= n <= MAX_NUM_CLASSES):
        raise _bad_field(ckpt, "num_classes", f"an integer in 1..{MAX_NUM_CLASSES}")
    classes = ckpt.get("classes")
    if not (isinstance(classes, list) and len(classes) == n and all(isinstance(c, str) for c in classes)):
        raise _bad_field(ckpt, "classes", f"a list of {n} class names")
    size = ckpt.get("image_size")
    if not (_is_int(size) and 8 <= size <= MAX_IMAGE_SIZE):
        raise _bad_field(ckpt, "image_size", f"an integer in 8..{MAX_IMAGE_SIZE}")
    if not _triple(ckpt.get("mean")):
        raise _bad_field(ckpt, "mean", "3 finite numbers")
    if not (_triple(ckpt.get("std")) and all(s > 0 for s in ckpt["std"])):
        raise _bad_field(ckpt, "std", "3 finite numbers > 0")
    state = ckpt.get("model_state")
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise _bad_field(ckpt, "model_state", "a state dict of tensors")


def check_resume_fields(ckpt: dict) -> None:
    """Check what resuming a run restores besides the model (its settings, epoch, per-epoch history, RNG state),
    before anything is built or trained: a hand-edited or foreign file is one clear error, not a KeyError, nor a run
    that trains an epoch and then fails. A weights-only checkpoint (no optimizer state) is refused here too."""
    if "optimizer_state" not in ckpt:
        raise DsrnetError(
            f"checkpoint {ckpt.get('path')} holds weights only (no optimizer state), so it cannot be resumed; fix: "
            f"use it with eval/predict, or start a new run"
        )
    config = ckpt.get("config")
    epochs = config.get("epochs") if isinstance(config, dict) else None
    if not (_is_int(epochs) and epochs >= 1):
        raise _bad_field(ckpt, "config", "the run's settings, a mapping with its epochs")
    epoch = ckpt.get("epoch")
    if not (_is_int(epoch) and 0 <= epoch <= epochs):
        raise _bad_field(ckpt, "epoch", f"an integer in 0..{epochs}")
    history = ckpt.get("history")
    if not (isinstance(history, list) and len(history) == epoch and all(isinstance(r, dict) for r in history)):
        raise _bad_field(ckpt, "history", f"a list of {epoch} per-epoch records")
    before = get_rng_state()
    try:  # restoring it is the only complete check of its parts' types and sizes
        set_rng_state(ckpt.get("rng_state"))
    except Exception:
        raise _bad_field(ckpt, "rng_state", "the Python, NumPy and torch generator states") from None
    finally:
        set_rng_state(before)


def load_model_state(model: nn.Module, ckpt: dict, *, require_finite: bool = False) -> None:
    """Load ``ckpt["model_state"]`` into ``model``; one-line errors for weights that do not fit it and, with
    ``require_finite``, for NaN/Inf weights (a diverged run must never be evaluated or served)."""
    state = ckpt["model_state"]
    if require_finite:
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise DsrnetError(
                f"checkpoint {ckpt['path']} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): the run "
                f"diverged; fix: use a checkpoint of a run that trained normally (retrain with a lower --lr)"
            )
    detail = state_mismatch(model.state_dict(), state)
    if detail:
        raise DsrnetError(
            f"checkpoint {ckpt['path']} does not fit model {ckpt.get('model')!r} with "
            f"model_kwargs {ckpt.get('model_kwargs')} ({detail}); fix: use a checkpoint written for this model"
        )
    model.load_state_dict(state)


def state_mismatch(want: Mapping[str, torch.Tensor], have: Mapping[str, torch.Tensor]) -> str | None:
    """How the weights ``have`` fail to fit a model's ``state_dict()`` ``want``, as a short phrase naming the first
    missing, unexpected or misshapen entry (``None``: same names and shapes)."""
    want_s = {k: tuple(v.shape) for k, v in want.items()}
    have_s = {k: tuple(v.shape) for k, v in have.items()}
    if want_s == have_s:
        return None
    missing = sorted(set(want_s) - set(have_s))
    extra = sorted(set(have_s) - set(want_s))
    shape = sorted(k for k in set(want_s) & set(have_s) if want_s[k] != have_s[k])
    return (
        f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
        f"{shape[0]} is {have_s[shape[0]]}, the model needs {want_s[shape[0]]}"
    )  # fmt: skip


def check_state_fits(meta_model: nn.Module, ckpt: dict) -> None:
    """Compare the checkpoint's weight names and shapes with ``meta_model`` (built on the ``meta`` device, so it
    holds no memory) before the real model is allocated."""
    detail = state_mismatch(meta_model.state_dict(), ckpt["model_state"])
    if detail is None:
        return
    raise DsrnetError(
        f"checkpoint {ckpt['path']} does not fit model {ckpt['model']!r} with model_kwargs "
        f"{ckpt.get('model_kwargs')} ({detail}); fix: use a checkpoint written by `dsrnet train` for this model"
    )
