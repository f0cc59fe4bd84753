"""DSRNet under torchvision's detectors: FasterRCNN and MaskRCNN train (finite losses, gradients reach the stem)
and infer on small random images, on CPU, with a tiny network."""

from __future__ import annotations

import pytest
import torch

import dsrnet

TINY = {"widths": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}
# Few proposals and samples keep the ROI heads small; the detectors' logic is unchanged.
SMALL = {
    "min_size": 64,
    "max_size": 64,
    "rpn_batch_size_per_image": 32,
    "box_batch_size_per_image": 16,
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 20,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 10,
    "box_detections_per_img": 5,
}


def _batch(with_masks: bool):
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    boxes = [torch.tensor([[5.0, 5.0, 30.0, 40.0]]), torch.tensor([[10.0, 8.0, 50.0, 40.0]])]
    targets = []
    for image, box, label in zip(images, boxes, (1, 2), strict=True):
        target = {"boxes": box, "labels": torch.tensor([label])}
        if with_masks:
            mask = torch.zeros(1, *image.shape[1:], dtype=torch.uint8)
            x0, y0, x1, y1 = box[0].int().tolist()
            mask[0, y0:y1, x0:x1] = 1
            target["masks"] = mask
        targets.append(target)
    return images, targets


def test_backbone_with_fpn_is_torchvisions():
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    backbone = dsrnet.backbone_with_fpn("dsrnet50", out_channels=16, **TINY).eval()
    assert isinstance(backbone, BackboneWithFPN) and backbone.out_channels == 16
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(f.shape[1] == 16 for f in feats.values())


def test_backbone_with_fpn_rejects_bad_input():
    with pytest.raises(dsrnet.DsrnetError, match="dsrnet model name"):
        dsrnet.backbone_with_fpn("resnet50")
    with pytest.raises(dsrnet.DsrnetError, match="out of range"):
        dsrnet.backbone_with_fpn("dsrnet50", out_indices=(2, 5), **TINY)
    with pytest.raises(dsrnet.DsrnetError, match=r"returned_layers must hold stages in 1\.\.4"):
        dsrnet.backbone_with_fpn("dsrnet50", returned_layers=[0, 1], **TINY)
    with pytest.raises(dsrnet.DsrnetError, match="norm_layer=.*fix: pass torchvision.ops.FrozenBatchNorm2d"):
        dsrnet.backbone_with_fpn("dsrnet50", norm_layer=torch.nn.GroupNorm, **TINY)
    # a fused backbone is frozen whole: asking for trainable stages or live BatchNorm is refused, not ignored
    for asked in ({"trainable_layers": 5}, {"frozen_bn": False}, {"norm_layer": torch.nn.BatchNorm2d}):
        with pytest.raises(dsrnet.DsrnetError, match="fused=True folds the backbone's BatchNorm.*; fix: drop them"):
            dsrnet.backbone_with_fpn("dsrnet50", fused=True, **asked, **TINY)
    frozen = dsrnet.backbone_with_fpn("dsrnet50", fused=True, trainable_layers=0, frozen_bn=True, **TINY)  # as it is
    assert all(p.requires_grad for p in frozen.fpn.parameters())  # the pyramid trains on the frozen fused body
    with pytest.raises(dsrnet.DsrnetError, match="trainable_layers must be an integer"):
        dsrnet.backbone_with_fpn("dsrnet50", fused=True, trainable_layers=True, **TINY)


@pytest.mark.parametrize("out_indices", [(4, 3, 2), (2, 2, 3, 4), 3, (-1, -3, -2)])
def test_backbone_with_fpn_takes_indices_in_any_order_once_each(out_indices):
    """The maps come out in the order the stages run; the channel list used to follow the order given (a crash at
    the first forward), and a repeated index built an unused inner block."""
    backbone = dsrnet.backbone_with_fpn("dsrnet50", out_channels=8, out_indices=out_indices, **TINY).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert len(backbone.fpn.inner_blocks) == 3
    same = dsrnet.backbone_with_fpn("dsrnet50", out_channels=8, returned_layers=[2, 3, 4], **TINY)  # torchvision's name
    assert [b[0].in_channels for b in same.fpn.inner_blocks] == [b[0].in_channels for b in backbone.fpn.inner_blocks]


