"""Detector structure (Appendix A), box coding, anchors, sampling and Appendix B/C switches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnets.detection.box_coding import decode_boxes, encode_boxes, match_boxes, sample_labels
from resnets.detection.config import DetectionConfig
from resnets.detection.model import FasterRCNN, build_detector, resize_and_batch
from resnets.detection.rpn import grid_anchors, make_cell_anchors
from resnets.models import BasicBlock, Normalize, ResNet
from resnets.ops import FrozenBatchNorm2d

# Small but complete: resnet18-C4, 64px shorter side, few proposals/RoIs.
TINY = dict(
    arch="resnet18", num_classes=3, min_size=64, max_size=96, anchor_sizes=(16.0, 32.0, 64.0),
    rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=20, rpn_batch_size_per_image=32, roi_batch_size_per_image=16, pooled_size=4,
)


def _tiny_resnet() -> ResNet:
    """A narrow ImageNet-style ResNet (same code path as resnet18, ~1/30 of the compute)."""
    return ResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64))


def _images_and_targets():
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8, generator=g),
              torch.randint(0, 256, (3, 70, 50), dtype=torch.uint8, generator=g)]
    targets = [{"boxes": torch.tensor([[5.0, 5, 30, 40]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10, 40, 30], [0, 30, 20, 69]]), "labels": torch.tensor([2, 3])}]
    return images, targets


def test_box_coding_roundtrip_and_clamp():
    g = torch.Generator().manual_seed(0)
    ref = torch.tensor([[10.0, 20, 50, 40], [0, 0, 8, 16]])
    tgt = torch.tensor([[12.0, 18, 60, 44], [1, 2, 5, 30]])
    for w in [(1.0, 1, 1, 1), (10.0, 10, 5, 5)]:
        d = encode_boxes(tgt, ref, w)
        torch.testing.assert_close(decode_boxes(d, ref, w), tgt)
    per_class = decode_boxes(torch.randn(2, 4, 4, generator=g), ref)
    assert per_class.shape == (2, 4, 4)
    huge = decode_boxes(torch.tensor([[0.0, 0, 100, 100]]), ref[:1])
    assert torch.isfinite(huge).all() and (huge[0, 2] - huge[0, 0]) <= 40 * 1000 / 16 + 1


def test_anchors_scales_ratios_and_grid():
    cell = make_cell_anchors((32.0, 64.0), (0.5, 1.0, 2.0))
    assert cell.shape == (6, 4)
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([32.0**2] * 3 + [64.0**2] * 3))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1, 2, 0.5, 1, 2]))
    grid = grid_anchors(cell, 2, 3, 16)
    assert grid.shape == (2 * 3 * 6, 4)
    centres = (grid[:, :2] + grid[:, 2:]) / 2
    torch.testing.assert_close(centres[6 * 4], torch.tensor([24.0, 24.0]))  # (y=1, x=1): (1+0.5)*16


def test_match_and_sample():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    cand = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 2], [50, 50, 60, 60], [0, 0, 10, 8]])
    idx, lab = match_boxes(gt, cand, 0.7, 0.0, 0.3, keep_best=False)
    assert lab.tolist() == [1, -1, 0, 0, 1]
    # keep_best: a lone low-IoU best anchor still becomes positive.
    _, lab2 = match_boxes(gt, cand[2:4], 0.7, 0.0, 0.3, keep_best=True)
    assert lab2.tolist() == [1, 0]
    # Fast R-CNN background range [0.1, 0.5): IoU 0 is ignored.
    _, lab3 = match_boxes(gt, cand, 0.5, 0.1, 0.5, keep_best=False)
    assert lab3.tolist() == [1, 1, 0, -1, 1]  # IoU exactly 0.5 is foreground
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    keep = sample_labels(labels, 16, 0.25)
    assert (labels[keep] == 1).sum() == 4 and (labels[keep] == 0).sum() == 12
    few = sample_labels(torch.tensor([1, 0, 0, -1]), 16, 0.5)
    assert sorted(few.tolist()) == [0, 1, 2]


def test_resize_and_batch():
    img = torch.full((3, 50, 100), 128, dtype=torch.uint8)
    batch, sizes, scales = resize_and_batch([img], 60, 100, Normalize.channel())
    assert sizes == [(50, 100)]  # capped by max_size: 100 / 100
    assert batch.shape == (1, 3, 64, 112)  # padded to multiples of 16
    assert torch.all(batch[:, :, 50:] == 0)
    _, sizes, scales = resize_and_batch([img], 100, 1000, Normalize.channel())
    assert sizes == [(100, 200)] and scales.tolist() == [[2.0, 2.0]]


def test_backbone_is_c4_with_frozen_parts():
    torch.manual_seed(0)
    model = build_detector(DetectionConfig(**TINY))
    # conv1..conv4_x shared trunk (the ResNet up to layer3); res5 = the ResNet's own layer4 in the head.
    assert model.backbone.stage_names == ["layer1", "layer2", "layer3"]
    assert {k.split(".")[0] for k in model.backbone.state_dict()} == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert model.head.res5[0].conv1.stride == (2, 2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.head.res5.modules())
    assert not any(p.requires_grad for p in model.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    x = torch.zeros(1, 3, 64, 96)
    assert model.features(x).shape == (1, 256, 4, 6)  # stride 16
    assert model.head.cls_score.out_features == 4 and model.head.bbox_pred.out_features == 16


def test_training_step_updates_unfrozen_weights_only():
    torch.manual_seed(0)
    model = build_detector(DetectionConfig(**TINY))
    model.train()
    images, targets = _images_and_targets()
    before_l1 = model.backbone.layer1[0].conv1.weight.clone()
    before_l3 = model.backbone.layer3[0].conv1.weight.clone()
    bn_mean = model.backbone.layer2[0].bn1.running_mean.clone()
    losses = model(images, targets)
    assert set(losses) == {"loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(losses.values()).backward()
    opt.step()
    assert torch.equal(model.backbone.layer1[0].conv1.weight, before_l1)
    assert not torch.equal(model.backbone.layer3[0].conv1.weight, before_l3)
    assert torch.equal(model.backbone.layer2[0].bn1.running_mean, bn_mean)


@pytest.mark.parametrize("options", [
    {},
    {"roi_op": "pool"},
    {"box_refinement": True},
    {"global_context": True},
    {"test_scales": (48, 64, 96)},
    {"rpn_per_class": True},
    {"box_refinement": True, "global_context": True, "test_scales": (48, 64)},
])
def test_inference_outputs_and_options(options):
    torch.manual_seed(0)
    cfg = DetectionConfig(**TINY, **options)
    model = FasterRCNN(cfg, _tiny_resnet())
    images, targets = _images_and_targets()
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        d = det["boxes"].shape[0]
        assert d <= cfg.detections_per_image and det["scores"].shape == (d,) and det["labels"].shape == (d,)
        if d:
            h, w = img.shape[-2:]
            assert det["boxes"][:, 0::2].max() <= w and det["boxes"][:, 1::2].max() <= h
            assert det["labels"].min() >= 1 and det["labels"].max() <= 3
            assert (det["scores"][:-1] >= det["scores"][1:]).all()
    if options.get("global_context"):
        assert model.head.cls_score.in_features == 2 * 64


def test_box_voting_averages_overlapping_boxes():
    cfg = DetectionConfig(**TINY, box_refinement=True, score_threshold=0.0)
    model = FasterRCNN(cfg, _tiny_resnet())
    probs = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.4, 0.6, 0.0, 0.0]])
    boxes = torch.zeros(2, 4, 4)
    boxes[0, 1] = torch.tensor([0.0, 0, 10, 10])
    boxes[1, 1] = torch.tensor([0.0, 0, 10, 12])  # IoU 10/12 with the first
    det = model._postprocess(probs, boxes, (100, 100))
    assert det["labels"].tolist()[0] == 1 and det["scores"][0] == pytest.approx(0.9)
    # voted box: (0.9 * 10 + 0.6 * 12) / 1.5 = 10.8 for y2
    assert det["boxes"][0].tolist() == pytest.approx([0, 0, 10, 10.8])


def test_per_class_rpn_appendix_c():
    torch.manual_seed(0)
    cfg = DetectionConfig(**{**TINY, "rpn_per_class": True})
    model = FasterRCNN(cfg, _tiny_resnet())
    a = len(cfg.anchor_sizes) * len(cfg.anchor_ratios)
    assert model.rpn.cls_logits.out_channels == a * 3 and model.rpn.bbox_pred.out_channels == a * 3 * 4
    images, targets = _images_and_targets()
    batch, sizes, _ = resize_and_batch(images, cfg.min_size, cfg.max_size, model.normalize)
    model.eval()
    proposals, labels, _ = model.rpn(model.features(batch), sizes)
    for p, l in zip(proposals, labels):
        assert l is not None and l.shape == p.shape[:1] and l.min() >= 1 and l.max() <= 3
    model.train()
    feats = model.features(batch)
    _, _, losses = model.rpn(feats, sizes, [{"boxes": t["boxes"] * 1.0, "labels": t["labels"]} for t in targets])
    losses["loss_rpn_objectness"].backward()
    # Every class has its own objectness output, and all are trained (negatives count for every class).
    grad = model.rpn.cls_logits.bias.grad.view(a, 3)
    assert (grad != 0).all()


@pytest.mark.parametrize("global_context", [False, True])
def test_global_context_sees_the_whole_image(global_context):
    torch.manual_seed(0)
    model = FasterRCNN(DetectionConfig(**TINY, global_context=global_context), _tiny_resnet()).eval()
    feats = torch.randn(1, 32, 8, 8)
    rois = torch.tensor([[0.0, 0, 0, 32, 32]])  # top-left quarter of a 128x128 input
    with torch.no_grad():
        before = model.head.box_features(feats, rois, [(128, 128)])
        feats[:, :, 5:, 5:] += 3.0  # change only the far corner, outside the RoI
        after = model.head.box_features(feats, rois, [(128, 128)])
    assert before.shape[1] == (128 if global_context else 64)
    assert torch.equal(before[:, :64], after[:, :64])  # the region feature itself is local
    assert torch.equal(before, after) != global_context


def test_multiscale_with_only_the_base_scale_equals_single_scale():
    torch.manual_seed(0)
    images, _ = _images_and_targets()
    single = FasterRCNN(DetectionConfig(**TINY), _tiny_resnet()).eval()
    multi = FasterRCNN(DetectionConfig(**TINY, test_scales=(64,)), _tiny_resnet()).eval()
    multi.load_state_dict(single.state_dict())
    for a, b in zip(single(images), multi(images)):
        assert all(torch.equal(a[k], b[k]) for k in a)
