"""Trained weights: a safetensors format with metadata, the table of shipped weights, and loading them.

A weights file holds the model's state dict (fp16 by default) and JSON-encoded metadata: at least ``model`` (the
registered name) and ``num_classes``, usually also ``class_names``, ``mean`` / ``std`` (the normalisation the model
was trained with, in [0, 1] units), ``input_size``, ``dataset``, ``recipe``, ``epochs``, ``seed``, ``top1`` / ``top3``
(final-epoch accuracy, %), ``model_kwargs`` (constructor arguments other than the name's defaults) and
``dsrnet_version``. ``pretrained_cfg`` of a model built from weights carries their mean/std and class names.

Weights are named as timm names them, ``<model>.<tag>`` (e.g. ``dsrnet50_cifar.c10``). :data:`SHIPPED` lists what
the package ships under ``dsrnet/weights/`` with each file's sha256, checked before loading. To ship a file: write it
with :func:`save_weights` (or ``dsrnet export-weights``), copy it to ``src/dsrnet/weights/``, and add an entry here
with its ``sha256sum`` and metadata. ``$DSRNET_WEIGHTS_DIR`` overrides the folder the shipped files are read from;
:func:`register_weights` adds a file at run time (tests, private weights).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsrnet.errors import DsrnetError
from dsrnet.run.atomic import atomic_write_bytes
from dsrnet.run.checkpoint import (
    CHECKPOINT_NAME,
    as_checkpoint,
    check_preprocessing,
    check_state_fits,
    is_checkpoint,
    load_checkpoint,
    load_model_state,
    read_torch_file,
    state_mismatch,
)

WEIGHTS_DIR_ENV = "DSRNET_WEIGHTS_DIR"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
REQUIRED_METADATA = ("model", "num_classes")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class WeightsEntry:
    """One set of trained weights: ``name`` = ``model.tag``, its file (relative to the weights folder, or absolute),
    the file's sha256 (``None`` = not checked: only for :func:`register_weights` without a checksum), metadata."""

    name: str
    file: str
    sha256: str | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.name.partition(".")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(".")[2]

    @property
    def num_classes(self) -> int:
        return int(self.metadata["num_classes"])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.metadata.get("model_kwargs") or {})

    def path(self) -> Path:
        file = Path(self.file)
        return file if file.is_absolute() else weights_dir() / file

    def pretrained_cfg(self) -> dict[str, Any]:
        """The timm pretrained_cfg fields these weights determine."""
        meta = self.metadata
        cfg: dict[str, Any] = {"num_classes": self.num_classes}
        if meta.get("mean") is not None:
            cfg["mean"] = tuple(float(v) for v in meta["mean"])
        if meta.get("std") is not None:
            cfg["std"] = tuple(float(v) for v in meta["std"])
        if meta.get("input_size") is not None:
            cfg["input_size"] = cfg["test_input_size"] = tuple(int(v) for v in meta["input_size"])
        if meta.get("class_names") is not None:
            cfg["label_names"] = tuple(str(c) for c in meta["class_names"])
        if meta.get("dataset"):
            cfg["description"] = f"{self.model} trained from scratch on {meta['dataset']} with dsrnet"
        return cfg


#: Weights shipped with the package. ``dsrnet50_cifar.c10``: the fast recipe on full CIFAR-10 (67 epochs, seed 0, one
#: H200, results/gpu/dsrnet/; final-epoch top-1 error in the file's metadata and BENCHMARKS.md).
SHIPPED: dict[str, WeightsEntry] = {
    "dsrnet50_cifar.c10": WeightsEntry(
        name="dsrnet50_cifar.c10",
        file="dsrnet50_cifar.c10.safetensors",
        sha256="2e6ece1d6fb62357c05a67149218bbbbb4adaa67773fc59bf1c0f7d6d9b83af7",
        metadata={
            "model": "dsrnet50_cifar",
            "num_classes": 10,
            "class_names": list(CIFAR10_CLASSES),
            # the training set's own channel statistics, as the file records them (what training normalised
            # with; CIFAR10_MEAN / CIFAR10_STD are these rounded)
            "mean": [0.4913996786151961, 0.48215840839460783, 0.44653091444546567],
            "std": [0.24703223246328201, 0.24348512800005556, 0.2615878417279645],
            "input_size": [3, 32, 32],
            "dataset": "cifar10",
        },
    ),
}
_REGISTERED: dict[str, WeightsEntry] = {}
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 already checked


