"""dsrnet.export.quantize: int8 export of a small model runs, and its agreement with fp32 on real CIFAR-10 is
bounded.

Why the model is trained for a few seconds first: a randomly initialised network maps almost every image to
the same class, so int8-vs-fp32 top-1 agreement would be ~100 % whatever the quantiser did. After 60 SGD steps
the tiny DSRNet predicts many classes with small margins between them -- the case where int8 rounding can flip
a prediction -- so agreement measures something. The bounds: logits of a sound int8 graph correlate with
fp32's at > 0.98 (a wrong scale or zero point gives ~0), and >= 80 % of the 200 held-out top-1 decisions
survive (the measured value is ~97 %; the slack covers thread-count-dependent rounding).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dsrnet
from dsrnet.export import export_model, load_runner, read_metadata
from dsrnet.export.quantize import cifar10_batch, quantize_onnx
from tests.export.conftest import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(scope="module")
def trained_tiny(cifar10_dir):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, **TINY)
    x, y = cifar10_batch("train", 1280, data_dir=cifar10_dir, image_size=32, mean=MEAN, std=STD, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(60):
        idx = torch.randint(0, len(x), (32,), generator=torch.Generator().manual_seed(step))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_int8_export_runs_and_agrees_with_fp32(trained_tiny, cifar10_dir, tmp_path):
    res = export_model(
        trained_tiny, tmp_path / "tiny.onnx", int8=True, calib_images=100, data_dir=cifar10_dir
    )
    q = res.int8
    assert q["quantizer"] == "ort" and q["calibration_images"] == 100 and q["check_images"] == 200
    assert (tmp_path / "tiny.fp32.onnx").is_file() and res.path == tmp_path / "tiny.onnx"
    meta = read_metadata(res.path)
    assert meta["precision"] == "int8" and meta["num_classes"] == 10

    x, labels = cifar10_batch("test", 200, data_dir=cifar10_dir, image_size=32, mean=res.metadata["mean"],
                              std=res.metadata["std"])  # fmt: skip
    fp32 = load_runner("onnxruntime", tmp_path / "tiny.fp32.onnx")(x)
    assert len(set(fp32.argmax(1).tolist())) >= 4, (
        "the fp32 model must predict several classes for this to test"
    )
    assert q["logit_correlation"] > 0.98
    assert q["top1_agreement"] >= 0.80
    assert abs(q["int8_top1"] - q["fp32_top1"]) <= 0.10
    int8 = load_runner("onnxruntime", res.path)(x[:3])  # dynamic batch survives quantisation
    assert int8.shape == (3, 10)

    import onnx

    ops = {n.op_type for n in onnx.load(str(res.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_without_cifar10_is_a_clear_error(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    with pytest.raises(dsrnet.DsrnetError, match="real CIFAR-10"):
        export_model(tiny, tmp_path / "t.onnx", int8=True, data_dir=tmp_path / "empty")
    assert not list(tmp_path.iterdir())  # neither the int8 file nor its checked fp32 twin, nor a temp file


def test_bad_quantize_arguments(tiny, cifar10_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fp32 = export_model(tiny, tmp_path / "t.onnx").path
    with pytest.raises(dsrnet.DsrnetError, match="at least 10 images"):
        quantize_onnx(fp32, tmp_path / "q.onnx", calib_images=5, data_dir=cifar10_dir)
    with pytest.raises(dsrnet.DsrnetError, match="unknown quantizer 'tensorrt'"):
        quantize_onnx(fp32, tmp_path / "q.onnx", quantizer="tensorrt", data_dir=cifar10_dir)
