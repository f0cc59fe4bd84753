"""dsrnet.export.formats: every export format round-trips (outputs, dynamic batch, metadata, BN folded)."""

from __future__ import annotations

import re

import pytest
import torch

import dsrnet
from dsrnet.cli.main import main
from dsrnet.export import FORMATS, export_model, fold_batchnorm, load_runner, read_metadata
from dsrnet.export.formats import SUFFIXES
from tests.conftest import RunsCode
from tests.export.conftest import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
needs_onnx = pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="onnx extra not installed",
)


def _runner_backend(fmt: str) -> str:
    return "onnxruntime" if fmt == "onnx" else "torch"


def _bn_count(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fold_batchnorm_removes_every_bn_and_keeps_the_function(tiny):
    folded, n = fold_batchnorm(tiny)
    assert n == _bn_count(tiny) > 0
    assert _bn_count(folded) == 0
    assert _bn_count(tiny) == n  # the original is left alone
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), tiny(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "torchscript", "exported-program"])
def test_round_trip_matches_pytorch_with_dynamic_batch_and_metadata(fmt, tiny, tmp_path):
    out = tmp_path / f"tiny{SUFFIXES[fmt]}"
    res = export_model(tiny, out, format=fmt, image_size=32)
    assert res.path == out and out.is_file()
    assert res.folded_batchnorms == _bn_count(tiny)
    assert 0 <= res.max_abs_diff <= res.tolerance
    run = load_runner(_runner_backend(fmt), out)
    for batch in (1, 3):  # the file was traced at batch 2
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            want = tiny(x)
        got = run(x)
        assert got.shape == (batch, 10)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    meta = read_metadata(out)
    assert meta["num_classes"] == 10 and meta["image_size"] == 32
    # the module's own preprocessing (its pretrained_cfg: CIFAR-10 statistics for a _cifar model), not ImageNet's
    assert meta["mean"] == pytest.approx([0.4914, 0.4822, 0.4465]) and meta["trained"] is False
    assert meta["batchnorm_folded"] == str(_bn_count(tiny)) and meta["model"] == "dsrnet50_cifar"


def test_a_module_with_trained_weights_exports_what_eval_needs(tmp_path):
    """An exported module built on the shipped weights was named "DSRNet", untrained, with no dataset: `dsrnet eval`
    could not score the file. Its pretrained_cfg names the architecture and tag, and the tag the dataset."""
    model = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True)
    meta = read_metadata(export_model(model, tmp_path / "m.pt2", format="exported-program").path)
    assert (meta["model"], meta["trained"], meta["dataset"], meta["classes"][3]) == ("dsrnet50_cifar", True,
                                                                                      "cifar10", "cat")  # fmt: skip
    model.reset_classifier(3)  # a new head: no longer the tag's classes nor its dataset
    meta = read_metadata(export_model(model, tmp_path / "m3.pt2", format="exported-program").path)
    assert "dataset" not in meta and meta["classes"] == [] and meta["num_classes"] == 3
    # the tag names the cfg a model was built with, not weights it loaded: random weights are not "trained"
    random = dsrnet.create_model("dsrnet50_cifar.c10")
    meta = read_metadata(export_model(random, tmp_path / "r.pt2", format="exported-program").path)
    assert meta["trained"] is False and "dataset" not in meta


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnx), "exported-program"])
def test_the_batch_dimension_has_no_upper_bound(fmt, tiny, tmp_path):
    """A .pt2 refused batches over 4096 with a guard's traceback ("dynamic in every format", says the README)."""
    out = tmp_path / f"tiny{SUFFIXES[fmt]}"
    export_model(tiny, out, format=fmt, image_size=8)
    assert load_runner(_runner_backend(fmt), out)(torch.randn(4097, 3, 8, 8)).shape == (4097, 10)


@needs_onnx
def test_onnx_graph_has_no_batchnorm_and_stores_metadata_props(tiny, tmp_path):
    import onnx

    res = export_model(tiny, tmp_path / "tiny.onnx")
    proto = onnx.load(str(res.path))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["num_classes"] == "10" and "mean" in props and "dsrnet_metadata" in props
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic, not a fixed batch


