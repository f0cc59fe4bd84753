"""timm integration: DSRNet's names in timm's registry, without importing timm before its user does.

``import dsrnet`` never imports timm. It registers the ``dsrnet*`` models with timm at once if timm is already
imported, and otherwise installs a one-shot import hook (a ``sys.meta_path`` finder) that registers them right after
``import timm`` completes. So ``import timm; import dsrnet`` and ``import dsrnet; import timm`` both make
``timm.create_model("dsrnet50")`` work. The entry points live in :mod:`dsrnet.models.resnet`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

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


class _RegisterAfterImport:
    """Loader wrapper: runs timm's own loader, then registers DSRNet. Everything else goes to timm's loader."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        try:
            register_with_timm()
        except Exception as err:  # never break `import timm` for its other users
            warnings.warn(f"dsrnet could not register its models with timm: {err!r}", stacklevel=2)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterImport(spec.loader)
        return spec


def install_timm_hook() -> None:
    """Register now if timm is imported, else when it is (see the module docstring)."""
    if "timm" in sys.modules:
        register_with_timm()
    elif not any(isinstance(finder, _TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())


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
