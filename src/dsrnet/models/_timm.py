"""timm integration: DSRNet's names in timm's registry, without importing timm before its user does.

``import dsrnet`` never imports timm (nor torch): :mod:`dsrnet._import_hooks` registers the ``dsrnet*`` models with
timm at once if timm is already imported, and otherwise right after ``import timm`` completes. The entry points
live in :mod:`dsrnet.models.resnet`.
"""

from __future__ import annotations

_registered = False


def register_with_timm() -> bool:
    """Register ``dsrnet*`` with timm now (importing timm); ``False`` when timm is not installed."""
    global _registered
    if _registered:
        return True
    try:
        import timm.models  # noqa: F401
    except ImportError:
        return False
    import dsrnet.models.resnet  # noqa: F401  (registers its entry points on import)

    _registered = True
    return True


def refresh_pretrained_cfgs() -> None:
    """Re-register timm's pretrained cfgs after the weights table changed (no-op until registered with timm)."""
    if _registered:
        from dsrnet.models import resnet

        resnet.register_all()


def create_with_timm_features(name, num_classes, *, pretrained, checkpoint_path, feature_cfg, **kwargs):
    """``dsrnet.create_model(..., features_only=True, feature_cls=...)`` for timm's wrapper classes."""
    from dsrnet.errors import DsrnetError

    if not register_with_timm():
        raise DsrnetError(
            f"feature_cls={feature_cfg.get('feature_cls')!r} uses timm's feature wrappers: pip install timm "
            f"(or use feature_cls='getter', served without timm)"
        )
    import timm

    if not name.split(".")[0].startswith("dsrnet"):
        raise DsrnetError(f"features_only is only available for the dsrnet models, not {name!r}")
    out_indices = feature_cfg.pop("out_indices", None)
    feature_cls = feature_cfg.pop("feature_cls", None)
    model = timm.create_model(
        name,
        pretrained=pretrained,
        num_classes=num_classes,
        features_only=True,
        out_indices=out_indices,
        feature_cls=feature_cls,
        feature_cfg=feature_cfg or None,
        **kwargs,
    )
    if checkpoint_path is not None:
        raise DsrnetError("checkpoint_path with a timm feature wrapper: load the weights first, then wrap")
    return model
