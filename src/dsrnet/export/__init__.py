"""Deployment: export a model to ONNX / TorchScript / ExportedProgram (BatchNorm folded, dynamic batch,
metadata inside, checked against PyTorch), int8 post-training quantisation, and CPU inference backends behind
one runner.

Heavy optional engines (onnx, onnxruntime, openvino, nncf) are imported only inside the functions that need
them.
"""

from dsrnet.export.backends import (
    BACKENDS,
    RunnerModule,
    best_cpu_backend,
    installed_backends,
    load_predictor,
    load_runner,
)
from dsrnet.export.formats import FORMATS, ExportResult, export_model, fold_batchnorm, read_metadata
from dsrnet.export.source import ModelSource, load_source

__all__ = [
    "BACKENDS",
    "FORMATS",
    "ExportResult",
    "ModelSource",
    "RunnerModule",
    "best_cpu_backend",
    "export_model",
    "fold_batchnorm",
    "installed_backends",
    "load_predictor",
    "load_runner",
    "load_source",
    "read_metadata",
]
