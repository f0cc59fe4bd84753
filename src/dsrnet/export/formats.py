"""``dsrnet export``: a model -> an ONNX, TorchScript or ExportedProgram file with BatchNorm folded, a dynamic
batch dimension, the preprocessing metadata inside the file, and a numerical check against the PyTorch model.

* BatchNorm folding is torch's own: :func:`torch.fx.experimental.optimization.fuse` folds every conv -> BN
  pair of an FX-traceable model into the conv (DSRNet, ResNet and MobileNetV2 are all traceable);
  ``folded_batchnorms`` in the result says how many BN layers disappeared.
* The batch dimension is dynamic in every format: the check runs a batch size other than the traced one.
* Metadata (:meth:`dsrnet.export.source.ModelSource.metadata`): ONNX ``metadata_props``; TorchScript
  ``_extra_files``; the ExportedProgram archive's ``extra_files`` -- all under :data:`METADATA_KEY`, read back
  by
  :func:`read_metadata`.
* The check: the exported file is loaded back and run on a random batch; the largest absolute difference from
  the eager model is reported and anything above ``tolerance`` (relative to the largest logit, at least 1)
  raises.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import threading
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dsrnet.errors import DsrnetError
from dsrnet.export.source import METADATA_KEY, ModelSource, load_source, parse_metadata
from dsrnet.run.atomic import atomic_write
from dsrnet.run.rundir import export_target

FORMATS = ("onnx", "torchscript", "exported-program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
#: fp32 check: max |exported - eager| <= DEFAULT_TOLERANCE * max(1, max |eager|). Folding BN changes the
#: rounding of every conv, and a 50-layer random-init network amplifies it; 1e-3 of the logit scale is far
#: below anything that can change a prediction, far above float32 reassociation noise (~1e-6 relative).
DEFAULT_TOLERANCE = 1e-3
_EXAMPLE_BATCH = 2  # traced batch; the check uses another size so a baked-in batch dimension is caught
_CHECK_BATCH = 3
ONNX_OPSET = 18


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    folded_batchnorms: int
    metadata: dict[str, Any]
    int8: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.metadata['model']} -> {self.path} ({self.format}, {self.folded_batchnorms} BatchNorms "
            f"folded, "
            f"max |exported - PyTorch| = {self.max_abs_diff:.2e} <= {self.tolerance:.1e}"
        )
        if self.int8:
            q = self.int8
            text += (
                f"; int8 ({q['quantizer']}, {q['calibration_images']} calibration images): top-1 agreement "
                f"with "
                f"fp32 {q['top1_agreement']:.1%} on {q['check_images']} held-out images, max |int8 - fp32| "
                f"{q['max_abs_diff']:.3g}"
            )
        return text + ")"


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every conv->BN pair folded (torch.fx's ``fuse``); returns the copy
    and the number of BatchNorm layers removed. A model FX cannot trace is returned unfolded (count 0)."""
    from torch.fx.experimental.optimization import fuse

    modes = [(m, m.training) for m in model.modules()]  # the caller's model keeps its (per-module) mode
    model.eval()
    try:
        before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        try:
            fused = fuse(model, inplace=False)
        except Exception as err:  # noqa: BLE001 - FX raises many types on untraceable code
            warnings.warn(
                f"BatchNorm not folded: {type(model).__name__} is not FX-traceable ({err})", stacklevel=2
            )
            return copy.deepcopy(model).eval(), 0
        after = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
        return fused.eval(), before - after
    finally:
        for m, mode in modes:
            m.training = mode


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise DsrnetError(f"unknown export format {fmt!r}; fix: choose one of {', '.join(FORMATS)}")
    return fmt


