"""torch.hub entry points: ``torch.hub.load("path/to/dsrnet", "dsrnet50", source="local", num_classes=10)``.

kwargs go to ``dsrnet.create_model``: models are randomly initialised unless ``pretrained=True``, which loads the
model's default weights from ``dsrnet.models.weights`` (checksum-verified; an error names what is missing).
"""

import os
import sys

dependencies = ["torch", "torchvision"]

try:
    import dsrnet
except ImportError:  # a plain checkout that was never pip-installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    import dsrnet


def _entry(name):
    def entry(pretrained=False, **kwargs):
        return dsrnet.create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"``dsrnet.create_model({name!r}, **kwargs)``"
    return entry


for _name in dsrnet.list_models():
    globals()[_name] = _entry(_name)
