"""Model zoo: shapes, exact parameter counts, the paper's design (Fig. 1, Table 1), ablation switches, integrations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dsrnet
from dsrnet.models import PAPER_COMPARISON, DSRBlock, DSRNet, stem_variant
from dsrnet.models.dsrnet import block_dilation_schedule

ALL_MODELS = dsrnet.list_models()
DSRNETS = dsrnet.list_models("dsrnet*")
TINY = {"widths": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_paper_models_and_both_stems():
    for name in PAPER_COMPARISON + ("mobilenet_v2", "dsrnet101"):
        assert name in ALL_MODELS
        assert stem_variant(name, "cifar") in ALL_MODELS
    assert stem_variant("dsrnet50_cifar", "paper") == "dsrnet50"
    assert len(ALL_MODELS) == 14


@pytest.mark.parametrize("size", [32, 96, 224])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape(name, size):
    torch.manual_seed(0)
    model = dsrnet.create_model(name, num_classes=7).eval()
    batch = 1 if size == 224 else 2
    with torch.inference_mode():
        out = model(torch.randn(batch, 3, size, size))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


# Exact counts with a 10-class head, pinned so any change to the architecture is a deliberate one.
# dsrnet50 (12.2 M) is about half the paper's stated 2.19e7 (Fig. 2); see README "Parameter count".
EXPECTED_PARAMS_10 = {
    "dsrnet50": 12_245_258,
    "dsrnet50_cifar": 12_237_578,
    "dsrnet101": 21_249_546,
    "dsrnet101_cifar": 21_241_866,
    "resnet50": 23_528_522,
    "resnet50_cifar": 23_520_842,
    "resnet101": 42_520_650,
    "resnet101_cifar": 42_512_970,
    "resnext50_32x4d": 23_000_394,
    "resnext50_32x4d_cifar": 22_992_714,
    "resnext101_32x8d": 86_762_826,
    "resnext101_32x8d_cifar": 86_755_146,
    "mobilenet_v2": 2_236_682,
    "mobilenet_v2_cifar": 2_236_682,
}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_exact_parameter_count(name):
    assert n_params(dsrnet.create_model(name, num_classes=10)) == EXPECTED_PARAMS_10[name]


def test_parameter_count_by_hand():
    """DSRNet-50's count from Fig. 1 / Table 1 arithmetic, independent of the module code."""

    def block(cin, w, down):
        bn = 2 * (w + w + 4 * w)
        convs = cin * w + 9 * w + w * 4 * w
        short = (cin * 4 * w + 2 * 4 * w) if down else 0
        return convs + bn + short

    total = 3 * 64 * 49 + 2 * 64  # stem conv + BN
    cin = 64
    for n, w in zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True):
        for i in range(n):
            total += block(cin, w, down=(i == 0))
            cin = 4 * w
    total += 2048 * 10 + 10
    assert n_params(dsrnet.create_model("dsrnet50", num_classes=10)) == total


def test_full_3x3_ablation_has_resnet50_parameter_count():
    """Undoing the depthwise-separable change gives back exactly ResNet-50's bottleneck parameters."""
    full = dsrnet.create_model("dsrnet50", num_classes=10, separable=False)
    assert n_params(full) == EXPECTED_PARAMS_10["resnet50"]


def test_block_matches_figure_1():
    block = DSRBlock(256, 128, stride=2, dilation=2)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (1, 1), (1, 1)]  # 1x1, dw 3x3, pw 1x1, shortcut
    assert block.conv_dw.groups == 128 and block.conv_dw.dilation == (2, 2)
    assert block.conv_pw.out_channels == 512
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 4
    assert block(torch.randn(2, 256, 16, 16)).shape == (2, 512, 8, 8)


def _rates(model: DSRNet) -> list[list[int]]:
    return [[b.conv_dw.dilation[0] for b in getattr(model, f"layer{i}")] for i in range(1, 5)]


def test_default_dilation_schedule():
    """Stem rate 3, rate 2 where maps downsample, (1, 2, 3) cycled inside stages (Section 3, 4.2)."""
    model = dsrnet.create_model("dsrnet50")
    assert (
        model.conv1.dilation == (3, 3) and model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    )
    assert _rates(model) == [[1, 2, 3], [2, 1, 2, 3], [2, 1, 2, 3, 1, 2], [2, 1, 2]]
    assert block_dilation_schedule(4, downsamples=False, down_dilation=2, block_dilations=(1, 2)) == [
        1,
        2,
        1,
        2,
    ]


