"""torchvision integration: DSRNet's builders in torchvision's model registry, without importing torchvision before
its user does (:mod:`dsrnet._import_hooks`), so that code written against torchvision's registry takes them::

    import dsrnet, torchvision
    model = torchvision.models.get_model("dsrnet50_cifar", weights="DEFAULT")     # the shipped CIFAR-10 weights
    torchvision.models.get_model_weights("dsrnet50_cifar")                      # DSRNet50_CIFAR_Weights
    torchvision.models.list_models(module=dsrnet.models)                        # ['dsrnet101', 'dsrnet101_cifar', ...]

Only the DSRNet architectures: the baselines (``resnet50_cifar``, ...) are torchvision's own models with a CIFAR
stem, and torchvision's ``resnet50`` stays torchvision's.
"""

from __future__ import annotations

import sys
from typing import Optional

#: The builders registered (those of :mod:`dsrnet.models.dsrnet`).
NAMES = ("dsrnet50", "dsrnet101", "dsrnet50_cifar", "dsrnet101_cifar")

#: Set once an attempt starts: a failed one warned (dsrnet._import_hooks) and is not repeated.
_attempted = False


def register_with_torchvision() -> None:
    """Put the DSRNet builders into torchvision's registry (a name it holds already is left to its owner); each
    builder gets its weights enum as its ``weights`` annotation, which ``get_model_weights`` reads (an empty one,
    :class:`~dsrnet.models.torchvision_weights.NoDSRNetWeights`, for an architecture without shipped weights)."""
    global _attempted
    if _attempted:
        return
    loading = sys.modules.get("dsrnet.models.torchvision_weights")
    if loading is not None and not hasattr(loading, "WEIGHTS_ENUMS"):
        # That module's own `import torchvision` (at its top) brought us here: it registers at its end, where what
        # this needs is defined (its import is still under way then, so that is the test, not __spec__'s flag).
        return
    _attempted = True
    from torchvision.models import _api

    from dsrnet.models import dsrnet as architectures
    from dsrnet.models.torchvision_weights import WEIGHTS_ENUMS, NoDSRNetWeights

    for name in NAMES:
        if name in _api.BUILTIN_MODELS:
            continue
        builder = getattr(architectures, name)
        enum = WEIGHTS_ENUMS.get(name, NoDSRNetWeights)
        builder.__annotations__["weights"] = Optional[enum]  # noqa: UP045 (typing.get_args reads it)
        _api.register_model(name)(builder)
