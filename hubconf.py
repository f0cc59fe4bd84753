"""torch.hub entry points: ``torch.hub.load("path/to/dsrnet", "dsrnet50", source="local", num_classes=10)``.

kwargs go to ``dsrnet.create_model``: models are randomly initialised unless ``pretrained=True``, which loads the
model's default weights from ``dsrnet.models.weights`` (checksum-verified; an error names what is missing), or
``weights=`` as torchvision's hub entries take it (``weights="DEFAULT"``: those weights with their own head).
"""

import os
import sys
import warnings

dependencies = ["torch", "torchvision", "safetensors"]

# This checkout's own package, ahead of any installed dsrnet: the hub loads the code it was pointed at.
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
sys.path.insert(0, _SRC)
try:
    import dsrnet
finally:  # the package, once imported, finds its submodules through its own __path__
    sys.path.remove(_SRC)

if not os.path.abspath(dsrnet.__file__).startswith(os.path.join(_SRC, "")):
    # dsrnet was imported from elsewhere before torch.hub.load: Python keeps that one.
    warnings.warn(
        f"torch.hub: dsrnet {dsrnet.__version__} was already imported from {os.path.dirname(dsrnet.__file__)}, so "
        f"its models are used, not this checkout's ({_SRC}); load the hub entry in a fresh process to use the "
        f"checkout",
        stacklevel=2,
    )


def _entry(name):
    def entry(pretrained=False, **kwargs):
        return dsrnet.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"``dsrnet.create_model({name!r}, **kwargs)``"
    return entry


for _name in dsrnet.list_models():
    globals()[_name] = _entry(_name)
