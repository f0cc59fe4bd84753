"""Inference (``dsrnet.infer``): evaluate a checkpoint, predict image files, rebuild the model from the checkpoint
alone -- and refuse damaged, hand-edited or diverged checkpoints and unreadable images before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dsrnet.data import DATASETS
from dsrnet.errors import DsrnetError
from dsrnet.infer import evaluate_checkpoint, model_from_checkpoint, predict
from dsrnet.models import weights
from dsrnet.run.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------- eval/predict


def test_a_weights_file_without_class_names_is_evaluated_with_its_datasets(learned_run, cifar10_dir, tmp_path):
    """eval of a file whose class names are empty crashed (an IndexError: 0 classes); its dataset's are used."""
    from safetensors.torch import load_file, save_file

    from dsrnet.infer import export_weights
    from dsrnet.models.weights import _read_header_metadata

    cfg, _ = learned_run
    path = export_weights(cfg.out_dir, tmp_path / "w.safetensors", dtype="fp32")
    metadata = {**_read_header_metadata(path), "class_names": "[]"}  # the same file with its class names emptied
    save_file(load_file(str(path)), str(tmp_path / "nameless.safetensors"), metadata=metadata)
    m = evaluate_checkpoint(tmp_path / "nameless.safetensors", data_dir=str(cifar10_dir), device="cpu",
                            test_subset_per_class=2, out_dir=tmp_path / "ev")  # fmt: skip
    assert m["test_images"] == 20
    assert (tmp_path / "ev" / "per_class.csv").read_text().splitlines()[1].startswith("airplane,")
    # a head of another size than the dataset's classes (a torchvision baseline: no num_classes attribute)
    from dsrnet.models import create_model
    from dsrnet.models.weights import save_weights

    net = create_model("mobilenet_v2_cifar", num_classes=7)
    meta = {"model": "mobilenet_v2_cifar", "num_classes": 7, "class_names": [], "input_size": [3, 32, 32],
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "dataset": "cifar10"}  # fmt: skip
    seven = save_weights(net, tmp_path / "seven.safetensors", metadata=meta)
    with pytest.raises(DsrnetError, match=r"has 7 outputs and no class names, and cifar10 has 10 classes"):
        evaluate_checkpoint(seven, data_dir=str(cifar10_dir), device="cpu", test_subset_per_class=1,
                            out_dir=tmp_path / "ev7")  # fmt: skip


def test_evaluate_checkpoint_writes_metrics_per_class_and_confusion(learned_run, cifar10_dir, tmp_path):
    cfg, final = learned_run
    out = tmp_path / "eval"
    m = evaluate_checkpoint(
        Path(cfg.out_dir) / "checkpoint.pt", data_dir=str(cifar10_dir), device="cpu",
        test_subset_per_class=30, out_dir=out,
    )  # fmt: skip
    assert m["test_images"] == 300
    # Same subset, same weights: eval reproduces the run's final-epoch numbers from the checkpoint alone.
    assert m["top1_error"] == pytest.approx(final["top1_error"])
    assert m["top3_error"] == pytest.approx(final["top3_error"])
    assert m["top5_error"] == pytest.approx(final["top5_error"])
    assert m["top5_error"] <= m["top3_error"] <= m["top1_error"]
    assert json.loads((out / "metrics.json").read_text())["top1_error"] == m["top1_error"]
    rows = (out / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,correct,total,accuracy" and len(rows) == 11
    assert sum(int(r.split(",")[2]) for r in rows[1:]) == 300
    correct = sum(int(r.split(",")[1]) for r in rows[1:])
    assert 100 * correct / 300 == pytest.approx(100 - m["top1_error"])
    conf = np.array(
        [[int(v) for v in r.split(",")[1:]] for r in (out / "confusion.csv").read_text().splitlines()[1:]]
    )
    assert conf.shape == (10, 10) and conf.sum() == 300 and np.trace(conf) == correct
    assert (conf.sum(axis=1) == 30).all()
    with Image.open(out / "confusion.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_predict_any_size_image(learned_run, cifar10_dir, tmp_path):
    cfg, _ = learned_run
    rng = np.random.default_rng(0)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (75, 120, 4), dtype=np.uint8), "RGBA").save(big)
    test = np.load(cifar10_dir / "cifar10" / "test.npz")
    small = tmp_path / "frog.jpg"
    Image.fromarray(test["images"][4]).resize((17, 23)).save(small)
    res = predict(Path(cfg.out_dir), [big, small], top_k=3, device="cpu")
    assert len(res) == 2 and all(len(r) == 3 for r in res)
    for r in res:
        probs = [p for _, p in r]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(c in DATASETS["cifar10"].classes for c, _ in r)
    assert len(predict(Path(cfg.out_dir), [big], top_k=50, device="cpu")[0]) == 10  # capped at C
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(DsrnetError, match="cannot read image"):
        predict(Path(cfg.out_dir), [not_image])
    with pytest.raises(DsrnetError, match="not found"):
        predict(Path(cfg.out_dir), [tmp_path / "missing.png"])