def require(module: str, extra: str) -> Any:
    """``import module`` or one :class:`DsrnetError` line naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DsrnetError(f"{module} is not installed; fix: pip install 'dsrnet[{extra}]'") from None


@contextlib.contextmanager
def _no_code_from_pickles():
    """Within this block, the unpickling inside ``torch.export.load`` cannot run code: it loads parts of a .pt2
    archive with ``torch.load(weights_only=False)`` (pickled weights and constants; the sample inputs after a failed
    safe load) or plain ``pickle.loads`` / TorchScript's unpickler (opaque and custom objects), so a crafted file
    would run whatever its pickles call. Here every ``torch.load`` is ``weights_only=True`` and the other two
    refuse; an exported DSRNet needs none of them (its weights are stored raw)."""
    from unittest import mock

    real_load = torch.load

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("a pickled object inside the archive (dsrnet reads tensors only)")

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch, "load", weights_only_load))
        stack.enter_context(mock.patch.object(torch._C, "_pickle_load_obj", refuse, create=True))
        try:
            from torch.export.pt2_archive import _package
        except ImportError:  # (an older layout: its loads go through torch.load, patched above)
            _package = None
        if _package is not None and hasattr(_package, "pickle"):
            no_loads = types.SimpleNamespace(**{k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
            no_loads.loads = refuse
            stack.enter_context(mock.patch.object(_package, "pickle", no_loads))
        yield


#: Names a shape expression of an ExportedProgram may use (``expr_str``, parsed by ``sympy.sympify``, i.e. by
#: Python's ``eval``): sympy's constructors and the integer functions torch.export writes, nothing else.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Mod", "PythonMod", "FloorDiv", "CleanDiv", "CeilToInt", "FloorToInt",
    "TruncToInt", "IntTrueDiv", "FloatTrueDiv", "ToFloat", "Max", "Min", "Abs", "floor", "ceiling", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "positive", "integer", "real", "nonnegative", "finite", "True", "False",
    "oo",
})  # fmt: skip
_EXPR_TOKEN = re.compile(r"\s+|'[A-Za-z_][A-Za-z0-9_]*'|[A-Za-z_][A-Za-z0-9_]*|\d+|//|[-+*/%(),=<>!]")
_NOT_IN_PT2 = ("aotinductor/", "executorch", "custom_obj", "opaque_obj")  # compiled code, pickled objects
_LIBRARY_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")


def _safe_expr(expr: str) -> bool:
    """Whether ``expr`` is a plain shape expression: whitelisted names, quoted symbol names, integers and
    operators (no attribute access, no subscripts, no ``**``); short."""
    if len(expr) > 500 or "**" in expr:
        return False
    pos = 0
    for m in _EXPR_TOKEN.finditer(expr):
        if m.start() != pos:
            return False
        tok = m.group()
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _SYMPY_NAMES:
            return False
        pos = m.end()
    return pos == len(expr)


#: The ops the graph of an exported image classifier may call: dsrnet's models (plain and fused: the ``dsrnet``
#: custom ops), the baselines, and the pure tensor ops of common vision models (activations, norms, pooling,
#: shape ops, attention). A TorchScript or .pt2 file is a program: an op such as ``aten::from_file`` or
#: ``aten::save`` reads or writes files when the model RUNS, so a file calling any op outside this list is refused
#: before it is loaded (ONNX files run on onnxruntime/OpenVINO and are not programs in this sense).
_SAFE_OPS = frozenset({
    # convolutions and matrix products
    "conv2d", "_convolution", "convolution", "linear", "addmm", "mm", "bmm", "matmul", "t", "einsum",
    "scaled_dot_product_attention",
    # activations
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "gelu", "sigmoid", "sigmoid_", "tanh",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu", "leaky_relu_", "elu", "elu_", "mish",
    "softplus", "erf", "exp", "log", "sqrt", "rsqrt", "pow", "neg", "abs", "reciprocal", "clamp", "clamp_",
    "clamp_min", "clamp_max", "softmax", "_softmax", "log_softmax", "_log_softmax",
    # elementwise arithmetic and reductions
    "add", "add_", "mul", "mul_", "sub", "sub_", "rsub", "div", "div_", "floor_divide", "remainder", "fmod",
    "mean", "sum", "max", "amax", "min", "amin", "argmax", "argmin", "where", "maximum", "minimum", "eq", "ne",
    "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "floor", "ceil", "round", "norm",
    "linalg_vector_norm", "cumsum",
    # normalisation and regularisation (inference forms)
    "batch_norm", "_native_batch_norm_legit_no_training", "layer_norm", "native_layer_norm", "group_norm",
    "native_group_norm", "instance_norm", "dropout", "feature_dropout", "alpha_dropout",
    # pooling and resizing
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d",
    "max_pool2d_with_indices", "upsample_nearest2d", "upsample_bilinear2d", "constant_pad_nd", "pad",
    # shapes and copies
    "cat", "stack", "flatten", "unflatten", "view", "view_as", "reshape", "reshape_as", "_reshape_alias",
    "permute", "transpose", "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "split", "split_with_sizes",
    "chunk", "unbind", "select", "slice", "narrow", "index_select", "gather", "roll", "flip", "masked_fill",
    "contiguous", "clone", "to", "_to_copy", "type_as", "detach", "zeros", "zeros_like", "ones", "ones_like",
    "full", "full_like", "arange", "size", "sym_size", "sym_numel", "dim", "numel", "getitem",
    # checks that torch.export puts in a graph (of a fused model's custom ops): they read metadata, raise or pass
    "_assert_tensor_metadata", "_assert_scalar",
})  # fmt: skip
#: TorchScript's own ``prim`` ops that only convert or read values (shapes, devices, dtypes).
_SAFE_PRIM_OPS = frozenset({"NumToTensor", "ImplicitTensorToNum", "device", "dtype", "layout", "shape", "min",
                            "max", "abs"})  # fmt: skip
#: Plain-name calls TorchScript code may make (its builtins that compute values; nothing that reaches the host).
_SAFE_TS_BUILTINS = frozenset({"annotate", "int", "float", "bool", "len", "range", "isinstance", "unchecked_cast",
                               "uninitialized", "tuple", "list", "min", "max", "abs"})  # fmt: skip
_PROGRAM_FIX = "fix: use a file written by `dsrnet export`, or an ONNX export of the model"


def _safe_op(qualified: str) -> bool:
    """``torch.ops.aten.conv2d.default`` (.pt2 node target), ``torch._convolution`` / ``ops.aten.relu_``
    (TorchScript code), ``torch.ops.dsrnet.dw_pw_block.default``: an allowed aten op, or one of dsrnet's own."""
    parts = qualified.split(".")
    if parts[0] == "torch" and parts[1:2] == ["ops"]:
        parts = parts[2:]
    elif parts[0] == "torch":
        return len(parts) == 2 and parts[1] in _SAFE_OPS
    elif parts[0] == "ops":
        parts = parts[1:]
    else:
        return False
    if len(parts) < 2 or len(parts) > 3:
        return False
    return (
        parts[0] == "dsrnet"
        or (parts[0] == "aten" and parts[1] in _SAFE_OPS)
        or (parts[0] == "prim" and parts[1] in _SAFE_PRIM_OPS)
    )


