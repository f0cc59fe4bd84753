"""Trained weights: the safetensors format, the tag table, checksums, and loading through create_model, timm,
torch.hub and checkpoint_path. Every file here is a tiny model the test exports itself (nothing shipped is read)."""

from __future__ import annotations

import pytest
import torch

import dsrnet
from dsrnet.models import weights
from dsrnet.models.weights import read_weights, register_weights, save_weights
from tests.conftest import REPO

TINY = {"widths": [4, 8, 8, 8], "layers": [1, 1, 1, 1]}
CLASSES = ["cat", "dog", "emu"]
META = {
    "model": "dsrnet50_cifar",
    "num_classes": 3,
    "class_names": CLASSES,
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
    "input_size": [3, 32, 32],
    "dataset": "toy",
    "recipe": "fast",
    "epochs": 1,
    "seed": 0,
    "top1": 33.3,
    "top3": 100.0,
    "model_kwargs": TINY,
}


@pytest.fixture
def trained(tmp_path):
    """A tiny 'trained' model (random weights, BN statistics moved off their defaults) and its fp32 export."""
    torch.manual_seed(0)
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=3, **TINY).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    model.eval()
    path = save_weights(model, tmp_path / "tiny.safetensors", metadata=META, dtype=torch.float32)
    return model, path


@pytest.fixture
def registered(trained, monkeypatch, tmp_path):
    model, path = trained
    empty = tmp_path / "no-shipped-weights"
    empty.mkdir()
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(empty))  # shipped files, if any, never take part
    entry = register_weights("dsrnet50_cifar.tiny", path)
    yield model, entry
    weights.unregister_weights("dsrnet50_cifar.tiny")


def test_save_and_read_round_trip(trained, tmp_path):
    model, path = trained
    state, meta = read_weights(path)
    assert state.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    assert {k: meta[k] for k in META} == META and meta["dsrnet_version"] == dsrnet.__version__
    half = save_weights(model, tmp_path / "half.safetensors", metadata=META)  # fp16 by default
    state16, _ = read_weights(half)
    assert state16["conv1.weight"].dtype == torch.float16
    assert state16["bn1.num_batches_tracked"].dtype == torch.int64  # integer buffers keep their dtype
    assert half.stat().st_size < path.stat().st_size
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"model": "dsrnet50_cifar"}, "num_classes"),
        ({**META, "num_classes": 10}, "num_classes=10"),
        ({**META, "x": {1}}, "JSON"),
    ],
)
def test_save_rejects_bad_metadata(trained, tmp_path, metadata, match):
    with pytest.raises(dsrnet.DsrnetError, match=match):
        save_weights(trained[0], tmp_path / "bad.safetensors", metadata=metadata)


def test_read_rejects_corrupt_and_foreign_files(trained, tmp_path):
    _, path = trained
    data = path.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "text.safetensors": b"not a weights file at all",
        "header.safetensors": data[:8] + b"\xff" * 64,
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(dsrnet.DsrnetError) as err:
            read_weights(tmp_path / name)
        assert "\n" not in str(err.value) and "safetensors" in str(err.value), name
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(dsrnet.DsrnetError, match="not a dsrnet weights file"):
        read_weights(tmp_path / "plain.safetensors")
    with pytest.raises(dsrnet.DsrnetError, match="not found"):
        read_weights(tmp_path / "missing.safetensors")


def test_pretrained_by_tag_is_bit_exact(registered):
    model, entry = registered
    loaded = dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    cfg = loaded.pretrained_cfg
    assert cfg["tag"] == "tiny" and cfg["num_classes"] == 3 and tuple(cfg["label_names"]) == tuple(CLASSES)
    assert cfg["mean"] == (0.5, 0.4, 0.3) and cfg["std"] == (0.2, 0.25, 0.3)
    # The bare name picks the first weights whose file is present (timm's default-tag rule).
    assert torch.equal(dsrnet.create_model("dsrnet50_cifar", pretrained=True).eval()(x), model(x))


