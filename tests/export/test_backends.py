"""dsrnet.export.backends: every installed backend computes the eager model's function; clear errors
otherwise."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

import dsrnet
from dsrnet.export import RunnerModule, backends, export_model, load_predictor, load_runner
from dsrnet.export.timing import time_runner
from tests.export.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """The ONNX export of conftest's ``tiny`` model (same seed, same weights), written once per module."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    return export_model(tiny_model(), tmp_path_factory.mktemp("onnx") / "tiny.onnx").path


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        "torch-compile",  # Inductor's C++ CPU backend, channels-last: one static build per batch size
        pytest.param("onnxruntime", marks=pytest.mark.skipif(not _installed("onnxruntime"), reason="no ort")),
        pytest.param("openvino", marks=pytest.mark.skipif(not _installed("openvino"), reason="no openvino")),
    ],
)
def test_runner_matches_eager_model(backend, tiny, tiny_onnx):
    source = tiny if backend.startswith("torch") else tiny_onnx
    run = load_runner(backend, source, threads=1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            want = tiny(x)
        got = run(x)
        assert got.dtype == torch.float32 and got.shape == (batch, 10)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not _installed("openvino"), reason="no openvino")
def test_openvino_bf16_is_close_and_bf16_elsewhere_is_refused(tiny, tiny_onnx):
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = tiny(x)
    got = load_runner("openvino", tiny_onnx, threads=1, precision="bf16")(x)
    # bf16 keeps 8 bits of mantissa: about 2-3 significant digits survive a small network.
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))
    with pytest.raises(
        dsrnet.DsrnetError, match="precision 'bf16' is not available on backend 'onnxruntime'"
    ):
        load_runner("onnxruntime", tiny_onnx, precision="bf16")


def test_torch_compile_bf16_is_close_and_bf16_where_a_backend_lacks_it_is_refused(tiny):
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = tiny(x)
    got = load_runner("torch-compile", tiny, threads=1, precision="bf16")(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    # bf16 keeps 8 bits of mantissa: about 2-3 significant digits survive a small network.
    torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * float(want.abs().max()))
    assert not torch.equal(got, want)  # it did compute in bf16
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(dsrnet.DsrnetError, match=f"precision 'bf16' is not available on backend '{backend}'.*"
                           "fix: use fp32 \\(bf16: openvino, torch-compile\\)"):  # fmt: skip
            load_runner(backend, tiny, precision="bf16")


def test_onnx_backend_exports_a_model_source_itself(tiny):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = load_runner("onnxruntime", tiny, threads=1, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(run(x), tiny(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("backend", "extra"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_backend_is_one_line_naming_the_extra(backend, extra, monkeypatch, tiny_onnx):
    module = backends.EXTRAS[backend][0]
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    assert not backends.backend_available(backend)
    assert backend not in backends.installed_backends()
    with pytest.raises(dsrnet.DsrnetError, match=rf"pip install 'dsrnet\[{extra}\]'") as err:
        load_runner(backend, tiny_onnx)
    assert "\n" not in str(err.value)


def test_best_cpu_backend_follows_the_measured_order(monkeypatch):
    monkeypatch.setattr(backends, "backend_available", lambda b: True)
    assert backends.best_cpu_backend() == backends.CPU_PREFERENCE[0]
    monkeypatch.setattr(backends, "backend_available", lambda b: b != "onnxruntime")
    assert backends.best_cpu_backend() == "openvino"
    monkeypatch.setattr(backends, "backend_available", lambda b: b == "torch")
    assert backends.best_cpu_backend() == "torch"


def test_bad_inputs(tiny, tiny_onnx, tmp_path):
    run = load_runner("torch", tiny)
    with pytest.raises(dsrnet.DsrnetError, match="float32"):
        run(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(dsrnet.DsrnetError, match=r"\(N, 3, H, W\)"):
        run(torch.zeros(3, 32, 32))
    with pytest.raises(dsrnet.DsrnetError, match="torch.Tensor"):
        run([[0.0]])
    with pytest.raises(dsrnet.DsrnetError, match="unknown backend 'tensorrt'"):
        load_runner("tensorrt", tiny)
    with pytest.raises(dsrnet.DsrnetError, match="threads must be"):
        load_runner("torch", tiny, threads=0)
    with pytest.raises(dsrnet.DsrnetError, match="use --backend onnxruntime or openvino"):
        load_runner("torch", tiny_onnx)
    with pytest.raises(dsrnet.DsrnetError, match="not found"):
        load_runner("onnxruntime", tmp_path / "missing.onnx")
    ort_run = load_runner("onnxruntime", tiny_onnx)
    with pytest.raises(dsrnet.DsrnetError, match=r"\(N, 3, H, W\)"):
        ort_run(torch.zeros(1, 1, 32, 32))


def test_time_runner_row_has_bench_fields(tiny):
    calls = []

    def run(x):
        calls.append(x.shape)
        return tiny(x)

    row = time_runner(run, batch_size=2, image_size=32, warmup=1, repeats=3, backend="torch", model="tiny")
    assert len(calls) == 4 and calls[0] == (2, 3, 32, 32)
    assert row["backend"] == "torch" and row["repeats"] == 3 and len(row["times_ms"]) == 3
    assert row["latency_min_ms"] <= row["latency_ms"] <= row["latency_max_ms"]
    assert row["images_per_s"] == pytest.approx(2 / (row["latency_ms"] / 1e3))


def test_load_predictor_reads_metadata_from_runs_and_exported_files(tiny_checkpoint, tmp_path):
    ckpt, model = tiny_checkpoint
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = model(x)
    run, meta = load_predictor(ckpt.parent, backend="torch")
    assert meta["classes"][3] == "class3" and meta["mean"] == pytest.approx([0.49, 0.48, 0.45])
    torch.testing.assert_close(run(x), want, rtol=1e-4, atol=1e-4)
    exported = export_model(ckpt, tmp_path / "m.pt", format="torchscript").path
    run, meta = load_predictor(exported, backend="torch")
    assert meta["classes"][3] == "class3" and meta["image_size"] == 32 and meta["trained"] is True
    module = RunnerModule(run).eval()  # what dsrnet.train.evaluate.evaluate expects
    torch.testing.assert_close(module(x), want, rtol=1e-4, atol=1e-4)
