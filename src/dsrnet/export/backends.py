"""Run a model on the CPU through one of several inference engines behind one call signature.

``load_runner(backend, source, threads=...)`` returns a callable: NCHW float32 tensor -> float32 logits
tensor.

Backends (:data:`BACKENDS`):

* ``torch`` -- PyTorch eager under ``inference_mode`` on the BN-folded model (or a TorchScript /
  ExportedProgram file from ``dsrnet export``);
* ``torch-compile`` -- the same model, channels-last, through ``torch.compile`` (Inductor's C++/OpenMP CPU
  backend, with frozen weights: :func:`dsrnet.device.compile_frozen`); the first call of each new input shape
  compiles, which takes seconds to tens of seconds on 2 cores;
* ``onnxruntime`` -- an ONNX file (fp32 or int8 QDQ) in an onnxruntime session (CPU execution provider);
* ``openvino`` -- an ONNX file (or OpenVINO IR ``.xml``) compiled by OpenVINO for the CPU, latency hint, fp32
  unless ``precision="bf16"`` (OpenVINO's own default where the CPU has bf16 instructions).

A source that is not the backend's file type (a registry name, a run folder, an ``nn.Module``) is exported
first: to ONNX for onnxruntime/openvino (into a temporary folder that lives as long as the runner).

``threads`` sets the engine's intra-op thread count (``None``: the engine's default); torch's setting is
process-wide, so the ``torch`` runners set it at every call.

:func:`best_cpu_backend` is the order measured in ``benchmarks/cpu_backends.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsrnet.device import compile_frozen
from dsrnet.errors import DsrnetError

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino")
#: Which pip extra brings each backend's engine.
EXTRAS = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
#: Fastest exact (fp32) backend first, for DSRNet-50 at batch 1 on an idle 2-core AVX-512/AMX Xeon
#: (benchmarks/cpu_backends.py, results/cpu-deploy/): onnxruntime 9.7 ms (32 px) / 6.5 ms (96 px) at one thread vs
#: OpenVINO fp32 11.8 / 8.9 ms and eager PyTorch 22.7 / 21.4 ms; at two threads onnxruntime and OpenVINO fp32 are
#: within noise of each other (6.1 / 4.5 vs 6.4 / 4.2 ms). Faster still, but opt-in because they change the numbers:
#: OpenVINO ``precision="bf16"`` (1.9-2.4 ms), torch-compile ``precision="bf16"`` (another CPU: 1.4x its fp32 at
#: batch 1, 2.3-2.6x at batch 32) and an int8 file (``dsrnet export --int8``: 1.5-1.8 ms on OpenVINO,
#: 2.9-3.3 ms on onnxruntime). torch-compile (frozen weights, channels-last: 1.9-2.8x eager, 1.1-1.7x slower than
#: onnxruntime in one run) is left out of the automatic choice: each new input shape compiles first.
CPU_PREFERENCE = ("onnxruntime", "openvino", "torch")

FLOAT_PRECISIONS = ("fp32", "bf16")

Runner = Callable[[torch.Tensor], torch.Tensor]


def backend_available(backend: str) -> bool:
    """Whether ``backend``'s engine can be imported (without importing it)."""
    if backend not in BACKENDS:
        raise DsrnetError(f"unknown backend {backend!r}; fix: choose one of {', '.join(BACKENDS)}")
    if backend in EXTRAS:
        return importlib.util.find_spec(EXTRAS[backend][0]) is not None
    return True


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if backend_available(b)]


def best_cpu_backend() -> str:
    """The fastest installed backend for exact (fp32) CPU inference (:data:`CPU_PREFERENCE`); ``torch`` always
    exists."""
    return next(b for b in CPU_PREFERENCE if backend_available(b))


def _import_engine(backend: str):
    module, extra = EXTRAS[backend]
    try:
        return __import__(module)
    except ImportError:
        raise DsrnetError(
            f"backend {backend!r} needs {module}, which is not installed; fix: pip install 'dsrnet[{extra}]'"
        ) from None


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DsrnetError(f"threads must be an integer >= 1 or None, got {threads!r}")
    return threads


