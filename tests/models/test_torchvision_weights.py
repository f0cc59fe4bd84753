"""torchvision's weights API for the shipped weights: ``dsrnet50_cifar(weights=DSRNet50_CIFAR_Weights.DEFAULT)``,
``weights.transforms()``, ``weights.meta``, as torchvision's own models are used."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import dsrnet
from dsrnet.errors import DsrnetError
from dsrnet.models import DSRNet50_CIFAR_Weights, dsrnet50, dsrnet50_cifar, weights
from tests.conftest import REPO


def test_torchvisions_recipe_classifies_cifar10_test_photos(cifar10_dir):
    """The usage torchvision documents for its classifiers, verbatim, on real CIFAR-10 test images."""
    w = DSRNet50_CIFAR_Weights.DEFAULT
    model = dsrnet50_cifar(weights=w).eval()
    preprocess = w.transforms()
    with np.load(cifar10_dir / "cifar10" / "test.npz") as z:
        images, labels = z["images"][:200], z["labels"][:200]
    batch = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        predicted = model(batch).softmax(1).argmax(1)
    accuracy = float((predicted.numpy() == labels).mean())
    assert accuracy >= 0.85, accuracy  # the weights score 92.4 % on the whole test set
    assert w.meta["categories"][int(labels[0])] == "cat"  # CIFAR-10's first test image, named as torchvision would
    # torchvision's reference scripts ask for weights.transforms(antialias=True) (it was a TypeError): the same steps
    first = Image.fromarray(images[0])
    assert torch.equal(w.transforms(antialias=True)(first), preprocess(first))
    with pytest.raises(DsrnetError, match="antialias"):
        w.transforms(antialias=False)


def test_the_transforms_expose_what_torchvisions_presets_do_and_pickle():
    """Code written for torchvision reads ``weights.transforms().crop_size`` / ``.mean`` / ``.describe()``; a
    DataLoader with spawned workers pickles the pipeline."""
    w = DSRNet50_CIFAR_Weights.DEFAULT
    preprocess = w.transforms()
    assert preprocess.crop_size == preprocess.resize_size == [32]
    _, file_meta = weights.read_weights(weights.weights_path(weights.SHIPPED["dsrnet50_cifar.c10"]))
    assert preprocess.mean == [float(v) for v in file_meta["mean"]] and preprocess.std == [
        float(v) for v in file_meta["std"]]  # fmt: skip
    assert preprocess.interpolation.value == "bicubic" and preprocess.antialias is True
    text = preprocess.describe()
    assert "crop_size=[32]" in text and f"mean={preprocess.mean}" in text and "BICUBIC" in text
    again = pickle.loads(pickle.dumps(preprocess))
    batch = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8)
    assert again.describe() == text and torch.equal(again(batch), preprocess(batch))
    x = preprocess(batch)
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x[1], preprocess(batch[1]))


def test_the_transforms_take_torchvisions_arguments_and_read_their_attributes_at_every_call():
    """As torchvision's ``ImageClassification``: ``weights.transforms(crop_size=..., resize_size=...,
    interpolation=...)`` builds another pipeline, and setting an attribute changes what the pipeline does."""
    from torchvision.transforms import InterpolationMode, v2

    w = DSRNet50_CIFAR_Weights.DEFAULT
    batch = torch.randint(0, 256, (2, 3, 40, 50), dtype=torch.uint8)
    norm = v2.Normalize(w.transforms().mean, w.transforms().std)

    def torchvisions(crop, resize, mode=InterpolationMode.BICUBIC):
        return v2.Compose([v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(crop),
                           v2.ToDtype(torch.float32, scale=True), norm])(batch)  # fmt: skip

    larger = w.transforms(crop_size=24, resize_size=36)
    assert larger.crop_size == [24] and larger.resize_size == [36] and "resize_size=[36]" in larger.describe()
    assert torch.equal(larger(batch), torchvisions(24, 36))
    assert torch.equal(w.transforms(crop_size=24)(batch), torchvisions(24, 24))
    bilinear = w.transforms(interpolation=InterpolationMode.BILINEAR)
    assert torch.equal(bilinear(batch), torchvisions(32, 32, InterpolationMode.BILINEAR))
    live = w.transforms()
    live.crop_size, live.resize_size = [24], [36]
    assert torch.equal(live(batch), torchvisions(24, 36)) and "crop_size=[24]" in live.describe()
    live.mean, live.std = None, None
    assert live(batch).min() >= 0 and live(batch).max() <= 1 and "not normalized" in live.describe()


def test_the_weights_are_the_shipped_files_and_their_meta_comes_from_it():
    entry = weights.SHIPPED["dsrnet50_cifar.c10"]
    _, file_meta = weights.read_weights(weights.weights_path(entry))
    w = DSRNet50_CIFAR_Weights.C10
    assert DSRNet50_CIFAR_Weights.DEFAULT is w and w.meta["name"] == "dsrnet50_cifar.c10"
    assert w.meta["categories"] == file_meta["class_names"]
    assert w.meta["_metrics"] == {"CIFAR-10": {"acc@1": file_meta["top1"], "acc@3": file_meta["top3"]}}
    model = dsrnet50_cifar(weights=w).eval()
    assert w.meta["num_params"] == sum(p.numel() for p in model.parameters())
    reference = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        assert model(torch.randn(1, 3, *w.meta["min_size"])).shape == (1, 10)
    assert model.pretrained_cfg["tag"] == "c10" and model.pretrained_cfg["label_names"][3] == "cat"
    for name in ("DEFAULT", "C10", "DSRNet50_CIFAR_Weights.C10"):
        assert dsrnet50_cifar(weights=name, progress=False).state_dict()["fc.weight"].equal(reference.fc.weight)
    state = w.get_state_dict(progress=True, check_hash=True)  # torchvision's download arguments: nothing to do
    assert torch.equal(state["fc.weight"].float(), reference.fc.weight)
    assert copy.deepcopy(w) is w and pickle.loads(pickle.dumps(w)) is w  # as torchvision's enums
    assert DSRNet50_CIFAR_Weights.verify("DEFAULT") is w and dsrnet50_cifar().num_classes == 1000


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: dsrnet50_cifar(weights="DEFAULT", num_classes=100), "num_classes=100 but DSRNet50_CIFAR_Weights.C10 "
         "has 10 classes; fix: drop num_classes"),
        (lambda: dsrnet50_cifar(weights="C100"), "dsrnet50_cifar has no weights 'C100'; fix: use one of"),
        (lambda: dsrnet50(weights=DSRNet50_CIFAR_Weights.C10), "dsrnet50 has no trained weights .*; fix: drop weights="),
        (lambda: dsrnet.create_model("resnet50", weights="DEFAULT"), "resnet50 has no trained weights"),
        (lambda: dsrnet.create_model("dsrnet50_cifar.c10", weights="DEFAULT"), "both name weights; fix: give one"),
    ],
)
def test_weights_that_do_not_fit_are_one_clear_error(build, match):
    with pytest.raises(DsrnetError, match=match):
        build()


def test_a_missing_file_is_named_when_the_weights_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(DsrnetError, match="shipped weights 'dsrnet50_cifar.c10' are missing"):
        dsrnet50_cifar(weights="DEFAULT")


def test_torch_hub_takes_weights_as_torchvisions_hub_entries_do():
    x = torch.randn(2, 3, 32, 32)
    hub = torch.hub.load(str(REPO), "dsrnet50_cifar", source="local", weights="DEFAULT").eval()
    with torch.no_grad():
        assert torch.equal(hub(x), dsrnet50_cifar(weights="DEFAULT").eval()(x))


def test_the_enums_import_torchvision_only_when_used():
    code = ("import sys, dsrnet.models as m; m.dsrnet50_cifar; assert 'torchvision' not in sys.modules\n"
            "m.DSRNet50_CIFAR_Weights; assert 'torchvision' in sys.modules; print('ok')")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_every_shipped_weights_file_has_its_enum_member():
    """New weights in ``SHIPPED`` need their member here too, or torchvision's way cannot reach them."""
    from dsrnet.models.torchvision_weights import WEIGHTS_ENUMS

    for name, entry in weights.SHIPPED.items():
        assert WEIGHTS_ENUMS[entry.model][entry.tag.upper()].meta["name"] == name


def test_torchvision_legacy_pretrained_keyword_and_submodules_as_attributes():
    """torchvision's builders still take pretrained=True/False (deprecated, mapped to weights=); and the docs'
    `dsrnet.models.weights.register_weights` works after a bare `import dsrnet`."""
    with pytest.warns(UserWarning, match=r"pretrained=\.\.\.\) is deprecated.*weights=None"):
        model = dsrnet50_cifar(pretrained=False, num_classes=10)
    assert model.num_classes == 10
    with pytest.warns(UserWarning, match="weights='DEFAULT'"), pytest.raises(dsrnet.DsrnetError, match="no trained"):
        dsrnet50(pretrained=True)  # no weights for this architecture: one clear error
    with pytest.raises(dsrnet.DsrnetError, match="both given"):
        dsrnet50_cifar(weights="DEFAULT", pretrained=True)
    code = "import dsrnet; print(dsrnet.models.weights.register_weights.__name__, dsrnet.export.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["register_weights", "dsrnet.export"]
