"""DSRNet: a depthwise-separable, dilated residual network (Luo et al.), its baselines, and a harness for its claims."""

from dsrnet.errors import DsrnetError
from dsrnet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["DsrnetError", "create_model", "fuse", "list_models", "use_triton_dwconv", "__version__"]

#: Names served lazily by ``__getattr__`` so that ``import dsrnet`` does not import Triton.
_LAZY = {"fuse": "dsrnet.models.fused", "use_triton_dwconv": "dsrnet.models.fused"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dsrnet' has no attribute {name!r}")

