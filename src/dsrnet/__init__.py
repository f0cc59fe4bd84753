"""DSRNet: a depthwise-separable, dilated residual network (Luo et al.), its baselines, and a harness for its claims."""

from dsrnet.errors import DsrnetError
from dsrnet.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["DsrnetError", "create_model", "list_models", "__version__"]