def _check_pt2(path: Path) -> None:
    """Refuse, before ``torch.export.load`` reads it, a .pt2 archive that would run code while being read:
    compiled libraries (AOTInductor packages are loaded as native code), custom/opaque pickled objects, and shape
    expressions that are not plain arithmetic (``sympy.sympify`` evaluates them with Python's ``eval``); and one
    whose graph calls an op outside :data:`_SAFE_OPS` (which would run when the model does)."""
    import zipfile

    fix = "fix: use a .pt2 written by `dsrnet export --format exported-program` (tensors and shapes only)"
    try:
        with zipfile.ZipFile(path) as zf:
            names = _unique_entries(zf, path)
            for name in names:
                if any(bad in name for bad in _NOT_IN_PT2) or name.lower().endswith(_LIBRARY_SUFFIXES):
                    raise DsrnetError(f"{path} holds {name}, which would run as code when read; {fix}")
            for name in (n for n in names if n.endswith(".json")):
                try:
                    tree = json.loads(zf.read(name))
                except ValueError:
                    raise DsrnetError(f"{path}: {name} is not valid JSON; {fix}") from None
                stack = [tree]
                while stack:
                    node = stack.pop()
                    if isinstance(node, dict):
                        expr = node.get("expr_str")
                        if expr is not None and not (isinstance(expr, str) and _safe_expr(expr)):
                            raise DsrnetError(f"{path}: {name} has a shape expression that is not plain arithmetic "
                                              f"({str(expr)[:60]!r}), which would be evaluated as code; {fix}")  # fmt: skip
                        target = node.get("target")
                        is_call = "inputs" in node and target is not None
                        if is_call and not (isinstance(target, str) and _safe_op(target)):
                            raise UnsafeProgram(path, f"its graph calls {str(target)[:80]}")
                        stack.extend(node.values())
                    elif isinstance(node, list):
                        stack.extend(node)
    except zipfile.BadZipFile:
        raise DsrnetError(f"{path} is not a .pt2 archive (not a zip file); {fix}") from None