def weights_dir() -> Path:
    """Where shipped weights files are read from: ``$DSRNET_WEIGHTS_DIR`` or the package's ``weights/``."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or PACKAGE_WEIGHTS_DIR).expanduser()


def all_weights() -> dict[str, WeightsEntry]:
    """Every known weights entry by ``model.tag``: shipped ones, then registered ones (which may override)."""
    return {**SHIPPED, **_REGISTERED}


def list_weights(pattern: str = "*") -> list[str]:
    """Known ``model.tag`` names matching a shell-style pattern, sorted (including ones not shipped yet)."""
    return sorted(n for n in all_weights() if fnmatch.fnmatch(n, pattern))


def get_weights(name: str) -> WeightsEntry:
    """The entry for ``model.tag``; for a bare model name its default, as timm picks it: the first entry whose file
    is present, else the first entry. One clear error if there is none."""
    entries = all_weights()
    model, _, tag = name.partition(".")
    if tag:
        if name not in entries:
            known = ", ".join(list_weights(f"{model}.*")) or "none for this model"
            raise DsrnetError(
                f"unknown weights tag {name!r}: known are {known} (dsrnet.models.weights.list_weights())"
            )
        return entries[name]
    candidates = [entry for entry in entries.values() if entry.model == model]
    for entry in candidates:
        if entry.path().is_file():
            return entry
    if candidates:
        return candidates[0]
    shipped = ", ".join(list_weights()) or "none"
    raise DsrnetError(
        f"no pretrained weights for {model!r} (known weights: {shipped}); fix: train one with "
        f"`dsrnet train --model {model}` and load it with checkpoint_path=..."
    )


def default_weights(model: str) -> WeightsEntry | None:
    """The weights :func:`get_weights` picks for a bare ``model`` name, or None where there are none."""
    return get_weights(model) if any(entry.model == model for entry in all_weights().values()) else None


def register_weights(name: str, path: str | os.PathLike, *, sha256: str | None = None) -> WeightsEntry:
    """Make a weights file loadable as ``name`` (``model.tag``) by ``create_model(name, pretrained=True)`` and, once
    timm is imported, ``timm.create_model``. Metadata comes from the file; ``sha256`` defaults to the file's own."""
    model, _, tag = name.partition(".")
    if not tag:
        raise DsrnetError(f"weights name {name!r} needs a tag, as in 'dsrnet50_cifar.mine'")
    path = Path(path).expanduser().resolve()
    _, metadata = read_weights(path)
    if metadata["model"] != model:
        raise DsrnetError(
            f"{path} holds weights for {metadata['model']!r}, not {model!r}; fix: name it accordingly"
        )
    entry = WeightsEntry(name=name, file=str(path), sha256=sha256 or _sha256(path), metadata=metadata)
    _REGISTERED[name] = entry
    from dsrnet.models import _timm

    _timm.refresh_pretrained_cfgs()
    return entry


def unregister_weights(name: str) -> None:
    _REGISTERED.pop(name, None)
    from dsrnet.models import _timm

    _timm.refresh_pretrained_cfgs()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(entry: WeightsEntry) -> Path:
    """The entry's file, after checking it exists and matches its sha256 (checked once per file version)."""
    path = entry.path()
    if not path.is_file():
        if entry.name in SHIPPED and entry.name not in _REGISTERED:
            if os.environ.get(WEIGHTS_DIR_ENV):
                fix = f"put the file there or unset ${WEIGHTS_DIR_ENV}"
            else:
                fix = "reinstall dsrnet (the file is package data)"
            raise DsrnetError(f"shipped weights {entry.name!r} are missing (no {path}); fix: {fix}")
        raise DsrnetError(
            f"weights file {path} for {entry.name!r} is missing; fix: register an existing file"
        )
    if entry.sha256 is None:
        raise DsrnetError(
            f"weights {entry.name!r} have no sha256 in the table; fix: add the file's sha256sum"
        )
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) != entry.sha256:
        actual = _sha256(path)
        if actual != entry.sha256:
            raise DsrnetError(
                f"checksum mismatch for {path} ({entry.name}): sha256 {actual[:16]}..., expected "
                f"{entry.sha256[:16]}...; fix: the file is corrupt or replaced, restore it (reinstall dsrnet)"
            )
        _VERIFIED[key] = actual
    return path


