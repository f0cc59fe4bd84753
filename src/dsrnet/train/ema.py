"""An exponential moving average (EMA) of a model's weights for ``TrainConfig.ema_decay``: the averaged copy is the
model a run evaluates, checkpoints and exports, while the optimiser keeps training the original.

Averaging the weights of the last few thousand SGD steps (Polyak & Juditsky 1992; the ``--model-ema`` of timm's
training script) smooths out the step-to-step noise of a high learning rate; BatchNorm running statistics are
averaged the same way, so the copy evaluates with statistics that match its weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["WeightEma"]


class WeightEma:
    """``module``: a frozen copy of ``model`` whose floating-point parameters and buffers follow, after every
    :meth:`update`, ``ema = d_t * ema + (1 - d_t) * model`` with ``d_t = min(decay, (1 + t) / (10 + t))`` at update
    ``t = 1, 2, ...``; other buffers (BatchNorm's ``num_batches_tracked``) are copied. The warm-up ``d_t`` is that
    of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: early on the average follows the weights closely,
    so the random initialisation does not linger in a short run (at ``decay=0.999`` a plain EMA still holds 14 % of
    it after 2,000 steps).

    Why not ``torch.optim.swa_utils.AveragedModel``: its update reads its counter as a tensor (``n_averaged == 0``
    and ``n_averaged.to(device)``), a host-device synchronisation at every step that would stall a compiled
    training loop on a GPU. Here the count lives on the host and an update is one fused ``torch._foreach_lerp_``
    (the op behind torch's own ``get_ema_multi_avg_fn``) over tensors that share storage with both models.

    Build it after the model has reached its device and memory format, and before the model is compiled or
    wrapped (both keep the parameter objects); ``model`` must keep its tensors in place from then on
    (``load_state_dict`` and optimisers do)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        ours, theirs = self.module.state_dict(), model.state_dict()  # detached views of the live tensors
        floating = [k for k, v in ours.items() if v.is_floating_point()]
        other = [k for k, v in ours.items() if not v.is_floating_point()]
        self._floating = ([ours[k] for k in floating], [theirs[k] for k in floating])
        self._other = ([ours[k] for k in other], [theirs[k] for k in other])

    def decay_at(self, update: int) -> float:
        """The decay used by update number ``update`` (1-based)."""
        return min(self.decay, (1.0 + update) / (10.0 + update))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights and buffers into the average (after an optimiser step)."""
        self.updates += 1
        ours, theirs = self._floating
        torch._foreach_lerp_(ours, theirs, 1.0 - self.decay_at(self.updates))
        if self._other[0]:
            torch._foreach_copy_(*self._other)
