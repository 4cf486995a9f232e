"""``resnets detect train|eval|predict``: Faster R-CNN on a ResNet C4 backbone (Appendices A-C).

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

from resnets.detection.config import PRESETS, DetectionConfig, load_yaml_options
from resnets.errors import ConfigError, DataError
from resnets.io import atomic_write_text

from .options import DEVICE_METAVAR, add_deprecated_alias, add_device, add_json, add_out, device_option, prepare_out, report, require

__all__ = ["add_parser", "run", "build_dataset"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["voc", "coco", "synthetic"], default=None,
                   help="data set format: voc, coco, or synthetic (generated shapes, for smoke runs; default voc)")
    p.add_argument("--data", default=None, metavar="PATH", help="VOC root (Annotations/, JPEGImages/, ImageSets/Main/), "
                                                                "or COCO image folder")
    p.add_argument("--split", default=None, help="VOC ImageSets/Main split name (default: trainval for train, "
                                                 "test for eval)")
    p.add_argument("--annotations", default=None, metavar="FILE", help="COCO instances JSON file")


def _add_set(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``detect`` with ``train``, ``eval`` and ``predict`` subcommands (each sets ``func``)."""
    detect = subparsers.add_parser("detect", help="Faster R-CNN on a ResNet C4 backbone (paper, Appendix A-C)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = detect.add_subparsers(dest="detect_command", required=True, metavar="{train,eval,predict}")

    t = sub.add_parser("train", help="train a detector end to end",
                       description="Train a detector end to end; RUN_DIR gets config.yaml, metrics.jsonl, "
                                   "config_history.jsonl and checkpoints/last.pt.")
    add_out(t, "the run directory (config.yaml, metrics.jsonl, checkpoints/)", metavar="RUN_DIR", old="--run-dir")
    t.add_argument("--config", default=None, metavar="FILE", help="YAML file of DetectionConfig fields")
    _add_set(t, "override a DetectionConfig field (a YAML value); repeatable")
    t.add_argument("--resume", action="store_true",
                   help="continue RUN_DIR/checkpoints/last.pt with the run's own config as the defaults; "
                        "--iters, lr and logging settings may change, anything else is refused")
    t.add_argument("--iters", type=int, default=None, metavar="N", help="training iterations (config: iterations)")
    add_deprecated_alias(t, "--iterations", "--iters", dest="iters", type=int)
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a recipe of DetectionConfig values; finetune: a small data set from ImageNet weights "
                        "(docs/detection.md); --config, --set and the flags below override it")
    t.add_argument("--backbone-weights", default=None, metavar="FILE|TAG",
                   help="ImageNet weights of the backbone: a file `resnets convert` writes, or a pretrained tag "
                        "(e.g. torchvision-imagenet1k-v1); its input normalisation comes with it")
    t.add_argument("--arch", default=None, metavar="NAME",
                   help="backbone network from `resnets models`, e.g. resnet50 or resnet101 (config: arch)")
    t.add_argument("--device", type=device_option, metavar=DEVICE_METAVAR, default=None,
                   help='where to train: "auto" is CUDA when available (default: the config\'s, "auto")')
    t.add_argument("--synthetic-images", type=int, default=None, metavar="N",
                   help="size of the generated set with --format synthetic (default: 200)")
    _add_data_args(t)
    t.add_argument("--eval-split", default=None, help="VOC split to evaluate on after training (e.g. test)")
    add_json(t)
    t.set_defaults(func=run)

    e = sub.add_parser("eval", help="evaluate a checkpoint (VOC mAP@0.5 or COCO mAP@[.5:.95])",
                       description="Evaluate a detector checkpoint; writes the metrics as JSON to --out.")
    e.add_argument("--checkpoint", required=True, metavar="FILE", help="a detector checkpoint (RUN_DIR/checkpoints/last.pt)")
    e.add_argument("--metric", choices=["voc", "coco"], default="voc",
                   help="voc: mAP@0.5 with per-class AP; coco: COCOeval AP@[.5:.95] (needs --format coco)")
    e.add_argument("--voc07", action="store_true", help="VOC2007 11-point AP instead of the area under the curve")
    _add_set(e, "inference-time override (e.g. test_scales=[400,600,800], box_refinement=true); repeatable")
    e.add_argument("--out", default=None, metavar="FILE",
                   help="the metrics JSON file to write (default: eval.json in the checkpoint's run directory)")
    add_device(e)
    e.add_argument("--synthetic-images", type=int, default=50, metavar="N",
                   help="size of the generated set with --format synthetic (default: %(default)s)")
    e.add_argument("--synthetic-seed", type=int, default=1, metavar="SEED",
                   help="seed of the generated set; differs from training's 0, so the images are new "
                        "(default: %(default)s)")
    _add_data_args(e)
    add_json(e)
    e.set_defaults(func=run)

    p = sub.add_parser("predict", help="detect objects in images; writes detections.json and PNGs with boxes",
                       description="Detect objects in image files; --out gets detections.json and, unless "
                                   "--no-draw, one PNG per image with the boxes drawn.")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a detector checkpoint (RUN_DIR/checkpoints/last.pt)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (their images, recursively) or globs")
    add_out(p, "folder for detections.json and the drawn PNGs", metavar="DIR", old="--out-dir")
    p.add_argument("--score-threshold", type=float, default=0.5,
                   help="keep detections scoring at least this (default: %(default)s)")
    p.add_argument("--no-draw", action="store_true", help="only write detections.json, no PNGs")
    _add_set(p, "inference-time override of a DetectionConfig field (a YAML value); repeatable")
    add_device(p)
    add_json(p)
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
                  synthetic_images: int = 200, synthetic_seed: int = 0, train: bool = True,
                  num_classes: int | None = None, class_names: list[str] | None = None, seed: int = 0):
    """The data set named by the CLI options (DataError/ConfigError on bad input).
    VOC files are parsed with ``class_names`` (default: the sorted names in the annotations);
    a VOC folder without split files is split with ``seed`` (train / val)."""
    from resnets.detection.data import COCODetection, SyntheticShapes, VOCDetection

    fmt = fmt or "voc"
    if fmt == "synthetic":
        if num_classes is None:
            return SyntheticShapes(synthetic_images, seed=synthetic_seed)
        return SyntheticShapes(synthetic_images, num_classes=num_classes, seed=synthetic_seed)
    if data is None:
        raise ConfigError(f"--data is required for --format {fmt}")
    if not Path(data).exists():
        raise DataError(f"--data {data} does not exist")
    if fmt == "voc":
        if split is None:  # the devkit's own split files, else the seeded split of the folder
            devkit = (Path(data) / "ImageSets" / "Main").is_dir()
            split = ("trainval" if train else "test") if devkit else ("train" if train else "val")
        return VOCDetection(data, split, class_names, split_seed=seed)
    if annotations is None:
        raise ConfigError("--format coco needs --annotations INSTANCES.json")
    return COCODetection(data, annotations, skip_empty=train)


