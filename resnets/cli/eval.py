"""`resnets eval`: top-1/top-5 error of a trained network (or an ensemble) on a data split.

CIFAR-10 (Sec. 4.2): the 32x32 images as they are. ImageNet (Sec. 3.4, Tables 3-5):
`--tta center` (224 crop of the 256-resized image), `10crop`, or `multiscale` (fully
convolutional over shorter sides {224, 256, 384, 480, 640}, with flips). Several
`--checkpoint`s form an ensemble that averages softmax scores (Table 5).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..eval.metrics import TopKAccumulator


def _defaults_from_run(info: dict[str, Any]) -> dict[str, Any]:
    run = info.get("run") or {}
    data = run.get("data", {})
    return {"dataset": data.get("dataset"), "val_size": data.get("val_size"), "split_seed": data.get("split_seed")}


@torch.no_grad()
def evaluate_cifar(models, path: str, split: str, val_size: int, split_seed: int, device: torch.device,
                   precision: str, batch_size: int = 500, cache_dir: str | None = None) -> dict[str, Any]:
    from ..data.cifar import EvalBatches, load_cifar10

    data = load_cifar10(path, split, val_size, split_seed, cache_dir)
    acc = TopKAccumulator((1, 5), device=device)
    for m in models:
        m.eval().to(device, memory_format=torch.channels_last)
    for x, y in EvalBatches(data.images, data.labels, batch_size, device):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in models]).mean(0)
        acc.update(probs, y)
    result = acc.compute()
    result.update(split=split, dataset="cifar10", data=data.source)
    return result


def imagenet_classes(path: str, model_classes: list[str] | None) -> list[str] | None:
    """The class order the labels must follow: the model's training classes if it recorded them,
    else ROOT/train's folders (val may lack some classes), else None (val's own folders)."""
    import os

    if model_classes:
        return list(model_classes)
    train = os.path.join(path, "train")
    if os.path.isdir(train):
        return sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    return None


def evaluate_imagenet(models, path: str, split: str, protocol: str, device: torch.device, batch_size: int,
                      workers: int, skip_bad_images: bool, classes: list[str] | None = None) -> dict[str, Any]:
    from pathlib import Path

    from ..data.imagenet import ImageFolder
    from ..eval.tta import evaluate, protocol_transform

    if split not in ("val", "train"):
        raise ConfigError(f"--split: ImageNet folders have 'val' and 'train', got {split!r}")
    dataset = ImageFolder(Path(path) / split, transform=protocol_transform(protocol),
                          classes=imagenet_classes(path, classes), skip_bad_images=skip_bad_images)
    # The models carry their own input normalisation; the protocols hand them [0, 1] floats.
    result = evaluate(list(models), [lambda x: x] * len(models), dataset, protocol, batch_size, device,
                      num_workers=workers)
    result.update(split=split, dataset="imagenet", protocol=protocol)
    return result


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import model_from_file
    from ..train.runtime import resolve_device, resolve_precision

    loaded = [model_from_file(p) for p in args.checkpoint]
    models = [m for m, _ in loaded]
    defaults = _defaults_from_run(loaded[0][1])
    dataset = args.dataset or defaults["dataset"] or "cifar10"
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if dataset == "cifar10":
        if args.tta != "center":
            raise ConfigError("--tta: CIFAR-10 is evaluated on the 32x32 images as they are (Sec. 4.2); use center")
        val_size = args.val_size if args.val_size is not None else (defaults["val_size"] or 5000)
        split_seed = args.split_seed if args.split_seed is not None else (defaults["split_seed"] or 0)
        result = evaluate_cifar(models, args.data, args.split, val_size, split_seed, device, precision,
                                cache_dir=args.cache_dir)
    else:
        result = evaluate_imagenet(models, args.data, args.split, args.tta, device, args.batch_size,
                                   args.workers, args.skip_bad_images, loaded[0][1]["model"].get("classes"))
    result["checkpoints"] = list(args.checkpoint)
    if not args.json:
        print(f"{dataset} {result['split']} ({result['n']} images, {len(models)} model(s)): "
              f"top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%")
    else:
        print(json.dumps(result))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1/top-5 error of trained networks on a data split",
                              description=__doc__)
    p.add_argument("--checkpoint", action="append", required=True, metavar="FILE",
                   help="a training checkpoint (.pt) or a model.safetensors; repeat for an ensemble")
    p.add_argument("--dataset", choices=["cifar10", "imagenet"], help="default: the one the model was trained on")
    p.add_argument("--data", required=True, metavar="PATH", help="the data set location (any form training accepts)")
    p.add_argument("--split", default="val", help="val (the held-out 5k for CIFAR-10), test, or train")
    p.add_argument("--tta", choices=["center", "10crop", "multiscale"], default="center",
                   help="ImageNet test-time protocol (Sec. 3.4)")
    p.add_argument("--val-size", type=int, help="CIFAR-10: held-out images (default: as in training)")
    p.add_argument("--split-seed", type=int, help="CIFAR-10: split seed (default: as in training)")
    p.add_argument("--cache-dir", help="where decoded-data caches live")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--skip-bad-images", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)
