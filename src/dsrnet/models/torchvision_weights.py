"""torchvision's weights API over dsrnet's trained weights, as torchvision's own models offer theirs::

    from dsrnet.models import DSRNet50_CIFAR_Weights, dsrnet50_cifar

    weights = DSRNet50_CIFAR_Weights.DEFAULT             # or "DEFAULT", "C10", "DSRNet50_CIFAR_Weights.C10"
    model = dsrnet50_cifar(weights=weights).eval()      # 10 classes: the weights' own head
    batch = weights.transforms()(image).unsqueeze(0)     # the preprocessing dsrnet predict / eval use
    label = weights.meta["categories"][model(batch).argmax().item()]

One enum per architecture with weights (members named by the weights' tag, ``DEFAULT`` the one ``create_model(name,
pretrained=True)`` loads). ``get_state_dict()`` reads the package's safetensors file after its sha256 check (no
download, no unpickling); ``meta`` holds what the file's own metadata says (classes, the final-epoch top-1/top-3 it
was trained to, recipe) and its parameter count, counted from the file. Imports torchvision, so
``import dsrnet.models`` leaves this module alone until one of its names is used.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torchvision.models._api import Weights, WeightsEnum

from dsrnet._import_hooks import register_or_warn
from dsrnet.errors import DsrnetError
from dsrnet.models import preprocess
from dsrnet.models import weights as dsrnet_weights

__all__ = ["DSRNet50_CIFAR_Weights", "DSRNetWeights", "NoDSRNetWeights", "WEIGHTS_ENUMS", "resolve"]

#: The paper's datasets by dsrnet's name, as torchvision names a dataset in ``meta["_metrics"]``.
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10"}
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class DSRNetWeights(WeightsEnum):
    """A torchvision ``WeightsEnum`` whose state dict is a dsrnet weights file (``meta["name"]``: its
    ``model.tag``, the name ``dsrnet.create_model`` and ``timm.create_model`` know it by)."""

    def get_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The checksum-verified weights (as stored: fp16). ``progress`` / ``check_hash`` and the other arguments of
        torchvision's download are accepted and have nothing to do: the file is package data."""
        entry = dsrnet_weights.get_weights(self.meta["name"])
        return dsrnet_weights.read_weights(dsrnet_weights.weights_path(entry))[0]


def _file_meta(entry: dsrnet_weights.WeightsEntry) -> dict[str, Any]:
    """What the weights file itself says (metadata, parameter count, size), read from its header; empty when the
    file is missing or unreadable, so that this is the one clear error of ``get_state_dict`` / the builder, not an
    import error."""
    from safetensors import SafetensorError, safe_open

    path = entry.path()
    try:
        metadata = dsrnet_weights.read_metadata(path)
        with safe_open(str(path), "pt") as f:
            names = f.keys()  # a safe_open is not iterable
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in names if not k.endswith(_BUFFERS))
    except (DsrnetError, SafetensorError, OSError):  # get_state_dict names the problem and its fix
        return {}
    return {"metadata": metadata, "num_params": params, "file_size_mb": round(path.stat().st_size / 2**20, 3)}


def _weights(name: str) -> Weights:
    """torchvision's ``Weights`` record for the dsrnet weights entry ``name``."""
    entry = dsrnet_weights.get_weights(name)
    info = _file_meta(entry)
    meta = {**entry.metadata, **info.get("metadata", {})}
    size = int(meta.get("input_size", [3, 32, 32])[-1])
    record: dict[str, Any] = {
        "name": entry.name,
        "categories": [str(c) for c in meta.get("class_names") or [str(i) for i in range(entry.num_classes)]],
        "min_size": (1, 1),
        "recipe": (f"dsrnet train --model {entry.model} --dataset {meta.get('dataset', '?')} --recipe "
                   f"{meta.get('recipe', '?')} ({meta.get('epochs', '?')} epochs, seed {meta.get('seed', '?')})"),
        "_docs": (f"{entry.model} trained from scratch with dsrnet; accuracy is the final epoch's on the "
                  f"{DATASET_NAMES.get(meta.get('dataset'), meta.get('dataset'))} test set, as recorded in the file"),
    }  # fmt: skip
    if "num_params" in info:
        record["num_params"] = info["num_params"]
        record["_file_size"] = info["file_size_mb"]
    if meta.get("top1") is not None:
        metrics = {"acc@1": float(meta["top1"])}
        if meta.get("top3") is not None:
            metrics["acc@3"] = float(meta["top3"])
        record["_metrics"] = {DATASET_NAMES.get(meta.get("dataset"), str(meta.get("dataset"))): metrics}
    mean = tuple(float(v) for v in meta["mean"])
    std = tuple(float(v) for v in meta["std"])
    return Weights(
        url=entry.path().as_uri(),
        transforms=partial(preprocess.transforms, size, mean=mean, std=std),
        meta=record,
    )


class DSRNet50_CIFAR_Weights(DSRNetWeights):  # noqa: N801  (torchvision's naming: ResNet50_Weights)
    """``dsrnet50_cifar`` weights. ``C10``: the fast recipe on full CIFAR-10 (Table 2's dataset), one H200."""

    C10 = _weights("dsrnet50_cifar.c10")
    DEFAULT = C10


class NoDSRNetWeights(DSRNetWeights):
    """No members: the weights enum torchvision's ``get_model_weights`` finds for a DSRNet architecture without
    shipped weights (``dsrnet50``, ``dsrnet101``, ``dsrnet101_cifar``), as it finds one for each of its own."""


#: The weights enum of each architecture that has one.
WEIGHTS_ENUMS: dict[str, type[DSRNetWeights]] = {"dsrnet50_cifar": DSRNet50_CIFAR_Weights}


def resolve(arch: str, weights: DSRNetWeights | str) -> DSRNetWeights:
    """``weights`` (a member, or its name: ``"DEFAULT"``, ``"C10"``, ``"DSRNet50_CIFAR_Weights.C10"``) checked
    against ``arch``'s enum, as torchvision's ``WeightsEnum.verify`` does, with one clear error otherwise."""
    enum = WEIGHTS_ENUMS.get(arch)
    if enum is None:
        have = ", ".join(f"{a} ({e.__name__})" for a, e in WEIGHTS_ENUMS.items())
        raise DsrnetError(f"{arch} has no trained weights (weights exist for {have}); fix: drop weights=, or train "
                          f"one with `dsrnet train --model {arch}` and load it with checkpoint_path=...")  # fmt: skip
    if isinstance(weights, str):
        key = weights.removeprefix(f"{enum.__name__}.")
        if key not in enum.__members__:
            raise DsrnetError(f"{arch} has no weights {weights!r}; fix: use one of "
                              f"{', '.join(f'{enum.__name__}.{m}' for m in enum.__members__)}")  # fmt: skip
        return enum[key]
    if not isinstance(weights, enum):
        raise DsrnetError(f"{weights!r} are not {arch}'s weights; fix: pass {enum.__name__}.DEFAULT (or a name)")
    return weights


# This module imports torchvision, which may be what first triggered dsrnet's registration with torchvision's registry
# (dsrnet._import_hooks) while this module was half-loaded: that attempt waited for this call (a warning, never an
# error, if it fails: these weights work without the registry).
register_or_warn("torchvision")