def _unique_entries(zf, path: Path) -> list[str]:
    """The archive's entry names, as Python's zip reader (these checks) and torch's (the load) both list them. An
    archive naming one entry twice, or whose two readings differ, is refused: the two readers may pick different
    copies of an entry, so a check would pass the harmless copy while torch loads the other."""
    import collections

    import torch

    names = zf.namelist()
    twice = [n for n, count in collections.Counter(names).items() if count > 1]
    try:
        records = torch._C.PyTorchFileReader(str(path)).get_all_records()
    except Exception:  # noqa: BLE001 - not an archive torch reads: its loader refuses it in turn
        records = None
    if records is not None and not twice:
        twice = [n for n, count in collections.Counter(records).items() if count > 1]
        if not twice and len(records) != len(names):
            twice = [f"({len(names)} entries to Python's zip reader, {len(records)} to torch's)"]
    if twice:
        raise UnsafeProgram(path, f"its archive holds entry {twice[0]} more than once (the copy checked need not "
                                  f"be the copy loaded)")  # fmt: skip
    return names


class UnsafeProgram(DsrnetError):
    """A TorchScript or .pt2 file whose code does more than an image classifier's forward (:attr:`what`)."""

    def __init__(self, path: Path, what: str) -> None:
        self.what = what
        super().__init__(f"{path}: {what}, not what an image classifier does (it could read or write files when "
                         f"run); {_PROGRAM_FIX}")  # fmt: skip


def _dotted(node) -> str | None:
    """``torch.ops.aten.relu_`` for the expression ``torch . ops.aten .relu_`` (whitespace and line breaks are the
    parser's business), None for anything but a chain of names."""
    import ast

    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


#: Names under which TorchScript code reaches ops and classes: only called directly (and checked), or named in types.
_OP_NAMESPACES = frozenset({"torch", "ops", "__torch__"})
#: TorchScript builtins that take a type, and at which argument: ``annotate(List[Tensor], [])``,
#: ``uninitialized(Tensor)``, ``unchecked_cast(Tensor, x)``, ``isinstance(x, Tensor)``.
_TYPE_ARGUMENT = {"annotate": 0, "uninitialized": 0, "unchecked_cast": 0, "isinstance": 1}


def _in_type(node, parents) -> bool:
    """Whether ``node`` sits in a type: an argument's or a function's annotation, an annotated assignment's, or the
    type argument of a builtin in :data:`_TYPE_ARGUMENT` (``self: __torch__.M`` in every method's signature). A
    type holds no call, so an argument of any other call is not in one."""
    import ast

    while (parent := parents.get(node)) is not None:
        if isinstance(parent, ast.arg):
            return node is parent.annotation
        if isinstance(parent, ast.FunctionDef):
            return node is parent.returns
        if isinstance(parent, ast.AnnAssign):
            return node is parent.annotation
        if isinstance(parent, ast.Call):
            position = _TYPE_ARGUMENT.get(parent.func.id) if isinstance(parent.func, ast.Name) else None
            return position is not None and position < len(parent.args) and node is parent.args[position]
        if isinstance(parent, ast.stmt):
            return False
        node = parent
    return False


def _check_torchscript(path: Path) -> None:
    """Refuse, before ``torch.jit.load`` reads it, a TorchScript archive whose code does more than an image
    classifier's forward: a method other than ``forward`` (``__setstate__`` runs while the file is LOADED), a call
    of an op outside :data:`_SAFE_OPS` (``torch.from_file`` writes files when it runs), of a builtin outside
    :data:`_SAFE_TS_BUILTINS`, or of a class (``__torch__``...). The code is Python syntax, read as such (``ast``),
    so spacing cannot hide a call. What ``dsrnet export`` writes is a traced, frozen module: one ``forward``."""
    import ast
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            for name in (n for n in _unique_entries(zf, path) if "/code/" in n and n.endswith(".py")):
                try:
                    tree = ast.parse(zf.read(name).decode("utf-8"))
                except (SyntaxError, ValueError, UnicodeDecodeError):
                    raise UnsafeProgram(path, f"its code {name} is not plain TorchScript") from None
                parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
                for node in ast.walk(tree):
                    if isinstance(node, ast.Name) and node.id in _OP_NAMESPACES:
                        chain = node  # the whole chain of names this one starts (torch.ops.aten.from_file)
                        while isinstance(parents.get(chain), ast.Attribute):
                            chain = parents[chain]
                        above = parents.get(chain)
                        # A namespace only as the callee of a checked call, or in a type: bound to a name (m =
                        # ops.aten), passed or put in a list, its ops would be called as methods of a value.
                        if not (isinstance(above, ast.Call) and above.func is chain) and not _in_type(chain, parents):
                            raise UnsafeProgram(path, f"its code uses {ast.unparse(chain)[:80]} as a value")
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and (
                        getattr(node, "name", "<lambda>") != "forward"
                    ):
                        raise UnsafeProgram(path, f"its code defines {getattr(node, 'name', 'a lambda')}() besides "
                                                  f"forward")  # fmt: skip
                    if not isinstance(node, ast.Call):
                        continue
                    called = _dotted(node.func)
                    root = called.split(".")[0] if called else None
                    if root in ("torch", "ops"):
                        ok = _safe_op(called)
                    elif called is not None and "." not in called:
                        ok = called in _SAFE_TS_BUILTINS
                    else:  # a method of a value (x.view, self.layer1.forward); a class or computed callee: no
                        ok = called is not None and root != "__torch__"
                    if not ok:
                        raise UnsafeProgram(path, f"its code calls {(called or ast.unparse(node.func))[:80]}")
    except zipfile.BadZipFile:
        raise DsrnetError(f"{path} is not a TorchScript archive (not a zip file); {_PROGRAM_FIX}") from None