def _check_input(x: Any, channels: int = 3) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DsrnetError(f"a runner takes a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise DsrnetError(f"a runner takes an (N, {channels}, H, W) batch, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise DsrnetError(f"a runner takes float32 images, got {x.dtype}; fix: x.float()")
    return x


def _is_file_of(source: Any, *suffixes: str) -> bool:
    return isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in suffixes


#: The backends that also run bf16 (faster where the CPU has bf16 instructions; about 3 significant digits).
BF16_BACKENDS = ("openvino", "torch-compile")


def check_backend_precision(backend: str, precision: str) -> None:
    """The backend exists and runs ``precision`` (fp32 everywhere, bf16 on :data:`BF16_BACKENDS`); else one
    DsrnetError."""
    if backend not in BACKENDS:
        raise DsrnetError(f"unknown backend {backend!r}; fix: choose one of {', '.join(BACKENDS)}")
    if precision not in FLOAT_PRECISIONS or (precision == "bf16" and backend not in BF16_BACKENDS):
        raise DsrnetError(
            f"precision {precision!r} is not available on backend {backend!r}; fix: use fp32 (bf16: "
            f"{', '.join(BF16_BACKENDS)})"
        )


def load_runner(
    backend: str,
    source: Any,
    *,
    threads: int | None = None,
    image_size: int | None = None,
    precision: str = "fp32",
) -> Runner:
    """A callable running ``source`` on ``backend``; see the module docstring. ``image_size`` is used only
    when ``source`` has to be exported first (default: the model's size). ``precision``: the float precision
    of the computation, ``"fp32"`` everywhere; ``"bf16"`` with openvino (OpenVINO's own default on CPUs with bf16
    instructions) and torch-compile (weights and activations in bf16) -- faster, not bit-faithful: about 3
    significant digits. An int8 file runs its quantised layers in int8 whatever ``precision`` says."""
    check_backend_precision(backend, precision)
    _check_threads(threads)
    if backend in ("onnxruntime", "openvino"):
        engine = _import_engine(backend)
        keep: Any = None
        if not _is_file_of(source, ".onnx", ".xml"):
            keep, source = _export_temporary_onnx(source, image_size)
        make = _onnxruntime_runner if backend == "onnxruntime" else _openvino_runner
        runner = make(engine, source, threads, precision)
        if keep is not None:
            runner.tmpdir = keep  # type: ignore[attr-defined] - the file must outlive the session
        return runner
    model = _torch_module(source, image_size)
    if backend == "torch-compile":
        # Channels-last: Inductor's CPU convolutions (oneDNN) then need no layout conversion around each conv.
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model = model.to(dtype, memory_format=torch.channels_last)
        return _torch_runner(compile_frozen(model), threads, channels_last=True, dtype=dtype)
    return _torch_runner(model, threads)


def _export_temporary_onnx(source: Any, image_size: int | None) -> tuple[tempfile.TemporaryDirectory, Path]:
    from dsrnet.export.formats import export_onnx_model, fold_batchnorm
    from dsrnet.export.source import load_source

    src = load_source(source, image_size=image_size)
    folded, _ = fold_batchnorm(src.model)
    tmp = tempfile.TemporaryDirectory(prefix="dsrnet-onnx-")
    path = export_onnx_model(folded, src.image_size, src.metadata(), Path(tmp.name) / "model.onnx")
    return tmp, path


def _torch_module(source: Any, image_size: int | None) -> nn.Module:
    if _is_file_of(source, ".pt2"):
        if not Path(source).is_file():
            raise DsrnetError(
                f"exported model {source} not found; fix: pass a file written by `dsrnet export`"
            )
        from dsrnet.export.formats import load_exported_program

        return load_exported_program(source).module()
    if _is_file_of(source, ".pt") and _is_torchscript(source):  # else: a training checkpoint, below
        from dsrnet.export.formats import load_torchscript

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; its files still load
            return load_torchscript(source).eval()
    if _is_file_of(source, ".onnx", ".xml"):
        raise DsrnetError(f"{source} is an ONNX/OpenVINO file; fix: use --backend onnxruntime or openvino")
    from dsrnet.export.formats import fold_batchnorm
    from dsrnet.export.source import load_source

    folded, _ = fold_batchnorm(load_source(source, image_size=image_size).model)
    return folded


def _torch_runner(
    model: nn.Module, threads: int | None, channels_last: bool = False, dtype: torch.dtype = torch.float32
) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(x).float()

    return run


def _onnxruntime_runner(ort, path: Path | str, threads: int | None, precision: str = "fp32") -> Runner:
    if not Path(path).is_file():
        raise DsrnetError(f"ONNX file {path} not found; fix: write it with `dsrnet export --format onnx`")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = threads
        # Spinning threads burn a core between calls; on a shared machine that only steals time from others.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads > 1 else "1")
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise DsrnetError(f"onnxruntime cannot load {path} ({str(err).splitlines()[0][:200]})") from None
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x)
        (out,) = session.run(None, {input_name: x.detach().contiguous().numpy()})
        return torch.from_numpy(out)

    run.session = session  # type: ignore[attr-defined]
    return run


