"""Makes ``timm.create_model("dsrnet50")`` and ``torchvision.models.get_model("dsrnet50_cifar")`` work in either
import order without importing timm, torchvision or torch on ``import dsrnet``: a library already imported gets the
models at once, otherwise a one-shot import hook (a ``sys.meta_path`` finder per library) registers them right after
its import completes (:func:`dsrnet.models._timm.register_with_timm`,
:func:`dsrnet.models._torchvision.register_with_torchvision`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Module whose import completing registers dsrnet's models -> ``(library, "module:function")`` doing it.
REGISTRARS = {
    "timm": ("timm", "dsrnet.models._timm:register_with_timm"),
    # the package, not torchvision.models: registering once torchvision/__init__ has finished, not part-way through
    "torchvision": ("torchvision", "dsrnet.models._torchvision:register_with_torchvision"),
}


def register_or_warn(fullname: str) -> None:
    """Register with the library, or warn: never break its import (nor dsrnet's) for its other users."""
    module, _, function = REGISTRARS[fullname][1].partition(":")
    try:
        getattr(importlib.import_module(module), function)()
    except Exception as err:
        warnings.warn(f"dsrnet could not register its models with {REGISTRARS[fullname][0]}: {err!r}", stacklevel=3)


class _RegisterAfterImport:
    """Loader wrapper: runs the library's own loader, then registers DSRNet. Everything else goes to that loader."""

    def __init__(self, loader, fullname: str) -> None:
        self._loader, self._fullname = loader, fullname

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _remove_hook(self._fullname)  # the library is imported now: the hook's one job is done
        register_or_warn(self._fullname)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Stays in ``sys.meta_path`` until its module is really imported: a mere lookup
    (``importlib.util.find_spec("timm")``, as "is timm available" checks do) must not use it up."""

    def __init__(self, fullname: str) -> None:
        self.fullname = fullname
        self._looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.fullname or self._looking:  # _looking: the lookup below comes back here
            return None
        self._looking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterImport(spec.loader, fullname)
        return spec


def _remove_hook(fullname: str) -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _ImportHook) and f.fullname == fullname)]


def install_import_hooks() -> None:
    """For each library: register now if it is imported, else when it is."""
    for fullname in REGISTRARS:
        if fullname in sys.modules:
            register_or_warn(fullname)
        elif not any(isinstance(f, _ImportHook) and f.fullname == fullname for f in sys.meta_path):
            sys.meta_path.insert(0, _ImportHook(fullname))
