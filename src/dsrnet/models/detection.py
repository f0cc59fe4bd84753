"""DSRNet as a torchvision detection / segmentation backbone: stages 1-4 under a feature pyramid (FPN).

The paper presents DSRNet as a feature extraction network; this is the shape torchvision's detectors take. Like
``torchvision.models.detection.backbone_utils.resnet_fpn_backbone``, the result is a ``BackboneWithFPN`` whose
``forward`` returns an ``OrderedDict`` of pyramid maps (``"0"`` .. ``"3"`` and ``"pool"``), ready for
``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN`` or ``RetinaNet``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from dsrnet.errors import DsrnetError
from dsrnet.models._features import normalize_indices

#: The parts ``trainable_layers`` counts, from the top (torchvision's ``_resnet_fpn_extractor`` order; the stem is
#: its conv and BatchNorm).
TRAINABLE_ORDER = (("layer4.",), ("layer3.",), ("layer2.",), ("layer1.",), ("conv1.", "bn1."))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` (in place) by torchvision's ``FrozenBatchNorm2d`` with the same
    statistics, scale, shift and eps: the normalisation of eval mode, in train mode too, with nothing to learn."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            # the statistics' own device and dtype: a bf16 backbone stays bf16 (its convs take no fp32 input)
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def backbone_with_fpn(
    name: str = "dsrnet50",
    *,
    pretrained: bool = False,
    out_indices: int | Sequence[int] = (1, 2, 3, 4),
    returned_layers: Sequence[int] | None = None,
    out_channels: int = 256,
    extra_blocks: nn.Module | None = None,
    norm_layer: Callable[..., nn.Module] | None = None,
    fpn_norm_layer: Callable[..., nn.Module] | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
    **kwargs,
):
    """A torchvision ``BackboneWithFPN`` on the DSRNet stages ``out_indices`` (0 = stem, 1..4 = stages).

    The keywords mean what they mean in torchvision's ``resnet_fpn_backbone``.

    Args:
        name: a ``dsrnet*`` model name (optionally ``name.tag`` for trained weights).
        pretrained: start from trained weights (the classifier is dropped).
        out_indices: the feature maps under the pyramid, in any order (taken once each, shallow to deep); an int
            ``n`` = the last ``n``. ``returned_layers`` is torchvision's name for it (stages 1..4 numbered alike).
        out_channels: channels of every pyramid level.
        extra_blocks: extra pyramid levels; default ``LastLevelMaxPool`` (the ``"pool"`` map), as torchvision.
        norm_layer: the backbone's normalisation, as torchvision's: ``torchvision.ops.FrozenBatchNorm2d`` (the
            same as ``frozen_bn=True``) or ``nn.BatchNorm2d`` (``frozen_bn=False``).
        fpn_norm_layer: normalisation inside the FPN (``BackboneWithFPN``'s ``norm_layer``; default none).
        trainable_layers: how many of ``layer4, layer3, layer2, layer1, stem`` (counted from the top) keep
            trainable weights; the rest are frozen. Default: 3 with ``pretrained``, else all 5 (torchvision's
            ``trainable_backbone_layers`` rule).
        frozen_bn: every BatchNorm becomes torchvision's ``FrozenBatchNorm2d`` (its statistics and affine fixed),
            as torchvision's detectors do with trained backbones: detection batches of a few images would spoil
            the statistics. Default: ``pretrained``.
        kwargs: go to ``dsrnet.create_model`` (e.g. ``widths``, ``layers``, ablation switches, ``drop_path_rate``;
            ``fused=True``: the backbone in ``dsrnet.fuse``'s inference form, BatchNorm folded into the convs and
            frozen as a whole (the pyramid and the detector's heads on top still train), e.g. on ``pretrained``
            weights).
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops import FrozenBatchNorm2d

    from dsrnet.models._registry import create_model, split_name

    if not split_name(name)[0].startswith("dsrnet"):
        raise DsrnetError(f"backbone_with_fpn takes a dsrnet model name, got {name!r}")
    if returned_layers is not None:  # torchvision's name: stages 1..4 only
        if isinstance(returned_layers, int) or not all(isinstance(i, int) and 1 <= i <= 4 for i in returned_layers):
            raise DsrnetError(f"returned_layers must hold stages in 1..4 (torchvision's rule), got {returned_layers!r}; "
                              f"fix: e.g. [2, 3, 4], or out_indices=[0, ...] for the stem too")  # fmt: skip
        out_indices = returned_layers
    if norm_layer is not None:
        frozen = {FrozenBatchNorm2d: True, nn.BatchNorm2d: False}.get(norm_layer)
        if frozen is None or frozen_bn not in (None, frozen):
            raise DsrnetError(
                f"norm_layer={norm_layer!r} is not the backbone's BatchNorm, frozen or not (or contradicts "
                f"frozen_bn={frozen_bn}); fix: pass torchvision.ops.FrozenBatchNorm2d or nn.BatchNorm2d, or "
                f"fpn_norm_layer= for the FPN's"
            )
        frozen_bn = frozen
    if kwargs.get("features_only") or "num_classes" in kwargs:
        raise DsrnetError(
            "backbone_with_fpn builds its own headless backbone: drop features_only / num_classes"
        )
    asked = trainable_layers
    trainable_layers = (3 if pretrained else len(TRAINABLE_ORDER)) if trainable_layers is None else trainable_layers
    if isinstance(trainable_layers, bool) or trainable_layers not in range(len(TRAINABLE_ORDER) + 1):
        raise DsrnetError(f"trainable_layers must be an integer in 0..5, got {trainable_layers!r}")
    if kwargs.get("fused") and ((asked is not None and asked > 0) or frozen_bn is False):
        raise DsrnetError(
            f"fused=True folds the backbone's BatchNorm into its convs and freezes it all (an inference form), so "
            f"trainable_layers={asked!r} / frozen_bn={frozen_bn!r} cannot apply; fix: drop them (the pyramid and "
            f"the heads still train), or train an unfused backbone and fuse afterwards (dsrnet.fuse(detector))"
        )
    # IntermediateLayerGetter returns maps in the order the stages run: the channel list must follow that order.
    indices = sorted(set(normalize_indices(5, out_indices)))
    # The classification model without a head: torchvision's IntermediateLayerGetter runs its children in order up
    # to the last returned stage, so the names in feature_info are the layers it returns.
    backbone = create_model(name, num_classes=0, pretrained=pretrained, **kwargs)
    if pretrained if frozen_bn is None else frozen_bn:
        freeze_batchnorm(backbone)
    trained = sum(TRAINABLE_ORDER[:trainable_layers], ())
    for param_name, param in backbone.named_parameters():
        if not param_name.startswith(trained):
            param.requires_grad_(False)
    info = backbone.feature_info
    return_layers = {info[i]["module"]: str(k) for k, i in enumerate(indices)}
    with_fpn = BackboneWithFPN(
        backbone,
        return_layers=return_layers,
        in_channels_list=[info[i]["num_chs"] for i in indices],
        out_channels=out_channels,
        extra_blocks=extra_blocks,
        norm_layer=fpn_norm_layer,
    )
    # The backbone was built on kwargs' device and dtype; torchvision builds the pyramid in fp32 on the CPU.
    with_fpn.fpn.to(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
    return with_fpn