def run(args: argparse.Namespace) -> int:
    """Execute ``resnets detect <train|eval|predict>``; returns the exit status."""
    from resnets.detection import engine

    cmd = args.detect_command
    if cmd == "train":
        out = require(args, "out", "--out")
        if not args.resume:
            prepare_out(out, "run directory")
        values: dict[str, Any] = {}
        if args.resume:  # the run's own config and data come first
            values, saved_data = engine.saved_config(out)
            for key in ("format", "data", "split", "annotations", "synthetic_images"):
                if getattr(args, key) is None and saved_data.get(key) is not None:
                    setattr(args, key, saved_data[key])
        if args.preset and not args.resume:
            values.update(PRESETS[args.preset])
        if args.config:
            values.update(load_yaml_options(args.config))
        values.update(_overrides(args.set))
        for key, dest in (("iterations", "iters"), ("arch", "arch"), ("device", "device"),
                          ("backbone_weights", "backbone_weights")):
            if getattr(args, dest) is not None:
                values[key] = getattr(args, dest)
        cfg = DetectionConfig.from_dict(values, source=args.config or "--set")
        # The generated set has its own classes: unless they were asked for, take all of them.
        num_classes = cfg.num_classes if "num_classes" in values or args.format != "synthetic" else None
        dataset = build_dataset(args.format, args.data, args.split, args.annotations,
                                args.synthetic_images or 200, cfg.seed, True, num_classes, cfg.class_names, cfg.seed)
        if hasattr(dataset, "describe"):
            print(dataset.describe())
        names = list(dataset.class_names)
        if cfg.class_names is None or len(cfg.class_names) != len(names):
            cfg = cfg.replace(num_classes=len(names), class_names=names)
        info = {"format": args.format or "voc", "data": args.data, "split": args.split, "annotations": args.annotations,
                "synthetic_images": (args.synthetic_images or 200) if args.format == "synthetic" else None}
        model = engine.train(cfg, dataset, out, resume=args.resume, data_info=info)
        result: dict[str, Any] = {"run": str(out), "iterations": cfg.iterations}
        text = f"detector trained for {cfg.iterations} iterations in {out}"
        if args.eval_split:
            test = build_dataset(args.format, args.data, args.eval_split, args.annotations, train=False,
                                 num_classes=cfg.num_classes, class_names=cfg.class_names, seed=cfg.seed)
            metrics = engine.evaluate(model, test)
            engine.log_evaluation(out, args.eval_split, metrics)
            result["eval"] = metrics
            text += f"; {args.eval_split} mAP@0.5 {metrics['mAP@0.5']:.4f}"
        report(args, result, text)
        return 0
    if cmd == "eval":
        model = engine.load_detector(args.checkpoint, engine.resolve_device(args.device), _overrides(args.set))
        dataset = build_dataset(args.format, args.data, args.split, args.annotations, args.synthetic_images,
                                args.synthetic_seed, False, model.cfg.num_classes, model.cfg.class_names, model.cfg.seed)
        metrics = engine.evaluate(model, dataset, metric=args.metric, use_07_metric=args.voc07 or None)
        out = prepare_out(args.out, "file") if args.out else Path(args.checkpoint).resolve().parent.parent / "eval.json"
        atomic_write_text(out, json.dumps(metrics, indent=1))
        summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        report(args, metrics, f"{summary} (written to {out})")
        return 0
    if cmd == "predict":
        from resnets.eval.predict import find_images

        model = engine.load_detector(args.checkpoint, engine.resolve_device(args.device), _overrides(args.set))
        paths, missing = find_images(args.images)
        if missing:
            raise DataError("; ".join(m["error"] for m in missing))
        out = prepare_out(require(args, "out", "--out"), "folder")
        args.images = paths
        records = engine.predict(model, args.images, out, args.score_threshold, draw=not args.no_draw)
        report(args, {"detections": records, "written": str(Path(out) / "detections.json")},
               "\n".join(f"{r['image']}: {len(r['boxes'])} detections" for r in records))
        return 0
    raise ConfigError(f"unknown detect command {cmd!r}")
