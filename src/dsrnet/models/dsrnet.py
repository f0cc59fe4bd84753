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
* "Set appropriate dilated rate" (Section 3): the paper's rates were chosen for its input sizes; on a 32x32 CIFAR
  image the last stage's map is 4x4 (cifar stem) or 1x1 (paper stem), where a rate-2 or rate-3 tap mostly reads
  padding. ``fit_dilation_to=SIDE`` caps every rate so the dilated kernel spans at most the map it reads for a
  ``SIDE``-pixel input (:func:`fit_rate`); ``None`` (default) keeps the paper's rates at every size.
* Stride (Table 1 writes "1x1, stride"): a strided 1x1 conv reads one pixel in four and throws the rest away before
  the dilated 3x3 can see it, so the stated purpose of the rate-2 downsampling conv ("compensate for the information
  loss caused by down-sampling", Section 3) only holds if the stride sits on the depthwise conv. ``stride_on="dw"``
  (default) does that, as torchvision's ResNet v1.5 does; ``stride_on="1x1"`` is the literal Table 1.
* conv5 in Table 1 reads "1x1, 64" but "Dw = 512" and an output of 2048 channels: the width is 512, a typo in the table.
* Parameters: the paper states 2.19e7 (Fig. 2, Section 5). The network as described has about 12.2 M with a 10-class
  head (23.53 M, exactly ResNet-50, with ``separable=False``); the test suite pins the real counts. The model is not
  tuned to hit 21.9 M.

Beyond the paper, the class follows timm's model contract (as timm's ``ResNet`` does, with or without timm installed):
``forward_features`` / ``forward_head`` / ``forward_intermediates`` / ``prune_intermediate_layers``, a
``feature_info`` with timm's accessors, ``reset_classifier(n, global_pool)``, ``drop_path_rate`` (stochastic depth),
``set_grad_checkpointing`` and ``group_matcher``. This file does not use ``from __future__ import annotations``:
TorchScript must read its annotations as real types (FX tracing followed by scripting fails otherwise).
"""

import contextlib
import numbers
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dsrnet.errors import DsrnetError
from dsrnet.models._features import FeatureInfo, GlobalPool, normalize_indices, take_indices
from dsrnet.models._registry import register_model

STEMS = ("paper", "cifar")
STRIDE_ON = ("dw", "1x1")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _drop_path(rate: float) -> nn.Module:
    """Stochastic depth on the residual branch, per sample (timm's ``DropPath``; torchvision's "row" mode)."""
    if rate <= 0:
        return nn.Identity()
    from torchvision.ops import StochasticDepth  # lazy: torchvision is only needed when training with it

    return StochasticDepth(rate, mode="row")


def make_norm(norm_layer: Callable[[int], nn.Module] | str | None, num_features: int, dd: dict) -> nn.Module:
    """``norm_layer(num_features)`` (``nn.BatchNorm2d`` by default; a name, e.g. ``"frozenbatchnorm2d"``, as timm's
    ``get_norm_layer`` resolves it) on ``dd``'s device and dtype (given to the default, moved to otherwise:
    torchvision's ``FrozenBatchNorm2d`` takes neither)."""
    if norm_layer is None:
        return nn.BatchNorm2d(num_features, **dd)
    if isinstance(norm_layer, str):
        try:
            from timm.layers import get_norm_layer
        except ImportError:
            raise DsrnetError(f"norm_layer={norm_layer!r} is a timm name, and timm is not installed; fix: pip install "
                              f"timm, or pass the class (e.g. torchvision.ops.FrozenBatchNorm2d)") from None  # fmt: skip
        name = norm_layer
        try:
            norm_layer = get_norm_layer(name)
        except (AssertionError, KeyError, ValueError) as err:
            raise DsrnetError(f"norm_layer={name!r} is not a norm timm knows ({err}); fix: a timm norm name such "
                              f"as 'batchnorm2d' or 'frozenbatchnorm2d', or the class itself") from None  # fmt: skip
    layer = norm_layer(num_features)
    moves = {k: v for k, v in dd.items() if v is not None}
    return layer.to(**moves) if moves else layer


