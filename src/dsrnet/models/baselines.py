"""The paper's baselines (Tables 2-4: ResNet50/101, ResNeXt50/101) plus MobileNetV2, as torchvision builds them.

Only the stem is touched, and only for the ``*_cifar`` names: a 3x3 stride-1 first conv and no max-pool, the usual
adaptation for 32x32 inputs (He et al., 2016, Section 4.2 use a similar thin stem for CIFAR). The paper does not say
which stem it used; ``dsrnet.models`` offers both stems for every model so the comparison is like for like.
MobileNetV2's cifar stem sets its first conv's stride to 1 and keeps every later stride. ``num_classes=0`` gives the
pooled features (timm's rule), as for DSRNet.
"""

from __future__ import annotations

from torch import nn

from dsrnet.models._registry import register_model


def _cifar_stem(model: nn.Module) -> nn.Module:
    import torchvision

    if isinstance(model, torchvision.models.ResNet):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif isinstance(model, torchvision.models.MobileNetV2):
        model.features[0][0].stride = (1, 1)
    else:  # pragma: no cover - only reached if a new baseline is added without a stem rule
        raise TypeError(f"no cifar stem rule for {type(model).__name__}")
    return model


def _build(tv_name: str, stem: str, num_classes: int, **kwargs) -> nn.Module:
    import torchvision  # lazy: `import dsrnet` stays free of torchvision until a baseline is built

    model = getattr(torchvision.models, tv_name)(weights=None, num_classes=max(num_classes, 1), **kwargs)
    if num_classes == 0:  # timm's "no classifier": the pooled features (torchvision would build Linear(2048, 0))
        if isinstance(model, torchvision.models.ResNet):
            model.fc = nn.Identity()
        else:
            model.classifier[-1] = nn.Identity()
    return _cifar_stem(model) if stem == "cifar" else model


def _pair(tv_name: str) -> None:
    """Register ``tv_name`` (paper stem = torchvision as is) and ``tv_name_cifar``."""
    for stem, name in (("paper", tv_name), ("cifar", f"{tv_name}_cifar")):

        def builder(*, num_classes: int = 1000, _stem: str = stem, **kwargs) -> nn.Module:
            return _build(tv_name, _stem, num_classes, **kwargs)

        builder.__name__ = builder.__qualname__ = name
        builder.__doc__ = f"torchvision ``{tv_name}`` ({stem} stem), random init."
        register_model(builder)


BASELINES = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d", "mobilenet_v2")
for _name in BASELINES:
    _pair(_name)