def load_torchscript(path: str | os.PathLike, extra_files: dict[str, Any] | None = None):
    """``torch.jit.load`` (on the CPU) of a TorchScript file whose code is checked first
    (:func:`_check_torchscript`)."""
    _check_torchscript(Path(path))
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files or {})


#: torch.export.load is not re-entrant, and the pickle guard patches torch process-wide: one load at a time.
_LOAD_LOCK = threading.Lock()


def load_exported_program(path: str | os.PathLike, extra_files: dict[str, Any] | None = None):
    """``torch.export.load`` of a .pt2 file that cannot run code while it is read: the archive is checked first
    (:func:`_check_pt2`: no compiled libraries, no pickled objects, shape expressions plain arithmetic), then loaded
    with every unpickling weights-only (:func:`_no_code_from_pickles`). A refused archive is a DsrnetError; a
    damaged one raises from torch, quietly (callers turn it into one error line)."""
    _check_pt2(Path(path))
    with _LOAD_LOCK, _quiet(), _no_code_from_pickles():
        return torch.export.load(str(path), extra_files=extra_files)


@contextlib.contextmanager
def _quiet():
    """The ONNX/export machinery prints progress and warns about things that do not concern the user."""
    import io
    import logging

    levels = {n: logging.getLogger(n).level for n in ("torch.onnx", "torch.export", "torch._dynamo")}
    for n in levels:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def export_onnx_model(model: nn.Module, image_size: int, metadata: dict[str, str], out: Path) -> Path:
    """Write ``model`` as ONNX (torch.onnx dynamo exporter, dynamic batch) with ``metadata`` in
    metadata_props."""
    require("onnxscript", "onnx")
    onnx = require("onnx", "onnx")
    x = torch.randn(_EXAMPLE_BATCH, 3, image_size, image_size)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model,
            (x,),
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            input_names=["images"],
            output_names=["logits"],
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata), **metadata})
    return atomic_write(out, lambda f: onnx.save_model(proto, f))


def _export_torchscript(model: nn.Module, image_size: int, metadata: dict[str, str], out: Path) -> Path:
    x = torch.randn(_EXAMPLE_BATCH, 3, image_size, image_size)
    with _quiet(), torch.no_grad():
        scripted = torch.jit.trace(model, (x,), check_trace=False)
        scripted = torch.jit.freeze(scripted.eval())
    extra = {METADATA_KEY: json.dumps(metadata)}
    with _quiet():
        return atomic_write(out, lambda f: torch.jit.save(scripted, f, _extra_files=extra))


def _export_program(model: nn.Module, image_size: int, metadata: dict[str, str], out: Path) -> Path:
    x = torch.randn(_EXAMPLE_BATCH, 3, image_size, image_size)
    with _quiet(), torch.no_grad():
        program = torch.export.export(
            model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
        )
    extra = {METADATA_KEY: json.dumps(metadata)}
    return atomic_write(out, lambda f: torch.export.save(program, f, extra_files=extra))


_WRITERS = {
    "onnx": export_onnx_model,
    "torchscript": _export_torchscript,
    "exported-program": _export_program,
}