def _openvino_runner(ov, path: Path | str, threads: int | None, precision: str = "fp32") -> Runner:
    if not Path(path).is_file():
        raise DsrnetError(f"model file {path} not found; fix: write it with `dsrnet export --format onnx`")
    core = ov.Core()
    # OpenVINO silently computes in bf16 on CPUs that have bf16 instructions unless told otherwise.
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        model = core.read_model(str(path))
    except Exception as err:  # noqa: BLE001
        raise DsrnetError(f"OpenVINO cannot read {path} ({str(err).splitlines()[0][:200]})") from None
    # One compiled model per input shape: static shapes let OpenVINO pick its fastest kernels and pre-pack
    # weights for them; a dynamic batch would be compiled once but run slower kernels.
    compiled: dict[tuple[int, ...], Any] = {}

    def run(x: torch.Tensor) -> torch.Tensor:
        x = _check_input(x)
        shape = tuple(x.shape)
        request = compiled.get(shape)
        if request is None:
            m = model.clone()
            m.reshape({m.inputs[0].get_any_name(): ov.PartialShape(list(shape))})
            request = core.compile_model(m, "CPU", config).create_infer_request()
            compiled[shape] = request
        request.infer({0: x.detach().contiguous().numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


class RunnerModule(nn.Module):
    """A runner as an ``nn.Module`` (eval-only), for code that expects a model, e.g.
    :func:`dsrnet.train.evaluate.evaluate`."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x.float())


def load_predictor(
    source: Any, *, backend: str | None = None, threads: int | None = None, precision: str = "fp32"
) -> tuple[Runner, dict[str, Any]]:
    """``(runner, metadata)`` for ``dsrnet predict`` / ``eval``: ``source`` is a run folder, checkpoint,
    ``.safetensors`` file or registry name, or a file written by ``dsrnet export`` (``.onnx``, ``.pt``
    TorchScript, ``.pt2``), whose stored metadata is used. ``metadata`` has ``image_size``, ``mean``, ``std``,
    ``classes``, ``num_classes`` (and ``dataset`` when known). ``backend=None`` is :func:`best_cpu_backend`;
    a model that is not yet an ONNX file is exported to a temporary one first for onnxruntime/openvino
    (a few seconds for DSRNet-50 on 2 cores)."""
    from dsrnet.export.formats import check_export_name, read_metadata
    from dsrnet.export.source import load_source, parse_metadata

    backend = backend or best_cpu_backend()
    if isinstance(source, str | os.PathLike) and Path(source).is_file():
        # Recognised by content: a TorchScript / ExportedProgram file under another name would otherwise reach the
        # checkpoint reader, whose error sends the user back to this very command.
        check_export_name(source)
    if _is_file_of(source, ".onnx", ".pt2") or (_is_file_of(source, ".pt") and _is_torchscript(source)):
        meta = read_metadata(source)
        return load_runner(backend, source, threads=threads, precision=precision), meta
    src = load_source(source)
    meta = parse_metadata(src.metadata())
    runner = load_runner(backend, src.model, threads=threads, image_size=src.image_size, precision=precision)
    return runner, meta


def _is_torchscript(path: Any) -> bool:
    from dsrnet.run.checkpoint import exported_kind

    return exported_kind(path) == "TorchScript"
