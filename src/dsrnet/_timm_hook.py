"""Makes ``timm.create_model("dsrnet50")`` work in either import order without importing timm or torch on
``import dsrnet``: if timm is already imported the models are registered at once, otherwise a one-shot import hook
(a ``sys.meta_path`` finder) registers them right after ``import timm`` completes
(:func:`dsrnet.models._timm.register_with_timm`)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings


def _register() -> None:
    from dsrnet.models._timm import register_with_timm

    register_with_timm()


class _RegisterAfterImport:
    """Loader wrapper: runs timm's own loader, then registers DSRNet. Everything else goes to timm's loader."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _remove_hook()  # timm is imported now: the hook's one job is done
        try:
            _register()
        except Exception as err:  # never break `import timm` for its other users
            warnings.warn(f"dsrnet could not register its models with timm: {err!r}", stacklevel=2)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """Stays in ``sys.meta_path`` until timm is really imported: a mere lookup (``importlib.util.find_spec("timm")``,
    as "is timm available" checks do) must not use it up."""

    def __init__(self) -> None:
        self._looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self._looking:  # _looking: the lookup below comes back here
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterImport(spec.loader)
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TimmImportHook)]


def install_timm_hook() -> None:
    """Register now if timm is imported, else when it is."""
    if "timm" in sys.modules:
        _register()
    elif not any(isinstance(finder, _TimmImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