def guess_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    for fmt, s in SUFFIXES.items():
        if suffix == s:
            return fmt
    if suffix == ".xml":
        return "openvino-ir"
    raise DsrnetError(
        f"cannot tell the format of {path} from its suffix; fix: use .onnx, .pt (TorchScript) or .pt2"
    )


def check_export_name(path: str | os.PathLike) -> None:
    """A TorchScript, ExportedProgram or ONNX file (recognised by content) under another suffix is one DsrnetError
    naming the rename; anything else passes."""
    from dsrnet.run.checkpoint import exported_kind

    path = Path(path)
    kind = exported_kind(path)
    wanted = {"TorchScript": SUFFIXES["torchscript"], "an ExportedProgram": SUFFIXES["exported-program"],
              "ONNX": SUFFIXES["onnx"]}.get(kind)  # fmt: skip
    if wanted and wanted != path.suffix.lower():
        raise DsrnetError(f"{path} is {kind}, read from files named *{wanted}; fix: rename it to "
                          f"{path.with_suffix(wanted).name}")  # fmt: skip


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The dsrnet metadata stored in an exported file (any of :data:`FORMATS`), parsed (lists, ints,
    bools)."""
    path = Path(path)
    if not path.is_file():
        raise DsrnetError(f"exported model {path} not found; fix: pass a file written by `dsrnet export`")
    check_export_name(path)  # read by its suffix's reader: a misnamed file gets the rename, not a parse error
    fmt = guess_format(path)
    raw: str | bytes | None = None
    try:
        if fmt == "onnx":
            onnx = require("onnx", "onnx")
            model = onnx.load_model(str(path), load_external_data=False)
            raw = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
        elif fmt == "torchscript":
            files = {METADATA_KEY: ""}
            load_torchscript(path, extra_files=files)
            raw = files[METADATA_KEY]
        elif fmt == "exported-program":
            files = {METADATA_KEY: ""}
            load_exported_program(path, extra_files=files)
            raw = files[METADATA_KEY]
    except DsrnetError:
        raise
    except Exception as err:  # noqa: BLE001 - corrupt files surface as many exception types
        check_export_name(path)  # a TorchScript file named .pt2 is not damaged, only misnamed
        raise DsrnetError(f"cannot read {path} as {fmt} ({type(err).__name__}); fix: re-export it") from None
    if not raw:
        raise DsrnetError(f"{path} carries no dsrnet metadata; fix: export it with `dsrnet export`")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise DsrnetError(f"{path}'s dsrnet metadata is not JSON; fix: re-export it with `dsrnet export`") from None
    return parse_metadata(meta, str(path))


def export_model(
    source: str | os.PathLike | nn.Module | ModelSource,
    out: str | os.PathLike,
    *,
    format: str = "onnx",  # noqa: A002 - the CLI flag's name
    int8: bool = False,
    calib_images: int = 300,
    data_dir: str | os.PathLike | None = None,
    quantizer: str | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Export ``source`` (see :func:`dsrnet.export.source.load_source`) to ``out`` and check it; see the
    module docstring. ``int8`` (ONNX only) quantises the checked fp32 file with
    :func:`dsrnet.export.quantize.quantize_onnx` calibrated on ``calib_images`` CIFAR-10 training images from
    ``data_dir``."""
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)  # a registry name gets the same random weights every time
        return _export_model(
            source, out, format=format, int8=int8, calib_images=calib_images, data_dir=data_dir,
            quantizer=quantizer, image_size=image_size, num_classes=num_classes, tolerance=tolerance, seed=seed,
        )  # fmt: skip