class DSRBlock(nn.Module):
    """Fig. 1: 1x1 conv -> depthwise 3x3 (dilated) -> pointwise 1x1, with a residual shortcut.

    ``separable=False`` replaces the depthwise 3x3 by a full 3x3 conv (the ablation of the paper's main change).
    ``drop_path`` is the stochastic-depth rate of the residual branch (0 = off, as in the paper).
    ``project_shortcut``: a 1x1 conv + BN on the shortcut even where stride 1 keeps the shapes (the first block of a
    stage whose stride ``output_stride`` removed keeps the strided block's weights).
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
        drop_path: float = 0.0,
        project_shortcut: bool = False,
        norm_layer: Callable[[int], nn.Module] | str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        out_chs = width * self.expansion
        stride_1x1, stride_dw = (stride, 1) if stride_on == "1x1" else (1, stride)

        self.conv1 = nn.Conv2d(in_chs, width, 1, stride=stride_1x1, bias=False, **dd)
        self.bn1 = make_norm(norm_layer, width, dd)
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
            **dd,
        )
        self.bn2 = make_norm(norm_layer, width, dd)
        self.conv_pw = nn.Conv2d(width, out_chs, 1, bias=False, **dd)
        self.bn3 = make_norm(norm_layer, out_chs, dd)
        self.act = nn.ReLU(inplace=True)
        self.drop_path = _drop_path(drop_path)

        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs or project_shortcut:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False, **dd), make_norm(norm_layer, out_chs, dd)
            )

    def zero_init_last(self) -> None:
        """Start each block as the identity (Goyal et al., 2017), which helps large-batch training."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv_dw(x)))
        x = self.drop_path(self.bn3(self.conv_pw(x)))
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


