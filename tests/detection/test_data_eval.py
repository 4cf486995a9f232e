"""VOC / COCO loaders on generated files, synthetic set, VOC AP and COCO mAP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resnets.detection.config import DetectionConfig, load_config
from resnets.detection.data import COCODetection, SyntheticShapes, VOCDetection, hflip, write_coco, write_voc
from resnets.detection.evaluation import evaluate_coco, evaluate_voc, voc_ap
from resnets.errors import ConfigError, DataError


def test_synthetic_is_deterministic_and_boxes_are_tight():
    ds = SyntheticShapes(3, seed=5)
    a, ta = ds[1]
    b, tb = SyntheticShapes(3, seed=5)[1]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    assert a.dtype == torch.uint8 and a.shape == (3, 128, 160)
    # With one object per image, the pixels of the shape's exact fill colour span its box.
    single = SyntheticShapes(4, max_objects=1, seed=7)
    for i in range(4):
        img, boxes, labels = single.sample(i)
        arr = np.asarray(img).astype(int)
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        colour = arr[(y1 + y2) // 2, (x1 + x2) // 2]  # the box centre lies inside every shape
        oy, ox = max(y1 - 3, 0), max(x1 - 3, 0)
        mask = (arr[oy : y2 + 3, ox : x2 + 3] == colour).all(axis=2)
        rows = np.where(mask.any(axis=1))[0] + oy
        cols = np.where(mask.any(axis=0))[0] + ox
        # Within one pixel (anti-aliasing-free PIL rasterisation of apexes/curves).
        assert abs(rows.min() - y1) <= 1 and abs(rows.max() + 1 - y2) <= 1, (i, labels)
        assert abs(cols.min() - x1) <= 1 and abs(cols.max() + 1 - x2) <= 1, (i, labels)
    assert not torch.equal(SyntheticShapes(2, seed=6)[1][0], a)


def test_hflip_boxes():
    img = torch.zeros(3, 4, 10, dtype=torch.uint8)
    img[:, :, 1] = 255
    flipped, t = hflip(img, {"boxes": torch.tensor([[1.0, 0, 3, 2]]), "labels": torch.tensor([1])})
    assert flipped[0, 0, 8] == 255
    assert t["boxes"].tolist() == [[7.0, 0, 9, 2]]


def test_voc_loader_roundtrip(tmp_path):
    syn = SyntheticShapes(4, seed=2)
    write_voc(syn, tmp_path / "VOC", image_set="trainval")
    voc = VOCDetection(tmp_path / "VOC", "trainval", class_names=syn.class_names)
    assert len(voc) == 4
    for i in range(4):
        img, t = voc[i]
        _, ts = syn[i]
        assert img.shape == (3, 128, 160)
        torch.testing.assert_close(t["boxes"], ts["boxes"])  # 1-based inclusive -> continuous
        assert torch.equal(t["labels"], ts["labels"]) and not t["difficult"].any()
    # A difficult flag and an unknown class.
    xml = (tmp_path / "VOC/Annotations/trainval_000000.xml")
    text = xml.read_text()
    xml.write_text(text.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    assert VOCDetection(tmp_path / "VOC", "trainval", syn.class_names)[0][1]["difficult"][0]
    assert len(VOCDetection(tmp_path / "VOC", "trainval", syn.class_names, keep_difficult=False)[0][1]["labels"]) == len(syn[0][1]["labels"]) - 1
    xml.write_text(text.replace(f"<name>{syn.class_names[0]}</name>", "<name>unicorn</name>").replace(f"<name>{syn.class_names[1]}</name>", "<name>unicorn</name>").replace(f"<name>{syn.class_names[2]}</name>", "<name>unicorn</name>"))
    with pytest.raises(DataError, match="unicorn"):
        VOCDetection(tmp_path / "VOC", "trainval", syn.class_names)
    with pytest.raises(DataError, match="split"):
        VOCDetection(tmp_path / "VOC", "test", syn.class_names)
    with pytest.raises(DataError, match="Annotations"):
        VOCDetection(tmp_path, "trainval")


def test_coco_loader_roundtrip(tmp_path):
    syn = SyntheticShapes(3, seed=3)
    ann = write_coco(syn, tmp_path / "images", tmp_path / "instances.json")
    coco = COCODetection(tmp_path / "images", ann)
    assert coco.class_names == syn.class_names
    assert coco.label_to_cat_id == {1: 2, 2: 4, 3: 6}
    for i in range(3):
        img, t = coco[i]
        _, ts = syn[i]
        assert t["image_id"] == 100 + i
        assert torch.equal(img, syn[i][0])  # PNG is lossless
        torch.testing.assert_close(t["boxes"], ts["boxes"])
        assert torch.equal(t["labels"], ts["labels"])
    with pytest.raises(DataError):
        COCODetection(tmp_path / "images", tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError):
        COCODetection(tmp_path / "images", tmp_path / "bad.json")


def test_voc_ap_known_values():
    # Perfect detector -> AP 1; VOC07 11-point on a half-recall curve -> 6/11.
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    assert math.isclose(voc_ap(np.array([0.5]), np.array([1.0]), use_07_metric=True), 6 / 11)
    assert math.isclose(voc_ap(np.array([0.5]), np.array([1.0])), 0.5)


def test_evaluate_voc_matching_rules():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
           "labels": torch.tensor([1, 1, 2]), "difficult": torch.tensor([False, False, True])}]
    det = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [21, 21, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.9, 0.95]), "labels": torch.tensor([1, 1, 1, 2, 1])}]
    res = evaluate_voc(det, gt, num_classes=3)
    # class 1 in score order: fp (0.95), tp, duplicate fp, tp -> precision envelope 2/4 at recall 1,
    # 1/2 at recall 0.5 -> AP = 0.5 * 0.5 + 0.5 * 0.5 = 0.5
    assert math.isclose(res["AP"][0], 0.5)
    assert math.isnan(res["AP"][1])  # only a difficult object: no positives, left out
    assert math.isnan(res["AP"][2])
    assert math.isclose(res["mAP"], 0.5)
    perfect = [{"boxes": gt[0]["boxes"][:2], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1])}]
    assert evaluate_voc(perfect, gt, 1)["mAP"] == 1.0


def test_evaluate_coco_with_pycocotools(tmp_path):
    syn = SyntheticShapes(3, seed=4)
    coco = COCODetection(tmp_path / "im", write_coco(syn, tmp_path / "im", tmp_path / "a.json"))
    perfect = []
    for i in range(3):
        t = coco[i][1]
        perfect.append({"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))})
    stats = evaluate_coco(perfect, coco)
    assert math.isclose(stats["AP"], 1.0) and math.isclose(stats["AP50"], 1.0)
    shifted = [{**d, "boxes": d["boxes"] + torch.tensor([4.0, 4.0, 4.0, 4.0])} for d in perfect]
    s2 = evaluate_coco(shifted, coco)
    assert s2["AP"] < 0.9  # strict IoU thresholds punish the shift
    assert evaluate_coco([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}] * 3, coco)["AP"] == 0.0


def test_config_roundtrip_and_errors(tmp_path):
    cfg = DetectionConfig(test_scales=(400, 600), num_classes=3, class_names=["a", "b", "c"])
    assert DetectionConfig.from_dict(cfg.to_dict()) == cfg
    p = tmp_path / "c.yaml"
    p.write_text("detection:\n  nms: 0.4\n  anchor_sizes: [32, 64]\n")
    loaded = load_config(p, {"num_classes": 5})
    assert loaded.nms == 0.4 and loaded.anchor_sizes == (32.0, 64.0) and loaded.num_classes == 5
    with pytest.raises(ConfigError, match="bogus"):
        DetectionConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="roi_op"):
        DetectionConfig.from_dict({"roi_op": "warp"})
    with pytest.raises(ConfigError, match="rpn_nms"):
        DetectionConfig.from_dict({"rpn_nms": 1.5})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