def test_dilation_off_switch():
    model = dsrnet.create_model("dsrnet50", stem_dilation=1, down_dilation=1, block_dilations=(1,))
    assert model.conv1.dilation == (1, 1)
    assert all(r == 1 for stage in _rates(model) for r in stage)
    # Rates add no parameters (Section 3: "keeping the convolution kernel parameters constant").
    assert n_params(model) == n_params(dsrnet.create_model("dsrnet50"))


@pytest.mark.parametrize(
    ("name", "side", "expected"),
    [
        # cifar stem at 32 px: maps 32/16/8/4; only the 4x4 stage's rate-2 in-stage block changes.
        ("dsrnet50_cifar", 32, [[1, 2, 3], [2, 1, 2, 3], [2, 1, 2, 3, 1, 2], [2, 1, 1]]),
        # paper stem at 32 px: maps 8/4/2/1 -> rate 1 from the 4x4 maps on (the 8x8 stage keeps 1, 2, 3).
        ("dsrnet50", 32, [[1, 2, 3], [2, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1]]),
        # paper stem at 96 px (STL-10): maps 24/12/6/3 -> the 6x6 stage caps 3 at 2, the 3x3 stage at 1.
        ("dsrnet50", 96, [[1, 2, 3], [2, 1, 2, 3], [2, 1, 2, 2, 1, 2], [2, 1, 1]]),
    ],
)
def test_fit_dilation_caps_rates_to_the_map(name, side, expected):
    """``fit_dilation_to``: no dilated 3x3 spans more than the map it reads ("appropriate dilated rate", Sec. 3)."""
    model = dsrnet.create_model(name, num_classes=10, fit_dilation_to=side)
    assert _rates(model) == expected
    assert model.conv1.dilation == (3, 3)  # 32 px still holds a rate-3 3x3 (7 px) or 7x7 (19 px) stem
    assert model.dilation_config["fit_to"] == side
    # Large inputs keep the paper's rates; parameters never change.
    paper = dsrnet.create_model(name, num_classes=10)
    assert _rates(dsrnet.create_model(name, num_classes=10, fit_dilation_to=224)) == _rates(paper)
    assert n_params(model) == n_params(paper)
    assert model(torch.randn(2, 3, side, side)).shape == (2, 10)


def test_fit_rate_and_bad_fit_size():
    from dsrnet.models.dsrnet import fit_rate

    assert [fit_rate(3, s) for s in (1, 2, 4, 5, 6, 7, 100)] == [1, 1, 1, 2, 2, 3, 3]
    assert fit_rate(3, 18, kernel_size=7) == 2 and fit_rate(3, 19, kernel_size=7) == 3
    for bad in (0, -4, 2.5):
        with pytest.raises(dsrnet.DsrnetError, match="fit_dilation_to must be"):
            dsrnet.create_model("dsrnet50_cifar", fit_dilation_to=bad)


def _receptive_extent(fn, channels: int, size: int = 64) -> int:
    """Width of the input region that reaches the centre output pixel, from the input gradient."""
    x = torch.ones(1, channels, size, size, requires_grad=True)  # > 0 so no ReLU sits at its kink
    out = fn(x)
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero()
    return int(cols.max() - cols.min() + 1)


