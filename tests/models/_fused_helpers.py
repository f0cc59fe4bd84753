"""The tiny DSRNet the fused-model tests share (no Triton needed: the contract tests run without it)."""

from __future__ import annotations

import torch
from torch import nn

from dsrnet.models.dsrnet import DSRNet

TINY = {"layers": (1, 2, 1, 1), "widths": (4, 8, 8, 16), "num_classes": 10}


def _tiny(stem="cifar", **kwargs) -> DSRNet:
    """A tiny DSRNet whose BatchNorms have non-trivial statistics, so that folding them is actually exercised."""
    torch.manual_seed(0)
    model = DSRNet(stem=stem, **{**TINY, **kwargs})
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
