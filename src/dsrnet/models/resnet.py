"""timm entry points for the DSRNet family (imported by ``dsrnet.models._timm`` only when timm is in use).

The module is named ``resnet`` on purpose: timm files each model under the module that registered it, and DSRNet is
a ResNet-family network (ResNet-50's stages, stem and head, timm ResNet's feature API). timm's own tests pick the
models whose feature API they check by module name (``forward_intermediates`` for ``resnet`` among others), and
``timm.list_models(module="resnet")`` lists DSRNet next to timm's ResNets.

The entry points build through ``timm.models.build_model_with_cfg`` exactly as timm's ResNet does, so
``features_only`` / ``feature_cls`` / ``pretrained`` / ``in_chans`` adaptation follow timm's rules; trained weights
come from dsrnet's own table (``dsrnet.models.weights``), checksum-verified before timm loads them.
"""

import warnings

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from dsrnet.errors import DsrnetError
from dsrnet.models import weights
from dsrnet.models.dsrnet import DEFAULT_CFGS, DSRNet, model_args

default_cfgs: dict = {}


def _pretrained_cfgs() -> dict:
    """timm ``default_cfgs``: the untagged cfg of each name without weights, and one ``name.tag`` cfg per weights
    entry (with a ``file`` only when the file is present, so timm lists as pretrained only weights that can load)."""
    # An architecture with trained weights is listed by its tagged names only, as timm lists its own (an untagged
    # cfg beside them made timm.list_pretrained() name the same weights twice).
    with_weights = {entry.model for entry in weights.all_weights().values()}
    cfgs = {name: dict(cfg) for name, cfg in DEFAULT_CFGS.items() if name not in with_weights}
    for name, entry in weights.all_weights().items():
        if entry.model in DEFAULT_CFGS:
            cfg = {**DEFAULT_CFGS[entry.model], **entry.pretrained_cfg()}
            if entry.path().is_file():
                cfg["file"] = str(entry.path())
            cfgs[name] = cfg
    return generate_default_cfgs(cfgs)


def _build(name: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, *,
           fused: bool = False, **kwargs):  # fmt: skip
    """``fused=True``: the inference form of ``dsrnet.fuse``, made after the weights load (as
    ``dsrnet.create_model`` does)."""
    if not isinstance(fused, bool):
        raise DsrnetError(f"fused must be True or False, got {fused!r}; fix: for a mode, call dsrnet.fuse(model, "
                          f"mode=...)")  # fmt: skip
    if not fused:
        return _build_eager(name, pretrained, pretrained_cfg, pretrained_cfg_overlay, **kwargs)
    from dsrnet.models.fused import fuse

    features = {key: kwargs.pop(key) for key in ("features_only", "out_indices", "feature_cls", "feature_cfg")
                if key in kwargs} if kwargs.get("features_only") else {}  # fmt: skip
    model = fuse(_build_eager(name, pretrained, pretrained_cfg, pretrained_cfg_overlay, **kwargs))
    if not features:
        return model
    # timm's feature wrapper (FeatureListNet, or the feature_cls asked for) around the fused form, put on by timm's
    # own builder as it does around the eager model: the fused model's children run in order (stem, max-pool,
    # layer1..4) and carry the feature_info, which is what the wrappers read.
    return build_model_with_cfg(lambda **_: model, name, False, pretrained_cfg=model.pretrained_cfg, **features)


def _build_eager(name: str, pretrained: bool, pretrained_cfg, pretrained_cfg_overlay, **kwargs) -> DSRNet:
    overlay = dict(pretrained_cfg_overlay or {})
    # A user's own weights, named as timm names them (a file, state dict, url, hub id or local-dir source, in the
    # overlay or in a pretrained_cfg given as a dict / PretrainedCfg), load as given; else dsrnet's table's.
    own = (*overlay.items(), *(_cfg_items(pretrained_cfg)))
    if pretrained and not any(value for key, value in own if key in _OWN_WEIGHTS_KEYS):
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
        entry = weights.get_weights(f"{name}.{tag}" if tag else name)
        overlay["file"] = str(
            weights.weights_path(entry)
        )  # unknown tag / not shipped / checksum: DsrnetError
        pretrained_cfg = pretrained_cfg or entry.tag
        kwargs = {**entry.model_kwargs, **kwargs}
    elif pretrained and any(overlay.get(key) for key in ("hf_hub_id", "url", "source")) and not any(
        overlay.get(key) for key in ("file", "state_dict")
    ):  # a url / hub id in the overlay: the registered cfg's shipped file would outrank it in timm's order
        overlay["file"] = None
    elif not pretrained and isinstance(pretrained_cfg, str):
        # "name.tag" without weights: the network those weights were trained as (dsrnet.create_model's rule), so
        # that a checkpoint_path of them, or pretrained=True later, fits the same model
        entry = weights.all_weights().get(f"{name}.{pretrained_cfg}")
        kwargs = {**(entry.model_kwargs if entry is not None else {}), **kwargs}
    kwargs.pop("cache_dir", None)  # no download happens: dsrnet's weights are local files
    return build_model_with_cfg(
        DSRNet,
        name,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        **model_args(name, kwargs),
    )


#: pretrained_cfg keys by which a timm user names weights of their own (timm reads them in this order of priority).
_OWN_WEIGHTS_KEYS = ("state_dict", "file", "hf_hub_id", "url", "source")


def _cfg_items(pretrained_cfg) -> tuple:
    """The fields of a ``pretrained_cfg`` given as a dict or timm ``PretrainedCfg`` (a tag string has none)."""
    if isinstance(pretrained_cfg, dict):
        return tuple(pretrained_cfg.items())
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        return tuple((key, getattr(pretrained_cfg, key, None)) for key in _OWN_WEIGHTS_KEYS)
    return ()


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs) -> DSRNet:
        return _build(name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"DSRNet ``{name}`` (see ``dsrnet.models.dsrnet.{name}``), built the timm way."
    return entrypoint


def register_all() -> None:
    """(Re-)register every DSRNet name and its pretrained cfgs with timm."""
    default_cfgs.clear()
    default_cfgs.update(_pretrained_cfgs())
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Overwriting dsrnet"
        )  # re-registering after a weights change
        for name in DEFAULT_CFGS:
            globals()[name] = register_model(_entrypoint(name))


register_all()