def test_pretrained_with_a_new_head_or_as_a_backbone(registered):
    model, _ = registered
    x = torch.randn(2, 3, 32, 32)
    other = dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True, num_classes=5).eval()
    assert other(x).shape == (2, 5) and "label_names" not in other.pretrained_cfg
    torch.testing.assert_close(other.forward_features(x), model.forward_features(x), rtol=0, atol=0)
    backbone = dsrnet.create_model(
        "dsrnet50_cifar.tiny", pretrained=True, features_only=True, out_indices=(1, 2)
    )
    want = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for got, ref in zip(backbone.eval()(x), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    # The same classes with a wider pooled feature: not a silently random head under the weights' class names.
    with pytest.raises(dsrnet.DsrnetError, match=r"classifier takes \d+ features, this model's head \d+ .*fix: keep "
                       r"global_pool='avg'"):  # fmt: skip
        dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True, global_pool="catavgmax")
    # another network with the same classes is named as such, not sent to global_pool
    narrower = {**TINY, "widths": [*TINY["widths"][:3], TINY["widths"][3] // 2]}
    with pytest.raises(dsrnet.DsrnetError, match=r"do not fit this model .*they record: dsrnet50_cifar"):
        dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True, **narrower)
    wide = dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True, global_pool="catavgmax", num_classes=5)
    assert wide.fc.in_features == 2 * model.fc.in_features and "label_names" not in wide.pretrained_cfg


def test_checksum_mismatch_and_unknown_tags(trained):
    _, path = trained
    register_weights("dsrnet50_cifar.bad", path, sha256="0" * 64)
    try:
        with pytest.raises(dsrnet.DsrnetError, match="checksum mismatch"):
            dsrnet.create_model("dsrnet50_cifar.bad", pretrained=True)
    finally:
        weights.unregister_weights("dsrnet50_cifar.bad")
    with pytest.raises(dsrnet.DsrnetError, match="unknown weights tag 'dsrnet50_cifar.nope'"):
        dsrnet.create_model("dsrnet50_cifar.nope", pretrained=True)
    with pytest.raises(dsrnet.DsrnetError, match="no pretrained weights for 'resnet50'"):
        dsrnet.create_model("resnet50", pretrained=True)
    with pytest.raises(dsrnet.DsrnetError, match="needs a tag"):
        register_weights("dsrnet50_cifar", path)
    with pytest.raises(dsrnet.DsrnetError, match="not 'dsrnet50'"):
        register_weights("dsrnet50.mine", path)


def test_shipped_entry_without_its_file(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    assert "dsrnet50_cifar.c10" in weights.list_weights()
    with pytest.raises(dsrnet.DsrnetError, match="shipped weights 'dsrnet50_cifar.c10' are missing.*DSRNET_WEIGHTS_DIR"):
        dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True)
    # Without pretrained, the tag still gives its configuration (CIFAR-10 classes) on a random model.
    model = dsrnet.create_model("dsrnet50_cifar.c10", **TINY)
    assert model.num_classes == 10 and model.pretrained_cfg["label_names"][0] == "airplane"


def test_weights_dir_override(trained, monkeypatch, tmp_path):
    model, path = trained
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "dsrnet50_cifar.toy.safetensors").write_bytes(path.read_bytes())
    entry = weights.WeightsEntry(
        "dsrnet50_cifar.toy", "dsrnet50_cifar.toy.safetensors", weights._sha256(path), META
    )
    monkeypatch.setitem(weights.SHIPPED, entry.name, entry)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(dsrnet.create_model("dsrnet50_cifar.toy", pretrained=True).eval()(x), model(x))


def test_checkpoint_path_loads_weights_files_and_training_checkpoints(trained, tmp_path):
    model, path = trained
    x = torch.randn(2, 3, 32, 32)
    from_file = dsrnet.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path=path, **TINY).eval()
    assert torch.equal(from_file(x), model(x))
    from dsrnet.run.checkpoint import save_checkpoint

    ckpt = save_checkpoint(
        tmp_path / "run" / "checkpoint.pt",
        {  # the fields `dsrnet train` writes that a model is rebuilt from
            "model": "dsrnet50_cifar",
            "num_classes": 3,
            "classes": ["a", "b", "c"],
            "image_size": 32,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "model_kwargs": TINY,
            "model_state": model.state_dict(),
        },
    )
    for source in (ckpt, ckpt.parent):  # the file or its run folder
        from_run = dsrnet.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path=source, **TINY).eval()
        assert torch.equal(from_run(x), model(x))
    # full-size model: names the mismatch, and the model the file records (the fix a user types)
    with pytest.raises(dsrnet.DsrnetError, match=r"do not fit this model \(missing layer1\.1\..*they record: "
                       r"dsrnet50_cifar, num_classes 3, model_kwargs \{\"widths\""):  # fmt: skip
        dsrnet.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path=ckpt)
    with pytest.raises(dsrnet.DsrnetError, match="do not fit"):
        dsrnet.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path=path)
    # Without num_classes the model takes the file's classes (not 1000 with the trained head silently dropped);
    # a count the file does not have is an error naming the head, as timm's strict checkpoint_path loading.
    for source in (path, ckpt):
        own = dsrnet.create_model("dsrnet50_cifar", checkpoint_path=source, **TINY).eval()
        assert own.num_classes == 3 and torch.equal(own(x), model(x))
        with pytest.raises(dsrnet.DsrnetError, match=r"fc\.bias is \(3,\), the model needs \(5,\).*num_classes"):
            dsrnet.create_model("dsrnet50_cifar", num_classes=5, checkpoint_path=source, **TINY)
    backbone = dsrnet.create_model("dsrnet50_cifar", features_only=True, checkpoint_path=path, **TINY).eval()
    assert torch.equal(backbone(x)[-1], model.forward_features(x))  # a backbone takes all but the head
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(dsrnet.DsrnetError, match=r"junk\.pt is not a checkpoint \(not the zip archive"):
        dsrnet.create_model("dsrnet50_cifar", checkpoint_path=tmp_path / "junk.pt")
    timm = pytest.importorskip("timm")  # timm's own checkpoint_path reads a dsrnet train checkpoint too
    via_timm = timm.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path=str(ckpt), **TINY).eval()
    assert torch.equal(via_timm(x), model(x))


