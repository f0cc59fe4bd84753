"""DSRNet: a depthwise-separable, dilated residual network (Luo et al.), its baselines, and a harness for its claims."""

from dsrnet.errors import DsrnetError
from dsrnet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["DsrnetError", "backbone_with_fpn", "create_model", "list_models", "__version__"]


def __getattr__(name: str):
    # Lazy: the detection helper imports torchvision, which `import dsrnet` must not pay for.
    if name == "backbone_with_fpn":
        from dsrnet.models.detection import backbone_with_fpn

        return backbone_with_fpn
    raise AttributeError(f"module 'dsrnet' has no attribute {name!r}")
