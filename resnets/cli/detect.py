"""``resnets detect train|eval|predict``: argparse wiring for the detector.

The lead wires it into ``resnets/cli.py`` with::

    from resnets.detection.cli import add_parser as add_detect_parser
    add_detect_parser(subparsers)        # adds "detect" with train/eval/predict
    ...
    args.func(args)                      # each subcommand sets func=run

Data sets are chosen with ``--format``: ``voc`` (``--data`` = VOC root with
Annotations/JPEGImages/ImageSets/Main, ``--split``), ``coco`` (``--data`` = image
folder, ``--annotations`` = instances JSON) or ``synthetic`` (generated shapes, for
smoke runs; ``--synthetic-images N``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from resnets.detection.config import DetectionConfig, load_config
from resnets.errors import ConfigError, DataError

__all__ = ["add_parser", "run", "build_dataset"]


def _add_data_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(f"--{prefix}format", choices=["voc", "coco", "synthetic"], default=None,
                   help="data set format (default voc)")
    p.add_argument(f"--{prefix}data", default=None, help="VOC root, or COCO image folder")
    p.add_argument(f"--{prefix}split", default=None, help="VOC ImageSets/Main split name (train: trainval, eval: test)")
    p.add_argument(f"--{prefix}annotations", default=None, help="COCO instances JSON file")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``detect`` with ``train``, ``eval`` and ``predict`` subcommands (each sets ``func``)."""
    detect = subparsers.add_parser("detect", help="Faster R-CNN on a ResNet C4 backbone (paper, Appendix A-C)")
    sub = detect.add_subparsers(dest="detect_command", required=True)

    t = sub.add_parser("train", help="train a detector end to end")
    t.add_argument("--run-dir", required=True, help="run directory (config.yaml, metrics.jsonl, checkpoints/)")
    t.add_argument("--config", default=None, help="YAML file of DetectionConfig fields")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a DetectionConfig field (YAML value), repeatable")
    t.add_argument("--resume", action="store_true", help="continue RUN_DIR/checkpoints/last.pt")
    t.add_argument("--iterations", type=int, default=None)
    t.add_argument("--arch", default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--synthetic-images", type=int, default=200, help="size of the synthetic set (--format synthetic)")
    _add_data_args(t)
    t.add_argument("--eval-split", default=None, help="VOC split to evaluate on after training (e.g. test)")
    t.set_defaults(func=run)

    e = sub.add_parser("eval", help="evaluate a checkpoint (VOC mAP@0.5 or COCO mAP@[.5:.95])")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--metric", choices=["voc", "coco"], default="voc")
    e.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="inference-time override (e.g. test_scales=[400,600,800], box_refinement=true)")
    e.add_argument("--out", default=None, help="write the metrics JSON here (default: <run dir>/eval.json)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--synthetic-images", type=int, default=50)
    e.add_argument("--synthetic-seed", type=int, default=1)
    _add_data_args(e)
    e.set_defaults(func=run)

    p = sub.add_parser("predict", help="detect objects in images; writes detections.json and PNGs with boxes")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--no-draw", action="store_true", help="only write detections.json")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)
    return detect


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: value {value!r} is not valid YAML") from None
    return out


def build_dataset(fmt: str | None, data: str | None, split: str | None, annotations: str | None,
                  synthetic_images: int = 200, synthetic_seed: int = 0, train: bool = True, num_classes: int = 3,
                  class_names: list[str] | None = None):
    """The data set named by the CLI options (DataError/ConfigError on bad input).
    VOC files are parsed with ``class_names`` (default: the 20 VOC classes)."""
    from resnets.detection.data import VOC_CLASSES, COCODetection, SyntheticShapes, VOCDetection

    fmt = fmt or "voc"
    if fmt == "synthetic":
        return SyntheticShapes(synthetic_images, num_classes=num_classes, seed=synthetic_seed)
    if data is None:
        raise ConfigError(f"--data is required for --format {fmt}")
    if not Path(data).exists():
        raise DataError(f"--data {data} does not exist")
    if fmt == "voc":
        return VOCDetection(data, split or ("trainval" if train else "test"), class_names or VOC_CLASSES)
    if annotations is None:
        raise ConfigError("--format coco needs --annotations INSTANCES.json")
    return COCODetection(data, annotations, skip_empty=train)


def run(args: argparse.Namespace) -> int:
    """Execute ``resnets detect <train|eval|predict>``; returns the exit status."""
    from resnets.detection import engine

    cmd = args.detect_command
    if cmd == "train":
        overrides = _overrides(args.set)
        for key in ("iterations", "arch", "device"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        resume_ckpt = Path(args.run_dir) / "checkpoints" / "last.pt"
        if args.config:
            cfg = load_config(args.config, overrides)
        else:
            cfg = DetectionConfig.from_dict(overrides, source="--set")
        dataset = build_dataset(args.format, args.data, args.split, args.annotations,
                                args.synthetic_images, cfg.seed, True, cfg.num_classes, cfg.class_names)
        names = list(dataset.class_names)
        if cfg.class_names is None or len(cfg.class_names) != len(names):
            cfg = cfg.replace(num_classes=len(names), class_names=names)
        info = {"format": args.format or "voc", "data": args.data, "split": args.split, "annotations": args.annotations}
        model = engine.train(cfg, dataset, args.run_dir, resume=args.resume and resume_ckpt.is_file(), data_info=info)
        if args.eval_split:
            test = build_dataset(args.format, args.data, args.eval_split, args.annotations, train=False,
                                 num_classes=cfg.num_classes, class_names=cfg.class_names)
            metrics = engine.evaluate(model, test)
            engine._append_jsonl(Path(args.run_dir) / "metrics.jsonl", {"eval": args.eval_split, **metrics})
            print(json.dumps(metrics))
        return 0
    if cmd == "eval":
        model = engine.load_detector(args.checkpoint, args.device, _overrides(args.set))
        dataset = build_dataset(args.format, args.data, args.split, args.annotations, args.synthetic_images,
                                args.synthetic_seed, False, model.cfg.num_classes, model.cfg.class_names)
        metrics = engine.evaluate(model, dataset, metric=args.metric, use_07_metric=args.voc07 or None)
        out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent.parent / "eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=1))
        print(json.dumps(metrics))
        return 0
    if cmd == "predict":
        model = engine.load_detector(args.checkpoint, args.device, _overrides(args.set))
        for path in args.images:
            if not Path(path).is_file():
                raise DataError(f"image {path} does not exist")
        records = engine.predict(model, args.images, args.out_dir, args.score_threshold, draw=not args.no_draw)
        for r in records:
            print(f"{r['image']}: {len(r['boxes'])} detections")
        return 0
    raise ConfigError(f"unknown detect command {cmd!r}")
