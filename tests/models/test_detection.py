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
