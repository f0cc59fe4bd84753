"""The weight average behind ``TrainConfig.ema_decay``: the warmed-up moving average of every floating-point
parameter and buffer, other buffers copied, the averaged model frozen and the trained one untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dsrnet.train.ema import WeightEma


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())


def test_update_is_the_warmed_up_moving_average_of_weights_and_statistics():
    model = _model()
    ema = WeightEma(model, decay=0.6)
    expected = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for t in range(1, 6):
        with torch.no_grad():  # what an optimiser step and a training forward would do to the model
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(2, 3, 5, 5))
        ema.update()
        d = min(0.6, (1 + t) / (10 + t))
        expected = {k: d * v + (1 - d) * model.state_dict()[k].double() for k, v in expected.items()}
    got = ema.module.state_dict()
    for key, want in expected.items():
        torch.testing.assert_close(got[key].double(), want, rtol=1e-6, atol=1e-6, msg=key)
    assert ema.updates == 5 and ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10**6) == 0.6
    # Integer buffers are copied, not averaged; the average is frozen and in eval mode; the model is its own.
    assert int(got["1.num_batches_tracked"]) == 5
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])


def test_channels_last_model_and_zero_decay():
    model = _model().to(memory_format=torch.channels_last)
    ema = WeightEma(model, decay=0.0)  # decay 0: the average is the latest weights
    with torch.no_grad():
        model[0].weight.mul_(3)
    ema.update()
    assert torch.equal(ema.module[0].weight, model[0].weight)
    assert ema.module[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("decay", [1.0, -0.5])
def test_decay_outside_zero_one_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay must be in"):
        WeightEma(_model(), decay)
