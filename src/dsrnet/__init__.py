"""DSRNet: a depthwise-separable, dilated residual network (Luo et al.), its baselines, and a harness for its claims.

``import dsrnet`` is light: the model zoo (torch, torchvision) is imported on first use of ``create_model`` /
``list_models``.
"""

from dsrnet._import_hooks import install_import_hooks
from dsrnet.errors import DsrnetError

__version__ = "0.1.0"
__all__ = [
    "DsrnetError",
    "__version__",
    "backbone_with_fpn",
    "create_model",
    "fuse",
    "list_models",
    "use_matmul_pointwise",
    "use_shifted_dwconv",
    "use_triton_dwconv",
]

#: Names served on first use, so that `import dsrnet` imports neither torch's model zoo nor torchvision nor timm.
_LAZY = {
    "create_model": "dsrnet.models",
    "list_models": "dsrnet.models",
    "backbone_with_fpn": "dsrnet.models.detection",
    "fuse": "dsrnet.models.fused",  # Triton is imported only by the fused forms
    "use_matmul_pointwise": "dsrnet.models.matmul_pointwise",
    "use_shifted_dwconv": "dsrnet.models.shifted_dwconv",
    "use_triton_dwconv": "dsrnet.models.fused",
}


#: Subpackages reachable as attributes after a bare ``import dsrnet`` (``dsrnet.models.weights.register_weights``),
#: imported on first use as the names above.
_SUBMODULES = ("bench", "data", "device", "export", "infer", "kernels", "models", "paper", "report", "run", "train")


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # binds itself as an attribute of this package
    raise AttributeError(f"module 'dsrnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


install_import_hooks()
