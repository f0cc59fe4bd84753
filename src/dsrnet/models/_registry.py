"""Name -> builder table behind ``dsrnet.create_model`` / ``dsrnet.list_models`` (timm's pattern, no timm needed).

``create_model`` takes timm's keywords (``pretrained``, ``checkpoint_path``, ``features_only``, ``out_indices``,
``feature_cls``, ``feature_cfg``, ``global_pool``, ``drop_path_rate``, ...) and timm's ``name.tag`` names for trained
weights, with or without timm installed.
"""

from __future__ import annotations

import fnmatch
import numbers
import os
from collections.abc import Callable

from torch import nn

from dsrnet.errors import DsrnetError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
#: timm.create_model's flags for its layer config and downloads, taken and ignored as timm's own ResNet ignores them
#: (no layer here changes with them; weights are local files).
TIMM_LAYER_FLAGS = ("scriptable", "exportable", "no_jit", "cache_dir")
#: feature_cls values DSRNet serves itself (its own forward_intermediates); others go through timm's wrappers.
NATIVE_FEATURE_CLS = (None, "list", "getter")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _BUILDERS if fnmatch.fnmatch(name, pattern))


def split_name(name: str) -> tuple[str, str | None]:
    """``"dsrnet50_cifar.c10" -> ("dsrnet50_cifar", "c10")``; no tag -> ``None`` (timm's naming)."""
    arch, _, tag = name.partition(".")
    return arch, tag or None


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model. ``name`` may carry a weights tag, ``"dsrnet50_cifar.c10"``.

    Args:
        num_classes: classifier outputs (0 = none); default: the classes of ``checkpoint_path``'s weights, else of
            the tag's (with a tag or ``pretrained``), else of the name's default weights even when not loaded, as
            ``timm.create_model`` takes them from the default ``pretrained_cfg`` (10 for ``dsrnet50_cifar``), else
            1000. A count other than the pretrained weights' gets a
            fresh head (timm's rule).
        pretrained: load the shipped weights of the tag (or of the name's default tag); their checksum is verified.
        weights: torchvision's way to the same weights: a member of the architecture's weights enum
            (``dsrnet.models.DSRNet50_CIFAR_Weights.DEFAULT``) or its name (``"DEFAULT"``); the model gets their
            classes, and another ``num_classes`` is an error (torchvision's rule; ``pretrained`` gives a fresh head).
        checkpoint_path: then load a safetensors weights file (``save_weights``), a ``dsrnet train`` checkpoint or a
            plain state dict (safetensors, or ``torch.save``'s file of one, bare or under ``state_dict`` / ``model``
            / their EMA keys; read with ``weights_only=True``), strictly (timm's rule): ``num_classes`` defaults to
            the file's (a plain state dict's: its classifier's rows), and every weight must fit. ``""``: none.
        fused: return the inference form of :func:`dsrnet.fuse` (BatchNorm folded, NHWC, Triton kernels on CUDA;
            plain PyTorch ops with the same numerics elsewhere). DSRNet models only; with ``features_only`` the
            backbone is fused (in timm's feature class where one is asked for).
        kwargs: go to the model's constructor (e.g. DSRNet's ablation switches, ``drop_path_rate``,
            ``global_pool``). ``features_only=True`` returns a backbone whose ``forward`` gives the feature maps of
            ``out_indices``; ``feature_cls`` ``"list"`` / ``"getter"`` (default) are served by DSRNet itself,
            ``"dict"`` / ``"hook"`` / ``"fx"`` by timm's wrappers (timm needed).
    """
    from dsrnet.models import weights

    # timm's rule: a keyword given as None means "the default" (timm's train script passes drop_path_rate=None)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if checkpoint_path is not None and os.fspath(checkpoint_path) == "":
        checkpoint_path = None  # timm's rule too: its train script passes --initial-checkpoint '' by default
    for key in TIMM_LAYER_FLAGS:  # timm's factory flags with nothing to do here (DSRNet's layers script and export)
        kwargs.pop(key, None)
    cfg_tag = kwargs.pop("pretrained_cfg", None)
    if isinstance(cfg_tag, str):  # timm's way to name a tag: pretrained_cfg="c10"
        if split_name(name)[1] not in (None, cfg_tag):
            raise DsrnetError(f"{name!r} and pretrained_cfg={cfg_tag!r} name two tags; fix: give one of them")
        name = f"{split_name(name)[0]}.{cfg_tag}"
    elif cfg_tag is not None or "pretrained_cfg_overlay" in kwargs:
        raise DsrnetError(
            "pretrained_cfg as a dict / PretrainedCfg, and pretrained_cfg_overlay, are timm's ways to name weights "
            "to download; fix: pass them to timm.create_model (import dsrnet registers the models there), or give "
            "a file as checkpoint_path="
        )
    fused = kwargs.pop("fused", False)
    if not isinstance(fused, bool):
        raise DsrnetError(f"fused must be True or False, got {fused!r}; fix: for a mode, call dsrnet.fuse(model, mode=...)")
    arch, tag = split_name(name)
    if arch not in _BUILDERS:
        raise DsrnetError(f"unknown model {arch!r}; fix: choose one of {', '.join(list_models())}")
    if num_classes is not None and (
        not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 0
    ):
        raise DsrnetError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    if num_classes is not None:
        num_classes = int(num_classes)  # e.g. numpy's integers, as timm takes them
    chosen = kwargs.pop("weights", None)
    if chosen is not None:  # torchvision's weights= (a builder's, torch.hub's): those weights with their own head
        from dsrnet.models.torchvision_weights import resolve

        if tag or pretrained:
            raise DsrnetError("weights= (torchvision's way) and a tag or pretrained=True (timm's) both name weights; "
                              "fix: give one of them")  # fmt: skip
        chosen = resolve(arch, chosen)
        classes = len(chosen.meta["categories"])
        if num_classes not in (None, classes):
            raise DsrnetError(
                f"num_classes={num_classes} but {chosen!r} has {classes} classes; fix: drop num_classes (torchvision's "
                f"rule), or create_model({chosen.meta['name']!r}, pretrained=True, num_classes={num_classes}) for "
                f"those weights under a fresh head (timm's)"
            )
        name, pretrained = chosen.meta["name"], True
        arch, tag = split_name(name)
    entry = weights.get_weights(name) if (tag or pretrained) else None
    if pretrained and entry is not None:
        weights.weights_path(entry)  # fail early (not shipped / corrupt) before building anything
    own = weights.read_checkpoint_path(checkpoint_path) if checkpoint_path is not None else None
    if num_classes is None:  # the classes of the weights the model gets last; else of its default weights (timm's)
        default = entry if entry is not None else weights.default_weights(arch)
        num_classes = next(n for n in (own and own[1], default and default.num_classes, 1000) if n is not None)

    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    features_only = kwargs.pop("features_only", False) or feature_cfg.pop("features_only", False)
    if features_only:
        feature_cfg.update({k: kwargs.pop(k) for k in ("out_indices", "feature_cls") if k in kwargs})
        if feature_cfg.get("feature_cls") not in NATIVE_FEATURE_CLS or set(feature_cfg) - {
            "out_indices",
            "feature_cls",
        }:
            from dsrnet.models import _timm

            return _timm.create_with_timm_features(
                name,
                num_classes,
                pretrained=pretrained,
                checkpoint_path=checkpoint_path,
                feature_cfg=feature_cfg,
                **({"fused": True} if fused else {}),  # timm's builder wraps the fused form (models/resnet.py)
                **kwargs,
            )
        kwargs["features_only"] = True
        if "out_indices" in feature_cfg:
            kwargs["out_indices"] = feature_cfg["out_indices"]
    elif feature_cfg or "feature_cls" in kwargs:
        raise DsrnetError("feature_cls / feature_cfg only apply with features_only=True")

    model_kwargs = {**(entry.model_kwargs if entry is not None else {}), **kwargs}
    try:
        model = _BUILDERS[arch](num_classes=num_classes, **model_kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err) or "multiple values" in str(err):
            raise DsrnetError(
                f"model {arch!r} does not take that argument ({err}); fix: drop it or correct its name (the "
                f"builder's keyword arguments: help(dsrnet.models.{'DSRNet' if arch.startswith('dsrnet') else arch}))"
            ) from None
        raise
    if entry is not None:
        model.pretrained_cfg = weights.model_pretrained_cfg(model, entry)
        model.default_cfg = model.pretrained_cfg
    if pretrained:
        weights.load_pretrained(model, entry)
    folded = own is not None and "stem.w_packed" in own[0]  # a fused model's own state dict: loads after fusing
    if own is not None and not (fused and folded):
        weights.load_checkpoint_path(model, own)
    if fused:  # after the weights: BatchNorm is folded into the convs (an inference form)
        from dsrnet.models.fused import fuse

        model = fuse(model)
        if folded:
            weights.load_checkpoint_path(model, own)
    return model


def build_model(name: str, num_classes: int, model_kwargs: dict | None = None) -> nn.Module:
    """:func:`create_model` for a config or checkpoint: any argument the builder rejects is a one-line
    :class:`DsrnetError` naming ``model_kwargs``."""
    kwargs = dict(model_kwargs or {})
    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise DsrnetError(
            f"model {name!r} rejects model_kwargs {kwargs} ({err}); fix: correct --model-kwargs"
        ) from None