def _export_model(source, out, *, format, int8, calib_images, data_dir, quantizer,  # noqa: A002
                  image_size, num_classes, tolerance, seed) -> ExportResult:  # fmt: skip
    _check_format(format)
    if int8 and format != "onnx":
        raise DsrnetError(f"--int8 is available for --format onnx only, not {format}; fix: use --format onnx")
    src = source if isinstance(source, ModelSource) else load_source(
        source, num_classes=num_classes, image_size=image_size
    )  # fmt: skip
    if getattr(src.model, "features_only", False):
        raise DsrnetError("features_only models return several maps; fix: export the classifier model")
    if format == "onnx" and type(src.model).__name__ == "FusedDSRNet":
        raise DsrnetError(
            "a fuse()d DSRNet runs dsrnet's own kernels, which ONNX cannot hold; fix: export the model before fuse() "
            "(the export folds BatchNorm itself), or use --format torchscript / exported-program"
        )
    if not tolerance >= 0:
        raise DsrnetError(f"tolerance must be a number >= 0, got {tolerance}; fix: pass e.g. --tolerance 1e-3")
    out = export_target(out, (SUFFIXES[format],), "--out", source)
    parse_metadata(src.metadata(), str(out))  # what its readers will check, before anything is written
    folded, n_folded = fold_batchnorm(src.model)
    metadata = src.metadata()
    metadata["batchnorm_folded"] = str(n_folded)
    # Written under temp names and moved into place only once checked (and quantised): a failed export leaves
    # nothing behind, and an earlier file of the same name stays until it is replaced by a checked one.
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    int8_tmp = out.with_name(f".{out.stem}.{os.getpid()}.int8.tmp{out.suffix}")
    try:
        try:
            _WRITERS[format](folded, src.image_size, metadata, tmp)
        except DsrnetError:
            raise
        except Exception as err:  # noqa: BLE001 - surface exporter failures as one line
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # the ONNX exporter colours its messages
            msg = text.splitlines()[0][:300] if text else ""
            # An ImportError inside the exporter: an onnx/onnxscript too old or too new for this torch.
            fix = (
                'pip install -U "dsrnet[onnx]" (onnx, onnxruntime, onnxscript >= 0.6)'
                if isinstance(err, ImportError)
                else "try another --format, or report the model and this message"
            )
            raise DsrnetError(
                f"exporting {src.name} to {format} failed ({type(err).__name__}: {msg}); fix: {fix}"
            ) from None
        diff, tol = _check_against_pytorch(src, tmp, out, format, tolerance, seed)
        files = [out]
        int8_info = None
        if int8:
            from dsrnet.export.quantize import quantize_onnx

            fp32_path = out.with_name(out.stem + ".fp32.onnx")
            int8_info = quantize_onnx(
                tmp, int8_tmp, calib_images=calib_images, data_dir=data_dir, quantizer=quantizer, seed=seed,
                image_size=src.image_size, mean=src.mean, std=src.std,
            )  # fmt: skip
            os.replace(tmp, fp32_path)
            int8_info["fp32_path"] = str(fp32_path)
            files.append(fp32_path)
        os.replace(int8_tmp if int8 else tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        int8_tmp.unlink(missing_ok=True)
    result = ExportResult(out, format, diff, tol, n_folded, read_metadata(out), files=files)
    result.int8 = int8_info
    return result


def _check_against_pytorch(src, path: Path, out: Path, format: str, tolerance: float, seed: int):  # noqa: A002
    """Run the exported file at ``path`` on random images and compare with PyTorch; ``(max abs diff, tolerance)``
    or a one-line error naming ``out``."""
    from dsrnet.export.backends import load_runner

    x = torch.randn(
        _CHECK_BATCH, 3, src.image_size, src.image_size, generator=torch.Generator().manual_seed(seed)
    )
    with torch.inference_mode():
        want = src.model(x).float()
    backend = "onnxruntime" if format == "onnx" else "torch"
    try:
        got = load_runner(backend, path, threads=None)(x)
    except UnsafeProgram as err:  # what dsrnet's own reader refuses to run from a file: say so for this model
        raise DsrnetError(
            f"{src.name} exported to {format}: {err.what}, which dsrnet's {format} reader refuses (it reads only a "
            f"classifier's forward of known ops from such files); fix: export it with --format onnx"
        ) from None
    except DsrnetError:
        raise
    except Exception as err:  # noqa: BLE001 - a file its own runtime cannot run: one line, not a traceback
        raise DsrnetError(f"the exported {format} file for {out} does not run ({type(err).__name__}); fix: report "
                          f"this with the model name and --format") from None  # fmt: skip
    if tuple(got.shape) != tuple(want.shape):
        raise DsrnetError(f"exported {out} returns shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    diff = float((got - want).abs().max())
    tol = tolerance * max(1.0, float(want.abs().max()))
    if not diff <= tol:  # also catches NaN
        raise DsrnetError(
            f"exported {out} does not match PyTorch: max abs diff {diff:.3g} > tolerance {tol:.3g}; fix: report "
            f"this with the model name (or raise --tolerance if the difference is expected)"
        )
    return diff, tol