@needs_onnx
def test_full_size_shipped_weights_onnx_export(tmp_path):
    """A weights tag exports the shipped trained model (real BatchNorm statistics folded), not a random one."""
    res = export_model("dsrnet50_cifar.c10", tmp_path / "dsrnet50_cifar.onnx")
    model = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).eval()
    assert res.folded_batchnorms == _bn_count(model) == 53
    assert res.metadata["trained"] is True and res.metadata["classes"][0] == "airplane"
    assert res.metadata["image_size"] == 32 and res.metadata["dataset"] == "cifar10"
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(load_runner("onnxruntime", res.path)(x), model(x), rtol=1e-3, atol=1e-3)


def test_checkpoint_source_carries_its_metadata(tiny_checkpoint, tmp_path):
    ckpt, model = tiny_checkpoint
    res = export_model(ckpt.parent, tmp_path / "run.pt2", format="exported-program")
    meta = res.metadata
    assert meta["trained"] is True and meta["model"] == "dsrnet50_cifar"
    assert meta["classes"] == [f"class{i}" for i in range(10)]
    assert meta["mean"] == pytest.approx([0.49, 0.48, 0.45]) and meta["dataset"] == "cifar10"
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(load_runner("torch", res.path)(x), model(x), rtol=1e-4, atol=1e-4)


