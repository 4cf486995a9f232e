"""`resnets predict IMAGE... (--model NAME --weights TAG | --checkpoint FILE...)`: top-5 classes.

Each image is prepared as the weights' own evaluation did: CIFAR networks see the image
resized to 32x32; ImageNet networks see the center crop of the image resized on its shorter
side (224 of 256 for the paper's and torchvision's V1 weights, 224 of 232 for torchvision's
V2). The normalisation travels with the weights (a per-pixel mean image for networks
trained here and the authors' Caffe models, ImageNet's channel mean/std for torchvision and
akamaster weights), and so do the class names. IMAGE may be a file, a folder (its images,
recursively) or a glob; an unreadable image is reported and skipped. Several --checkpoint
files form an ensemble that averages their probabilities (Table 5).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, DataError
from .options import add_checkpoints, add_device, add_json, add_model_weights, report


def run(args: argparse.Namespace) -> int:
    from ..data.imagenet import load_rgb
    from ..eval.predict import eval_view, find_images, network_from_args, predict  # torch: not for --help
    from ..data.transforms import ResizeCenterCrop
    from ..runtime import resolve_device

    if args.top < 1:
        raise ConfigError(f"--top: expected a positive number of classes, got {args.top}")
    if args.checkpoint and args.weights is None:
        loaded = [network_from_args(args.model, None, c) for c in args.checkpoint]
    else:  # --weights TAG; with --checkpoint too (or neither), network_from_args names the mistake
        loaded = [network_from_args(args.model, args.weights, args.checkpoint[0] if args.checkpoint else None)]
    config = loaded[0][1]
    names = config.get("class_names") or config.get("classes")
    for path, (_, other) in zip(args.checkpoint or [], loaded[1:]):
        if other["num_classes"] != config["num_classes"] or (other.get("class_names") or other.get("classes")) != names:
            raise ConfigError(f"--checkpoint {path}: an ensemble needs networks of the same classes as "
                              f"{args.checkpoint[0]}")
    device = resolve_device(args.device)
    nets = [net.eval().to(device) for net, _ in loaded]
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
        probs, indices = predict(nets, image[None].to(device), args.top)
        top = [{"index": int(i), "class": names[int(i)] if names else str(int(i)), "probability": float(p)}
               for p, i in zip(probs[0], indices[0])]
        predictions.append({"image": path, "top": top})
        if not args.json:
            print(path)
            for rank, t in enumerate(top, 1):
                print(f"  {rank}. {t['class']:<32} {100 * t['probability']:6.2f}%")
    if args.json:
        weights = args.weights or (args.checkpoint[0] if len(args.checkpoint or []) == 1 else args.checkpoint)
        report(args, {"model": config["name"], "weights": weights, "view": {"resize": resize, "crop": crop},
                      "predictions": predictions, "errors": errors}, "")
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
    add_model_weights(p)
    add_checkpoints(p, "a model.safetensors or training checkpoint, or a checkpoint `resnets convert` understands; "
                       "repeat --checkpoint for an ensemble", required=False)
    p.add_argument("--top", type=int, default=5, help="how many classes to show per image (default: %(default)s)")
    add_device(p)
    add_json(p)
    p.set_defaults(func=run)
