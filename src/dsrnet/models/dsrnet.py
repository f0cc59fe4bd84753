"""DSRNet (Luo, Kuang, Liu, Ma): a ResNet-50-shaped network with depthwise-separable, dilated bottlenecks.

Read this file next to the paper's Section 3, Fig. 1 and Table 1. Where the paper is ambiguous, the reading chosen here
is stated next to the code and can be switched with a constructor argument:

* Block (Fig. 1): the first 1x1 conv of a ResNet bottleneck is kept; the 3x3 conv and the last 1x1 conv are replaced by
  one depthwise-separable conv, i.e. a depthwise 3x3 (``groups = width``) followed by a pointwise 1x1 to ``4 * width``.
  Every conv is followed by BatchNorm; ReLU follows all but the last one, whose ReLU comes after the residual add.
* "1x1 conv, dilated" (Fig. 1, Table 1): a 1x1 kernel has a single tap, so dilating it changes nothing. The rate is
  applied to the depthwise 3x3, the only conv in the block where a rate has an effect.
* Dilation rates (Section 3, 4.2): 3 in the stem conv, 2 in the block where a stage downsamples, and a "dynamic" rate
  inside the stages. The paper gives no schedule; the default cycles ``(1, 2, 3)`` over a stage's remaining blocks.
  Rates without a common factor are the hybrid-dilated-convolution rule (Wang et al., 2018) that avoids gridding, the
  "information discontinuity" the paper warns of in Section 3.
* Stride (Table 1 writes "1x1, stride"): a strided 1x1 conv reads one pixel in four and throws the rest away before
  the dilated 3x3 can see it, so the stated purpose of the rate-2 downsampling conv ("compensate for the information
  loss caused by down-sampling", Section 3) only holds if the stride sits on the depthwise conv. ``stride_on="dw"``
  (default) does that, as torchvision's ResNet v1.5 does; ``stride_on="1x1"`` is the literal Table 1.
* conv5 in Table 1 reads "1x1, 64" but "Dw = 512" and an output of 2048 channels: the width is 512, a typo in the table.
* Parameters: the paper states 2.19e7 (Fig. 2, Section 5). The network as described has about 12.2 M with a 10-class
  head (23.53 M, exactly ResNet-50, with ``separable=False``); the test suite pins the real counts. The model is not tuned to hit 21.9 M.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import nn

from dsrnet.errors import DsrnetError
from dsrnet.models._registry import register_model

STEMS = ("paper", "cifar")
STRIDE_ON = ("dw", "1x1")


class DSRBlock(nn.Module):
    """Fig. 1: 1x1 conv -> depthwise 3x3 (dilated) -> pointwise 1x1, with a residual shortcut.

    ``separable=False`` replaces the depthwise 3x3 by a full 3x3 conv (the ablation of the paper's main change).
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        width: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        stride_on: str = "dw",
        separable: bool = True,
    ) -> None:
        super().__init__()
        out_chs = width * self.expansion
        stride_1x1, stride_dw = (stride, 1) if stride_on == "1x1" else (1, stride)

        self.conv1 = nn.Conv2d(in_chs, width, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # padding = dilation keeps the spatial size of a 3x3 conv for every rate.
        self.conv_dw = nn.Conv2d(
            width,
            width,
            3,
            stride=stride_dw,
            padding=dilation,
            dilation=dilation,
            groups=width if separable else 1,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(width)
        self.conv_pw = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def zero_init_last(self) -> None:
        """Start each block as the identity (Goyal et al., 2017), which helps large-batch training."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pw(x))
        return self.act(x + shortcut)


def block_dilation_schedule(
    num_blocks: int, *, downsamples: bool, down_dilation: int, block_dilations: Sequence[int]
) -> list[int]:
    """Rates for one stage: ``down_dilation`` on the downsampling block, then ``block_dilations`` cycled."""
    rates = []
    for i in range(num_blocks):
        if i == 0 and downsamples:
            rates.append(down_dilation)
        else:
            k = i - 1 if downsamples else i
            rates.append(block_dilations[k % len(block_dilations)])
    return rates


class DSRNet(nn.Module):
    """Table 1: stem, four stages of DSR blocks (widths 64, 128, 256, 512; outputs 4x), global pool, linear head.

    Args:
        layers: blocks per stage; ``(3, 4, 6, 3)`` is DSRNet-50, ``(3, 4, 23, 3)`` DSRNet-101.
        num_classes: classifier outputs; 0 gives a headless network (``forward`` returns pooled features).
        stem: ``"paper"`` = 7x7 stride-2 conv + 3x3 stride-2 max-pool (ImageNet-style, Table 1);
            ``"cifar"`` = 3x3 stride-1 conv, no max-pool, which keeps 32x32 inputs from collapsing to 1x1.
        stem_dilation: rate of the stem conv (paper: 3, Section 4.2).
        down_dilation: rate of the depthwise conv in each block that downsamples (paper: 2).
        block_dilations: the "dynamic" in-stage rates, cycled over the other blocks of each stage.
        stride_on: ``"dw"`` (default) or ``"1x1"`` (as Table 1 is written); see the module docstring.
        separable: depthwise-separable conv (paper) or a full 3x3 conv (ablation).
        widths: per-stage bottleneck widths; shrink them for tiny test networks.
        zero_init_residual: zero the last BN of each block so that blocks start as identities.
        features_only: ``forward`` returns the feature maps of ``out_indices`` (0 = stem, 1..4 = stages) for use as
            a detection/segmentation backbone; ``feature_info`` describes them.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "paper",
        stem_dilation: int = 3,
        down_dilation: int = 2,
        block_dilations: Sequence[int] = (1, 2, 3),
        stride_on: str = "dw",
        separable: bool = True,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        drop_rate: float = 0.0,
        zero_init_residual: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
    ) -> None:
        super().__init__()
        _check_args(
            layers, num_classes, stem, stem_dilation, down_dilation, block_dilations, stride_on, widths
        )
        stem_width = stem_width or widths[0]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.dilation_config = {
            "stem": stem_dilation,
            "down": down_dilation,
            "blocks": tuple(block_dilations),
        }

        if stem == "paper":
            # padding = 3 * dilation keeps the 7x7 conv's output at H/2 for every rate.
            self.conv1 = nn.Conv2d(
                in_chans,
                stem_width,
                7,
                stride=2,
                padding=3 * stem_dilation,
                dilation=stem_dilation,
                bias=False,
            )
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
            stem_reduction, pool_stride = 2, 2
        else:
            self.conv1 = nn.Conv2d(
                in_chans, stem_width, 3, stride=1, padding=stem_dilation, dilation=stem_dilation, bias=False
            )
            self.maxpool = nn.Identity()
            stem_reduction, pool_stride = 1, 1
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [{"num_chs": stem_width, "reduction": stem_reduction, "module": "act1"}]

        in_chs, reduction = stem_width, stem_reduction * pool_stride
        for idx, (num_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if idx == 0 else 2
            reduction *= stride
            rates = block_dilation_schedule(
                num_blocks,
                downsamples=stride > 1,
                down_dilation=down_dilation,
                block_dilations=block_dilations,
            )
            blocks = []
            for i, rate in enumerate(rates):
                blocks.append(
                    DSRBlock(
                        in_chs,
                        width,
                        stride=stride if i == 0 else 1,
                        dilation=rate,
                        stride_on=stride_on,
                        separable=separable,
                    )
                )
                in_chs = width * DSRBlock.expansion
            self.add_module(f"layer{idx + 1}", nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": f"layer{idx + 1}"})

        self.num_features = in_chs
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        if features_only:
            if any(i < 0 or i > len(layers) for i in self.out_indices):
                raise DsrnetError(f"out_indices {self.out_indices} out of range: valid are 0..{len(layers)}")
            self.feature_info = [self.feature_info[i] for i in self.out_indices]
            self.fc = nn.Identity()  # no head: a backbone for detection/segmentation

        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, DSRBlock):
                    m.zero_init_last()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        if global_pool != "avg":
            raise DsrnetError(f"global_pool={global_pool!r} not supported: DSRNet uses 'avg' (Table 1)")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.forward_stem(x))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at ``out_indices`` (0 = stem output before max-pool, 1..4 = stage outputs)."""
        x = self.forward_stem(x)
        feats = [x]
        x = self.layer1(self.maxpool(x))
        feats.append(x)
        x = self.layer2(x)
        feats.append(x)
        x = self.layer3(x)
        feats.append(x)
        feats.append(self.layer4(x))
        return [feats[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007 (TorchScript)
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))


def _check_args(layers, num_classes, stem, stem_dilation, down_dilation, block_dilations, stride_on, widths):
    if stem not in STEMS:
        raise DsrnetError(f"stem={stem!r} is not valid: choose one of {STEMS}")
    if stride_on not in STRIDE_ON:
        raise DsrnetError(f"stride_on={stride_on!r} is not valid: choose one of {STRIDE_ON}")
    if len(layers) != 4 or len(widths) != 4:
        raise DsrnetError(
            f"layers and widths need 4 entries (one per stage), got {tuple(layers)} and {tuple(widths)}"
        )
    if any(int(n) < 1 for n in layers) or any(int(w) < 1 for w in widths):
        raise DsrnetError(f"layers and widths must be positive, got {tuple(layers)} and {tuple(widths)}")
    rates = [stem_dilation, down_dilation, *block_dilations]
    if not block_dilations or any(int(r) != r or r < 1 for r in rates):
        raise DsrnetError(
            f"dilation rates must be integers >= 1, got stem={stem_dilation}, down={down_dilation}, "
            f"blocks={tuple(block_dilations)}"
        )
    if num_classes < 0:
        raise DsrnetError(f"num_classes must be >= 0, got {num_classes}")


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _cfg(stem: str, **kwargs) -> dict:
    """timm-style pretrained_cfg: what a timm data pipeline reads off a model. No weights are hosted."""
    size = 224 if stem == "paper" else 32
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": (7, 7) if stem == "paper" else (4, 4),
        "crop_pct": 0.875 if stem == "paper" else 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


def _create(default_layers: tuple[int, ...], name_stem: str, **kwargs) -> DSRNet:
    if "stem" in kwargs:
        other = "dsrnet50" if name_stem == "cifar" else "dsrnet50_cifar"
        raise DsrnetError(
            f"the stem is part of the model name: use names like {other!r} instead of stem={kwargs['stem']!r}"
        )
    kwargs.setdefault("layers", default_layers)  # a depth override, e.g. layers=(1, 1, 1, 1) for tiny nets
    model = DSRNet(stem=name_stem, **kwargs)
    model.pretrained_cfg = _cfg(name_stem, num_classes=model.num_classes)
    return model


@register_model
def dsrnet50(*, num_classes: int = 1000, **kwargs) -> DSRNet:
    """DSRNet-50 (Table 1): stages of 3, 4, 6, 3 blocks, paper stem (7x7/2 conv, rate 3, + max-pool)."""
    return _create((3, 4, 6, 3), "paper", num_classes=num_classes, **kwargs)


@register_model
def dsrnet101(*, num_classes: int = 1000, **kwargs) -> DSRNet:
    """DSRNet-101: stages of 3, 4, 23, 3 blocks, paper stem."""
    return _create((3, 4, 23, 3), "paper", num_classes=num_classes, **kwargs)


@register_model
def dsrnet50_cifar(*, num_classes: int = 1000, **kwargs) -> DSRNet:
    """DSRNet-50 with the 32x32 stem (3x3/1 conv at rate 3, no max-pool)."""
    return _create((3, 4, 6, 3), "cifar", num_classes=num_classes, **kwargs)


@register_model
def dsrnet101_cifar(*, num_classes: int = 1000, **kwargs) -> DSRNet:
    """DSRNet-101 with the 32x32 stem."""
    return _create((3, 4, 23, 3), "cifar", num_classes=num_classes, **kwargs)