def test_safetensors_source_keeps_the_weights_and_their_metadata(tiny, tmp_path):
    from dsrnet.models.weights import save_weights

    weights = save_weights(
        tiny, tmp_path / "w.safetensors", dtype=torch.float32,
        metadata={"model": "dsrnet50_cifar", "num_classes": 10, "model_kwargs": {k: list(v) for k, v in TINY.items()},
                  "class_names": [f"c{i}" for i in range(10)], "input_size": [3, 32, 32],
                  "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "dataset": "cifar10"},
    )  # fmt: skip
    res = export_model(weights, tmp_path / "w.pt", format="torchscript")
    assert res.metadata["mean"] == [0.5, 0.5, 0.5] and res.metadata["trained"] is True
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(load_runner("torch", res.path)(x), tiny(x), rtol=1e-4, atol=1e-4)


def test_mismatch_above_tolerance_raises_and_leaves_no_file(tiny, tmp_path, monkeypatch):
    from dsrnet.export import backends

    earlier = tmp_path / "t.pt"
    earlier.write_bytes(b"an earlier export")
    real = backends.load_runner

    def off_by_one(*args, **kwargs):  # an exported file whose outputs are 1 off PyTorch's
        run = real(*args, **kwargs)
        return lambda x: run(x) + 1.0

    monkeypatch.setattr(backends, "load_runner", off_by_one)
    with pytest.raises(dsrnet.DsrnetError, match="does not match PyTorch: max abs diff"):
        export_model(tiny, earlier, format="torchscript")
    # Nothing half-done: the unchecked file never took the name, the earlier one is intact, no temp file is left.
    assert earlier.read_bytes() == b"an earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]
    with pytest.raises(dsrnet.DsrnetError, match="tolerance must be a number >= 0"):
        export_model(tiny, tmp_path / "u.pt", format="torchscript", tolerance=-1.0)


def test_a_crafted_pt2_cannot_run_code_when_read(tiny, tmp_path):
    # torch.export.load falls back to torch.load(weights_only=False) for the archive's sample inputs: a .pt2
    # whose sample inputs are a code-running pickle ran that code on `dsrnet predict/eval --checkpoint x.pt2`.
    import io
    import zipfile

    from dsrnet.export.backends import load_predictor

    good = tmp_path / "good.pt2"
    export_model(tiny, good, format="exported-program")
    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    torch.save(RunsCode(marker), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w", zipfile.ZIP_STORED) as zout:
        names = [i.filename for i in zin.infolist()]
        assert any("sample_inputs/" in n for n in names), names
        for info in zin.infolist():
            data = payload.getvalue() if "sample_inputs/" in info.filename else zin.read(info.filename)
            zout.writestr(info, data)
    with pytest.raises(dsrnet.DsrnetError, match=r"cannot read .*evil\.pt2 as exported-program"):
        read_metadata(evil)
    with pytest.raises(dsrnet.DsrnetError):
        load_predictor(evil)
    assert not marker.exists()
    assert read_metadata(good)["image_size"] == 32  # a genuine archive still loads

    def doctored(name, change, add=None):
        out = tmp_path / name
        with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                zout.writestr(info, change(info.filename, zin.read(info.filename)))
            if add:
                zout.writestr(*add)
        return out

    # A shape expression is parsed by sympy.sympify, i.e. Python's eval: only plain arithmetic passes.
    code = f"__import__('os').system('touch {marker}') or Symbol('s77'".encode()
    evil_expr = doctored("expr.pt2", lambda n, d: d.replace(b"Symbol('s77'", code) if n.endswith(".json") else d)
    with pytest.raises(dsrnet.DsrnetError, match=r"shape expression that is not plain arithmetic .* fix: use a \.pt2"):
        read_metadata(evil_expr)
    # An AOTInductor package's shared library is loaded as native code: refused before torch sees the archive.
    evil_so = doctored("so.pt2", lambda n, d: d, ("archive/data/aotinductor/model/x.wrapper.so", b"\x7fELF..."))
    with pytest.raises(dsrnet.DsrnetError, match=r"holds archive/data/aotinductor/model/x\.wrapper\.so, which would "
                                                 r"run as code when read"):  # fmt: skip
        load_predictor(evil_so)
    assert not marker.exists()


_METADATA = {"model": "x", "num_classes": "10", "image_size": "32", "mean": "[0.5, 0.5, 0.5]",
             "std": "[0.5, 0.5, 0.5]", "classes": "[]"}  # fmt: skip


class _WritesOnLoad(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) writes a file."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker
        self.w = torch.zeros(1)

    def forward(self, x):
        return x.mean((2, 3))

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8).fill_(65)
        self.w = state[0]
        self.training = state[1]


def _rewrite_code(src, out, edit):
    """A copy of TorchScript archive ``src`` with ``edit`` applied to its code files (a hand-crafted file)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if "/code/" in item.filename and item.filename.endswith(".py"):
                data = edit(data.decode()).encode()
            zout.writestr(item, data)
    return out


class _WritesOnRun(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, x):
        written = torch.from_file(self.marker, shared=True, size=4, dtype=torch.uint8).fill_(66)
        return x.mean((2, 3)) + written[:1].float() * 0


def test_torchscript_and_pt2_files_that_would_write_files_are_refused_before_loading(tmp_path):
    """TorchScript and .pt2 files are programs: one whose ``__setstate__`` or graph called ``torch.from_file``
    overwrote any file of the user's on ``dsrnet predict``. Only a classifier's forward of plain ops is read."""
    import json

    from dsrnet.export.backends import load_predictor

    marker = tmp_path / "WRITTEN"
    script = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), str(script),
                   _extra_files={"dsrnet_metadata": json.dumps(_METADATA)})  # fmt: skip
    with pytest.raises(dsrnet.DsrnetError, match=r"setstate\.pt: its code defines __getstate__\(\) besides forward"):
        read_metadata(script)
    with pytest.raises(dsrnet.DsrnetError, match="besides forward"):
        load_predictor(script)

    # A forward that writes a file, as scripted, and with the call spelled so that no regex sees "torch.from_file"
    # (TorchScript's parser takes spaces and line continuations there): the code is read as Python syntax.
    plain = tmp_path / "forward.pt"
    torch.jit.save(torch.jit.script(_WritesOnRun(str(marker))), str(plain),
                   _extra_files={"dsrnet_metadata": json.dumps(_METADATA)})  # fmt: skip
    spaced, continued = (_rewrite_code(plain, tmp_path / n, lambda c, r=r: c.replace("torch.from_file", r))
                         for n, r in (("spaced.pt", "torch . from_file"), ("continued.pt", "torch.\\\n  from_file")))  # fmt: skip
    for evil in (plain, spaced, continued):
        with pytest.raises(dsrnet.DsrnetError, match=r"its code calls torch\.from_file, not what an image classifier"):
            read_metadata(evil)
        with pytest.raises(dsrnet.DsrnetError, match="not what an image classifier does"):
            load_predictor(evil)
    # The same op through a namespace bound to a name: `m = ops.aten` then `m.from_file(...)` looked like a method
    # of a value and ran (a reviewer's crafted file overwrote a file on `dsrnet predict`).
    for alias, namespace in (("m", "ops.aten"), ("t", "torch")):
        def aliased(code, alias=alias, namespace=namespace):  # and fill_ as a method: only the alias is refused
            line = next(x for x in code.splitlines() if "torch.from_file" in x)
            indent = line[: len(line) - len(line.lstrip())]
            code = code.replace(line, f"{indent}{alias} = {namespace}\n{line.replace('torch.', f'{alias}.')}")
            return re.sub(r"torch\.fill_\((\w+), ", r"\1.fill_(", code)

        evil = _rewrite_code(plain, tmp_path / f"alias_{alias}.pt", aliased)
        with pytest.raises(dsrnet.DsrnetError, match=rf"its code uses {namespace} as a value, not what an image"):
            load_predictor(evil)

    program = tmp_path / "fromfile.pt2"
    with torch.library._scoped_library("aten", "IMPL") as lib:  # from_file has no meta kernel to export with
        lib.impl("from_file", lambda f, shared=None, size=0, **kw: torch.empty(size, dtype=kw.get("dtype"),
                                                                                device="meta"), "Meta")  # fmt: skip
        exported = torch.export.export(_WritesOnRun(str(marker)), (torch.randn(2, 3, 8, 8),))
    torch.export.save(exported, str(program), extra_files={"dsrnet_metadata": json.dumps(_METADATA)})
    with pytest.raises(dsrnet.DsrnetError, match=r"fromfile\.pt2: its graph calls torch\.ops\.aten\.\w+\.\w+, not what"):
        read_metadata(program)
    with pytest.raises(dsrnet.DsrnetError, match="not what an image classifier does"):
        load_predictor(program)
    assert not marker.exists()


def test_an_archive_naming_an_entry_twice_is_refused(tmp_path):
    """Python's zip reader (the checks) reads the last of two same-named entries, torch's (the load) often an earlier
    one: a reviewer's TorchScript file put a forward that writes a file before the harmless copy of the same code
    file, and it ran on `dsrnet predict`; a .pt2 did the same with a shape expression that runs Python. An entry
    named twice is refused, whichever copy is harmful."""
    import json
    import zipfile

    from dsrnet.export.backends import load_predictor

    marker = tmp_path / "WRITTEN"
    plain = tmp_path / "forward.pt"
    torch.jit.save(torch.jit.script(_WritesOnRun(str(marker))), str(plain),
                   _extra_files={"dsrnet_metadata": json.dumps(_METADATA)})  # fmt: skip
    harmless = _rewrite_code(plain, tmp_path / "harmless.pt", lambda c: re.sub(
        r"    marker = self\.marker\n.*?return torch\.add\(.*?\n", "    return torch.mean(x, [2, 3])\n", c, flags=re.S))
    evil = tmp_path / "twice.pt"
    with zipfile.ZipFile(plain) as bad, zipfile.ZipFile(harmless) as good, zipfile.ZipFile(evil, "w") as out:
        for item in good.infolist():
            if "/code/" in item.filename and item.filename.endswith(".py"):
                out.writestr(item.filename, bad.read(item.filename))  # the harmful copy first
            out.writestr(item.filename, good.read(item.filename))
    x = torch.randn(1, 3, 8, 8)
    run, _ = load_predictor(harmless, backend="torch")  # the same file with only the harmless copy loads and runs
    run(x)
    with pytest.raises(dsrnet.DsrnetError, match=r"twice\.pt: its archive holds entry .*/code/__torch__.*\.py more "
                                                 r"than once"):  # fmt: skip
        run, _ = load_predictor(evil, backend="torch")
        run(x)  # (before the check: torch loaded the harmful copy, which wrote the file here)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("error", "fix"),
    [(ModuleNotFoundError("No module named 'onnxscript._framework_apis.torch_2_11'"), r'pip install -U "dsrnet\[onnx\]"'),
     (RuntimeError("unsupported operator"), "try another --format"),
     (RuntimeError("\x1b[96mConversionError\x1b[0m: no symbolic\nstep 3/3"), r"try another --format")],
)  # fmt: skip
def test_exporter_failures_are_one_line_with_a_fix(error, fix, tiny, tmp_path, monkeypatch):
    # An onnxscript too old for this torch fails inside torch.onnx with an ImportError: the fix is an upgrade.
    from dsrnet.export import formats

    def broken_writer(*args):
        raise error

    monkeypatch.setitem(formats._WRITERS, "onnx", broken_writer)
    with pytest.raises(dsrnet.DsrnetError, match=rf"exporting .* to onnx failed \({type(error).__name__}: .*; fix: {fix}") as err:
        export_model(tiny, tmp_path / "m.onnx")
    assert "\x1b" not in str(err.value) and "\n" not in str(err.value)  # the exporter's colours and later lines
    assert list(tmp_path.iterdir()) == []


def test_a_fused_model_is_refused_for_onnx_with_the_fix(tiny, tmp_path):
    with pytest.raises(dsrnet.DsrnetError, match=r"fuse\(\)d DSRNet runs dsrnet's own kernels, which ONNX cannot hold"):
        export_model(dsrnet.fuse(tiny), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_a_fused_model_exports_to_the_formats_that_onnxs_refusal_names(tiny, tmp_path, fmt):
    """The .pt2 of a fuse()d model was refused by its own reader (torch.export puts _assert_tensor_metadata checks
    around the custom ops), while the ONNX refusal sent the user to exported-program: a circle."""
    out = tmp_path / f"m{SUFFIXES[fmt]}"
    fused = dsrnet.fuse(tiny)
    export_model(fused, out, format=fmt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_runner("torch", out)(x), fused(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("fmt", "name", "match"), [
    ("onnx", "m.txt", r"does not end in \.onnx"),
    ("torchscript", "m.pt2", r"does not end in \.pt;"),
    ("exported-program", "m.pt", r"does not end in \.pt2"),
    ("torchscript", "run/checkpoint.pt", "is a file of the run in"),
])  # fmt: skip
def test_export_targets_are_checked_before_anything_is_written(tiny, tmp_path, fmt, name, match):
    from dsrnet.run.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "run" / "checkpoint.pt", {"epoch": 1})  # any run folder's checkpoint
    before = ckpt.read_bytes()
    with pytest.raises(dsrnet.DsrnetError, match=match):
        export_model(tiny, tmp_path / name, format=fmt)
    assert ckpt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_programs_of_other_pools_and_of_timm_models_are_read_back(fmt, tmp_path):
    """The op allowlist of the TorchScript/.pt2 reader first refused DSRNet's own max/avgmax/catavgmax pools and
    a timm ConvNeXt (layer_norm), which had exported and run before."""
    timm = pytest.importorskip("timm")
    models = {gp: tiny_model() for gp in ("max", "avgmax", "catavgmax")}
    for gp, model in models.items():
        model.reset_classifier(10, gp)
    models["convnext_atto"] = timm.create_model("convnext_atto", num_classes=10).eval()
    for name, model in models.items():
        out = tmp_path / f"{name}{SUFFIXES[fmt]}"
        export_model(model, out, format=fmt, image_size=32)
        assert load_runner("torch", out)(torch.randn(2, 3, 32, 32)).shape == (2, 10), name


def test_exporting_leaves_the_callers_model_mode_and_random_state_alone(tiny, tmp_path):
    """export_model / fold_batchnorm / load_runner put the caller's model in eval mode (a model exported mid-training
    went on training with frozen BatchNorm statistics) and reseeded the global RNG."""
    tiny.train()
    tiny.layer1.eval()  # a per-module mode, as a partly frozen model has
    modes = [m.training for m in tiny.modules()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    export_model(tiny, tmp_path / "m.pt", format="torchscript")
    fold_batchnorm(tiny)
    load_runner("torch", tiny)
    assert [m.training for m in tiny.modules()] == modes
    assert torch.equal(torch.get_rng_state(), state)


def test_a_checkpoint_is_never_overwritten_by_its_own_export(tiny_checkpoint, tmp_path):
    """A checkpoint outside a run folder, exported onto itself, was replaced by the TorchScript file."""
    import shutil

    path, _ = tiny_checkpoint
    lone = tmp_path / "lone" / "ck.pt"
    lone.parent.mkdir()
    shutil.copy(path, lone)
    before = lone.read_bytes()
    with pytest.raises(dsrnet.DsrnetError, match=r"--out .*ck\.pt is the file being exported; fix:"):
        export_model(lone, lone, format="torchscript")
    assert lone.read_bytes() == before and sorted(p.name for p in lone.parent.iterdir()) == ["ck.pt"]


@pytest.mark.parametrize(
    ("source", "kwargs", "match"),
    [
        ("dsrnet50_cifar", {"format": "tflite"}, "unknown export format 'tflite'"),
        ("dsrnet50_cifar", {"format": "torchscript", "int8": True}, "--int8 is available for --format onnx"),
        ("no_such_model", {}, "neither a file, a run folder, a weights tag nor a registered model"),
        # a mistyped tag is pointed at the tags (trained), not only at the names (random weights)
        ("dsrnet50_cifar.c1", {}, r"a tag \(.*dsrnet50_cifar\.c10.*: trained\) or a model name"),
        ("dsrnet50_cifar", {"image_size": 4}, "image size must be an integer >= 8"),
        ("dsrnet50_cifar", {"num_classes": 0}, "num_classes must be an integer >= 1"),
        ("missing/checkpoint.pt", {}, "no weights tag, weights file or run named missing/checkpoint.pt"),
    ],
)
def test_bad_export_arguments(source, kwargs, match, tmp_path):
    with pytest.raises(dsrnet.DsrnetError, match=match):
        export_model(source, tmp_path / "out.onnx", **kwargs)


def test_out_is_a_folder_and_features_only_models_are_refused(tmp_path):
    model = tiny_model()
    with pytest.raises(dsrnet.DsrnetError, match="is a folder"):
        export_model(model, tmp_path, format="torchscript")
    backbone = dsrnet.create_model("dsrnet50_cifar", features_only=True, **TINY)
    with pytest.raises(dsrnet.DsrnetError, match="features_only"):
        export_model(backbone, tmp_path / "b.pt", format="torchscript")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated; still what users have
def test_read_metadata_errors(tmp_path):
    with pytest.raises(dsrnet.DsrnetError, match="not found"):
        read_metadata(tmp_path / "nothing.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(dsrnet.DsrnetError, match="cannot tell the format"):
        read_metadata(tmp_path / "model.bin")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(dsrnet.DsrnetError, match=r"junk\.pt2 is not a \.pt2 archive \(not a zip file\); fix:"):
        read_metadata(tmp_path / "junk.pt2")
    plain = torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 4, 4))
    plain.save(str(tmp_path / "plain.pt"))
    with pytest.raises(dsrnet.DsrnetError, match="no dsrnet metadata"):
        read_metadata(tmp_path / "plain.pt")
    (tmp_path / "plain.pt").rename(tmp_path / "plain.pt2")  # readable, but not as the suffix's format
    with pytest.raises(dsrnet.DsrnetError, match=r"plain\.pt2 is TorchScript, read from files named \*\.pt; fix: "
                       r"rename it to plain\.pt$"):  # fmt: skip
        read_metadata(tmp_path / "plain.pt2")


def test_cli_export_from_a_run(tiny_checkpoint, tmp_path, capsys):
    ckpt, _ = tiny_checkpoint
    out = tmp_path / "exported.pt"
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "dsrnet50_cifar ->" in line and "BatchNorms folded" in line and "max |exported - PyTorch|" in line
    assert read_metadata(out)["classes"][0] == "class0"
    assert main(["export", "no_such_model", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "dsrnet: error:" in capsys.readouterr().err


def test_formats_constant_matches_the_cli():
    assert FORMATS == ("onnx", "torchscript", "exported-program")


@pytest.mark.parametrize(
    ("edit", "message"),
    [({"image_size": "20000"}, r"bad image_size \(20000; expected an integer in 8\.\.4096\)"),
     ({"image_size": "abc"}, r"field image_size is not readable"),
     ({"classes": "notjson"}, r"field classes is not readable"),
     ({"classes": '["a", "b"]'}, r"bad classes .*expected a list of 10 class names"),
     ({"std": "[0, 0, 0]"}, r"bad std .*3 finite numbers > 0"),
     ({"mean": None}, r"metadata has no mean")],
)  # fmt: skip
def test_an_exported_files_metadata_is_checked_before_it_is_used(tiny, tmp_path, edit, message):
    """A hand-edited export's metadata gave tracebacks (KeyError, int(), a 20000-px resize of every image): each
    field inference uses is checked, one line naming it."""
    onnx = pytest.importorskip("onnx")
    import json

    from dsrnet.export.formats import METADATA_KEY

    path = export_model(tiny, tmp_path / "m.onnx").path
    model = onnx.load_model(str(path))
    prop = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    meta = {k: v for k, v in {**json.loads(prop.value), **edit}.items() if v is not None}
    prop.value = json.dumps(meta)
    onnx.save_model(model, str(path))
    with pytest.raises(dsrnet.DsrnetError, match=message) as err:
        read_metadata(path)
    assert "\n" not in str(err.value) and "fix: re-export it" in str(err.value)


def test_what_an_export_records_is_checked_before_the_file_is_written(tmp_path):
    """A size its readers refuse was written, then refused by the export's own read-back (file left, or an
    earlier one replaced): checked first now. Pooled features (num_classes=0) export as before."""
    with pytest.raises(dsrnet.DsrnetError, match=r"image size 5000 is over 4096 px.*fix: --image-size 4096"):
        export_model("dsrnet50_cifar", tmp_path / "big.pt", format="torchscript", image_size=5000)
    assert not (tmp_path / "big.pt").exists()
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=0, widths=(4, 8, 8, 8), layers=(1, 1, 1, 1)).eval()
    result = export_model(model, tmp_path / "features.pt", format="torchscript")
    assert result.metadata["num_classes"] == 0 and result.metadata["classes"] == []