def test_backbone_with_fpn_norm_layer_is_the_backbones_as_in_torchvision():
    """``resnet_fpn_backbone(..., norm_layer=FrozenBatchNorm2d)`` freezes the backbone's statistics; the FPN's own
    normalisation is ``fpn_norm_layer``."""
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    def kinds(module):
        return {type(m).__name__ for m in module.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)}

    frozen = dsrnet.backbone_with_fpn("dsrnet50", out_channels=8, norm_layer=FrozenBatchNorm2d, **TINY)
    assert kinds(frozen.body) == {"FrozenBatchNorm2d"} and kinds(frozen.fpn) == set()
    plain = dsrnet.backbone_with_fpn("dsrnet50", out_channels=8, norm_layer=nn.BatchNorm2d, **TINY)
    assert kinds(plain.body) == {"BatchNorm2d"}
    normed_fpn = dsrnet.backbone_with_fpn("dsrnet50", out_channels=8, fpn_norm_layer=nn.BatchNorm2d, **TINY)
    assert kinds(normed_fpn.body) == {"BatchNorm2d"} and kinds(normed_fpn.fpn) == {"BatchNorm2d"}


def test_frozen_batchnorm_normalises_as_eval_mode_in_train_mode_too():
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    from dsrnet.models.detection import freeze_batchnorm

    torch.manual_seed(0)
    model = dsrnet.create_model("dsrnet50_cifar", num_classes=0, **TINY).train()
    model(torch.randn(8, 3, 32, 32))  # statistics off their defaults
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        frozen = freeze_batchnorm(model).train()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
        assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) > 0
        torch.testing.assert_close(frozen(x), expected)


def test_pretrained_backbone_freezes_batchnorm_and_the_lower_layers_as_torchvision():
    from torch import nn

    def trainable(backbone) -> dict[str, bool]:
        parts = {}
        for name, p in backbone.body.named_parameters():
            parts.setdefault(name.split(".")[0], set()).add(p.requires_grad)
        return {k: v == {True} for k, v in parts.items() if v}

    scratch = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=16, **TINY)
    assert all(trainable(scratch).values()) and isinstance(scratch.body.bn1, nn.BatchNorm2d)
    two = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=16, trainable_layers=2, frozen_bn=True, **TINY)
    assert trainable(two) == {"conv1": False, "layer1": False, "layer2": False, "layer3": True, "layer4": True}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in two.body.modules())
    assert all(p.requires_grad for p in two.fpn.parameters())  # the pyramid always trains
    # The shipped weights: torchvision's defaults for a trained backbone (3 layers, frozen statistics).
    trained = dsrnet.backbone_with_fpn("dsrnet50_cifar.c10", pretrained=True, out_channels=16)
    assert trainable(trained) == {"conv1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}
    weights = dsrnet.create_model("dsrnet50_cifar.c10", pretrained=True).state_dict()
    assert torch.equal(trained.body.layer4[0].bn1.running_var, weights["layer4.0.bn1.running_var"])
    for bad in (6, -1, True):
        with pytest.raises(dsrnet.DsrnetError, match="trainable_layers"):
            dsrnet.backbone_with_fpn("dsrnet50_cifar", trainable_layers=bad, **TINY)


@pytest.mark.parametrize("detector", ["FasterRCNN", "MaskRCNN"])
def test_detector_trains_and_infers(detector, one_thread):
    from torchvision.models import detection
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    torch.manual_seed(0)
    backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=16, **TINY)
    kwargs = dict(SMALL, num_classes=3)
    if detector == "MaskRCNN":  # a small mask head (torchvision's default is 4 convs of 256 channels)
        kwargs.update(
            num_classes=None,  # torchvision wants it None when the predictors are given
            box_predictor=FastRCNNPredictor(1024, 3),
            mask_head=MaskRCNNHeads(16, (8,), 1),
            mask_predictor=MaskRCNNPredictor(8, 8, 3),
        )
    model = getattr(detection, detector)(backbone, **kwargs)
    images, targets = _batch(with_masks=detector == "MaskRCNN")

    model.train()
    losses = model(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if detector == "MaskRCNN" else set())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stem_grad = backbone.body.conv1.weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out in outputs:
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
        if detector == "MaskRCNN":
            assert out["masks"].shape[0] == len(out["boxes"])