def fit_rate(rate: int, side: int, kernel_size: int = 3) -> int:
    """The largest rate <= ``rate`` whose dilated kernel spans at most ``side`` pixels, i.e.
    ``(kernel_size - 1) * r + 1 <= side`` (at least 1): every tap of a centre pixel then lands inside the map."""
    return max(1, min(rate, (side - 1) // (kernel_size - 1)))


def _out_side(side: int, stride: int) -> int:
    # Every conv/pool here pads to keep ceil(side / stride) (padding = dilation * (kernel - 1) / 2).
    return -(-side // stride)


def _checkpoint_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a stage block by block under activation checkpointing (recomputed in backward, as timm does), the
    recomputation leaving the BatchNorms' running statistics as the forward left them: recomputed in training
    mode, each would otherwise update them a second time per step (timm's ``checkpoint_seq`` does)."""
    for block in stage:
        if torch.compiler.is_compiling():  # AOTAutograd recomputes from its functional graph, without the updates
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = checkpoint(block, x, use_reentrant=False, context_fn=_StatisticsKept(block))
    return x


class _StatisticsKept:
    """``checkpoint``'s ``context_fn``: nothing around the forward; around each recomputation (one per backward
    over the graph: ``retain_graph``, a gradient penalty's second backward), the block's norm layers' buffers
    (running mean, variance, batch count) restored afterwards to what they were before it."""

    def __init__(self, block: nn.Module):
        self.buffers = [b for m in block.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                        for b in m.buffers()]  # fmt: skip
        self.saved: list[list[torch.Tensor]] = []

    def __call__(self):
        return contextlib.nullcontext(), self  # entered once per recomputation: a class, not a one-shot generator

    def __enter__(self):
        self.saved.append([b.clone() for b in self.buffers])

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, value in zip(self.buffers, self.saved.pop(), strict=True):
                buffer.copy_(value)


class DSRNet(nn.Module):
    """Table 1: stem, four stages of DSR blocks (widths 64, 128, 256, 512; outputs 4x), global pool, linear head.

    Args:
        layers: blocks per stage; ``(3, 4, 6, 3)`` is DSRNet-50, ``(3, 4, 23, 3)`` DSRNet-101.
        num_classes: classifier outputs; 0 gives a headless network (``forward`` returns pooled features).
        in_chans: input channels.
        stem: ``"paper"`` = 7x7 stride-2 conv + 3x3 stride-2 max-pool (ImageNet-style, Table 1);
            ``"cifar"`` = 3x3 stride-1 conv, no max-pool, which keeps 32x32 inputs from collapsing to 1x1.
        stem_dilation: rate of the stem conv (paper: 3, Section 4.2).
        down_dilation: rate of the depthwise conv in each block that downsamples (paper: 2).
        block_dilations: the "dynamic" in-stage rates, cycled over the other blocks of each stage.
        fit_dilation_to: input side (px) to fit the rates to: each conv's rate is capped by :func:`fit_rate` for
            the side of the map it reads at that input size (e.g. 32 for CIFAR); ``None`` = the paper's rates.
        stride_on: ``"dw"`` (default) or ``"1x1"`` (as Table 1 is written); see the module docstring.
        separable: depthwise-separable conv (paper) or a full 3x3 conv (ablation).
        widths: per-stage bottleneck widths; shrink them for tiny test networks.
        stem_width: stem output channels (default: ``widths[0]``).
        global_pool: ``"avg"`` (Table 1), or timm's ``"max"``, ``"avgmax"``, ``"catavgmax"``; ``""`` = no pooling
            (only with ``num_classes=0``: ``forward`` then returns the last feature map).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth; block ``i`` of ``n`` drops its residual branch with probability
            ``drop_path_rate * i / (n - 1)``, linearly increasing as in timm's ResNet (0 = off, as in the paper).
        zero_init_residual: zero the last BN of each block so that blocks start as identities.
        features_only: ``forward`` returns the feature maps of ``out_indices`` (0 = stem, 1..4 = stages) for use as
            a detection/segmentation backbone; the head and the stages after the last index are removed.
        out_indices: which feature maps: a sequence (negative counts from the end) or an int n (the last n).
        output_stride: the last map's reduction for dense prediction (timm's ``output_stride``, torchvision's
            ``replace_stride_with_dilation``): half or a quarter of the natural one (32 with the paper stem, 8 with
            the cifar stem) removes the stride of layer4, or of layer3 and layer4, and multiplies the rates of
            those stages' depthwise convs by what the stride would have been (the first block keeps the previous
            stage's factor, as timm's ResNet); ``None`` = the natural stride.
        norm_layer: the normalisation after each conv, called with the channel count (torchvision's and timm's
            convention; default ``nn.BatchNorm2d``, as the paper), e.g. ``torchvision.ops.FrozenBatchNorm2d`` as
            torchvision's detection builders pass it, or a timm name (``"frozenbatchnorm2d"``); ``dsrnet.fuse``
            folds plain BatchNorm, frozen or not, only.
        device, dtype: where and in which dtype to create the parameters (as ``torch.nn`` layers take them).
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
        fit_dilation_to: int | None = None,
        stride_on: str = "dw",
        separable: bool = True,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_residual: bool = False,
        features_only: bool = False,
        out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
        output_stride: int | None = None,
        norm_layer: Callable[[int], nn.Module] | str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_args(layers, stem, stem_dilation, down_dilation, block_dilations, stride_on, widths)
        for name, value in (("in_chans", in_chans), ("stem_width", 1 if stem_width is None else stem_width)):
            if not _is_int(value) or value < 1:
                raise DsrnetError(f"{name} must be an integer >= 1, got {value!r}")
        if fit_dilation_to is not None and (not _is_int(fit_dilation_to) or fit_dilation_to < 1):
            raise DsrnetError(
                f"fit_dilation_to must be an input side in pixels >= 1 or None, got {fit_dilation_to!r}; fix: a whole "
                f"number such as 32"
            )
        rates_ok = all(isinstance(r, numbers.Real) and not isinstance(r, bool) for r in (drop_rate, drop_path_rate))
        if not rates_ok or not 0.0 <= drop_path_rate < 1.0 or not 0.0 <= drop_rate < 1.0:
            raise DsrnetError(
                f"drop_rate and drop_path_rate must be numbers in [0, 1), got {drop_rate!r}, {drop_path_rate!r}"
            )
        _check_head(num_classes, global_pool)
        dd = {"device": device, "dtype": dtype}
        stem_width = stem_width or widths[0]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.dilation_config = {
            "stem": stem_dilation,
            "down": down_dilation,
            "blocks": tuple(block_dilations),
            "fit_to": fit_dilation_to,
        }
        # Side of the map each conv reads at the fitted input size (a huge side: no cap).
        side = fit_dilation_to or 1 << 30

        # Registration order = execution order (conv1, bn1, act1, maxpool, layer1..4): timm's feature wrappers
        # (FeatureListNet) rebuild the network by running the children in this order.
        if stem == "paper":
            # padding = 3 * dilation keeps the 7x7 conv's output at H/2 for every rate.
            stem_dilation = fit_rate(stem_dilation, side, 7)
            side = _out_side(_out_side(side, 2), 2)
            self.conv1 = nn.Conv2d(
                in_chans,
                stem_width,
                7,
                stride=2,
                padding=3 * stem_dilation,
                dilation=stem_dilation,
                bias=False,
                **dd,
            )
            stem_reduction, pool_stride = 2, 2
        else:
            stem_dilation = fit_rate(stem_dilation, side)
            self.conv1 = nn.Conv2d(
                in_chans,
                stem_width,
                3,
                stride=1,
                padding=stem_dilation,
                dilation=stem_dilation,
                bias=False,
                **dd,
            )
            stem_reduction, pool_stride = 1, 1
        self.bn1 = make_norm(norm_layer, stem_width, dd)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "paper" else nn.Identity()
        feature_info = [{"num_chs": stem_width, "reduction": stem_reduction, "module": "act1"}]

        in_chs, reduction = stem_width, stem_reduction * pool_stride
        natural = reduction * 8
        output_stride = natural if output_stride is None else output_stride
        if output_stride not in (natural, natural // 2, natural // 4) or isinstance(output_stride, bool):
            raise DsrnetError(
                f"output_stride={output_stride!r} is not possible with the {stem} stem: choose {natural} (natural), "
                f"{natural // 2} or {natural // 4}"
            )
        total_blocks, block_idx = sum(int(n) for n in layers), 0
        factor = 1  # the rate multiplier of stages whose stride output_stride removed
        for idx, (num_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stride, first_factor = (1 if idx == 0 else 2), factor
            if reduction * stride > output_stride:
                stride, factor = 1, factor * stride
            reduction *= stride
            rates = block_dilation_schedule(
                num_blocks,
                downsamples=idx > 0,  # a stage's first block keeps the downsampling rate without its stride
                down_dilation=down_dilation,
                block_dilations=block_dilations,
            )
            blocks = []
            for i, rate in enumerate(rates):
                # The depthwise conv reads the stage's input size when it carries the stride, else the output's.
                dw_side = side if (i == 0 and stride_on == "dw") else _out_side(side, stride)
                rate = fit_rate(rate * (first_factor if i == 0 else factor), dw_side)
                blocks.append(
                    DSRBlock(
                        in_chs,
                        width,
                        stride=stride if i == 0 else 1,
                        dilation=rate,
                        stride_on=stride_on,
                        separable=separable,
                        drop_path=drop_path_rate * block_idx / max(total_blocks - 1, 1),
                        project_shortcut=i == 0 and idx > 0,
                        norm_layer=norm_layer,
                        **dd,
                    )
                )
                in_chs = width * DSRBlock.expansion
                block_idx += 1
            side = _out_side(side, stride)
            self.add_module(STAGES[idx], nn.Sequential(*blocks))
            feature_info.append({"num_chs": in_chs, "reduction": reduction, "module": STAGES[idx]})

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = GlobalPool("avg")
        self.fc: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)

        self.features_only = features_only
        self.out_indices = out_indices
        self._init_weights(zero_init_residual)
        # A list of dicts, as timm's ResNet has, with timm's FeatureInfo accessors (channels(), reduction(), ...),
        # the same object whether or not timm is imported (timm's feature wrappers take lists).
        self.feature_info = FeatureInfo(feature_info, out_indices if features_only else len(feature_info))
        self.take_indices = normalize_indices(len(feature_info), out_indices)
        self.max_index = max(self.take_indices)
        if features_only:
            # A backbone: drop the head and every stage after the last tap (no unused parameters under DDP).
            self.prune_intermediate_layers(self.take_indices)

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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise learning-rate decay (timm's optimizer factory): stem, then blocks."""
        return {"stem": r"^conv1|bn1|maxpool", "blocks": r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (less memory, ~1/3 more time)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False):
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New head of ``num_classes`` outputs (0 = none); ``global_pool=None`` keeps the current pooling."""
        _check_head(num_classes, global_pool)  # global_pool None: timm's tests keep an earlier '' with a new head
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        ref = self._stem_weight()  # the new head's device and dtype
        self.global_pool = GlobalPool(global_pool)
        self.num_classes = num_classes
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = (
            nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _stem_weight(self) -> torch.Tensor:
        return self.conv1.weight

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def _stages(self, x: torch.Tensor, take: list[int], last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stem and stages 1..``last``, keeping the outputs whose feature index is in ``take``."""
        feats: list[torch.Tensor] = []
        x = self.forward_stem(x)
        if 0 in take:
            feats.append(x)
        x = self.maxpool(x)
        # Unrolled rather than a loop over getattr(): TorchScript cannot index submodules by a runtime name.
        if last >= 1:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = _checkpoint_blocks(self.layer1, x)
            else:
                x = self.layer1(x)
            if 1 in take:
                feats.append(x)
        if last >= 2:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = _checkpoint_blocks(self.layer2, x)
            else:
                x = self.layer2(x)
            if 2 in take:
                feats.append(x)
        if last >= 3:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = _checkpoint_blocks(self.layer3, x)
            else:
                x = self.layer3(x)
            if 3 in take:
                feats.append(x)
        if last >= 4:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = _checkpoint_blocks(self.layer4, x)
            else:
                x = self.layer4(x)
            if 4 in take:
                feats.append(x)
        return x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, unpooled: ``(N, num_features, H/32, W/32)`` with the paper stem."""
        return self._stages(x, [-1], 4)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: feature maps at ``indices`` (0 = stem output before the max-pool, 1..4 = stages;
        ``None`` = all, an int n = the last n, negative = from the end) and, unless ``intermediates_only``, the
        final features. ``stop_early`` skips the stages after the last index; ``norm`` has no effect (DSRNet has no
        final norm, as ResNet)."""
        if output_fmt != "NCHW":
            raise DsrnetError(f"output_fmt={output_fmt!r} is not supported: DSRNet's features are NCHW")
        take, max_index = take_indices(5, indices)
        x, feats = self._stages(x, take, max_index if stop_early else 4)
        if intermediates_only:
            return feats
        return x, feats

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Remove what ``forward_intermediates(indices=...)`` does not need: the stages after the last index (and
        the max-pool when only the stem is kept) and, with ``prune_head``, the classifier. Returns the absolute
        indices."""
        take = normalize_indices(5, indices)
        max_index = max(take)
        for name in STAGES[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, not removed: forward_features still runs through it
        if max_index == 0:
            self.maxpool = nn.Identity()
        if max_index < 4:
            # The features now end at the last kept tap; a head sized for stage 4 would not fit them.
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 4:
            self.reset_classifier(0, "")
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self._stages(x, self.take_indices, self.max_index)[1]
        return self.forward_head(self.forward_features(x))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_head(num_classes, global_pool: str | None) -> None:
    """A classifier of ``num_classes`` outputs (0 = none) on ``global_pool``'s features (the constructor's and
    ``reset_classifier``'s rule)."""
    if not _is_int(num_classes) or num_classes < 0:
        raise DsrnetError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if global_pool == "" and num_classes > 0:
        raise DsrnetError("global_pool='' (no pooling) needs num_classes=0: a linear head needs pooled features")


def _check_args(layers, stem, stem_dilation, down_dilation, block_dilations, stride_on, widths):
    if stem not in STEMS:
        raise DsrnetError(f"stem={stem!r} is not valid; fix: choose one of {STEMS}")
    if stride_on not in STRIDE_ON:
        raise DsrnetError(f"stride_on={stride_on!r} is not valid; fix: choose one of {STRIDE_ON}")
    for name, value in (("layers", layers), ("widths", widths), ("block_dilations", block_dilations)):
        if not isinstance(value, Sequence) or isinstance(value, str) or not all(_is_int(v) for v in value):
            raise DsrnetError(f"{name} must be a sequence of integers, got {value!r}")
    if len(layers) != 4 or len(widths) != 4:
        raise DsrnetError(
            f"layers and widths need 4 entries (one per stage), got {tuple(layers)} and {tuple(widths)}; fix: give "
            f"4 of each"
        )
    if any(int(n) < 1 for n in layers) or any(int(w) < 1 for w in widths):
        raise DsrnetError(
            f"layers and widths must be positive, got {tuple(layers)} and {tuple(widths)}; fix: use integers >= 1"
        )
    rates = [stem_dilation, down_dilation, *block_dilations]
    if not block_dilations or any(not _is_int(r) or r < 1 for r in rates):
        raise DsrnetError(
            f"dilation rates must be integers >= 1, got stem={stem_dilation!r}, down={down_dilation!r}, "
            f"blocks={tuple(block_dilations)}; fix: use whole numbers (1 = no dilation)"
        )


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: CIFAR-10 training-split channel statistics (``dsrnet.data.channel_stats``), what ``dsrnet train`` normalises
#: CIFAR-10 with; the ``_cifar`` models advertise them so ``timm.data.resolve_data_config`` matches training.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _cfg(stem: str, **kwargs) -> dict:
    """timm-style pretrained_cfg: what a timm data pipeline reads off a model (see ``dsrnet.models.weights`` for
    the tagged configs of trained weights)."""
    size = 224 if stem == "paper" else 32
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, size, size),
        "test_input_size": (3, size, size),
        "fixed_input_size": False,
        "pool_size": (7, 7) if stem == "paper" else (4, 4),
        "crop_pct": 0.875 if stem == "paper" else 1.0,
        "interpolation": "bicubic",  # dsrnet.models.preprocess.INTERPOLATION (predict/eval)
        "mean": IMAGENET_MEAN if stem == "paper" else CIFAR10_MEAN,
        "std": IMAGENET_STD if stem == "paper" else CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "mit",
        "paper_name": "DSRNet: A Novel Feature Extraction Network achieving trade off between accuracy and speed",
        **kwargs,
    }


#: Default (untagged) pretrained_cfg per model name; trained weights add tagged ones (``dsrnet.models.weights``).
DEFAULT_CFGS = {
    "dsrnet50": _cfg("paper"),
    "dsrnet101": _cfg("paper"),
    "dsrnet50_cifar": _cfg("cifar"),
    "dsrnet101_cifar": _cfg("cifar"),
}
DEFAULT_LAYERS = {"dsrnet50": (3, 4, 6, 3), "dsrnet101": (3, 4, 23, 3)}


def model_args(name: str, kwargs: dict) -> dict:
    """Constructor arguments of the named variant: its depth and stem, then ``kwargs`` (a ``layers`` override, e.g.
    ``(1, 1, 1, 1)`` for tiny nets, is allowed; the stem is part of the name)."""
    if kwargs.get("drop_block_rate"):  # timm's ResNet option; None / 0 (off) pass as no-ops
        raise DsrnetError("DSRNet has no DropBlock (drop_block_rate); fix: use drop_path_rate (stochastic depth)")
    kwargs = {k: v for k, v in kwargs.items() if k != "drop_block_rate"}
    if "zero_init_last" in kwargs:  # timm ResNet's name for torchvision's zero_init_residual (default off here)
        value = kwargs.pop("zero_init_last")
        if kwargs.setdefault("zero_init_residual", value) != value:
            raise DsrnetError(f"zero_init_last={value} and zero_init_residual={kwargs['zero_init_residual']} "
                              f"contradict (one switch, timm's and torchvision's names); fix: give one")  # fmt: skip
    if kwargs.get("replace_stride_with_dilation") is not None:  # torchvision's ResNet switch for output_stride
        replace = kwargs.pop("replace_stride_with_dilation")
        factor = {(False, False, False): 1, (False, False, True): 2, (False, True, True): 4}.get(
            tuple(bool(v) for v in replace) if isinstance(replace, (list, tuple)) else None)  # fmt: skip
        natural = 8 if name.endswith("_cifar") else 32
        if factor is None:
            raise DsrnetError(
                f"replace_stride_with_dilation={replace!r}: DSRNet dilates from the deepest stage up, so [False, "
                f"False, True] (output_stride {natural // 2}) or [False, True, True] ({natural // 4}); fix: one of "
                f"those, or output_stride= (timm's name)"
            )
        if kwargs.get("output_stride") not in (natural // factor, None):
            raise DsrnetError(f"replace_stride_with_dilation={replace!r} and output_stride={kwargs['output_stride']} "
                              f"contradict (output_stride {natural // factor}); fix: give one")  # fmt: skip
        kwargs["output_stride"] = natural // factor
    kwargs.pop("replace_stride_with_dilation", None)
    if "stem" in kwargs:
        other = "dsrnet50" if name.endswith("_cifar") else "dsrnet50_cifar"
        raise DsrnetError(
            f"the stem is part of the model name: use names like {other!r} instead of stem={kwargs['stem']!r}"
        )
    base = name.removesuffix("_cifar")
    return {"layers": DEFAULT_LAYERS[base], **kwargs, "stem": "cifar" if name.endswith("_cifar") else "paper"}


def _create(name: str, **kwargs) -> DSRNet:
    model = DSRNet(**model_args(name, kwargs))
    model.pretrained_cfg = {
        **DEFAULT_CFGS[name],
        "architecture": name,
        "tag": None,
        "num_classes": model.num_classes,
    }
    model.default_cfg = model.pretrained_cfg  # timm's old name for it, still read by timm's tests and scripts
    return model


def _build(name: str, weights, num_classes: int | None, kwargs: dict) -> DSRNet:
    """A builder's body: random weights, or ``weights`` (torchvision's ``weights=``, through ``create_model``).
    torchvision's legacy ``pretrained=True`` / ``False`` is taken as its builders take it: the default weights / none,
    with a deprecation warning."""
    if "pretrained" in kwargs:
        pretrained = kwargs.pop("pretrained")
        if weights is not None:
            raise DsrnetError("weights= and the legacy pretrained= both given; fix: drop pretrained=")
        instead = "'DEFAULT'" if pretrained else "None"
        warnings.warn(f"{name}(pretrained=...) is deprecated (as in torchvision's builders); use weights={instead} "
                      f"instead", UserWarning, stacklevel=3)  # fmt: skip
        weights = "DEFAULT" if pretrained else None
    if weights is not None:
        from dsrnet.models._registry import create_model

        return create_model(name, num_classes, weights=weights, **kwargs)
    return _create(name, num_classes=1000 if num_classes is None else num_classes, **kwargs)


# The builders take torchvision's keywords: ``weights`` (a member of the architecture's weights enum in
# ``dsrnet.models``, e.g. ``DSRNet50_CIFAR_Weights.DEFAULT``, or its name; the head then has the weights' classes,
# and another ``num_classes`` is an error, as in torchvision) and ``progress`` (accepted; the weights are package
# files, nothing is downloaded). timm's ``pretrained`` goes through ``dsrnet.create_model`` / ``timm.create_model``.
@register_model
def dsrnet50(*, weights=None, progress: bool = True, num_classes: int | None = None, **kwargs) -> DSRNet:
    """DSRNet-50 (Table 1): stages of 3, 4, 6, 3 blocks, paper stem (7x7/2 conv, rate 3, + max-pool)."""
    return _build("dsrnet50", weights, num_classes, kwargs)


@register_model
def dsrnet101(*, weights=None, progress: bool = True, num_classes: int | None = None, **kwargs) -> DSRNet:
    """DSRNet-101: stages of 3, 4, 23, 3 blocks, paper stem."""
    return _build("dsrnet101", weights, num_classes, kwargs)


@register_model
def dsrnet50_cifar(*, weights=None, progress: bool = True, num_classes: int | None = None, **kwargs) -> DSRNet:
    """DSRNet-50 with the 32x32 stem (3x3/1 conv at rate 3, no max-pool); trained weights:
    ``DSRNet50_CIFAR_Weights`` (CIFAR-10)."""
    return _build("dsrnet50_cifar", weights, num_classes, kwargs)


@register_model
def dsrnet101_cifar(*, weights=None, progress: bool = True, num_classes: int | None = None, **kwargs) -> DSRNet:
    """DSRNet-101 with the 32x32 stem."""
    return _build("dsrnet101_cifar", weights, num_classes, kwargs)
