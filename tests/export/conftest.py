"""Tiny DSRNets for the export tests: the real architecture (every block type, both stems) at widths 8..64."""

from __future__ import annotations

import pytest
import torch

import dsrnet
from dsrnet.run.checkpoint import save_checkpoint
from tests.conftest import checkpoint_payload

TINY = {"widths": (8, 16, 32, 64), "layers": (1, 1, 1, 1)}


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fresh BatchNorms fold to the identity; random statistics make folding change the weights for real."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def tiny_model(name: str = "dsrnet50_cifar", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(dsrnet.create_model(name, num_classes=10, **TINY), seed)


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A `dsrnet train`-style checkpoint of a tiny model with non-default metadata."""
    model = tiny_model()
    path = tmp_path / "run" / "checkpoint.pt"
    kwargs = {k: list(v) for k, v in TINY.items()}
    classes = [f"class{i}" for i in range(10)]
    payload = checkpoint_payload(
        model, kwargs, epoch=3, classes=classes, mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]
    )
    save_checkpoint(path, payload)
    return path, model