@pytest.mark.parametrize("form", ["safetensors", "bare", "state_dict", "model", "state_dict_ema", "ddp", "compiled",
                                  "compiled_ddp", "timm_train"])
def test_checkpoint_path_takes_plain_state_dicts_as_timm_does(trained, tmp_path, form):
    """timm's checkpoint_path loads a plain state dict: safetensors without dsrnet's metadata, or torch.save's file
    of one, bare or under a training script's key (the weight average first), DDP's ``module.`` prefix dropped. So
    does dsrnet's, with weights_only=True, taking num_classes from fc.weight."""
    from safetensors.torch import save_file

    model, _ = trained
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pth")
    if form == "safetensors":
        save_file(state, str(path))
    elif form == "state_dict_ema":  # the average is preferred over the trained weights beside it
        torch.save({"state_dict": {k: torch.zeros_like(v) for k, v in state.items()}, "state_dict_ema": state}, path)
    elif form == "ddp":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    elif form == "compiled":  # a torch.compile'd model's state dict (timm strips the prefix key by key)
        torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, path)
    elif form == "compiled_ddp":  # torch.compile(DDP(model))
        torch.save({f"_orig_mod.module.{k}": v for k, v in state.items()}, path)
    elif form == "timm_train":  # timm's train.py: its args (an argparse.Namespace) beside the weights
        import argparse

        torch.save({"epoch": 3, "arch": "dsrnet50_cifar", "state_dict": state, "args": argparse.Namespace(lr=0.1)},
                   path)  # fmt: skip
    else:
        torch.save(state if form == "bare" else {form: state, "epoch": 3}, path)
    x = torch.randn(2, 3, 32, 32)
    loaded = dsrnet.create_model("dsrnet50_cifar", checkpoint_path=path, **TINY).eval()
    assert loaded.num_classes == 3 and torch.equal(loaded(x), model(x))


def test_checkpoint_path_refuses_what_is_no_state_dict_and_takes_an_empty_path_as_none(tmp_path, monkeypatch):
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "meta.pth")
    with pytest.raises(dsrnet.DsrnetError, match=r"meta\.pth is neither a dsrnet checkpoint nor a state dict"):
        dsrnet.create_model("dsrnet50_cifar", checkpoint_path=tmp_path / "meta.pth", **TINY)
    # A missing file: named as what create_model reads, not as a training checkpoint only
    with pytest.raises(dsrnet.DsrnetError, match=r"checkpoint_path \S*nope\.safetensors not found; fix: pass a "
                                                 r"weights file \(\.safetensors"):
        dsrnet.create_model("dsrnet50_cifar", checkpoint_path=tmp_path / "nope.safetensors", **TINY)
    # timm's train script passes --initial-checkpoint '' by default: no checkpoint (it loaded ./checkpoint.pt)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    assert dsrnet.create_model("dsrnet50_cifar", num_classes=3, checkpoint_path="", **TINY).num_classes == 3


