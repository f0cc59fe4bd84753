"""Test-set metrics of a model over a :class:`~dsrnet.data.DeviceLoader`: loss, top-1/3/5 (the paper reports top-1
and top-3 error, Tables 2-4), and optionally the confusion matrix; summed over DDP ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsrnet.data import DeviceLoader
from dsrnet.device import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DeviceLoader,
    *,
    num_classes: int,
    precision: str = "fp32",
    confusion: bool = False,
) -> dict:
    """Test loss (cross-entropy), top-1/3/5 accuracy and error (%) of ``model`` over ``loader``; with
    ``confusion`` also the (true, predicted) count matrix as a ``(C, C)`` int64 tensor. Under DDP (``loader``
    sharded by rank) the counts of all ranks are summed, so every rank returns the whole test set's numbers.
    """
    was_training = model.training
    model.eval()
    device = loader.device
    ks = (1, 3, 5)
    sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)  # loss, n, correct@k
    conf = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device) if confusion else None
    for x, y in loader:
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += len(y)
        top = logits.topk(min(max(ks), num_classes), dim=1).indices
        hit = top == y[:, None]
        for i, k in enumerate(ks):
            sums[2 + i] += hit[:, :k].any(dim=1).sum()
        if conf is not None:
            conf += torch.bincount(y * num_classes + top[:, 0], minlength=num_classes * num_classes)
    if loader.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
        if conf is not None:
            dist.all_reduce(conf)
    model.train(was_training)
    sums = sums.cpu()
    n = int(sums[1])
    out = {"n": n, "loss": float(sums[0]) / n}
    for i, k in enumerate(ks):
        acc = 100.0 * float(sums[2 + i]) / n
        out[f"top{k}"] = acc
        out[f"top{k}_error"] = 100.0 - acc
    if conf is not None:
        out["confusion"] = conf.view(num_classes, num_classes).cpu()
    return out
