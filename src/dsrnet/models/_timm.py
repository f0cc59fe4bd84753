"""Make every DSRNet name available to ``timm.create_model`` once ``dsrnet`` is imported (timm is optional)."""

from __future__ import annotations

from dsrnet.models._registry import create_model, list_models


def register_with_timm() -> bool:
    """Register ``dsrnet*`` builders in timm's registry; returns False when timm is not installed."""
    try:
        from timm.models import register_model as timm_register_model
    except ImportError:
        return False
    for name in list_models("dsrnet*"):

        def entrypoint(
            pretrained=False,
            pretrained_cfg=None,
            pretrained_cfg_overlay=None,
            cache_dir=None,
            _name=name,
            **kwargs,
        ):
            # timm passes its pretrained_cfg plumbing to every entrypoint; DSRNet has no hosted weights.
            return create_model(_name, pretrained=pretrained, **kwargs)

        entrypoint.__name__ = entrypoint.__qualname__ = name
        entrypoint.__module__ = __name__
        timm_register_model(entrypoint)
    return True
