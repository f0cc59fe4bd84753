"""Turn what a user names -- a registry name, a training run (folder or ``checkpoint.pt``) or a
``.safetensors`` weights file -- into an eval-mode model plus the preprocessing metadata that must travel with
it when exported.

The metadata is what a deployment needs to feed the network correctly: the input size, the per-channel
mean/std the network was trained with, and the class names. A checkpoint carries all of it; a bare registry
name does not (its weights are random), so it gets the model's timm-style ``pretrained_cfg`` values or the
ImageNet statistics and ``trained = false``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsrnet.errors import DsrnetError, check_int

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Key under which the metadata is stored: ONNX ``metadata_props``, TorchScript ``_extra_files``, the
#: ExportedProgram archive's ``extra_files``.
METADATA_KEY = "dsrnet_metadata"


@dataclass
class ModelSource:
    """An eval-mode model and the facts an exported file must carry about its input and output."""

    model: nn.Module
    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    trained: bool = False
    origin: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        """String -> string pairs (the type ONNX metadata props allow); lists are JSON."""
        meta = {
            "model": self.name,
            "num_classes": str(self.num_classes),
            "image_size": str(self.image_size),
            "input_layout": "NCHW float32, RGB scaled to [0, 1] then (x - mean) / std",
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "classes": json.dumps(list(self.classes)),
            "trained": "true" if self.trained else "false",
            "source": self.origin,
        }
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in self.extra.items()})
        return meta


def parse_metadata(meta: dict[str, str], where: str = "the exported model") -> dict[str, Any]:
    """Inverse of :meth:`ModelSource.metadata`: JSON lists and numbers back to Python values, checked (a
    hand-edited file's bad field is one :class:`DsrnetError` naming it, ``where`` the file)."""
    from dsrnet.run.checkpoint import MAX_EXPORT_IMAGE_SIZE, check_preprocessing

    fix = "fix: re-export it with `dsrnet export`"
    if not isinstance(meta, dict):
        raise DsrnetError(f"{where}'s dsrnet metadata is not a mapping; {fix}")
    out: dict[str, Any] = dict(meta)
    missing = [k for k in ("num_classes", "classes", "image_size", "mean", "std") if k not in out]
    if missing:
        raise DsrnetError(f"{where}'s dsrnet metadata has no {', '.join(missing)}; {fix}")
    try:
        for key in ("mean", "std", "classes"):
            out[key] = json.loads(out[key])
        for key in ("num_classes", "image_size", "seed"):
            if key in out:
                out[key] = int(out[key])
    except (TypeError, ValueError):  # (json's JSONDecodeError is a ValueError)
        raise DsrnetError(f"{where}'s dsrnet metadata field {key} is not readable ({str(out[key])[:60]!r}); "
                          f"{fix}") from None  # fmt: skip
    check_preprocessing(where, fix, classes_optional=True, max_image_size=MAX_EXPORT_IMAGE_SIZE,
                        **{k: out[k] for k in ("num_classes", "classes", "image_size", "mean", "std")})  # fmt: skip
    if "trained" in out:
        out["trained"] = out["trained"] == "true"
    return out


def _tag_dataset(model: nn.Module, arch: str, tag: str | None, num_classes: int) -> str:
    """The dataset of the trained weights ``arch.tag`` a module holds (``create_model("dsrnet50_cifar.c10",
    pretrained=True)``); "" when it holds other weights. A tag in ``pretrained_cfg`` names the cfg a model was built
    with, not weights it loaded (timm tags random models too), so the module's weights are compared with the file's."""
    from dsrnet.models.weights import all_weights, read_weights

    entry = all_weights().get(f"{arch}.{tag}") if tag else None
    if entry is None or entry.num_classes != num_classes or not entry.path().is_file():
        return ""
    own = model.state_dict()
    stored, _ = read_weights(entry.path())
    if set(stored) != set(own) or not all(torch.equal(own[k].float().cpu(), v.float()) for k, v in stored.items()):
        return ""
    return str(entry.metadata.get("dataset") or "")


def _default_image_size(name: str, model: nn.Module) -> int:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and "input_size" in cfg:
        return int(cfg["input_size"][-1])
    return 32 if name.endswith("_cifar") else 224


def load_source(
    source: str | os.PathLike | nn.Module,
    *,
    num_classes: int | None = None,
    image_size: int | None = None,
    model_kwargs: dict | None = None,
) -> ModelSource:
    """Resolve ``source`` to a :class:`ModelSource`.

    ``source`` is one of: an ``nn.Module`` (used as is, in eval mode), a registered model name (random
    weights, ``num_classes`` default 10), a weights tag (``"dsrnet50_cifar.c10"``: the shipped trained model), a run
    folder or ``checkpoint.pt`` written by ``dsrnet train``, or a
    ``.safetensors`` file written by ``dsrnet export-weights`` (both read by
    :func:`dsrnet.models.weights.load_trained`). ``image_size`` overrides the size stored with the weights only
    for a registry name or module (a trained model is exported at its training size unless asked otherwise).
    """
    from dsrnet.run.checkpoint import MAX_EXPORT_IMAGE_SIZE, MAX_NUM_CLASSES

    if image_size is not None:
        check_int("image size", image_size, 8)
        if image_size > MAX_EXPORT_IMAGE_SIZE:
            raise DsrnetError(f"image size {image_size} is over {MAX_EXPORT_IMAGE_SIZE} px, which an exported file "
                              f"may record; fix: --image-size {MAX_EXPORT_IMAGE_SIZE} or less")  # fmt: skip
    if num_classes is not None:
        check_int("num_classes", num_classes, 1)
        if num_classes > MAX_NUM_CLASSES:
            raise DsrnetError(f"num_classes {num_classes} is over {MAX_NUM_CLASSES}; fix: --num-classes "
                              f"{MAX_NUM_CLASSES} or less")  # fmt: skip
    if isinstance(source, nn.Module):
        # A timm-style module carries its preprocessing (and, with trained weights, its architecture, tag and class
        # names) in pretrained_cfg: the exported file keeps them, as predict/eval read them from it.
        cfg = getattr(source, "pretrained_cfg", None) or {}
        name = cfg.get("architecture") or type(source).__name__
        size = image_size or _default_image_size(name, source)
        n = num_classes or _infer_num_classes(source)
        names = tuple(str(c) for c in cfg.get("label_names") or ())
        dataset = _tag_dataset(source, name, cfg.get("tag"), n)
        # An eval-mode copy: the caller's module keeps its mode.
        return ModelSource(
            copy.deepcopy(source).eval(), name, n, size, tuple(cfg.get("mean", IMAGENET_MEAN)),
            tuple(cfg.get("std", IMAGENET_STD)),
            classes=names if len(names) == n else (), trained=bool(dataset), origin="module",
            extra={"dataset": dataset} if dataset else {},
        )  # fmt: skip
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.suffix in (".safetensors", ".pt", ".pth") or path.is_dir() or path.exists():
        return _from_trained(path, image_size, num_classes)
    from dsrnet.models import create_model, list_models
    from dsrnet.models.weights import list_weights

    if text in list_weights():  # a weights tag ("dsrnet50_cifar.c10"): the trained model, not a random one
        return _from_trained(text, image_size, num_classes)

    if text not in list_models():
        raise DsrnetError(
            f"{text!r} is neither a file, a run folder, a weights tag nor a registered model; fix: pass a run "
            f"folder, a checkpoint.pt, a .safetensors file, a tag ({', '.join(list_weights()) or 'none'}: trained) "
            f"or a model name ({', '.join(list_models())}: random weights)"
        )
    kwargs = dict(model_kwargs or {})
    model = create_model(text, num_classes=num_classes or 10, **kwargs).eval()
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return ModelSource(
        model,
        text,
        num_classes or 10,
        image_size or _default_image_size(text, model),
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        trained=False,
        origin=f"registry:{text} (random init)",
        extra={"model_kwargs": kwargs} if kwargs else {},
    )


def _infer_num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return head[-1].out_features if head else 0


def _from_trained(path: Path | str, image_size: int | None, num_classes: int | None) -> ModelSource:
    """A weights tag, run folder, ``checkpoint.pt`` or ``.safetensors`` file, through
    :func:`dsrnet.models.weights.load_trained` (which checks the file and refuses non-finite weights)."""
    from dsrnet.models.weights import load_trained

    model, info = load_trained(path)
    kind = "checkpoint" if isinstance(path, Path) and path.suffix != ".safetensors" else "weights"
    if num_classes is not None and num_classes != info["num_classes"]:
        raise DsrnetError(
            f"--num-classes {num_classes} does not match the trained model's {info['num_classes']}; fix: drop it"
        )
    return ModelSource(
        model,
        info["model"],
        int(info["num_classes"]),
        image_size or int(info["image_size"]),
        tuple(float(v) for v in info["mean"]),
        tuple(float(v) for v in info["std"]),
        classes=tuple(info["classes"]),
        trained=True,
        origin=f"{kind}:{info['name']}",
        extra={"dataset": info.get("dataset") or "", "model_kwargs": info.get("model_kwargs") or {},
               **({"seed": str(info["seed"])} if info.get("seed") is not None else {})},  # fmt: skip
    )
