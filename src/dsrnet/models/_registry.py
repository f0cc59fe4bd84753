"""Name -> builder table behind ``dsrnet.create_model`` / ``dsrnet.list_models`` (timm's pattern, no timm needed)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from dsrnet.errors import DsrnetError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _BUILDERS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _BUILDERS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, num_classes: int = 1000, *, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model with a fresh (randomly initialised) head of ``num_classes`` outputs.

    ``kwargs`` go to the model's constructor (e.g. DSRNet's ablation switches). No pretrained weights exist for the
    paper's models (they were trained from scratch, Section 4.2), so ``pretrained=True`` is an error.
    """
    if name not in _BUILDERS:
        raise DsrnetError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    if pretrained:
        raise DsrnetError(f"no pretrained weights for {name!r}: train one with `dsrnet train --model {name}`")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise DsrnetError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    try:
        return _BUILDERS[name](num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err) or "multiple values" in str(err):
            raise DsrnetError(f"model {name!r} does not take that argument ({err})") from None
        raise


def build_model(name: str, num_classes: int, model_kwargs: dict | None = None) -> nn.Module:
    """:func:`create_model` for a config or checkpoint: any argument the builder rejects is a one-line
    :class:`DsrnetError` naming ``model_kwargs``."""
    kwargs = dict(model_kwargs or {})
    try:
        return create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise DsrnetError(
            f"model {name!r} rejects model_kwargs {kwargs} ({err}); fix: correct --model-kwargs"
        ) from None