def test_checkpoint_for_another_model_is_refused(learned_run, tmp_path):
    cfg, _ = learned_run
    ckpt = load_checkpoint(cfg.out_dir)
    ckpt["model_kwargs"] = {"widths": [16, 32, 64, 128]}
    with pytest.raises(DsrnetError, match="does not fit model 'dsrnet50'"):
        model_from_checkpoint(ckpt)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes((Path(cfg.out_dir) / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(DsrnetError, match="cannot be read safely"):
        load_checkpoint(bad)
    with pytest.raises(DsrnetError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DsrnetError, match="not a dsrnet checkpoint"):
        load_checkpoint(foreign)




def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from dsrnet.infer import load_image

    g = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(g).save(tmp_path / "deep.png")  # mode I;16: a 16-bit grey ramp
    Image.fromarray((g // 257).astype(np.uint8)).save(tmp_path / "flat.png")
    deep = load_image(tmp_path / "deep.png", 32).astype(int)
    flat = load_image(tmp_path / "flat.png", 32).astype(int)
    assert np.abs(deep - flat).max() <= 1  # the same picture, not 98 % white
    assert (deep == 255).mean() < 0.1


def test_exif_orientation_is_applied_as_viewers_do(tmp_path):
    """A phone photo stores its pixels rotated and says so in EXIF; the model must see it upright."""
    from dsrnet.infer import load_image

    rng = np.random.default_rng(0)
    upright = np.zeros((48, 64, 3), np.uint8)
    upright[:16] = rng.integers(0, 255, (16, 64, 3))  # top rows textured: orientation matters
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the stored pixels are the upright picture turned 90 CCW
    Image.fromarray(np.rot90(upright)).save(tmp_path / "tagged.png", exif=exif)
    np.testing.assert_array_equal(load_image(tmp_path / "tagged.png", 32), load_image(tmp_path / "upright.png", 32))


def test_oversized_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import dsrnet.infer as infer

    Image.new("RGB", (200, 150)).save(tmp_path / "wide.png")
    monkeypatch.setattr(infer, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(DsrnetError, match=r"200x150 pixels.*fix: downscale"):
        infer.load_image(tmp_path / "wide.png", 32)


# ------------------------------------------------------------------------------------------ exported weights


def test_export_weights_round_trip_and_predict(learned_run, cifar10_dir, tmp_path, capsys):
    import dsrnet
    from dsrnet.cli.main import main
    from dsrnet.infer import export_weights
    from dsrnet.models.weights import read_weights

    cfg, final = learned_run
    out = tmp_path / "w.safetensors"
    assert main(["export-weights", cfg.out_dir, str(out), "--dtype", "fp32"]) == 0
    assert "sha256" in capsys.readouterr().out
    state, meta = read_weights(out)
    assert meta["model"] == cfg.model and meta["model_kwargs"] == cfg.model_kwargs and meta["finished"] is True
    assert meta["top1"] == pytest.approx(final["top1"]) and meta["epochs"] == cfg.epochs
    assert meta["class_names"][3] == "cat" and meta["input_size"] == [3, 32, 32] and len(meta["mean"]) == 3
    assert meta["ema_decay"] == 0.0  # the trained weights themselves, no average
    model, _ = model_from_checkpoint(cfg.out_dir)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k  # fp32 export: bit-exact
    # fp16 (the default) is what ships: half the size, the same predictions on real test images
    half = tmp_path / "h.safetensors"
    export_weights(cfg.out_dir, half)
    assert half.stat().st_size < 0.6 * out.stat().st_size
    # Shipped weights are known by their sha256: the same run gives the same bytes (safetensors writes its
    # metadata in hash order, different from call to call; dsrnet sorts the header).
    again = [export_weights(cfg.out_dir, tmp_path / f"again{i}.safetensors") and tmp_path / f"again{i}.safetensors"
             for i in range(3)]  # fmt: skip
    assert {f.read_bytes() for f in again} == {half.read_bytes()}
    size = int.from_bytes(half.read_bytes()[:8], "little")
    header = json.loads(half.read_bytes()[8 : 8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    rebuilt = dsrnet.create_model(cfg.model, num_classes=10, checkpoint_path=half, **cfg.model_kwargs).eval()
    with np.load(cifar10_dir / "cifar10" / "test.npz") as z:
        images = z["images"][:64]
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        assert (rebuilt(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.95
    # predict with the weights file gives what predict with the checkpoint gives
    img = tmp_path / "frog.png"
    Image.fromarray(images[0]).resize((64, 64)).save(img)
    from_ckpt = predict(cfg.out_dir, [img], top_k=3, device="cpu")
    from_file = predict(out, [img], top_k=3, device="cpu")
    assert [c for c, _ in from_ckpt[0]] == [c for c, _ in from_file[0]]


def test_predict_without_a_model_uses_the_shipped_weights(learned_run, tmp_path, monkeypatch, capsys):
    import hashlib

    from dsrnet.cli.main import main
    from dsrnet.infer import export_weights

    cfg, _ = learned_run
    folder = tmp_path / "shipped"
    path = export_weights(cfg.out_dir, folder / "dsrnet50.c10.safetensors")
    _, meta = weights.read_weights(path)
    entry = weights.WeightsEntry("dsrnet50.c10", path.name, hashlib.sha256(path.read_bytes()).hexdigest(), meta)
    monkeypatch.setitem(weights.SHIPPED, "dsrnet50.c10", entry)
    monkeypatch.setattr("dsrnet.infer.DEFAULT_WEIGHTS", "dsrnet50.c10")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    img = tmp_path / "x.jpg"
    Image.fromarray(np.full((150, 200, 3), 128, np.uint8)).save(img)
    assert main(["predict", "--top-k", "2", str(img)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(img) and len(lines) == 3
    assert all(line.split()[0] in meta["class_names"] for line in lines[1:])
    # the checksum is verified: a replaced file is refused
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    weights._VERIFIED.clear()
    with pytest.raises(DsrnetError, match="checksum mismatch"):
        predict(None, [img])


def test_unknown_tag_and_bad_export_are_one_line(learned_run, tmp_path, monkeypatch):
    cfg, _ = learned_run
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(DsrnetError, match="shipped weights 'dsrnet50_cifar.c10' are missing"):
        predict("dsrnet50_cifar.c10", [tmp_path / "x.png"])
    # A mistyped tag: the error lists the tags there are, besides files and runs.
    with pytest.raises(DsrnetError, match=r"no weights tag, weights file or run named dsrnet50_cifar\.c99; fix: "
                                          r"pass a weights tag \(dsrnet50_cifar\.c10\)"):
        predict("dsrnet50_cifar.c99", [tmp_path / "x.png"])
    from dsrnet.infer import export_weights

    with pytest.raises(DsrnetError, match="bad value for dtype"):
        export_weights(cfg.out_dir, tmp_path / "w.safetensors", dtype="int8")
    with pytest.raises(DsrnetError, match="not found"):
        export_weights(tmp_path / "nothing", tmp_path / "w.safetensors")
    # The run's own checkpoint is never the target (it was overwritten, and the run lost), nor a folder.
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    before = ckpt.read_bytes()
    for target, match in ((ckpt, r"does not end in \.safetensors"), (tmp_path, "is a folder")):
        with pytest.raises(DsrnetError, match=match):
            export_weights(cfg.out_dir, target)
    assert ckpt.read_bytes() == before


# ---------------------------------------------------------------------------------------------- CPU backends


def test_eval_and_predict_on_cpu_backends_match_torch(learned_run, cifar10_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from dsrnet.export import export_model

    cfg, _ = learned_run
    common = {"data_dir": str(cifar10_dir), "device": "cpu", "test_subset_per_class": 30}
    eager = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "e", **common)
    ort = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "o", backend="onnxruntime", **common)
    assert ort["backend"] == "onnxruntime" and ort["test_images"] == eager["test_images"] == 300
    assert abs(ort["top1"] - eager["top1"]) <= 100 / 300 + 1e-9  # at most one image flips (float rounding)
    # an exported file is evaluated by the same call, its folder next to it
    onnx = export_model(cfg.out_dir, tmp_path / "m.onnx").path
    from_file = evaluate_checkpoint(onnx, backend="onnxruntime", **common)
    assert from_file["top1"] == pytest.approx(ort["top1"]) and (tmp_path / "m.onnx.eval" / "metrics.json").is_file()
    with pytest.raises(DsrnetError, match="exported file; fix: pass --backend onnxruntime"):
        evaluate_checkpoint(onnx, backend="torch", **common)
    # no backend named: an ONNX file goes to a CPU engine (the default torch backend was an error, as `dsrnet eval
    # --checkpoint m.onnx` right after `dsrnet export` shows), a checkpoint stays with torch
    default = evaluate_checkpoint(onnx, out_dir=tmp_path / "d", **common)
    assert default["backend"] in ("onnxruntime", "openvino") and default["top1"] == pytest.approx(ort["top1"])
    assert eager["backend"] == "torch"
    # bf16 where the engine runs it (torch-compile: weights and activations in bf16), one line where it does not
    half = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "b", backend="torch-compile", precision="bf16", **common)
    assert (half["backend"], half["precision"], half["test_images"]) == ("torch-compile", "bf16", 300)
    assert abs(half["top1"] - eager["top1"]) <= 2.0 and half["test_loss"] == pytest.approx(eager["test_loss"], rel=0.05)
    with pytest.raises(DsrnetError, match="precision 'bf16' is not available on backend 'onnxruntime'"):
        evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "x", backend="onnxruntime", precision="bf16", **common)
    assert not (tmp_path / "x").exists()  # refused before anything was written
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(img)
    a = predict(cfg.out_dir, [img], top_k=3, device="cpu", backend="torch")
    b = predict(onnx, [img], top_k=3, device="cpu", backend="onnxruntime")
    assert [c for c, _ in a[0]] == [c for c, _ in b[0]]
    assert [p for _, p in a[0]] == pytest.approx([p for _, p in b[0]], abs=1e-4)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; its files are still made and read
@pytest.mark.parametrize(("fmt", "name", "kind"), [("torchscript", "m.ts.pt", "TorchScript"),
                                                   ("exported-program", "m.pt2", "an ExportedProgram")])
def test_predict_runs_pytorch_exports_on_pytorch(learned_run, tmp_path, fmt, name, kind):
    """A TorchScript / ExportedProgram file is predicted with on PyTorch by default (``auto``), not read as a
    training checkpoint nor sent to ONNX Runtime; another engine asked for is one clear error."""
    from dsrnet.export import export_model

    cfg, _ = learned_run
    exported = export_model(cfg.out_dir, tmp_path / name, format=fmt).path
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(img)
    want = predict(cfg.out_dir, [img], top_k=3, device="cpu", backend="torch")
    got = predict(exported, [img], top_k=3, device="cpu")
    assert [c for c, _ in got[0]] == [c for c, _ in want[0]]
    assert [p for _, p in got[0]] == pytest.approx([p for _, p in want[0]], abs=1e-4)
    with pytest.raises(DsrnetError, match=f"is {kind}, which only PyTorch runs; fix: pass --backend torch"):
        predict(exported, [img], device="cpu", backend="onnxruntime")
    # On a GPU host "auto" picked CUDA for the batches of a module read onto the CPU: a traceback. The file runs on
    # the CPU there too; a GPU asked for is one clear error. ("meta" stands in for the GPU this test cannot have.)
    import dsrnet.infer

    real = dsrnet.infer.resolve_device
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dsrnet.infer, "resolve_device", lambda d: torch.device("meta") if d in ("auto", "cuda") else real(d))
        assert [c for c, _ in predict(exported, [img], top_k=3)[0]] == [c for c, _ in want[0]]
        with pytest.raises(DsrnetError, match=f"is {kind}, which dsrnet runs on the CPU; fix: pass --device cpu"):
            predict(exported, [img], device="cuda")
    # Where a training checkpoint is needed, the file is named for what it is, not "cannot be read safely".
    from dsrnet.run.checkpoint import load_checkpoint

    with pytest.raises(DsrnetError, match=f"is {kind} \\(a model for inference\\), not a training checkpoint"):
        load_checkpoint(exported)


def test_eval_and_predict_on_the_fused_form_match_torch(learned_run, cifar10_dir, tmp_path, monkeypatch):
    """``backend="fused"``: the trained DSRNet through :func:`dsrnet.fuse` (on a CPU its ops fall back to PyTorch's,
    with the same numerics), in fp32 and bf16; anything but a trained DSRNet is one clear error."""
    import dsrnet
    from dsrnet.run.checkpoint import save_checkpoint
    from tests.conftest import checkpoint_payload

    cfg, _ = learned_run
    common = {"data_dir": str(cifar10_dir), "device": "cpu", "test_subset_per_class": 30}
    eager = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "e", **common)
    # On a GPU the fused model's kernels are compiled in worker processes before the first batch (precompile: a
    # no-op here, so a stand-in records the pass it is given).
    passes = []
    monkeypatch.setattr(dsrnet.kernels, "precompile", lambda fn: passes.append(tuple(fn().shape)))
    fused = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "f", backend="fused", batch_size=128, **common)
    assert fused["backend"] == "fused" and fused["test_images"] == 300
    assert passes == [(128, 10)]  # one pass, on a batch of the evaluation's own shape
    assert abs(fused["top1"] - eager["top1"]) <= 100 / 300 + 1e-9  # at most one image flips (float rounding)
    assert fused["test_loss"] == pytest.approx(eager["test_loss"], rel=1e-4)
    half = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "h", backend="fused", precision="bf16", **common)
    assert abs(half["top1"] - eager["top1"]) <= 2.0 and half["test_loss"] == pytest.approx(eager["test_loss"], rel=0.05)
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(img)
    a = predict(cfg.out_dir, [img], top_k=3, device="cpu", backend="torch")
    b = predict(cfg.out_dir, [img], top_k=3, device="cpu", backend="fused")
    assert passes[-1] == (1, 10) and len(passes) == 3  # bf16 eval above, then predict's first chunk
    assert [c for c, _ in a[0]] == [c for c, _ in b[0]]
    assert [p for _, p in a[0]] == pytest.approx([p for _, p in b[0]], abs=1e-5)
    # Not a DSRNet, or not a trained model at all: refused before anything runs.
    net = dsrnet.create_model("mobilenet_v2_cifar", num_classes=10)
    save_checkpoint(tmp_path / "mnv2.pt", checkpoint_payload(net, {}, model="mobilenet_v2_cifar"))
    with pytest.raises(DsrnetError, match="backend fused runs DSRNet models, .* holds mobilenet_v2_cifar; fix: pass "
                                          "--backend torch"):  # fmt: skip
        predict(tmp_path / "mnv2.pt", [img], device="cpu", backend="fused")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(DsrnetError, match="exported file; fix: pass --backend onnxruntime or openvino"):
        predict(onnx, [img], device="cpu", backend="fused")


# ------------------------------------------------------------------------- preprocessing against a reference


def _reference_probs(run_dir, images_u8: np.ndarray) -> torch.Tensor:
    """softmax(model((x / 255 - mean) / std)) written out by hand, from the checkpoint's own statistics."""
    model, ckpt = model_from_checkpoint(run_dir)
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model((x - mean) / std).softmax(dim=1)


def test_predict_preprocessing_matches_a_hand_written_reference(learned_run, cifar10_dir, tmp_path):
    cfg, _ = learned_run
    test = np.load(cifar10_dir / "cifar10" / "test.npz")
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(test["images"][i]).save(files[-1])  # lossless, at the model's 32 px: no resize involved
    got = predict(cfg.out_dir, files, top_k=10, device="cpu", backend="torch")
    want = _reference_probs(cfg.out_dir, test["images"][:3])
    classes = list(DATASETS["cifar10"].classes)
    for row, ref in zip(got, want, strict=True):
        assert [classes.index(c) for c, _ in row] == ref.argsort(descending=True).tolist()
        assert [p for _, p in row] == pytest.approx(sorted(ref.tolist(), reverse=True), abs=1e-5)


def test_predict_runs_in_bounded_batches(learned_run, tmp_path, monkeypatch):
    from dsrnet import infer

    cfg, _ = learned_run
    rng = np.random.default_rng(1)
    files = []
    for i in range(5):
        files.append(tmp_path / f"r{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(files[-1])
    whole = predict(cfg.out_dir, files, top_k=3, device="cpu", backend="torch")
    monkeypatch.setattr(infer, "EVAL_BATCH_CPU", 2)
    seen = []
    real = infer._model_on_backend

    def spy(*args, **kwargs):
        model, info = real(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].shape[0]))
        return model, info

    monkeypatch.setattr(infer, "_model_on_backend", spy)
    chunked = predict(cfg.out_dir, files, top_k=3, device="cpu", backend="torch")
    assert seen == [2, 2, 1]
    assert [[c for c, _ in r] for r in chunked] == [[c for c, _ in r] for r in whole]
    assert [p for r in chunked for _, p in r] == pytest.approx([p for r in whole for _, p in r], abs=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated; its files are still made and read
def test_eval_feeds_a_model_exported_at_another_size_its_own_input_size(learned_run, cifar10_dir, tmp_path):
    # An export at 64 px was scored on the dataset's 32-px images (TorchScript silently, others crashed); eval
    # now resizes the test images as predict resizes an image file.
    from dsrnet.data import load_split
    from dsrnet.export import export_model
    from dsrnet.infer import _resized

    cfg, _ = learned_run
    exported = export_model(cfg.out_dir, tmp_path / "m64.pt", format="torchscript", image_size=64).path
    common = {"data_dir": str(cifar10_dir), "device": "cpu", "test_subset_per_class": 5}
    m = evaluate_checkpoint(exported, backend="torch", **common)
    subset = load_split("cifar10", "test", cifar10_dir).subset_per_class(5, cfg.seed)
    big = _resized(subset.images, 64)
    assert big.shape == (50, 64, 64, 3)
    ref = _reference_probs(cfg.out_dir, big).argmax(dim=1).numpy()
    assert m["test_images"] == 50
    assert m["top1"] == pytest.approx(100.0 * (ref == subset.labels).mean(), abs=100 / 50 + 1e-9)
    # the same image as a file, through predict: the same top-1 class as the resized array gives
    path = tmp_path / "one.png"
    Image.fromarray(subset.images[0]).save(path)
    top = predict(exported, [path], top_k=1, device="cpu")[0][0][0]
    assert top == DATASETS["cifar10"].classes[ref[0]]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_exports_without_class_names_and_misnamed_exports(tmp_path, caplog):
    from dsrnet.export import export_model
    from tests.export.conftest import tiny_model

    exported = export_model(tiny_model(), tmp_path / "tiny.pt", format="torchscript").path
    img = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(img)
    labels = [c for c, _ in predict(exported, [img], top_k=10, device="cpu")[0]]
    assert sorted(labels, key=int) == [str(i) for i in range(10)]  # class indices: the file names no classes
    # an export of a registry name holds random weights: predict says so (its file records trained: false)
    random = export_model("dsrnet50_cifar", tmp_path / "random.pt", format="torchscript").path
    with caplog.at_level("WARNING", logger="dsrnet"):
        predict(random, [img], top_k=1, device="cpu")
    assert "random.pt holds random weights" in caplog.text and "its predictions mean nothing" in caplog.text
    caplog.clear()  # a module of the user's own (fine-tuned: no shipped file's weights) is not called random
    with caplog.at_level("WARNING", logger="dsrnet"):
        predict(exported, [img], top_k=1, device="cpu")
    assert "random weights" not in caplog.text
    renamed = exported.rename(tmp_path / "tiny.pth")
    with pytest.raises(DsrnetError, match=r"tiny\.pth is TorchScript, read from files named \*\.pt; fix: rename it to "
                       r"tiny\.pt"):  # fmt: skip
        predict(renamed, [img], device="cpu")
    # a known suffix of another format: the content decides (it used to be read as that format and called damaged)
    as_pt2 = renamed.rename(tmp_path / "tiny.pt2")
    with pytest.raises(DsrnetError, match=r"tiny\.pt2 is TorchScript, read from files named \*\.pt; fix: rename it"):
        predict(as_pt2, [img], device="cpu")
    # ONNX is told by content too (it was "not a checkpoint (not the zip archive torch.save writes)")
    pytest.importorskip("onnxruntime")
    onnx = export_model(tiny_model(), tmp_path / "tiny.onnx").path.rename(tmp_path / "model.pt")
    for call in (lambda: predict(onnx, [img], device="cpu"), lambda: evaluate_checkpoint(onnx, device="cpu")):
        with pytest.raises(DsrnetError, match=r"model\.pt is ONNX, read from files named \*\.onnx; fix: rename it to "
                                              r"model\.onnx"):  # fmt: skip
            call()
    # OpenVINO IR names no classes or preprocessing: the ONNX file it came from is the one to pass
    ir = tmp_path / "model.xml"
    ir.write_text("<net/>")
    with pytest.raises(DsrnetError, match=r"model\.xml is OpenVINO IR, which carries none of dsrnet's metadata .*fix: "
                                          r"pass the \.onnx file"):  # fmt: skip
        predict(ir, [img], device="cpu", backend="openvino")


def test_predict_takes_folders_of_images(learned_run, tmp_path, capsys):
    from dsrnet.cli.main import main

    cfg, _ = learned_run
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.PNG"):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", "--checkpoint", str(cfg.out_dir), "--device", "cpu", "--top-k", "1", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0::2] == [str(folder / "a.jpg"), str(folder / "b.png"), str(folder / "sub" / "c.PNG")]
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(cfg.out_dir), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no image files" in err and "fix:" in err and len(err.strip().splitlines()) == 1


def test_an_export_is_scored_on_the_same_test_subset_as_its_run(cifar10_dir, tmp_path):
    """The run's seed picks its test subset; an export did not record it, so `eval --test-subset-per-class` scored
    the exported file on other images than the run it came from (a false fp32-vs-int8 difference)."""
    from dsrnet.export import export_model
    from dsrnet.train import train
    from tests.conftest import tiny

    cfg = tiny(tmp_path, cifar10_dir, epochs=1, subset_per_class=4, test_subset_per_class=2, seed=5)
    train(cfg)
    exported = export_model(cfg.out_dir, tmp_path / "m.pt", format="torchscript").path
    kwargs = {"data_dir": str(cifar10_dir), "test_subset_per_class": 7, "device": "cpu"}
    run = evaluate_checkpoint(cfg.out_dir, out_dir=tmp_path / "e1", **kwargs)
    file = evaluate_checkpoint(exported, out_dir=tmp_path / "e2", **kwargs)
    assert file["test_loss"] == pytest.approx(run["test_loss"], rel=1e-5)
    assert file["top1_error"] == run["top1_error"] and file["top3_error"] == run["top3_error"]


def test_eval_refuses_a_test_split_missing_a_class(cifar10_dir, tmp_path):
    """Training refused such a split, eval scored it over the other nine classes and said nothing."""
    folder = tmp_path / "data" / "cifar10"
    folder.mkdir(parents=True)
    with np.load(cifar10_dir / "cifar10" / "test.npz") as z:
        keep = z["labels"][:300] != 3
        np.savez(folder / "test.npz", images=z["images"][:300][keep], labels=z["labels"][:300][keep])
    with pytest.raises(DsrnetError, match=r"the cifar10 test split in .* has no image of class 3 \(cat\)"):
        evaluate_checkpoint("dsrnet50_cifar.c10", data_dir=str(tmp_path / "data"), device="cpu",
                            out_dir=tmp_path / "eval")  # fmt: skip
    assert not (tmp_path / "eval").exists()