def test_dense_backbone_under_torchvisions_deeplabv3(one_thread):
    """``output_stride=8`` (layer3 and layer4 dilated instead of strided) under torchvision's DeepLabV3, as its
    ResNet backbones are used: full-resolution logits, and a training step reaches the stem."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

    torch.manual_seed(0)
    backbone = dsrnet.create_model("dsrnet50", num_classes=0, output_stride=8, **TINY)
    body = IntermediateLayerGetter(backbone, return_layers={"layer4": "out"})
    model = DeepLabV3(body, DeepLabHead(backbone.num_features, 3))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert body(x.clone())["out"].shape[-2:] == (8, 8)  # 64 / 8, not 64 / 32
    out = model.train()(x)["out"]
    assert out.shape == (2, 3, 64, 64)
    loss = torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 64, 64)))
    loss.backward()
    assert torch.isfinite(loss) and backbone.conv1.weight.grad.abs().sum() > 0


def test_a_fused_backbone_under_the_pyramid_gives_the_eager_pyramid(monkeypatch, one_thread):
    """``fused=True`` reaches ``create_model``: torchvision's IntermediateLayerGetter runs the fused form's children
    (its stem is a module), so a deployed detector's backbone can run the folded kernels."""
    from dsrnet.models.detection import backbone_with_fpn

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the kernels are tested elsewhere
    fused = backbone_with_fpn("dsrnet50_cifar", pretrained=True, fused=True).eval()
    eager = backbone_with_fpn("dsrnet50_cifar", pretrained=True).eval()
    eager.fpn.load_state_dict(fused.fpn.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got, want = fused(x), eager(x)
    assert list(got) == list(want) == ["0", "1", "2", "3", "pool"]
    for key, ref in want.items():
        assert got[key].shape == ref.shape
        assert (got[key] - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_fuse_of_a_trained_detector_folds_its_dsrnet_parts_and_keeps_the_rest(monkeypatch, one_thread, frozen_bn):
    """After training, ``dsrnet.fuse(detector)`` runs its backbone's stem and DSR blocks folded (BatchNorm or
    torchvision's FrozenBatchNorm2d into the convs) and leaves the pyramid and heads alone: same detections."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.ops import FrozenBatchNorm2d

    from dsrnet.models.fused import FusedDSRBlock, FusedStem

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")  # the PyTorch fallbacks: the kernels are tested elsewhere
    torch.manual_seed(0)
    backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=16, frozen_bn=frozen_bn, **TINY)
    detector = FasterRCNN(backbone, **dict(SMALL, num_classes=3)).eval()
    with torch.no_grad():  # statistics and scales of a trained backbone, so that folding them matters
        for m in backbone.body.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    fused = dsrnet.fuse(detector)
    assert isinstance(fused.backbone.body.conv1, FusedStem)
    assert isinstance(fused.backbone.body.bn1, torch.nn.Identity)
    assert all(isinstance(b, FusedDSRBlock) for stage in ("layer1", "layer4")
               for b in getattr(fused.backbone.body, stage))  # fmt: skip
    assert type(fused.backbone.fpn) is type(detector.backbone.fpn) and fused.roi_heads.box_predictor is not None
    assert isinstance(detector.backbone.body.conv1, torch.nn.Conv2d)  # the original is not changed
    images = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        want = detector.backbone(torch.stack(images))
        got = fused.backbone(torch.stack(images))
        assert all((got[k] - want[k]).abs().max() <= 1e-4 * want[k].abs().max() for k in want)
        boxes, ref = fused(images)[0], detector(images)[0]
    assert torch.allclose(boxes["boxes"], ref["boxes"], atol=1e-3) and torch.equal(boxes["labels"], ref["labels"])


def test_fuse_of_a_module_built_on_dsrnet_keeps_its_dtype(monkeypatch):
    from dsrnet.models.fused import FusedDSRBlock, FusedStem

    monkeypatch.setenv("DSRNET_DISABLE_TRITON", "1")
    backbone = dsrnet.backbone_with_fpn("dsrnet50_cifar", out_channels=16, **TINY).to(torch.bfloat16)
    fused = dsrnet.fuse(backbone)
    assert {fused.body.conv1.w_packed.dtype} | {b.w1.dtype for b in fused.body.layer1} == {torch.bfloat16}
    assert isinstance(fused.body.conv1, FusedStem) and isinstance(fused.body.layer2[0], FusedDSRBlock)
    with torch.no_grad():
        maps = fused(torch.rand(1, 3, 32, 32, dtype=torch.bfloat16))
    assert all(m.dtype == torch.bfloat16 for m in maps.values())


@pytest.mark.parametrize("frozen_bn", [True, False])
def test_a_bf16_backbone_with_fpn_runs_in_bf16_frozen_or_not(frozen_bn):
    """dtype=bf16 built a bf16 body, then fp32 FrozenBatchNorm2d in it and an fp32 pyramid on it: a raw dtype
    RuntimeError in the first forward."""
    backbone = dsrnet.backbone_with_fpn("dsrnet50", frozen_bn=frozen_bn, dtype=torch.bfloat16, out_channels=8, **TINY)
    with torch.no_grad():
        maps = backbone.eval()(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert {m.dtype for m in maps.values()} == {torch.bfloat16} and maps["0"].shape == (1, 8, 16, 16)


def test_fuse_refuses_a_module_without_dsrnet_parts():
    with pytest.raises(dsrnet.DsrnetError, match="holds no DSR block"):
        dsrnet.fuse(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
