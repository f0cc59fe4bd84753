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
    """timm ``default_cfgs``: each name's untagged cfg, plus one ``name.tag`` cfg per weights entry (with a
    ``file`` only when the file is present, so timm lists as pretrained only weights that can load)."""
    cfgs = {name: dict(cfg) for name, cfg in DEFAULT_CFGS.items()}
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
    # A user's own weights through timm's overlay (file / state_dict) load as given; else dsrnet's table's.
    if pretrained and not (overlay.get("file") or overlay.get("state_dict")):
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) else None
        entry = weights.get_weights(f"{name}.{tag}" if tag else name)
        overlay["file"] = str(
            weights.weights_path(entry)
        )  # unknown tag / not shipped / checksum: DsrnetError
        pretrained_cfg = pretrained_cfg or entry.tag
        kwargs = {**entry.model_kwargs, **kwargs}
    kwargs.pop("cache_dir", None)  # no download happens: dsrnet's weights are local files
    return build_model_with_cfg(
        DSRNet,
        name,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        **model_args(name, kwargs),
    )


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
