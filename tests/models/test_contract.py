"""timm's model contract on DSRNet, in this project's words: features, intermediates, pruning, heads and pooling,
pretrained_cfg, stochastic depth, gradient checkpointing, FX + TorchScript, and all of it with or without timm."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.models import DSRNet
from dsrnet.models.dsrnet import DSRBlock
from tests.conftest import REPO

TINY = {"widths": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}
TINY2 = {"widths": (4, 8, 8, 8), "layers": (2, 2, 2, 2)}

# Written out, not imported from the module under test: the standard CIFAR-10 train-split statistics (population
# std) and ImageNet's mean, which a timm data pipeline must read off the models' pretrained_cfg.
CIFAR10_MEAN = pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
CIFAR10_STD = pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
IMAGENET_MEAN = pytest.approx((0.485, 0.456, 0.406))


def tiny(name="dsrnet50_cifar", **kwargs):
    torch.manual_seed(0)
    return dsrnet.create_model(name, **{**TINY, **kwargs})


def test_feature_info_has_timms_accessors():
    model = tiny("dsrnet50")
    info = model.feature_info
    assert info.channels() == [4, 16, 32, 32, 32]
    assert info.reduction() == [2, 4, 8, 16, 32]
    assert info.module_name() == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert info.channels(2) == 32 and info.reduction([0, 4]) == [2, 32]
    assert len(info) == 5 and info[1]["num_chs"] == 16


@pytest.mark.parametrize(
    ("out_indices", "expected"), [(2, [3, 4]), ((-1,), [4]), ((0, -2), [0, 3]), ([1, 2, 3, 4], [1, 2, 3, 4])]
)
def test_out_indices_int_negative_and_sequences(out_indices, expected):
    backbone = tiny("dsrnet50", features_only=True, out_indices=out_indices).eval()
    feats = backbone(torch.randn(1, 3, 64, 64))
    reductions = [2, 4, 8, 16, 32]
    assert [f.shape[-1] for f in feats] == [64 // reductions[i] for i in expected]
    assert backbone.feature_info.channels() == [f.shape[1] for f in feats]
    assert backbone.feature_info.reduction() == [reductions[i] for i in expected]


def test_features_only_prunes_what_it_does_not_use():
    full = tiny("dsrnet50_cifar", num_classes=10)
    backbone = tiny("dsrnet50_cifar", features_only=True, out_indices=(1, 2))
    assert len(backbone.layer3) == len(backbone.layer4) == 0 and isinstance(backbone.fc, nn.Identity)
    backbone.load_state_dict({k: v for k, v in full.state_dict().items() if k in backbone.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    full.eval(), backbone.eval()
    want = full.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for got, ref in zip(backbone(x), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    sum(f.sum() for f in backbone.train()(x)).backward()
    assert all(p.grad is not None for p in backbone.parameters())  # no unused parameters (DDP)


@pytest.mark.parametrize("kwargs", [{"feature_cls": "getter"}, {"feature_cfg": {"feature_cls": "list"}}])
def test_feature_cls_served_natively(kwargs):
    backbone = tiny("dsrnet50", features_only=True, out_indices=(1, 4), **kwargs)
    assert isinstance(backbone, DSRNet) and len(backbone(torch.randn(1, 3, 64, 64))) == 2


def test_forward_intermediates():
    model = tiny("dsrnet50").eval()
    x = torch.randn(2, 3, 64, 64)
    final, feats = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
    assert [f.shape[1:] for f in feats] == [(4, 32, 32), (16, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2)]
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two, feats[3:], rtol=0, atol=0)
    early, stem = model.forward_intermediates(x, indices=[0], stop_early=True, norm=True)
    torch.testing.assert_close(stem[0], feats[0], rtol=0, atol=0)
    assert early.shape[1:] == (4, 16, 16)  # stopped after the max-pool, before layer1
    with pytest.raises(dsrnet.DsrnetError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(dsrnet.DsrnetError, match="out of range"):
        model.forward_intermediates(x, indices=[5])


@pytest.mark.parametrize("index", [0, 1, 2, 3, 4])
def test_prune_intermediate_layers(index):
    model = tiny("dsrnet50", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    taps = model.forward_intermediates(x, intermediates_only=True)
    pruned = copy.deepcopy(model)
    kept = pruned.prune_intermediate_layers([index])
    assert kept == [index]
    got = pruned.forward_intermediates(x, indices=kept, intermediates_only=True)
    torch.testing.assert_close(got[0], taps[index], rtol=0, atol=0)
    assert pruned.num_classes == 0 and pruned.num_features == taps[index].shape[1]
    if index < 4:  # the features end at the tap
        torch.testing.assert_close(pruned.forward_features(x), taps[index], rtol=0, atol=0)


def test_global_pool_and_reset_classifier():
    x = torch.randn(2, 3, 32, 32)
    model = tiny(num_classes=0, global_pool="").eval()
    assert model(x).shape == (2, 32, 4, 4)
    model = tiny(num_classes=10).eval()
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 32, 4, 4) and model.num_classes == 0
    model.reset_classifier(7, "catavgmax")
    assert model.head_hidden_size == 64 and model(x).shape == (2, 7)
    model.reset_classifier(5)  # None keeps the current pooling
    assert model.global_pool.pool_type == "catavgmax" and model(x).shape == (2, 5)
    model.reset_classifier(3, "max")
    assert torch.allclose(
        model.forward_head(model.forward_features(x), pre_logits=True), model.forward_features(x).amax((2, 3))
    )
    with pytest.raises(dsrnet.DsrnetError, match="global_pool"):
        model.reset_classifier(3, "gem")
    with pytest.raises(dsrnet.DsrnetError, match="num_classes=0"):
        tiny(num_classes=10, global_pool="")


def test_reset_classifier_keeps_device_dtype_and_mode():
    model = tiny(num_classes=10).to(torch.float64).eval()
    model.reset_classifier(4)
    assert model.fc.weight.dtype == torch.float64 and not model.fc.training


def test_created_on_meta_device():
    model = dsrnet.create_model("dsrnet50", device="meta", dtype=torch.float32)
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("name", ["dsrnet50", "dsrnet50_cifar"])
def test_pretrained_cfg(name):
    model = dsrnet.create_model(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["architecture"] == name and cfg["tag"] is None and cfg["license"] == "mit"
    assert cfg["fixed_input_size"] is False and cfg["test_input_size"] == cfg["input_size"]
    assert cfg["first_conv"] == "conv1" and cfg["classifier"] == "fc"
    # the classes of the name's default weights even when they are not loaded (timm's rule), else 1000
    assert cfg["num_classes"] == model.num_classes == (10 if name == "dsrnet50_cifar" else 1000)
    assert cfg["paper_name"] == "DSRNet: A Novel Feature Extraction Network achieving trade off between accuracy and speed"
    if name.endswith("_cifar"):  # what `dsrnet train` normalises CIFAR with, not ImageNet's statistics
        assert cfg["mean"] == CIFAR10_MEAN and cfg["std"] == CIFAR10_STD and cfg["input_size"] == (3, 32, 32)
    else:
        assert cfg["mean"] == IMAGENET_MEAN and cfg["input_size"] == (3, 224, 224)
    assert model.head_hidden_size == model.num_features == 2048 and model.in_chans == 3


def test_group_matcher_splits_stem_and_blocks():
    import re

    model = tiny(layers=(2, 1, 1, 1))
    for coarse in (True, False):
        matcher = model.group_matcher(coarse=coarse)
        names = [n for n, _ in model.named_parameters() if not n.startswith("fc.")]
        assert all(re.match(matcher["stem"], n) or re.match(matcher["blocks"], n) for n in names)
        blocks = {re.match(matcher["blocks"], n).groups() for n in names if re.match(matcher["blocks"], n)}
        assert len(blocks) == (4 if coarse else 5)


def test_drop_path_rate_increases_linearly_per_block():
    model = tiny(layers=(2, 1, 2, 1), drop_path_rate=0.5)
    rates = [
        getattr(b.drop_path, "p", 0.0)
        for s in (model.layer1, model.layer2, model.layer3, model.layer4)
        for b in s
    ]
    assert rates == pytest.approx([0.5 * i / 5 for i in range(6)])
    assert isinstance(model.layer1[0].drop_path, nn.Identity)  # the first block's rate is 0
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # off in eval
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x))  # on in training
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in tiny(layers=(2, 1, 2, 1)).parameters()
    )


@pytest.mark.parametrize("features_only", [False, True])
def test_grad_checkpointing_gives_the_same_gradients_and_running_statistics(features_only):
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = tiny(**TINY2, drop_path_rate=0.2, features_only=features_only).train()
        model.set_grad_checkpointing(checkpointing)
        calls = []
        blocks = [m for m in model.modules() if isinstance(m, DSRBlock)]
        for block in blocks:
            # a pre-hook: the recomputation stops once it has what backward needs (early stop), before any post-hook
            block.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        torch.manual_seed(3)  # the same drop-path draws; checkpointing replays them in backward
        out = model(x)
        (sum(f.square().mean() for f in out) if features_only else out.square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        # The recomputation leaves the BatchNorms' running statistics and batch counts alone (it updated them a
        # second time per step).
        grads[-1].update({n: b.clone() for n, b in model.named_buffers()})
        # Checkpointing really happened: every block ran again in backward (activations recomputed, not kept).
        assert len(calls) == len(blocks) * (2 if checkpointing else 1) and len(blocks) == 8
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
    # A second backward over the same graph recomputes the blocks again (it failed: the recomputation's context
    # could be entered once), and still leaves the statistics alone.
    model = tiny(**TINY2, features_only=features_only).train()
    model.set_grad_checkpointing()
    out = model(x)
    loss = sum(f.square().mean() for f in out) if features_only else out.square().mean()
    loss.backward(retain_graph=True)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    loss.backward()
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())


def test_fx_trace_then_torchscript():
    """The failure the model file's ``from __future__ import annotations`` caused: FX, then TorchScript."""
    model = tiny(num_classes=10).eval()
    traced = torch.fx.symbolic_trace(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(traced)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def test_features_only_backbone_scripts():
    backbone = tiny("dsrnet50", features_only=True, out_indices=(1, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(backbone)
    x = torch.randn(1, 3, 64, 64)
    for got, want in zip(scripted(x), backbone(x), strict=True):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------- with timm


def test_timm_registry_and_configs():
    timm = pytest.importorskip("timm")
    cfg = timm.models.get_pretrained_cfg("dsrnet50_cifar")
    assert cfg is not None and cfg.architecture == "dsrnet50_cifar" and cfg.mean == CIFAR10_MEAN
    assert timm.models.get_pretrained_cfg_value("dsrnet50", "input_size") == (3, 224, 224)
    assert "dsrnet50" in timm.list_models(module="resnet")  # timm files DSRNet with its ResNet family
    model = timm.create_model("dsrnet50_cifar", num_classes=10, drop_path_rate=0.1, global_pool="avgmax")
    assert isinstance(model, DSRNet) and model.default_cfg["architecture"] == "dsrnet50_cifar"
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert (
        data_cfg["mean"] == CIFAR10_MEAN
        and data_cfg["std"] == CIFAR10_STD
        and data_cfg["input_size"] == (3, 32, 32)
    )
    with pytest.raises(TypeError):  # timm's rule: unknown constructor arguments raise TypeError
        timm.create_model("dsrnet50", not_an_arg=1)
    # Without num_classes both factories build the head of the name's default weights (dsrnet's said 1000 where
    # timm's said 10 for dsrnet50_cifar).
    tiny = {"widths": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}
    for name in dsrnet.list_models("dsrnet*"):
        assert dsrnet.create_model(name, **tiny).num_classes == timm.create_model(name, **tiny).num_classes, name


@pytest.mark.parametrize("feature_cls", ["list", "getter", "hook", "dict", "fx"])
def test_timm_feature_wrappers(feature_cls):
    timm = pytest.importorskip("timm")
    kwargs = {**TINY, "features_only": True, "out_indices": (1, -1), "feature_cls": feature_cls}
    torch.manual_seed(0)
    via_timm = timm.create_model("dsrnet50", **kwargs).eval()
    torch.manual_seed(0)
    via_dsrnet = dsrnet.create_model("dsrnet50", **kwargs).eval()
    assert type(via_timm) is type(via_dsrnet) or feature_cls in ("list", "getter")
    x = torch.randn(1, 3, 64, 64)
    for model in (via_timm, via_dsrnet):
        out = model(x)
        out = list(out.values()) if isinstance(out, dict) else out
        assert [f.shape[1] for f in out] == model.feature_info.channels() == [16, 32]


@pytest.mark.parametrize(("name", "output_stride", "side", "reductions", "factor"), [
    ("dsrnet50", 16, 4, [2, 4, 8, 16, 16], 2),  # layer4's stride removed: its rates x2
    ("dsrnet50", 8, 8, [2, 4, 8, 8, 8], 4),  # layer3's and layer4's: layer3 x2, layer4 x4
    ("dsrnet50_cifar", 4, 16, [1, 1, 2, 4, 4], 2),
])  # fmt: skip
def test_output_stride_trades_the_last_strides_for_dilation(name, output_stride, side, reductions, factor):
    natural = tiny(name, layers=(1, 1, 2, 3), num_classes=0, global_pool="").eval()
    dense = tiny(name, layers=(1, 1, 2, 3), num_classes=0, global_pool="", output_stride=output_stride).eval()
    x = torch.randn(1, 3, 64, 64)
    assert tuple(dense(x).shape[-2:]) == (side, side) and dense.feature_info.reduction() == reductions
    assert natural.state_dict().keys() == dense.state_dict().keys()  # same weights: pretrained ones still load
    dw = [[(m.stride[0], m.dilation[0]) for m in stage.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
          for stage in (natural.layer4, dense.layer4)]  # fmt: skip
    # The first block keeps the factor of the stage before (timm's first_dilation), the others take layer4's.
    assert dw[1] == [(1, dw[0][0][1] * factor // 2)] + [(1, d * factor) for _, d in dw[0][1:]]
    with torch.no_grad():  # the fused inference form keeps the rates, and the unpooled map (global_pool="")
        torch.testing.assert_close(dsrnet.fuse(dense)(x), dense(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(dsrnet.DsrnetError, match="output_stride=.* is not possible"):
        tiny(name, output_stride=output_stride // 4)
    timm = pytest.importorskip("timm")  # timm's keyword, through timm's builder and feature wrapper
    features = timm.create_model(name, **TINY, features_only=True, output_stride=output_stride, feature_cls="hook")
    assert features.feature_info.reduction() == reductions


def test_drop_block_is_refused_with_the_alternative():
    with pytest.raises(dsrnet.DsrnetError, match="no DropBlock.*drop_path_rate"):
        tiny(drop_block_rate=0.1)
    assert tiny(drop_block_rate=0.0).num_classes == tiny().num_classes  # off: a no-op, as timm passes it


# ---------------------------------------------------------------------------------------------- without timm

_BLOCK_TIMM = """
import importlib.abc, sys
class _NoTimm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("timm is blocked for this test")
sys.meta_path.insert(0, _NoTimm())
"""


def _run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_contract_without_timm():
    out = _run(
        _BLOCK_TIMM
        + """
import json, torch, dsrnet
tiny = dict(widths=(4, 8, 8, 8), layers=(1, 1, 1, 1))
m = dsrnet.create_model("dsrnet50", features_only=True, out_indices=2, feature_cls="getter", **tiny)
feats = m(torch.randn(1, 3, 64, 64))
c = dsrnet.create_model("dsrnet50_cifar", num_classes=0, global_pool="", drop_path_rate=0.1, **tiny)
c.set_grad_checkpointing()
final, inter = c.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[0, 4])
try:
    dsrnet.create_model("dsrnet50", features_only=True, feature_cls="hook", **tiny)
    err = None
except dsrnet.DsrnetError as e:
    err = str(e)
print(json.dumps({"type": type(m.feature_info).__module__, "channels": m.feature_info.channels(),
    "shapes": [f.shape[1] for f in feats], "unpooled": c(torch.randn(1, 3, 32, 32)).dim(),
    "inter": len(inter), "timm": "timm" in __import__("sys").modules, "err": err}))
"""
    )
    assert out["type"] == "dsrnet.models._features" and not out["timm"]
    assert out["channels"] == out["shapes"] == [32, 32]
    assert out["unpooled"] == 4 and out["inter"] == 2
    assert "needs timm" in out["err"] or "pip install timm" in out["err"]


@pytest.mark.parametrize("order", ["dsrnet first", "timm first", "dsrnet, a lookup of timm, timm"])
def test_timm_sees_dsrnet_in_either_import_order(order):
    pytest.importorskip("timm")
    imports = {
        "dsrnet first": "import dsrnet, timm",
        "timm first": "import timm, dsrnet",
        # an "is timm installed?" check in between used to use the hook up without importing timm
        "dsrnet, a lookup of timm, timm": "import dsrnet, importlib.util\nimportlib.util.find_spec('timm')\nimport timm",
    }[order]
    out = _run(
        imports
        + """
import json
m = timm.create_model("dsrnet50_cifar", num_classes=3, widths=(4, 8, 8, 8), layers=(1, 1, 1, 1))
print(json.dumps([type(m).__name__, m.num_classes, "dsrnet50" in timm.list_models("dsrnet*")]))
"""
    )
    assert out == ["DSRNet", 3, True]


@pytest.mark.parametrize("order", ["dsrnet first", "torchvision first", "dsrnet, torchvision.models alone",
                                   "dsrnet's weights enum first", "dsrnet's weights module as the first import"])
def test_torchvisions_registry_serves_dsrnet_in_either_import_order(order):
    """Code written against torchvision's registry (its reference training scripts: get_model(args.model,
    weights=..., num_classes=...)) builds DSRNet once dsrnet is imported, the shipped weights included."""
    imports = {
        "dsrnet first": "import sys, dsrnet\nbare = 'torchvision' not in sys.modules\nimport torchvision",
        "torchvision first": "import torchvision, dsrnet\nbare = True",
        "dsrnet, torchvision.models alone": "import dsrnet\nfrom torchvision.models import get_model\nbare = True\n"
                                            "import torchvision",
        # the enum's module imports torchvision itself: the registration it triggers waited for it (it was lost)
        "dsrnet's weights enum first": "import dsrnet\nfrom dsrnet.models import DSRNet50_CIFAR_Weights\nbare = True\n"
                                       "import torchvision",
        "dsrnet's weights module as the first import": "import dsrnet.models.torchvision_weights\nbare = True\n"
                                                       "import dsrnet, torchvision",
    }[order]
    out = _run(
        imports
        + """
import json, torch, dsrnet.models
tv = torchvision.models
m = tv.get_model("dsrnet50_cifar", weights="DEFAULT").eval()
x = torch.randn(2, 3, 32, 32)
same = torch.equal(m(x), dsrnet.create_model("dsrnet50_cifar", pretrained=True).eval()(x))
small = tv.get_model("dsrnet50", num_classes=3, widths=(4, 8, 8, 8), layers=(1, 1, 1, 1))
every = [len(list(tv.get_model_weights(n))) for n in tv.list_models()]  # every name has an enum, ours included
print(json.dumps([bare, type(m).__name__, same, tv.get_model_weights("dsrnet50_cifar").__name__,
                  tv.list_models(module=dsrnet.models), small.fc.out_features,
                  type(tv.get_model("resnet50")).__module__, "resnet50_cifar" in tv.list_models(),
                  tv.get_model_weights("dsrnet50").__name__, len(every) == len(tv.list_models())]))
"""
    )
    assert out == [True, "DSRNet", True, "DSRNet50_CIFAR_Weights",
                   ["dsrnet101", "dsrnet101_cifar", "dsrnet50", "dsrnet50_cifar"], 3, "torchvision.models.resnet",
                   False, "NoDSRNetWeights", True]  # fmt: skip


def test_timms_zero_init_last_is_torchvisions_zero_init_residual():
    """timm's ResNet keyword was a TypeError (DSRNet takes torchvision's name); it is the same switch."""
    tiny = {"widths": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}
    model = dsrnet.create_model("dsrnet50", zero_init_last=True, **tiny)
    assert all(float(block.bn3.weight.abs().sum()) == 0 for layer in (model.layer1, model.layer4) for block in layer)
    assert float(dsrnet.create_model("dsrnet50", **tiny).layer1[0].bn3.weight.abs().sum()) > 0  # off by default
    with pytest.raises(dsrnet.DsrnetError, match="contradict .*; fix: give one"):
        dsrnet.create_model("dsrnet50", zero_init_last=True, zero_init_residual=False, **tiny)
    timm = pytest.importorskip("timm")
    assert float(timm.create_model("dsrnet50", zero_init_last=True, **tiny).layer2[0].bn3.weight.abs().sum()) == 0

