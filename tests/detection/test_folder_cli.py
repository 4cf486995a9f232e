"""`resnets detect` on a labelImg folder: names from the annotations, the seeded validation
split, --backbone-weights from a converted file, --preset, predict on folders and globs,
progress from the first iteration, bf16 convolutions."""

from __future__ import annotations

import json

import pytest
import torch

from resnets.cli import main
from resnets.detection import DetectionConfig, build_detector
from resnets.detection.config import PRESETS
from resnets.models import Normalize, create_model
from resnets.models.weights import save_weights

from test_voc_folders import _labelimg_folder  # tests/detection is on sys.path (rootdir conftest, prepend)

TINY = ["arch=resnet18", "min_size=32", "max_size=48", "anchor_sizes=[8,16,32]", "pooled_size=4",
        "rpn_pre_nms_top_n_train=100", "rpn_post_nms_top_n_train=20", "rpn_pre_nms_top_n_test=50",
        "rpn_post_nms_top_n_test=10", "rpn_batch_size_per_image=16", "roi_batch_size_per_image=8",
        "batch_size=1", "log_every=5", "checkpoint_every=5"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def test_train_eval_predict_on_a_labelimg_folder(tmp_path, capsys):
    data = _labelimg_folder(tmp_path / "photos", n=10)
    weights = tmp_path / "backbone.safetensors"
    # A file as `resnets convert` writes it, with its own (Caffe-like) normalisation.
    norm = Normalize(torch.tensor([0.4, 0.45, 0.5]), torch.tensor([1 / 255.0] * 3))
    save_weights(weights, create_model("resnet18", input_norm=norm), {"name": "resnet18", "num_classes": 1000})
    run = tmp_path / "run"
    assert main(["detect", "train", "--preset", "finetune", "--format", "voc", "--data", str(data), "--out", str(run),
                 "--backbone-weights", str(weights), "--iters", "2", *_sets(TINY)]) == 0
    out = capsys.readouterr().out
    assert "(folder layout): 8 images" in out  # the seeded train split, described
    assert "iteration=1 " in out  # progress from the first iteration (log_every is 5)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    cfg = state["config"]
    assert cfg["class_names"] == ["ant", "zebra"] and cfg["num_classes"] == 2
    assert cfg["lr"] == PRESETS["finetune"]["lr"] and cfg["warmup_iterations"] == PRESETS["finetune"]["warmup_iterations"]
    assert cfg["min_size"] == 32  # --set overrides the preset
    torch.testing.assert_close(state["model"]["input_norm.mean"].flatten(), norm.mean.flatten())
    torch.testing.assert_close(state["model"]["input_norm.std"].flatten(), norm.std.flatten())

    # eval defaults to the held-out split of the same folder.
    assert main(["detect", "eval", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--format", "voc",
                 "--data", str(data), "--out", str(tmp_path / "eval.json")]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["images"] == 2 and set(metrics["AP"]) == {"ant", "zebra"}
    assert 0.0 <= metrics["mAP@[.5:.95]"] <= metrics["mAP@0.5"] <= 1.0

    # predict takes folders and globs, as `resnets predict` does.
    assert main(["detect", "predict", "--checkpoint", str(run / "checkpoints" / "last.pt"), str(data / "images"),
                 str(data / "images" / "photo-1*.jpg"), "--out", str(tmp_path / "pred"), "--score-threshold", "0"]) == 0
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(records) == 11 and (tmp_path / "pred" / "photo-7.png").is_file()
    assert main(["detect", "predict", "--checkpoint", str(run / "checkpoints" / "last.pt"), str(tmp_path / "none*.jpg"),
                 "--out", str(tmp_path / "pred")]) == 2
    assert "none*.jpg: no such file, or no images" in capsys.readouterr().err


def test_backbone_weights_by_tag_are_refused_clearly_when_unknown(tmp_path, capsys):
    data = _labelimg_folder(tmp_path / "photos", n=4)
    assert main(["detect", "train", "--format", "voc", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--backbone-weights", "no-such-tag", "--iters", "1", *_sets(TINY)]) == 2
    assert "no-such-tag" in capsys.readouterr().err


def test_bf16_convolutions_channels_last_with_fp32_losses():
    cfg = DetectionConfig(arch="resnet18", num_classes=2, min_size=64, max_size=96, anchor_sizes=(16.0, 32.0, 64.0),
                          pooled_size=4, roi_batch_size_per_image=8, rpn_batch_size_per_image=16, precision="bf16")
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    seen = {}
    model.head.res5.register_forward_pre_hook(lambda m, x: seen.update(res5_in=x[0]))
    img = torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)
    losses = model([img], [{"boxes": torch.tensor([[10.0, 10, 50, 40]]), "labels": torch.tensor([1])}])
    assert seen["res5_in"].dtype == torch.bfloat16
    assert seen["res5_in"].is_contiguous(memory_format=torch.channels_last)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.cls_score.weight.grad is not None and model.backbone.layer2[0].conv1.weight.grad.isfinite().all()
    model.eval()
    det = model([img])[0]
    assert det["boxes"].dtype == torch.float32
    assert not build_detector(cfg.replace(precision="fp32")).uses_bf16(torch.device("cpu"))
