"""`resnets predict IMAGE... (--model NAME --weights TAG | --checkpoint FILE)`: top-5 classes.

Each image is prepared as the weights' own evaluation did: CIFAR networks see the image
resized to 32x32; ImageNet networks see the center crop of the image resized on its shorter
side (224 of 256 for the paper's and torchvision's V1 weights, 224 of 232 for torchvision's
V2). The normalisation travels with the weights (a per-pixel mean image for networks
trained here and the authors' Caffe models, ImageNet's channel mean/std for torchvision and
akamaster weights), and so do the class names. IMAGE may be a file, a folder (its images,
recursively) or a glob; an unreadable image is reported and skipped.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError

__all__ = ["add_parser", "eval_view", "find_images", "network_from_args", "predict", "run"]


def network_from_args(model: str | None, weights: str | None, checkpoint: str | None):
    """(network, model config) from `--model NAME --weights TAG` or `--checkpoint FILE`."""
    from ..models.loading import load_network
    from ..models.pretrained import tags_for

    if (weights is None) == (checkpoint is None):
        raise ConfigError("give either --weights TAG (with --model NAME) or --checkpoint FILE")
    if weights is not None and model is None:
        raise ConfigError("--weights TAG needs --model NAME (tags are per network, e.g. --model resnet50 "
                          "--weights torchvision-imagenet1k-v1)")
    if weights is not None and weights not in tags_for(model):
        raise ConfigError(f"--weights: no pretrained weights {weights!r} for {model}; known tags: "
                          f"{', '.join(tags_for(model)) or 'none'}")
    return load_network(weights if weights is not None else checkpoint, model)


def eval_view(config: dict[str, Any]) -> tuple[int, int]:
    """(shorter side to resize to, center crop) with which the weights were evaluated."""
    from ..models import model_spec

    if config.get("eval_resize") and config.get("eval_crop"):
        return int(config["eval_resize"]), int(config["eval_crop"])
    spec = model_spec(config["name"])
    # CIFAR: the 32x32 images as they are (Sec. 4.2); ImageNet: the paper's 224 center crop of
    # the 256-resized image, the "center" view of `resnets eval` (Sec. 3.4).
    return (spec.input_size, spec.input_size) if spec.family == "cifar" else (256, 224)


def find_images(patterns: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Image files named by files, folders (recursively) and globs; and the arguments that named none."""
    from ..data.imagenet import IMG_EXTENSIONS

    found, missing = [], []
    for pattern in patterns:
        if os.path.isfile(pattern):
            found.append(pattern)
            continue
        if os.path.isdir(pattern):
            matches = sorted(str(p) for p in Path(pattern).rglob("*")
                             if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                             and not any(part.startswith(".") for part in p.relative_to(pattern).parts))
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if matches:
            found.extend(matches)
        else:
            missing.append({"image": pattern, "error": f"{pattern}: no such file, or no images in that folder or glob"})
    return found, missing


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the `top` best classes for a uint8 batch."""
    probs = torch.softmax(model(images).float(), dim=1)
    return probs.topk(min(top, probs.shape[1]), dim=1)


def run(args: argparse.Namespace) -> int:
    from ..data.imagenet import load_rgb
    from ..data.transforms import ResizeCenterCrop
    from ..runtime import resolve_device

    if args.top < 1:
        raise ConfigError(f"--top: expected a positive number of classes, got {args.top}")
    net, config = network_from_args(args.model, args.weights, args.checkpoint)
    device = resolve_device(args.device)
    net = net.eval().to(device)
    names = config.get("class_names") or config.get("classes")
    resize, crop = eval_view(config)
    view = ResizeCenterCrop(resize, crop)
    paths, errors = find_images(args.images)
    for error in errors:
        print(f"resnets predict: error: {error['error']}", file=sys.stderr)
    predictions = []
    for path in paths:
        try:
            image = view(load_rgb(path, draft_shorter=resize))
        except DataError as e:
            print(f"resnets predict: error: {e}", file=sys.stderr)
            errors.append({"image": path, "error": str(e)})
            continue
        probs, indices = predict(net, image[None].to(device), args.top)
        top = [{"index": int(i), "class": names[int(i)] if names else str(int(i)), "probability": float(p)}
               for p, i in zip(probs[0], indices[0])]
        predictions.append({"image": path, "top": top})
        if not args.json:
            print(path)
            for rank, t in enumerate(top, 1):
                print(f"  {rank}. {t['class']:<32} {100 * t['probability']:6.2f}%")
    if args.json:
        print(json.dumps({"model": config["name"], "weights": args.weights or args.checkpoint,
                          "view": {"resize": resize, "crop": crop}, "predictions": predictions, "errors": errors}))
    if errors:
        print(f"resnets predict: {len(errors)} of {len(errors) + len(predictions)} images could not be read",
              file=sys.stderr)
    if not predictions:
        raise DataError("no image could be read: " + "; ".join(e["image"] for e in errors[:5]))
    return 1 if errors else 0


def add_parser(subparsers) -> None:
    from ..models.pretrained import PRETRAINED

    tags = sorted({tag for _, tag in PRETRAINED})
    p = subparsers.add_parser("predict", help="classify images: top-5 classes with names and probabilities",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=f"pretrained weights tags: {', '.join(tags)} (see docs/pretrained.md)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--model", metavar="NAME", help="the network (with --weights; optional with --checkpoint)")
    p.add_argument("--weights", metavar="TAG", help="named pretrained weights of --model, downloaded on first use")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a model.safetensors or training checkpoint, or a checkpoint `resnets convert` understands")
    p.add_argument("--top", type=int, default=5, help="how many classes to show per image (default 5)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=run)
