"""``dsrnet.train.evaluate``: loss, top-1/3/5 and the confusion matrix against counts done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dsrnet.data import DeviceLoader
from dsrnet.train.evaluate import evaluate


class FixedLogits(nn.Module):
    """Returns the stored logits row of each image; the image's first pixel holds its row index."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.round(x[:, 0, 0, 0]).long()
        return self.logits[rows]


def _loader(labels, batch_size):
    n = len(labels)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # mean 0, std 1/255: the model reads the row index back exactly
    return DeviceLoader(images, np.asarray(labels), batch_size=batch_size, train=False, mean=(0, 0, 0),
                        std=(1 / 255, 1 / 255, 1 / 255))  # fmt: skip


def test_topk_loss_and_confusion_by_hand():
    # 6 classes; each row ranks the classes 0 > 1 > 2 > 3 > 4 > 5 rotated by r, so the true class's rank is known.
    ranks = [0, 2, 3, 4, 5, 1, 0]  # rank of the true class in each of 7 images (0 = top-1)
    labels, rows = [], []
    for i, r in enumerate(ranks):
        order = [(i + j) % 6 for j in range(6)]  # class order, best first
        labels.append(order[r])
        row = torch.empty(6)
        row[order] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
        rows.append(row)
    logits = torch.stack(rows)
    res = evaluate(FixedLogits(logits), _loader(labels, batch_size=3), num_classes=6, confusion=True)
    assert res["n"] == 7
    assert res["top1"] == pytest.approx(100 * 2 / 7)  # ranks 0, 0
    assert res["top3"] == pytest.approx(100 * 4 / 7)  # + ranks 2, 1
    assert res["top5"] == pytest.approx(100 * 6 / 7)  # + ranks 3, 4 (rank 5 missed)
    assert res["top3_error"] == pytest.approx(100 * 3 / 7)
    want_loss = np.mean([-(torch.log_softmax(logits[i], 0)[labels[i]]).item() for i in range(7)])
    assert res["loss"] == pytest.approx(want_loss, rel=1e-6)
    conf = res["confusion"]
    assert conf.sum() == 7 and conf.trace() == 2
    for i in range(7):  # row = true class, column = top-1 prediction (class i % 6 ranks first in row i)
        assert conf[labels[i], i % 6] >= 1


def test_fewer_classes_than_five():
    # num_classes 2: top-3 and top-5 are the whole label set, so every image counts.
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    res = evaluate(FixedLogits(logits), _loader([0, 1, 0], batch_size=2), num_classes=2)
    assert res["top1"] == pytest.approx(100 / 3) and res["top3"] == res["top5"] == 100.0
    assert math.isclose(res["top1_error"] + res["top1"], 100.0)
