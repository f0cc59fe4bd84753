"""Model zoo: DSRNet (``dsrnet.py``) and the paper's torchvision baselines (``baselines.py``) behind one registry.

Importing this package imports torch but neither torchvision (baselines import it when built) nor timm (see
``_timm.py``: the models are registered with timm when timm is imported).
"""

from dsrnet.models import baselines, dsrnet
from dsrnet.models._features import FeatureInfo
from dsrnet.models._registry import build_model, create_model, list_models, register_model, split_name
from dsrnet.models._timm import register_with_timm
from dsrnet.models.dsrnet import DSRBlock, DSRNet, dsrnet50, dsrnet50_cifar, dsrnet101, dsrnet101_cifar

#: The five networks of Tables 2-4, in the paper's column order.
PAPER_COMPARISON = ("dsrnet50", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")

#: The paper's published results (Tables 2-4): top-1/top-3 error in %, "paper_time" = the "fps/ms" row (a time for a
#: batch of 128, in a unit the paper does not make clear), as printed.
#: The paper's Section 4.3 text gives DSRNet's CIFAR-10 time as 0.019 s, while Table 2 prints 0.148: both are kept as
#: printed and the column is labelled as the paper labels it.
PAPER_RESULTS = {
    "cifar10": {
        "dsrnet50": {"top1_error": 9.20, "top3_error": None, "paper_time": 0.148},
        "resnet50": {"top1_error": 11.85, "top3_error": None, "paper_time": 0.719},
        "resnet101": {"top1_error": 11.88, "top3_error": None, "paper_time": 1.406},
        "resnext50_32x4d": {"top1_error": 10.44, "top3_error": None, "paper_time": 0.406},
        "resnext101_32x8d": {"top1_error": 10.91, "top3_error": None, "paper_time": 0.977},
    },
    "cifar100": {
        "dsrnet50": {"top1_error": 33.50, "top3_error": 17.80, "paper_time": 0.180},
        "resnet50": {"top1_error": 38.48, "top3_error": 22.02, "paper_time": 0.719},
        "resnet101": {"top1_error": 39.43, "top3_error": 22.47, "paper_time": 1.445},
        "resnext50_32x4d": {"top1_error": 36.53, "top3_error": 20.09, "paper_time": 0.430},
        "resnext101_32x8d": {"top1_error": 35.20, "top3_error": 19.06, "paper_time": 0.977},
    },
    "stl10": {
        "dsrnet50": {"top1_error": 25.26, "top3_error": 7.25, "paper_time": 0.430},
        "resnet50": {"top1_error": 27.28, "top3_error": 8.11, "paper_time": 0.633},
        "resnet101": {"top1_error": 28.11, "top3_error": 8.59, "paper_time": 1.953},
        "resnext50_32x4d": {"top1_error": 27.96, "top3_error": 8.65, "paper_time": 1.031},
        "resnext101_32x8d": {"top1_error": 26.90, "top3_error": 8.37, "paper_time": 2.969},
    },
}
#: Fig. 2 / Section 5: DSRNet's stated parameter count.
PAPER_DSRNET_PARAMS = 2.19e7

#: What computes a model's depthwise 3x3 convs (training and ``dsrnet bench``; same parameters and numbers within
#: float tolerance): PyTorch's own conv (cuDNN on a GPU), nine shifted multiply-adds that ``torch.compile`` fuses
#: with their neighbours (:mod:`dsrnet.models.shifted_dwconv`; for compiled runs: eager it is slower), the NHWC
#: Triton kernels of :mod:`dsrnet.kernels` (:func:`dsrnet.use_triton_dwconv`), or those kernels with each DSR
#: block's preceding BatchNorm and ReLU inside them (``use_triton_dwconv(model, bn_relu=True)``).
DWCONVS = ("torch", "shifts", "triton", "triton_bn_relu")
#: What computes a training model's plain 1x1 convs: ``nn.Conv2d`` itself, or a matmul over the channels-last
#: pixels (:mod:`dsrnet.models.matmul_pointwise`: ``torch.compile`` then sees the backward's GEMMs too).
POINTWISE = ("conv", "matmul")
#: :func:`dsrnet.fuse`'s modes (:mod:`dsrnet.models.fused`, which imports Triton: defined here so that a CLI can
#: offer them without importing it), and the one it uses unless told otherwise: the fastest measured on a GPU.
FUSE_MODES = ("split", "fused", "auto", "block", "chain")
DEFAULT_FUSE_MODE = "split"


def apply_dwconv(model, dwconv: str) -> int:
    """Put ``model`` in place into the training form ``dwconv`` names (:data:`DWCONVS`): ``"torch"`` leaves it as it
    is, ``"shifts"`` is :func:`dsrnet.models.shifted_dwconv.use_shifted_dwconv`, ``"triton"`` / ``"triton_bn_relu"``
    are :func:`dsrnet.use_triton_dwconv` without / with ``bn_relu`` (Triton is imported for those only). Returns how
    many depthwise convs it swapped (0: the model has none)."""
    if dwconv == "torch":
        return 0
    if dwconv == "shifts":
        from dsrnet.models.shifted_dwconv import use_shifted_dwconv

        return use_shifted_dwconv(model)
    from dsrnet.models.fused import TritonDepthwiseConv2d, use_triton_dwconv

    use_triton_dwconv(model, bn_relu=dwconv == "triton_bn_relu")
    return sum(isinstance(m, TritonDepthwiseConv2d) for m in model.modules())


def apply_pointwise(model, pointwise: str) -> int:
    """Put ``model``'s plain 1x1 convs in place into the form ``pointwise`` names (:data:`POINTWISE`): ``"conv"``
    leaves them, ``"matmul"`` is :func:`dsrnet.models.matmul_pointwise.use_matmul_pointwise`. Returns how many
    run as matmuls (0 for ``"conv"``)."""
    if pointwise == "conv":
        return 0
    from dsrnet.models.matmul_pointwise import use_matmul_pointwise

    return use_matmul_pointwise(model)


def stem_variant(name: str, stem: str) -> str:
    """``("dsrnet50", "cifar") -> "dsrnet50_cifar"``; ``("dsrnet50_cifar", "paper") -> "dsrnet50"``."""
    base = name.removesuffix("_cifar")
    return f"{base}_cifar" if stem == "cifar" else base



__all__ = [
    "DEFAULT_FUSE_MODE",
    "DWCONVS",
    "FUSE_MODES",
    "DSRBlock",
    "DSRNet",
    "DSRNet50_CIFAR_Weights",
    "FeatureInfo",
    "PAPER_COMPARISON",
    "PAPER_DSRNET_PARAMS",
    "PAPER_RESULTS",
    "apply_dwconv",
    "apply_pointwise",
    "baselines",
    "build_model",
    "create_model",
    "dsrnet",
    "dsrnet50",
    "dsrnet50_cifar",
    "dsrnet101",
    "dsrnet101_cifar",
    "list_models",
    "register_model",
    "register_with_timm",
    "split_name",
    "stem_variant",
]

#: Served by :mod:`dsrnet.models.torchvision_weights` on first use (``dsrnet50_cifar(weights=DSRNet50_CIFAR_Weights.
#: DEFAULT)``): that module imports torchvision, which ``import dsrnet.models`` does not.
TORCHVISION_WEIGHTS = ("DSRNet50_CIFAR_Weights", "DSRNetWeights")


#: Modules of this package not imported by ``import dsrnet.models``, reachable as its attributes on first use
#: (``dsrnet.models.weights.register_weights``, as the docs write it).
SUBMODULES = ("detection", "fused", "matmul_pointwise", "preprocess", "shifted_dwconv", "torchvision_weights",
              "weights")


def __getattr__(name: str):
    import importlib

    if name in TORCHVISION_WEIGHTS:
        from dsrnet.models import torchvision_weights

        return getattr(torchvision_weights, name)
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'dsrnet.models' has no attribute {name!r}")