# ------------------------------------------------------------------------------------------------ file format


def save_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    metadata: dict[str, Any],
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write ``model``'s state dict (floating tensors cast to ``dtype``) and ``metadata`` to a safetensors file,
    atomically (a temp file next to ``path``, then ``os.replace``). ``metadata`` needs ``model`` and
    ``num_classes``; every value is stored JSON-encoded. Returns the path."""
    from safetensors.torch import save

    missing = [k for k in REQUIRED_METADATA if metadata.get(k) is None]
    if missing:
        raise DsrnetError(
            f"weights metadata needs {', '.join(missing)}; fix: pass metadata={{'model': ..., ...}}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DsrnetError(
            f"dtype must be a floating torch dtype (torch.float16, torch.float32...), got {dtype!r}"
        )
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and int(model_classes) != int(metadata["num_classes"]):
        raise DsrnetError(
            f"metadata num_classes={metadata['num_classes']} but the model has {model_classes} outputs; fix: pass "
            f"the model's num_classes"
        )
    from dsrnet import __version__

    meta = {"dsrnet_version": __version__, **metadata}
    try:
        encoded = {str(k): json.dumps(v) for k, v in meta.items()}
    except TypeError as err:
        raise DsrnetError(f"weights metadata must be JSON-serialisable ({err})") from None
    tensors = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous().clone()
        for k, v in model.state_dict().items()
    }
    return atomic_write_bytes(Path(path).expanduser(), _sorted_header(save(tensors, metadata=encoded)))


def _sorted_header(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header's keys sorted: safetensors writes the metadata in hash
    order, which changes from process to process, and shipped weights are known by their sha256, so the same
    weights must give the same bytes. The tensor offsets are explicit in the header, so only the text moves; it
    keeps its length (padded with spaces, as the format allows)."""
    size = struct.unpack("<Q", data[:8])[0]
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = header.encode()
    if len(encoded) > size:  # cannot happen for safetensors' own compact JSON; keep the file as written
        return data
    return data[:8] + encoded.ljust(size, b" ") + data[8 + size :]


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a safetensors weights file; a missing, corrupt or foreign file is one
    :class:`DsrnetError`. Metadata values are JSON-decoded (values that are not JSON stay strings)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DsrnetError(
            f"weights file {path} not found; fix: pass a .safetensors file written by save_weights"
        )
    raw = _read_header_metadata(path)
    state_dict = _load_safetensors(path)
    metadata = _decoded(raw)
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise DsrnetError(
            f"{path} has no {', '.join(missing)} in its metadata: not a dsrnet weights file; fix: write it with "
            f"dsrnet.models.weights.save_weights (a plain state dict loads with create_model(name, "
            f"checkpoint_path=...))"
        )
    return state_dict, metadata


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; an unreadable one is one :class:`DsrnetError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise DsrnetError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0][:160]}); fix: re-export it"
        ) from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A weights file's metadata alone (JSON-decoded, as :func:`read_weights` gives it), from its header: no tensor
    is read. A file that is not safetensors is one :class:`DsrnetError`."""
    return _decoded(_read_header_metadata(Path(path).expanduser()))


def _decoded(raw: dict[str, str]) -> dict[str, Any]:
    """safetensors metadata values are strings: JSON-decoded where they are JSON, else kept as they are."""
    metadata = {}
    for k, v in raw.items():
        try:
            metadata[k] = json.loads(v)
        except (TypeError, json.JSONDecodeError):
            metadata[k] = v
    return metadata


def _read_header_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header: an 8-byte little-endian length, then that much JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if size <= 1 or size > min(path.stat().st_size - 8, 100 << 20):
            raise DsrnetError(
                f"{path} is not a safetensors file (bad header); fix: pass a file from save_weights"
            )
        try:
            header = json.loads(f.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DsrnetError(
                f"{path} is not a safetensors file (corrupt header); fix: re-export it"
            ) from None
    if not isinstance(header, dict):
        raise DsrnetError(f"{path} is not a safetensors file (corrupt header); fix: re-export it")
    return dict(header.get("__metadata__") or {})


# ------------------------------------------------------------------------------------------------ loading


def model_pretrained_cfg(model: nn.Module, entry: WeightsEntry) -> dict[str, Any]:
    """``model.pretrained_cfg`` updated with what ``entry``'s weights say (mean/std, classes, input size, tag)."""
    cfg = {**getattr(model, "pretrained_cfg", {}), **entry.pretrained_cfg()}
    cfg.update(architecture=entry.model, tag=entry.tag)
    cfg["num_classes"] = getattr(model, "num_classes", cfg["num_classes"])
    if cfg["num_classes"] != entry.num_classes:
        cfg.pop("label_names", None)  # a fresh head: the weights' class names no longer apply
    if getattr(model, "features_only", False):
        for key in ("num_classes", "classifier", "label_names"):
            cfg.pop(key, None)
    return cfg


def load_pretrained(model: nn.Module, entry: WeightsEntry) -> None:
    """Load ``entry``'s verified weights into ``model``, as timm loads pretrained weights: the classifier is skipped
    when the model's head differs (another ``num_classes``) or is absent (``features_only``), and the first conv
    is adapted to another ``in_chans`` (:func:`adapt_input_conv`)."""
    state_dict, metadata = read_weights(weights_path(entry))
    first = f"{getattr(model, 'pretrained_cfg', {}).get('first_conv', 'conv1')}.weight"
    own = model.state_dict().get(first)
    if own is not None and first in state_dict and own.shape[1] != state_dict[first].shape[1]:
        state_dict[first] = adapt_input_conv(own.shape[1], state_dict[first])
    _load_state(model, state_dict, f"weights {entry.name!r}", trained_as=_trained_as({**metadata, "model": entry.model}))


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """A first conv's RGB ``weight`` (out, 3, kh, kw) for ``in_chans`` inputs, by timm's rule (``in_chans``
    pretrained adaptation): summed over the colours for 1 channel; else repeated over the channels and scaled by
    ``3 / in_chans``, so that a constant image gives the same response."""
    if weight.shape[1] != 3:
        raise DsrnetError(f"cannot adapt a first conv of {weight.shape[1]} input channels (only 3) to {in_chans}")
    dtype, weight = weight.dtype, weight.float()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True).to(dtype)
    repeat = -(-in_chans // 3)
    return (weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (3 / in_chans)).to(dtype)


def _trained_as(meta: dict) -> str | None:
    """"dsrnet50_cifar, num_classes 10, model_kwargs {...}" from a weights file's or checkpoint's record, for a
    mismatch's fix."""
    name = meta.get("model")
    if not isinstance(name, str):
        return None
    parts = [name]
    if meta.get("num_classes") is not None:
        parts.append(f"num_classes {meta['num_classes']}")
    if meta.get("model_kwargs"):
        parts.append(f"model_kwargs {json.dumps(meta['model_kwargs'])}")
    return ", ".join(parts)


def _load_state(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    *,
    new_head: bool = True,
    trained_as: str | None = None,
) -> None:
    """Load ``state_dict`` into ``model``. ``new_head`` (pretrained weights, timm's rule): a classifier of another
    shape is skipped, leaving the model's fresh one; ``False`` (a user's own file, timm's strict
    ``checkpoint_path``): it must fit like every other weight. ``trained_as`` (the file's own record of its model)
    is named in the mismatch error."""
    own = model.state_dict()
    # a frozen BatchNorm (torchvision's, timm's) keeps no step count: BatchNorm's step count is not a weight, in a
    # file or in the model
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.endswith(".num_batches_tracked")}
    own = {k: v for k, v in own.items() if k in state_dict or not k.endswith(".num_batches_tracked")}
    if getattr(model, "features_only", False):
        # A pruned backbone: keep what it still has (the stages up to its last tap), drop the head and the rest.
        state_dict = {k: v for k, v in state_dict.items() if k in own}
    # the head: timm's cfg names it; a torchvision model (the baselines) has none
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    classifier = f"{named}." if named else (_classifier_weight(own) or "fc.weight").removesuffix("weight")
    if new_head:
        head = [k for k in state_dict if k.startswith(classifier)]
        theirs, mine = state_dict.get(f"{classifier}weight"), own.get(f"{classifier}weight")
        if any(k not in own or own[k].shape != state_dict[k].shape for k in head):
            state_dict = {k: v for k, v in state_dict.items() if k not in head}
        own = {k: v for k, v in own.items() if k in state_dict or not k.startswith(classifier)}
    detail = state_mismatch(own, state_dict)
    if new_head and not detail and theirs is not None and mine is not None and 0 != mine.shape[0] == theirs.shape[0] \
            and mine.shape != theirs.shape:
        # The same network and classes, a wider pooled feature (global_pool): a fresh head would still carry the
        # weights' class names. (Checked after the body fits: another network is named as such below.)
        raise DsrnetError(
            f"{source}: the trained classifier takes {theirs.shape[1]} features, this model's head "
            f"{mine.shape[1]} (its global_pool); fix: keep global_pool='avg' to use the trained head, or load "
            f"and then call model.reset_classifier(num_classes, global_pool) for a fresh one"
        )
    if detail:
        hint = "same name, num_classes and model_kwargs" if classifier in detail else "same name and model_kwargs"
        if trained_as:
            hint = f"they record: {trained_as}"
        raise DsrnetError(
            f"{source} do not fit this model ({detail}); fix: build the model the weights were trained as ({hint})"
        )
    model.load_state_dict(state_dict, strict=False)


#: Where a training script's ``torch.save`` keeps the weights, in timm's order of preference (``load_checkpoint``
#: with its default ``use_ema=True``: the weight average first).
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_checkpoint_path(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int | None, str, str | None]:
    """``(state_dict, num_classes, description, trained_as)`` of what ``create_model(..., checkpoint_path=path)``
    loads: a safetensors weights file (``save_weights``), a ``dsrnet train`` checkpoint (file or run folder), or,
    as timm's ``checkpoint_path`` takes them, a plain state dict -- a safetensors file without dsrnet's metadata, or
    ``torch.save``'s zip file of one, bare or under one of :data:`STATE_DICT_KEYS` (DDP's ``module.``
    and ``torch.compile``'s ``_orig_mod.`` prefixes dropped). Plain files are read with ``weights_only=True``; their
    ``num_classes`` is the rows of their last 2-d weight (the classifier's)."""
    path = Path(path).expanduser()
    if path.is_file() and _is_safetensors(path):
        if all(k in _read_header_metadata(path) for k in REQUIRED_METADATA):
            state_dict, metadata = read_weights(path)
            return state_dict, metadata.get("num_classes"), f"weights in {path}", _trained_as(metadata)
        return _plain(_load_safetensors(path), path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():  # read_torch_file's own message would point at a training checkpoint only
        raise DsrnetError(
            f"checkpoint_path {path} not found; fix: pass a weights file (.safetensors: dsrnet export-weights, "
            f"save_weights), a `dsrnet train` checkpoint.pt or run folder, or a state dict file that exists"
        )
    loaded = read_torch_file(path)  # weights_only=True; clear errors for missing/damaged/exported files
    if not is_checkpoint(loaded):
        return _plain(_state_dict_in(loaded, path), path)
    ckpt = as_checkpoint(loaded, path)
    return ckpt["model_state"], ckpt.get("num_classes"), f"weights of checkpoint {ckpt['path']}", _trained_as(ckpt)


def _state_dict_in(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict a ``torch.save`` file holds: itself, or under the first of :data:`STATE_DICT_KEYS`."""
    if isinstance(loaded, dict):
        loaded = next((loaded[k] for k in STATE_DICT_KEYS if isinstance(loaded.get(k), dict)), loaded)
    if isinstance(loaded, dict) and loaded and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        return loaded
    raise DsrnetError(
        f"{path} is neither a dsrnet checkpoint nor a state dict (a mapping of names to tensors, bare or under "
        f"{', '.join(STATE_DICT_KEYS)}); fix: pass a checkpoint.pt written by `dsrnet train`, a .safetensors file, or "
        f"torch.save(model.state_dict(), path)"
    )


def _plain(state_dict: dict[str, torch.Tensor], path: Path) -> tuple:
    """``read_checkpoint_path``'s answer for a plain state dict (``module.`` / ``_orig_mod.`` prefixes dropped, as
    timm does)."""
    # timm's clean_state_dict, key by key: DDP's module. and torch.compile's _orig_mod. prefixes, in either order
    state_dict = {k.removeprefix("_orig_mod.").removeprefix("module.").removeprefix("_orig_mod."): v
                  for k, v in state_dict.items()}  # fmt: skip
    head = _classifier_weight(state_dict)
    num_classes = int(state_dict[head].shape[0]) if head is not None else None
    return state_dict, num_classes, f"state dict in {path}", None


def _classifier_weight(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The classifier's weight in a state dict: its last 2-d ``*.weight`` (DSRNet's and ResNet's ``fc``,
    MobileNetV2's ``classifier.1``); None for a headless one."""
    return next((k for k in reversed(state_dict) if k.endswith(".weight") and state_dict[k].dim() == 2), None)


def load_checkpoint_path(model: nn.Module, source: tuple[dict[str, torch.Tensor], int | None, str, str | None]) -> None:
    """Load :func:`read_checkpoint_path`'s weights into ``model``, strictly (the classifier too), as timm's
    ``checkpoint_path`` does."""
    state_dict, _, description, trained_as = source
    _load_state(model, state_dict, description, new_head=False, trained_as=trained_as)


def load_initial_weights(model: nn.Module, source: str | os.PathLike) -> str:
    """Fine-tuning's start: load a weights tag (``"dsrnet50_cifar.c10"``, checksum verified), a ``.safetensors``
    weights file or a ``dsrnet train`` checkpoint / run folder into ``model``, which must be the same network.
    The classifier is loaded when its shape matches and left as the model initialised it otherwise (another
    ``num_classes``: timm's rule). Non-finite weights are refused. Returns what was loaded, for the log."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text in all_weights():
        entry = get_weights(text)
        load_pretrained(model, entry)
        what = f"weights {text} (sha256 {entry.sha256[:12]}...)" if entry.sha256 else f"weights {text}"
    elif path.is_file() and _is_safetensors(path):
        state_dict, metadata = read_weights(path)
        _load_state(model, state_dict, f"weights in {path}", trained_as=_trained_as(metadata))
        what = f"weights file {path}"
    elif path.exists():
        ckpt = load_checkpoint(path)  # weights_only=True; clear errors for foreign files
        _load_state(model, ckpt["model_state"], f"weights of checkpoint {ckpt['path']}", trained_as=_trained_as(ckpt))
        what = f"checkpoint {ckpt['path']} (epoch {ckpt.get('epoch')})"
    else:
        tags = ", ".join(list_weights()) or "none"
        raise DsrnetError(
            f"init_weights {text!r} is neither a weights tag nor an existing file or run folder; fix: pass one of "
            f"the tags ({tags}), a .safetensors file or a checkpoint written by `dsrnet train`"
        )
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise DsrnetError(
            f"init_weights {text!r} hold non-finite values ({len(bad)} tensors, e.g. {bad[0]}); fix: start from "
            f"weights of a run that trained normally"
        )
    return what


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"  # 8-byte header length, then the JSON header


# ------------------------------------------------------------------------------------ trained models


def model_from_checkpoint(
    checkpoint: str | os.PathLike | dict, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the trained model (eval mode, on ``device``) from a checkpoint path or loaded dict; returns
    ``(model, checkpoint)``. A checkpoint whose fields or weights do not describe a working model of a known
    dataset -- or whose weights are not finite -- raises :class:`DsrnetError` before any memory is allocated."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    from dsrnet.data import DATASETS  # a table of facts; data does not import models

    info = DATASETS.get(ckpt.get("dataset"))
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
    from dsrnet.device import resolve_device
    from dsrnet.models._registry import build_model

    with torch.device("meta"):
        skeleton = build_model(ckpt["model"], ckpt["num_classes"], ckpt["model_kwargs"])
    check_state_fits(skeleton, ckpt)
    model = build_model(ckpt["model"], ckpt["num_classes"], ckpt["model_kwargs"])
    load_model_state(model, ckpt, require_finite=True)
    return model.to(resolve_device(device)).eval(), ckpt


def load_trained(source: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, dict]:
    """A trained model in eval mode and what preprocessing and export need (``name``, ``model``,
    ``num_classes``, ``classes``, ``image_size``, ``mean``, ``std``, ``dataset``, ``seed`` (the training run's,
    where recorded), ``model_kwargs``, and for a
    training checkpoint the loaded ``checkpoint`` itself), from: a weights
    tag (``"dsrnet50_cifar.c10"``), a ``.safetensors`` weights file, or a ``dsrnet train`` checkpoint / run folder.
    Non-finite weights are refused."""
    from dsrnet.device import resolve_device
    from dsrnet.models import create_model

    dev = resolve_device(device)
    if isinstance(source, str) and source in list_weights():
        model = create_model(source, pretrained=True)
        cfg = model.pretrained_cfg
        meta = all_weights()[source].metadata
        info = {
            "name": source,
            "model": meta["model"],
            "dataset": meta.get("dataset"),
            "seed": meta.get("seed"),
            "model_kwargs": dict(meta.get("model_kwargs") or {}),
            "classes": list(cfg.get("label_names") or range(model.num_classes)),
            "image_size": int(cfg["input_size"][-1]),
            "mean": list(cfg["mean"]),
            "std": list(cfg["std"]),
        }
    elif Path(source).suffix == ".safetensors":
        state_dict, meta = read_weights(source)  # read once: the same tensors go into the model
        meta.setdefault("class_names", [])  # none recorded: labelled by index, as an empty list is
        missing = [k for k in ("input_size", "mean", "std") if meta.get(k) is None]
        fix = "fix: export them with `dsrnet export-weights`"
        if missing:
            raise DsrnetError(
                f"weights {source} lack {', '.join(missing)} in their metadata, which preprocessing needs; {fix}"
            )
        # Every field a model or its preprocessing is built from, checked before anything is allocated (a
        # doctored num_classes asked for petabytes), then the shapes against a model on the meta device.
        size = meta["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and size[0] == 3):
            raise DsrnetError(f"weights {source} have a bad input_size ({str(size)[:60]}; expected [3, H, W]); {fix}")
        check_preprocessing(f"weights {source}", fix, num_classes=meta["num_classes"], classes=meta["class_names"],
                            image_size=size[-1], mean=meta["mean"], std=meta["std"],
                            classes_optional=True)  # fmt: skip  (no names: labelled by index)
        kwargs = meta.get("model_kwargs") or {}
        if not isinstance(meta["model"], str) or not isinstance(kwargs, dict):
            raise DsrnetError(f"weights {source} have a bad model or model_kwargs in their metadata; {fix}")
        from dsrnet.models._registry import build_model

        with torch.device("meta"):
            skeleton = build_model(meta["model"], meta["num_classes"], kwargs)
        detail = state_mismatch(skeleton.state_dict(), state_dict)
        if detail is not None:
            raise DsrnetError(f"weights {source} do not fit the model their metadata names ({meta['model']}, "
                              f"num_classes {meta['num_classes']}, model_kwargs {kwargs}: {detail}); {fix}")  # fmt: skip
        model = build_model(meta["model"], meta["num_classes"], kwargs)
        _load_state(model, state_dict, f"weights in {source}")
        info = {
            "name": str(source),
            "model": meta["model"],
            "dataset": meta.get("dataset"),
            "seed": meta.get("seed"),
            "model_kwargs": dict(meta.get("model_kwargs") or {}),
            "classes": list(meta["class_names"]),
            "num_classes": int(meta["num_classes"]),  # (its class names may be empty: labelled by index)
            "image_size": int(meta["input_size"][-1]),
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
        }
    else:
        if not Path(source).expanduser().exists():  # nothing of that name: say every kind of source it could be
            raise DsrnetError(
                f"no weights tag, weights file or run named {source}; fix: pass a weights tag "
                f"({', '.join(list_weights()) or 'none is shipped'}), a .safetensors file from "
                "`dsrnet export-weights`, or a `dsrnet train` checkpoint.pt / run folder"
            )
        model, ckpt = model_from_checkpoint(source)
        info = {k: ckpt[k] for k in ("model", "classes", "image_size", "mean", "std", "dataset")}
        info.update(name=ckpt["path"], model_kwargs=dict(ckpt.get("model_kwargs") or {}), checkpoint=ckpt,
                    seed=(ckpt.get("config") or {}).get("seed"))  # fmt: skip
    nonfinite = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise DsrnetError(f"{source} holds non-finite weights (e.g. {nonfinite[0]}); fix: use weights of a run "
                          "that trained normally")  # fmt: skip
    info.setdefault("num_classes", len(info["classes"]))
    return model.to(dev).eval(), info