def test_timm_and_torch_hub_load_registered_weights(registered):
    timm = pytest.importorskip("timm")
    model, _ = registered
    x = torch.randn(2, 3, 32, 32)
    via_timm = timm.create_model("dsrnet50_cifar.tiny", pretrained=True).eval()
    assert torch.equal(via_timm(x), model(x))
    assert tuple(via_timm.pretrained_cfg["label_names"]) == tuple(CLASSES)
    data_cfg = timm.data.resolve_data_config({}, model=via_timm)
    assert data_cfg["mean"] == (0.5, 0.4, 0.3)
    gray = timm.create_model("dsrnet50_cifar.tiny", pretrained=True, in_chans=1, num_classes=7)
    assert gray.conv1.in_channels == 1 and gray(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    hub = torch.hub.load(str(REPO), "dsrnet50_cifar", source="local", pretrained=True).eval()
    assert torch.equal(hub(x), model(x))


@pytest.mark.parametrize("in_chans", [1, 2, 4, 7])
def test_pretrained_weights_adapt_the_first_conv_to_other_input_channels(registered, in_chans):
    model, _ = registered
    rgb = model.conv1.weight.detach()
    other = dsrnet.create_model("dsrnet50_cifar.tiny", pretrained=True, in_chans=in_chans).eval()
    w = other.conv1.weight.detach()
    assert w.shape[1] == in_chans and torch.equal(other.fc.weight, model.fc.weight)  # the rest loads as usual
    if in_chans == 1:
        torch.testing.assert_close(w[:, 0], rgb.sum(1))
    else:  # the colours repeated, scaled by 3 / in_chans: a constant image gives the RGB model's response
        torch.testing.assert_close(w, torch.cat([rgb] * 3, 1)[:, :in_chans] * (3 / in_chans))
    if in_chans % 3 == 0 or in_chans == 1:
        x = torch.full((1, in_chans, 32, 32), 0.7)
        torch.testing.assert_close(other(x), model(torch.full((1, 3, 32, 32), 0.7)), rtol=1e-4, atol=1e-5)
    timm = pytest.importorskip("timm")  # the referee: timm's own adaptation of the same file
    via_timm = timm.create_model("dsrnet50_cifar.tiny", pretrained=True, in_chans=in_chans)
    assert torch.equal(via_timm.conv1.weight, other.conv1.weight)


@pytest.mark.parametrize("name", ["dsrnet50_cifar", "dsrnet50"])  # with registered weights of its own / none
def test_timm_loads_a_users_file_through_the_pretrained_cfg_overlay(registered, tmp_path, name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    model = dsrnet.create_model(name, num_classes=3, **TINY).eval()
    path = save_weights(model, tmp_path / "mine.safetensors", metadata={**META, "model": name}, dtype=torch.float32)
    overlay = {"file": str(path), "num_classes": 3}  # timm keeps a head only where the cfg's class count matches
    mine = timm.create_model(name, pretrained=True, num_classes=3, pretrained_cfg_overlay=overlay, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(mine(x), model(x)) and mine.pretrained_cfg["file"] == str(path)


def test_timm_loads_weights_named_the_timm_way_and_lists_each_weights_once(tmp_path, monkeypatch):
    """With pretrained=True, weights named through a pretrained_cfg dict, an overlay url or timm's save_for_hf
    folder were replaced by the shipped CIFAR-10 weights (or refused for names with none), and
    timm.list_pretrained() named the shipped weights twice (the bare name and the tag)."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # where timm puts a url's download
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    mine = timm.create_model("dsrnet50_cifar", num_classes=10, **TINY).eval()
    torch.save(mine.state_dict(), tmp_path / "mine.pth")
    by_cfg = timm.create_model("dsrnet50_cifar", pretrained=True, **TINY,
                               pretrained_cfg={"file": str(tmp_path / "mine.pth"), "num_classes": 10})  # fmt: skip
    by_url = timm.create_model("dsrnet50_cifar", pretrained=True, **TINY, pretrained_cfg_overlay={
        "url": (tmp_path / "mine.pth").as_uri(), "num_classes": 10})  # fmt: skip
    for model in (by_cfg, by_url):
        assert torch.equal(model.eval()(x), mine(x))
    for arch in ("dsrnet50_cifar", "dsrnet50"):
        saved = timm.create_model(arch, num_classes=7, **TINY).eval()
        save_for_hf(saved, tmp_path / arch)
        again = timm.create_model(f"local-dir:{tmp_path / arch}", pretrained=True).eval()
        assert torch.equal(again(x), saved(x))
    from dsrnet.models import _timm

    _timm.refresh_pretrained_cfgs()  # timm's registry as of now (other tests re-register it with no shipped files)
    assert timm.list_pretrained("dsrnet*") == ["dsrnet50_cifar.c10"]


def test_the_shipped_cifar10_weights_load_everywhere():
    """The file in the package: checksum verified, same model through dsrnet, timm and torch.hub."""
    entry = weights.SHIPPED["dsrnet50_cifar.c10"]
    _, meta = read_weights(weights.weights_path(entry))
    # The metadata records the final epoch of a finished run (results/gpu/dsrnet/final.json), not a best-epoch pick.
    assert meta["finished"] and meta["epochs"] == meta["planned_epochs"]
    assert meta["model"] == "dsrnet50_cifar" and meta["class_names"] == entry.metadata["class_names"]
    assert 90.0 <= meta["top1"] <= 100.0
    model = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"][3] == "cat"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
        hub = torch.hub.load(str(REPO), "dsrnet50_cifar", source="local", pretrained=True).eval()
        assert torch.equal(hub(x), logits)
        timm = pytest.importorskip("timm")
        assert torch.equal(timm.create_model("dsrnet50_cifar.c10", pretrained=True).eval()(x), logits)


# ------------------------------------------------------------------------------------ fine-tuning's start


def _backbone(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


@pytest.mark.parametrize("source", ["tag", "file", "checkpoint", "run_folder"])
def test_initial_weights_load_the_backbone_and_reset_another_head(registered, tmp_path, source):
    from dsrnet.run.checkpoint import save_checkpoint
    from tests.conftest import checkpoint_payload

    model, entry = registered
    if source in ("checkpoint", "run_folder"):
        (tmp_path / "run").mkdir()
        payload = checkpoint_payload(model, TINY, num_classes=3, classes=CLASSES)
        save_checkpoint(tmp_path / "run" / "checkpoint.pt", payload)
    where = {"tag": entry.name, "file": str(entry.path()), "checkpoint": str(tmp_path / "run" / "checkpoint.pt"),
             "run_folder": str(tmp_path / "run")}[source]  # fmt: skip
    torch.manual_seed(1)
    same = dsrnet.create_model("dsrnet50_cifar", num_classes=3, **TINY)
    other = dsrnet.create_model("dsrnet50_cifar", num_classes=7, **TINY)  # e.g. fine-tuning on another dataset
    fresh_head = {k: v.clone() for k, v in other.fc.state_dict().items()}
    assert not torch.equal(same.conv1.weight, model.conv1.weight)
    assert weights.load_initial_weights(same, where)
    assert weights.load_initial_weights(other, where)
    for k, v in model.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k  # same classes: everything, head included
    for k, v in _backbone(model).items():
        assert torch.equal(other.state_dict()[k], v), k
    for k, v in other.fc.state_dict().items():
        assert torch.equal(v, fresh_head[k]), k  # another class count: the model's own fresh head


def test_initial_weights_refuse_other_networks_unknown_sources_and_nan(registered, tmp_path):
    model, entry = registered
    wider = dsrnet.create_model("dsrnet50_cifar", num_classes=3, widths=[8, 8, 8, 8], layers=[1, 1, 1, 1])
    with pytest.raises(dsrnet.DsrnetError, match="do not fit this model"):
        weights.load_initial_weights(wider, entry.name)
    target = dsrnet.create_model("dsrnet50_cifar", num_classes=3, **TINY)
    for missing in ("dsrnet50_cifar.nope", str(tmp_path / "nowhere.safetensors")):
        with pytest.raises(dsrnet.DsrnetError, match="neither a weights tag nor an existing file"):
            weights.load_initial_weights(target, missing)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    bad = save_weights(model, tmp_path / "nan.safetensors", metadata=META, dtype=torch.float32)
    with pytest.raises(dsrnet.DsrnetError, match="non-finite"):
        weights.load_initial_weights(target, bad)


def test_timm_factory_keywords_and_a_tag_without_weights_build_the_tags_network(registered):
    """A tag names the network its weights were trained as, with or without pretrained, through either factory;
    timm's layer-config flags and pretrained_cfg="tag" are taken by dsrnet.create_model too."""
    model, entry = registered
    path = entry.path()
    n = sum(p.numel() for p in model.parameters())
    mine = dsrnet.create_model("dsrnet50_cifar.tiny", scriptable=True, exportable=True, no_jit=True, cache_dir="x")
    by_cfg = dsrnet.create_model("dsrnet50_cifar", pretrained_cfg="tiny", pretrained=True)
    assert sum(p.numel() for p in mine.parameters()) == n and by_cfg.pretrained_cfg["tag"] == "tiny"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(by_cfg.eval()(x), model(x))
    with pytest.raises(dsrnet.DsrnetError, match="name two tags"):
        dsrnet.create_model("dsrnet50_cifar.c10", pretrained_cfg="tiny")
    with pytest.raises(dsrnet.DsrnetError, match="fix: pass them to timm.create_model"):
        dsrnet.create_model("dsrnet50_cifar", pretrained_cfg_overlay={"file": str(path)})
    timm = pytest.importorskip("timm")
    random = timm.create_model("dsrnet50_cifar.tiny")  # was the full-size network under the tag's cfg
    assert sum(p.numel() for p in random.parameters()) == n and random.pretrained_cfg["tag"] == "tiny"
    loaded = timm.create_model("dsrnet50_cifar.tiny", checkpoint_path=str(path)).eval()
    assert torch.equal(loaded(x), model(x))


def test_the_shipped_entry_normalises_as_its_file_records():
    """pretrained_cfg / predict / eval / ONNX metadata take the shipped entry's mean and std, weights.transforms()
    the file's: both must be the training set's statistics the file records (the entry had them rounded)."""
    entry = weights.SHIPPED["dsrnet50_cifar.c10"]
    recorded = weights.read_metadata(weights.weights_path(entry))
    assert entry.metadata["mean"] == recorded["mean"] and entry.metadata["std"] == recorded["std"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [({"num_classes": 2**40}, r"bad num_classes \(1099511627776; expected an integer in 0\.\.100000\)"),
     ({"class_names": ["cat", "dog"]}, r"bad classes .*expected a list of 3 class names"),
     ({"input_size": [3, 0, 0]}, r"bad image_size \(0; expected an integer in 8\.\.1024\)"),
     ({"input_size": 32}, r"bad input_size \(32; expected \[3, H, W\]\)"),
     ({"mean": [0.5, 0.5]}, r"bad mean .*3 finite numbers"),
     ({"model_kwargs": {"widths": [8, 8, 8, 8], "layers": [1, 1, 1, 1]}}, r"do not fit the model their metadata")],
)  # fmt: skip
def test_a_weights_files_metadata_is_checked_before_a_model_is_built(trained, tmp_path, edit, message):
    """A doctored weights file asked for petabytes (num_classes 2**40) or gave tracebacks: every field a model or
    its preprocessing is built from is checked first, and the tensors against a model on the meta device."""
    import json

    from safetensors.torch import save_file

    model, _ = trained
    path = tmp_path / "doctored.safetensors"
    metadata = {k: json.dumps(v) for k, v in {**META, **edit}.items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    with pytest.raises(dsrnet.DsrnetError, match=message) as err:
        weights.load_trained(path)
    assert "\n" not in str(err.value) and "fix: export them with `dsrnet export-weights`" in str(err.value)


def test_a_weights_file_without_class_names_is_labelled_by_index(trained, tmp_path):
    """save_weights takes class_names=[] (a model without names): load_trained reads it, predict labels by index."""
    model, _ = trained
    path = save_weights(model, tmp_path / "nameless.safetensors", metadata={**META, "class_names": []},
                        dtype=torch.float32)  # fmt: skip
    _, info = weights.load_trained(path)
    assert info["classes"] == [] and info["num_classes"] == 3
    import json

    from safetensors.torch import load_file, save_file

    metadata = {k: v for k, v in weights._read_header_metadata(path).items() if k != "class_names"}
    save_file(load_file(str(path)), str(tmp_path / "unnamed.safetensors"), metadata=metadata)  # no key at all
    _, info = weights.load_trained(tmp_path / "unnamed.safetensors")
    assert info["classes"] == [] and json.loads(metadata["num_classes"]) == 3


def test_a_baselines_plain_state_dict_takes_its_classifiers_class_count(tmp_path):
    """torchvision's MobileNetV2 names its head classifier.1, not fc: its class count came out as 1000 and the
    mismatch named no num_classes."""
    torch.save(dsrnet.create_model("mobilenet_v2_cifar", num_classes=7).state_dict(), tmp_path / "mb.pth")
    assert dsrnet.create_model("mobilenet_v2_cifar", checkpoint_path=tmp_path / "mb.pth").classifier[1].out_features == 7
    with pytest.raises(dsrnet.DsrnetError, match=r"classifier\.1\.bias is \(7,\), the model needs \(5,\).*same name, "
                                                 r"num_classes and model_kwargs"):  # fmt: skip
        dsrnet.create_model("mobilenet_v2_cifar", num_classes=5, checkpoint_path=tmp_path / "mb.pth")
