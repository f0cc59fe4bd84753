"""timm's feature and head vocabulary without needing timm: ``FeatureInfo``, feature index selection, pooling.

DSRNet speaks timm's model contract whether or not timm is installed. Models describe their features with the
class below, whatever was imported first: a ``list`` of the per-feature dicts (as ``feature_info`` is on timm's own
ResNet, so timm's feature wrappers accept it) with the accessors of timm's ``FeatureInfo``.
"""

from collections.abc import Sequence
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from dsrnet.errors import DsrnetError

#: Global pooling types, as timm names them (``''`` = no pooling: the head returns the unpooled map).
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def take_indices(num_features: int, indices: int | list[int] | None = None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: ``None`` = all, ``int`` n = the last n, a list = those (negative from the
    end). Returns the absolute indices and the largest one. TorchScript-compatible (it also compiles the raise)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if indices < 1 or indices > num_features:
            raise DsrnetError(
                f"feature indices as a count (the last n) must be 1..{num_features}, got {indices}"
            )
        taken = [num_features - indices + i for i in range(indices)]
    else:
        taken: list[int] = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if idx < 0 or idx >= num_features:
                raise DsrnetError(
                    f"feature index {i} is out of range: valid are 0..{num_features - 1} or negative"
                )
            taken.append(idx)
        if len(taken) == 0:
            raise DsrnetError("feature indices must not be empty")
    return taken, max(taken)


def normalize_indices(num_features: int, indices) -> list[int]:
    """``take_indices`` for Python callers: accepts tuples and raises :class:`DsrnetError` on bad input."""
    if isinstance(indices, bool) or not (indices is None or isinstance(indices, int | Sequence)):
        raise DsrnetError(f"out_indices must be an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, Sequence) and not all(isinstance(i, int) for i in indices):
        raise DsrnetError(f"out_indices must be an int or a sequence of ints, got {indices!r}")
    return take_indices(
        num_features, indices if indices is None or isinstance(indices, int) else list(indices)
    )[0]


class FeatureInfo(list):
    """The per-feature dicts (``num_chs``, ``reduction``, ``module``) with timm's ``FeatureInfo`` accessors.

    ``out_indices`` selects which features ``channels()`` / ``reduction()`` / ``module_name()`` report, as in timm;
    indexing and ``len`` cover all features.
    """

    def __init__(self, feature_info: list[dict], out_indices: int | Sequence[int]):
        super().__init__(feature_info)
        prev = 1
        for i, info in enumerate(self):
            if info.get("num_chs", 0) <= 0 or info.get("reduction", 0) < prev or "module" not in info:
                raise DsrnetError(f"feature_info entry {i} is malformed: {info!r}")
            prev = info["reduction"]
            info.setdefault("index", i)
        self.out_indices = tuple(normalize_indices(len(self), out_indices))

    @property
    def info(self) -> list[dict]:
        return list(self)

    def from_other(self, out_indices: int | Sequence[int]) -> "FeatureInfo":
        return FeatureInfo(deepcopy(list(self)), out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None):
        if idx is None:
            return [self[i][key] for i in self.out_indices]
        if isinstance(idx, tuple | list):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None, idx: int | Sequence[int] | None = None):
        picked = [self[i] for i in self.out_indices] if idx is None else None
        if picked is None:
            picked = [self[i] for i in idx] if isinstance(idx, tuple | list) else self[idx]
        if keys is None:
            return picked
        if isinstance(picked, dict):
            return {k: picked[k] for k in keys}
        return [{k: d[k] for k in keys} for d in picked]

    def channels(self, idx: int | Sequence[int] | None = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None):
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None):
        return self.get("module", idx)


class GlobalPool(nn.Module):
    """timm's ``SelectAdaptivePool2d`` pool types with flattening, without timm: ``''`` passes the map through."""

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise DsrnetError(f"global_pool={pool_type!r} is not valid; fix: choose one of {POOL_TYPES}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.pool_type == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        x_avg = F.adaptive_avg_pool2d(x, 1).flatten(1)
        x_max = F.adaptive_max_pool2d(x, 1).flatten(1)
        if self.pool_type == "avgmax":
            return 0.5 * (x_avg + x_max)
        return torch.cat((x_avg, x_max), 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"
