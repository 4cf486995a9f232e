"""`resnets detect train|eval|predict` through argparse + run(), checkpoints and resume."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from pathlib import Path

from resnets.detection import engine
from resnets.cli.detect import add_parser, run
from resnets.detection.config import DetectionConfig
from resnets.detection.data import SyntheticShapes, write_coco, write_voc
from resnets.detection.model import FasterRCNN, build_detector
from resnets.errors import CheckpointError, ConfigError, DataError
from resnets.models import BasicBlock, Normalize, ResNet

# resnet18-C4 at a 64px shorter side with few anchors/RoIs: a few seconds per iteration at most.
SETS = [
    "arch=resnet18", "min_size=64", "max_size=96", "anchor_sizes=[16,32,64]", "pooled_size=4",
    "rpn_pre_nms_top_n_train=200", "rpn_post_nms_top_n_train=40", "rpn_pre_nms_top_n_test=100",
    "rpn_post_nms_top_n_test=20", "rpn_batch_size_per_image=32", "roi_batch_size_per_image=16",
    "batch_size=1", "log_every=1", "checkpoint_every=2", "lr=0.002",
]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resnets")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _sets() -> list[str]:
    out = []
    for s in SETS:
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOC"
    write_voc(SyntheticShapes(4, image_size=(64, 80), min_object=12, max_object=40, seed=11), root, "trainval")
    write_voc(SyntheticShapes(2, image_size=(64, 80), min_object=12, max_object=40, seed=12), root, "test")
    return root


def test_train_resume_eval_predict(tmp_path, voc_root):
    run_dir = tmp_path / "run"
    # VOC class names are the 20 VOC classes by default; our set uses the shape names, so
    # the VOC loader is pointed at them through a config file.
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("detection:\n  num_classes: 3\n  class_names: [rectangle, ellipse, triangle]\n")
    args = _parse(["detect", "train", "--format", "synthetic", "--synthetic-images", "4", "--out", str(run_dir),
                   "--iters", "2", "--config", str(cfg_file), *_sets()])
    assert args.func(args) == 0
    ckpt = run_dir / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)  # tensors / dicts / primitives only
    assert state["iteration"] == 2 and state["config"]["class_names"] == ["rectangle", "ellipse", "triangle"]
    assert (run_dir / "config.yaml").is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2] and all("loss_cls" in r for r in lines)
    assert not list((run_dir / "checkpoints").glob("*.tmp"))

    # Without --resume an existing run is refused; with it, training continues at iteration 2.
    again = _parse(["detect", "train", "--format", "synthetic", "--synthetic-images", "4", "--out", str(run_dir),
                    "--iters", "3", "--config", str(cfg_file), *_sets()])
    with pytest.raises(CheckpointError, match="resume"):
        run(again)
    resumed = _parse(["detect", "train", "--format", "synthetic", "--synthetic-images", "4", "--out", str(run_dir),
                      "--iters", "3", "--resume", "--config", str(cfg_file), *_sets()])
    assert run(resumed) == 0
    assert torch.load(ckpt, weights_only=True)["iteration"] == 3
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3]

    # eval on VOC files (parsed with the checkpoint's class names), VOC07 metric, JSON written.
    out = tmp_path / "eval.json"
    ev = _parse(["detect", "eval", "--checkpoint", str(ckpt), "--format", "voc", "--data", str(voc_root),
                 "--split", "test", "--voc07", "--out", str(out)])
    assert ev.func(ev) == 0
    metrics = json.loads(out.read_text())
    assert metrics["voc07_metric"] is True and 0.0 <= metrics["mAP@0.5"] <= 1.0
    assert set(metrics["AP"]) == {"rectangle", "ellipse", "triangle"}

    # COCO metric through pycocotools, with an inference-time Appendix B override.
    syn = SyntheticShapes(2, image_size=(64, 80), seed=13)
    ann = write_coco(syn, tmp_path / "coco", tmp_path / "coco.json")
    ev = _parse(["detect", "eval", "--checkpoint", str(ckpt), "--format", "coco", "--data", str(tmp_path / "coco"),
                 "--annotations", str(ann), "--metric", "coco", "--set", "box_refinement=true",
                 "--out", str(tmp_path / "coco_eval.json")])
    assert run(ev) == 0
    assert set(json.loads((tmp_path / "coco_eval.json").read_text())) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    # predict: detections.json + one PNG per image with boxes drawn.
    image = tmp_path / "coco" / "000000.png"
    pr = _parse(["detect", "predict", "--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "pred"),
                 "--score-threshold", "0.0"])
    assert run(pr) == 0
    records = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert records[0]["image"] == str(image) and len(records[0]["boxes"]) == len(records[0]["scores"])
    from PIL import Image

    with Image.open(tmp_path / "pred" / "000000.png") as im:
        assert im.size == (80, 64)


def test_predict_draws_boxes(tmp_path):
    from PIL import Image

    img = torch.zeros(3, 120, 160, dtype=torch.uint8)
    det = {"boxes": torch.tensor([[20.0, 40, 100, 110]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    engine.draw_detections(img, det, ["thing"], tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as im:
        arr = torch.from_numpy(__import__("numpy").asarray(im).copy())
    assert arr[41, 90].sum() > 0 and arr[109, 60].sum() > 0  # top and bottom edges drawn
    assert arr[80, 60].sum() == 0  # the box's interior is left alone
    assert arr[35, 22].sum() > 0  # the caption's label sits on the top edge, above the box
    assert arr[35, 140].sum() == 0


def test_cli_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run(_parse(["detect", "eval", "--checkpoint", str(tmp_path / "none.pt"), "--format", "synthetic"]))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(_parse(["detect", "predict", "--checkpoint", str(bad), "x.png", "--out", str(tmp_path)]))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        run(_parse(["detect", "train", "--out", str(tmp_path / "r"), "--format", "synthetic", "--set", "nonsense"]))
    with pytest.raises(ConfigError, match="unknown config key 'foo'"):
        run(_parse(["detect", "train", "--out", str(tmp_path / "r"), "--format", "synthetic", "--set", "foo=1"]))
    with pytest.raises(DataError, match="does not exist"):
        run(_parse(["detect", "train", "--out", str(tmp_path / "r"), "--format", "voc", "--data", str(tmp_path / "nope")]))
    with pytest.raises(ConfigError, match="annotations"):
        run(_parse(["detect", "train", "--out", str(tmp_path / "r"), "--format", "coco", "--data", str(tmp_path)]))


def test_resume_reproduces_uninterrupted_training(tmp_path):
    from resnets.detection.config import DetectionConfig
    from resnets.detection.model import FasterRCNN
    from resnets.models import BasicBlock, ResNet

    cfg = DetectionConfig(num_classes=3, min_size=64, max_size=96, anchor_sizes=(16.0, 32.0, 64.0), pooled_size=4,
                          rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=40, rpn_batch_size_per_image=32,
                          roi_batch_size_per_image=16, batch_size=2, iterations=4, lr=0.01, device="cpu",
                          freeze_bn=False, checkpoint_every=100)
    data = SyntheticShapes(5, image_size=(64, 80), min_object=12, max_object=40, seed=21)

    def fresh() -> FasterRCNN:
        torch.manual_seed(0)
        return FasterRCNN(cfg, ResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64)))

    straight = engine.train(cfg, data, tmp_path / "a", model=fresh())
    engine.train(cfg.replace(iterations=2), data, tmp_path / "b", model=fresh())
    resumed = engine.train(cfg, data, tmp_path / "b", model=fresh(), resume=True)
    for (k, v), (k2, v2) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


TINY = dict(num_classes=3, min_size=64, max_size=96, anchor_sizes=(16.0, 32.0, 64.0), pooled_size=4,
            rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=40, rpn_batch_size_per_image=32,
            roi_batch_size_per_image=16, batch_size=1, lr=0.01, device="cpu", freeze_bn=False, log_every=1)


def tiny_detector(cfg: DetectionConfig) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(cfg, ResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64)))


def synthetic() -> SyntheticShapes:
    return SyntheticShapes(4, image_size=(64, 80), min_object=12, max_object=40, seed=21)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    """Regression: `detect train --resume` on a directory without a checkpoint silently started afresh."""
    run_dir = tmp_path / "run"
    args = _parse(["detect", "train", "--format", "synthetic", "--synthetic-images", "2", "--out", str(run_dir),
                   "--iterations", "1", "--resume", "--set", "num_classes=3", *_sets()])
    with pytest.raises(CheckpointError, match="cannot resume: .* holds no checkpoint"):
        run(args)
    assert not (run_dir / "checkpoints").exists()


def test_resumed_metrics_hold_each_iteration_once(tmp_path, monkeypatch):
    """Regression: iterations logged after the last checkpoint were logged again after a resume."""
    cfg = DetectionConfig(**TINY, iterations=3, checkpoint_every=2)
    real_save = engine.save_checkpoint

    def killed_before_the_last_checkpoint(run_dir, state):
        if state["iteration"] == 3:  # iteration 3 is logged, its checkpoint never written
            raise KeyboardInterrupt
        real_save(run_dir, state)

    monkeypatch.setattr(engine, "save_checkpoint", killed_before_the_last_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        engine.train(cfg, synthetic(), tmp_path / "run", model=tiny_detector(cfg))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    engine.train(cfg, synthetic(), tmp_path / "run", model=tiny_detector(cfg), resume=True)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]


def test_config_yaml_is_replaced_atomically(tmp_path, monkeypatch):
    """Regression: config.yaml was written in place, so a crash (or a full disk) mid-write tore it."""
    cfg = DetectionConfig(**TINY, iterations=1, checkpoint_every=1)
    run_dir = tmp_path / "run"
    engine.train(cfg, synthetic(), run_dir, model=tiny_detector(cfg))
    before = (run_dir / "config.yaml").read_text()
    real_write_text = Path.write_text

    def torn(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(OSError, match="No space"):
        engine.train(cfg.replace(iterations=2), synthetic(), run_dir, model=tiny_detector(cfg), resume=True)
    monkeypatch.setattr(Path, "write_text", real_write_text)
    assert (run_dir / "config.yaml").read_text() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "config_history.jsonl",
                                                         "metrics.jsonl", "run.lock"]


def test_version_1_checkpoints_still_load(tmp_path):
    """Checkpoints written before the normalisation moved into "model" (a "normalize" entry) load as they did."""
    cfg = DetectionConfig(**{**TINY, "arch": "resnet18"})
    torch.manual_seed(0)
    norm = Normalize(torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.25]))
    model = build_detector(cfg, input_norm=norm).eval()
    v1 = {"format": "resnets-detection", "version": 1, "config": cfg.to_dict(), "iteration": 5,
          "model": model.state_dict(), "normalize": {"mean": norm.mean, "std": norm.std},
          "optimizer": None, "extra": {}}
    torch.save(v1, tmp_path / "v1.pt")
    loaded = engine.load_detector(tmp_path / "v1.pt")
    assert torch.equal(loaded.normalize.mean, norm.mean) and torch.equal(loaded.normalize.std, norm.std)
    image = synthetic()[0][0]
    for a, b in zip(model([image]), loaded([image])):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_checkpoints_where_it_arrived_and_resume_is_exact(tmp_path, monkeypatch):
    # SIGTERM after iteration 3 of 5 (checkpoints every 100): iteration 3 is checkpointed, the run
    # stops, and the resumed run ends with the weights of an uninterrupted one.
    import os
    import signal

    from resnets.errors import TrainingStopped

    cfg = DetectionConfig(**TINY, iterations=5, checkpoint_every=100)
    straight = engine.train(cfg, synthetic(), tmp_path / "a", model=tiny_detector(cfg))
    real_lr, calls = engine._lr_at, []

    def signalled_in_iteration_3(config, it):
        calls.append(it)
        if it == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr(config, it)

    monkeypatch.setattr(engine, "_lr_at", signalled_in_iteration_3)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM at iteration 3") as stopped:
        engine.train(cfg, synthetic(), tmp_path / "b", model=tiny_detector(cfg))
    assert stopped.value.signal == signal.SIGTERM and calls == [0, 1, 2]
    assert engine.load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["iteration"] == 3
    monkeypatch.setattr(engine, "_lr_at", real_lr)
    resumed = engine.train(cfg, synthetic(), tmp_path / "b", model=tiny_detector(cfg), resume=True)
    for (k, v), (k2, v2) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