def _constant_weights(model: nn.Module) -> nn.Module:
    """Positive weights and eval-mode BN so no gradient path cancels out by chance."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 0.1)
    return model.eval()


@pytest.mark.parametrize(("stem", "kernel"), [("paper", 7), ("cifar", 3)])
def test_stem_receptive_field_grows_with_dilation(stem, kernel):
    extents = {}
    for rate in (1, 3):
        model = _constant_weights(DSRNet(stem=stem, stem_dilation=rate, **TINY))
        extents[rate] = _receptive_extent(model.conv1, 3)
    assert extents[1] == kernel
    assert extents[3] == 3 * (kernel - 1) + 1


def test_network_receptive_field_grows_with_block_dilation():
    def extent(**kw):
        model = _constant_weights(
            DSRNet(stem="cifar", stem_dilation=1, widths=(4, 8, 8, 8), layers=(3, 1, 1, 1), **kw)
        )
        return _receptive_extent(lambda x: model.layer1(model.forward_stem(x)), 3)

    assert extent(block_dilations=(1,)) == 3 + 3 * 2  # four 3x3 convs in a row
    assert extent(block_dilations=(1, 2, 3)) == 3 + 2 * (1 + 2 + 3)


@pytest.mark.parametrize("stride_on", ["dw", "1x1"])
def test_stride_placement_switch(stride_on):
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, stride_on=stride_on)
    first = model.layer2[0]
    assert first.conv1.stride == ((2, 2) if stride_on == "1x1" else (1, 1))
    assert first.conv_dw.stride == ((1, 1) if stride_on == "1x1" else (2, 2))
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 2048, 4, 4)


def test_stride_placement_changes_output_but_not_parameters():
    torch.manual_seed(0)
    a = DSRNet(stem="cifar", **TINY).eval()
    b = DSRNet(stem="cifar", stride_on="1x1", **TINY).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


def test_separable_switch_uses_full_conv():
    model = dsrnet.create_model("dsrnet50", separable=False)
    assert all(b.conv_dw.groups == 1 for b in model.modules() if isinstance(b, DSRBlock))


@pytest.mark.parametrize("stem", ["paper", "cifar"])
def test_features_only_and_feature_info(stem):
    model = DSRNet(stem=stem, features_only=True, out_indices=(0, 1, 2, 3, 4), **TINY).eval()
    size = 64
    feats = model(torch.randn(2, 3, size, size))
    assert len(feats) == len(model.feature_info) == 5
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[2] == size // info["reduction"]
    expected = [2, 4, 8, 16, 32] if stem == "paper" else [1, 1, 2, 4, 8]
    assert [i["reduction"] for i in model.feature_info] == expected
    assert [i["num_chs"] for i in model.feature_info] == [4, 16, 32, 32, 32]


def test_timm_style_head_api():
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 2048, 4, 4)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 2048)
    assert torch.allclose(model.forward_head(feats), model(x))
    model.reset_classifier(100)
    assert model(x).shape == (2, 100) and model.num_classes == 100
    model.reset_classifier(0)
    assert model(x).shape == (2, 2048)


def test_timm_create_model():
    timm = pytest.importorskip("timm")
    model = timm.create_model("dsrnet50", num_classes=10)
    assert isinstance(model, DSRNet) and model.num_classes == 10
    assert "dsrnet50_cifar" in timm.list_models("dsrnet*")
    cfg = timm.data.resolve_data_config(model=timm.create_model("dsrnet50_cifar"))
    assert cfg["input_size"] == (3, 32, 32)
    backbone = timm.create_model("dsrnet50", features_only=True, out_indices=(2, 3))
    assert [f.shape[1] for f in backbone(torch.randn(1, 3, 64, 64))] == [512, 1024]


def test_torch_hub_local():
    from tests.conftest import REPO

    model = torch.hub.load(str(REPO), "dsrnet50_cifar", source="local", num_classes=10)
    assert isinstance(model, DSRNet) and model.num_classes == 10
    assert n_params(model) == EXPECTED_PARAMS_10["dsrnet50_cifar"]


@pytest.mark.parametrize("name", DSRNETS)
def test_torchscript_matches_eager(name):
    model = dsrnet.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; scripting still has users
        scripted = torch.jit.script(model)
    with torch.inference_mode():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DSRNETS)
def test_onnx_export_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    # Narrow (every op and block type of the full model, a tenth of the export time); the full-size shipped model
    # goes through `dsrnet export` in tests/export/test_formats.py.
    model = dsrnet.create_model(name, num_classes=10, widths=(8, 16, 32, 64)).eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 32, 32)  # a batch size other than the traced one
    (got,) = session.run(None, {"images": x3.numpy()})
    with torch.inference_mode():
        want = model(x3).numpy()
    assert got.shape == (3, 10)
    assert abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stem": "imagenet"}, "stem"),
        ({"stride_on": "3x3"}, "stride_on"),
        ({"stem_dilation": 0}, "dilation"),
        ({"block_dilations": ()}, "dilation"),
        ({"block_dilations": (1.5,)}, "dilation"),
        ({"layers": (3, 4, 6)}, "4 entries"),
        ({"widths": (64, 0, 256, 512)}, "positive"),
        ({"num_classes": -1}, "num_classes"),
        # these used to build a broken model, or fail with a raw TypeError / "negative dimension"
        ({"in_chans": 0}, "in_chans must be an integer >= 1"),
        ({"in_chans": -1}, "in_chans must be an integer >= 1"),
        ({"stem_width": 0}, "stem_width must be an integer >= 1"),
        ({"widths": (4.5, 8, 8, 8)}, "widths must be a sequence of integers"),
        ({"layers": (1.5, 1, 1, 1)}, "layers must be a sequence of integers"),
        ({"layers": 3}, "layers must be a sequence of integers"),
        ({"block_dilations": 2}, "block_dilations must be a sequence of integers"),
        ({"num_classes": 2.5}, "num_classes must be an integer"),
        # whole-number floats were accepted, then conv2d refused dilation=(2.0, 2.0) in the first forward
        ({"stem_dilation": 2.0}, "dilation rates must be integers >= 1, got stem=2.0.*fix:"),
        ({"down_dilation": 2.0}, "dilation rates must be integers >= 1"),
        ({"fit_dilation_to": 24.0}, "fit_dilation_to must be an input side in pixels >= 1 or None, got 24.0; fix:"),
        ({"drop_path_rate": "0.1"}, "drop_rate and drop_path_rate must be numbers in \\[0, 1\\), got 0.0, '0.1'"),
    ],
)
def test_bad_dsrnet_arguments(kwargs, match):
    with pytest.raises(dsrnet.DsrnetError, match=match):
        DSRNet(**kwargs)


def test_reset_classifier_takes_the_constructors_rules():
    model = DSRNet(layers=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=3)
    with pytest.raises(dsrnet.DsrnetError, match="num_classes must be an integer"):
        model.reset_classifier(2.5)
    with pytest.raises(dsrnet.DsrnetError, match="needs num_classes=0"):  # used to fail only at the next forward
        model.reset_classifier(5, "")
    model.reset_classifier(0, "")
    assert model.eval()(torch.randn(1, 3, 32, 32)).dim() == 4


def test_bad_names_and_arguments_through_create_model():
    with pytest.raises(dsrnet.DsrnetError, match="unknown model 'resnet18'.*dsrnet50"):
        dsrnet.create_model("resnet18")
    with pytest.raises(dsrnet.DsrnetError, match="does not take"):
        dsrnet.create_model("dsrnet50", colour="red")
    with pytest.raises(dsrnet.DsrnetError, match="does not take"):
        dsrnet.create_model("resnet50", separable=False)
    with pytest.raises(dsrnet.DsrnetError, match="stem is part of the model name"):
        dsrnet.create_model("dsrnet50", stem="cifar")
    with pytest.raises(dsrnet.DsrnetError, match="no pretrained weights"):
        dsrnet.create_model("dsrnet50", pretrained=True)
    with pytest.raises(dsrnet.DsrnetError, match="num_classes"):
        dsrnet.create_model("resnet50", num_classes="10")
    with pytest.raises(dsrnet.DsrnetError, match="fused must be True or False.*dsrnet.fuse"):
        dsrnet.create_model("dsrnet50", fused="split")
    assert dsrnet.create_model("dsrnet50", num_classes=np.int64(5)).num_classes == 5  # as timm takes it
    # timm's rule: None means the default (timm's train script passes drop_path_rate=args.drop_path, None unset)
    model = dsrnet.create_model("dsrnet50", drop_path_rate=None, drop_rate=None, global_pool=None, num_classes=3)
    assert model.drop_rate == 0.0 and model.forward_head(torch.randn(1, 2048, 2, 2)).shape == (1, 3)
    with pytest.raises(ValueError):  # DsrnetError is a ValueError for callers who catch that
        dsrnet.create_model("nope")


def test_depth_override_through_create_model():
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=10, layers=(1, 1, 1, 1), widths=(8, 8, 8, 8))
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [1, 1, 1, 1]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_stem_baselines():
    r = dsrnet.create_model("resnet50_cifar", num_classes=10)
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1) and isinstance(r.maxpool, nn.Identity)
    m = dsrnet.create_model("mobilenet_v2_cifar", num_classes=10)
    assert m.features[0][0].stride == (1, 1)
    assert dsrnet.create_model("mobilenet_v2").features[0][0].stride == (2, 2)


@pytest.mark.parametrize(("name", "width"), [("resnet50", 2048), ("mobilenet_v2_cifar", 1280)])
def test_baselines_without_classifier_give_pooled_features(name, width):
    """num_classes=0 is timm's "no classifier" for every registered name: torchvision's own builder would make a
    Linear(width, 0) that returns (N, 0), an empty output and no error."""
    model = dsrnet.create_model(name, num_classes=0).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, width)


def test_torchvisions_replace_stride_with_dilation_is_output_stride():
    """torchvision's segmentation builders ask ResNet for [False, True, True]: DSRNet's output_stride 8."""
    for flags, stride in (([False, True, True], 8), ([False, False, True], 16), ([False, False, False], 32)):
        torch.manual_seed(0)
        got = dsrnet.models.dsrnet50(replace_stride_with_dilation=flags, num_classes=0, global_pool="", **TINY)
        torch.manual_seed(0)
        want = dsrnet.models.dsrnet50(output_stride=stride, num_classes=0, global_pool="", **TINY)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            out = got.eval()(x)
            assert out.shape[-1] == 64 // stride and torch.equal(out, want.eval()(x))
    small = dsrnet.models.dsrnet50_cifar(replace_stride_with_dilation=[False, False, True], num_classes=0,
                                         global_pool="", **TINY)  # fmt: skip
    assert small(torch.randn(1, 3, 32, 32)).shape[-1] == 32 // 4  # the cifar stem's natural 8, halved
    with pytest.raises(dsrnet.DsrnetError, match=r"dilates from the deepest stage up.*fix:"):
        dsrnet.models.dsrnet50(replace_stride_with_dilation=[True, False, False])
    with pytest.raises(dsrnet.DsrnetError, match="contradict"):
        dsrnet.models.dsrnet50(replace_stride_with_dilation=[False, True, True], output_stride=16)


def test_norm_layer_is_taken_as_torchvision_and_timm_take_it(tmp_path):
    from functools import partial

    from torchvision.ops import FrozenBatchNorm2d

    model = dsrnet.models.dsrnet50_cifar(norm_layer=FrozenBatchNorm2d, num_classes=10, **TINY)
    norms = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in ("bn1", "bn2", "bn3")
             or n.endswith("downsample.1")]  # fmt: skip
    assert norms and all(type(m) is FrozenBatchNorm2d for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # trained weights load into frozen BatchNorm (no step counts to keep) and compute what the trained model does
    frozen = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True, norm_layer=FrozenBatchNorm2d)
    trained = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(frozen.train()(x), trained(x), atol=1e-5, rtol=1e-4)  # frozen in train mode too
    grouped = dsrnet.create_model("dsrnet50_cifar", num_classes=10, norm_layer=partial(nn.GroupNorm, 2), **TINY)
    assert isinstance(grouped.layer1[0].bn3, nn.GroupNorm) and grouped(x).shape == (2, 10)
    with pytest.raises(dsrnet.DsrnetError, match="is a GroupNorm, but fuse\\(\\) folds plain BatchNorm"):
        dsrnet.fuse(grouped.eval())
    # a checkpoint of a frozen model loads into a BatchNorm one (step counts missing on one side, not weights)
    torch.save(frozen.state_dict(), tmp_path / "frozen.pth")
    again = dsrnet.create_model("dsrnet50_cifar", num_classes=10, checkpoint_path=tmp_path / "frozen.pth").eval()
    with torch.no_grad():
        assert torch.allclose(again(x), trained(x), atol=1e-5, rtol=1e-4)
    meta = dsrnet.models.dsrnet50(norm_layer=FrozenBatchNorm2d, device="meta", **TINY)
    assert {b.device.type for b in meta.buffers()} == {"meta"}
