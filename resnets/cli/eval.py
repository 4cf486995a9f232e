"""`resnets eval`: top-1/top-5 error of a trained network (or an ensemble) on a data split.

CIFAR-10 (Sec. 4.2): the 32x32 images as they are. ImageNet (Sec. 3.4, Tables 3-5):
`--tta center` (224 crop of the 256-resized image), `10crop`, or `multiscale` (fully
convolutional over shorter sides {224, 256, 384, 480, 640}, with flips). Several
`--checkpoint`s form an ensemble that averages softmax scores (Table 5).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigError
from .options import add_checkpoints, add_device, add_json, add_model_weights, report


def _defaults_from_run(info: dict[str, Any]) -> dict[str, Any]:
    run = info.get("run") or {}
    data = run.get("data", {})
    return {"dataset": data.get("dataset"), "val_size": data.get("val_size"), "split_seed": data.get("split_seed")}


def run(args: argparse.Namespace) -> int:
    import torch  # here, not at the top: `resnets eval --help` must not import torch

    from ..eval.datasets import evaluate_cifar, evaluate_imagenet
    from ..eval.predict import network_from_args
    from ..models import model_spec
    from ..models.loading import model_from_file
    from ..runtime import Runtime, resolve_device, resolve_precision

    # The one loader: any weights file (converted on the fly), refused if it holds another --model.
    loaded = [model_from_file(p, args.model) for p in args.checkpoint or []]
    if args.weights is not None or not loaded:
        net, config = network_from_args(args.model, args.weights, None)
        loaded.append((net, {"model": config, "run": None}))
    device = resolve_device(args.device)
    # Training's precision by default, as its config names it ("auto" re-resolves on this
    # machine), so that eval repeats the validation error training printed (issue 26.4).
    precision = args.precision or (loaded[0][1].get("run") or {}).get("precision") or "auto"
    runtime = Runtime(device, resolve_precision(precision, device))
    models = [m.to(memory_format=torch.channels_last) for m, _ in loaded]  # evaluate() feeds NHWC batches
    defaults = _defaults_from_run(loaded[0][1])
    family = model_spec(loaded[0][1]["model"]["name"]).family  # weights from elsewhere record no data set
    dataset = args.dataset or defaults["dataset"] or ("imagenet" if family == "imagenet" else "cifar10")
    if dataset == "cifar10":
        if args.tta != "center":
            raise ConfigError("--tta: CIFAR-10 is evaluated on the 32x32 images as they are (Sec. 4.2); use center")
        val_size = args.val_size if args.val_size is not None else (defaults["val_size"] or 5000)
        split_seed = args.split_seed if args.split_seed is not None else (defaults["split_seed"] or 0)
        result = evaluate_cifar(models, args.data, args.split, val_size, split_seed, runtime,
                                batch_size=args.batch_size or 500, workers=args.workers, cache_dir=args.cache_dir)
    else:
        result = evaluate_imagenet(models, args.data, args.split, args.tta, runtime, args.batch_size or 50,
                                   # more workers than cores only warns and slows (2-core machines)
                                   min(4, os.cpu_count() or 1) if args.workers is None else args.workers,
                                   args.skip_bad_images,
                                   loaded[0][1]["model"], cache_dir=args.cache_dir)
    result["checkpoints"] = list(args.checkpoint or [])
    if args.weights is not None:
        result["weights"] = f"{args.model}:{args.weights}"
    result["precision"] = runtime.precision
    report(args, result, f"{dataset} {result['split']} ({result['n']} images, {len(models)} model(s), "
                         f"{runtime.precision}): "
                         f"top-1 error {result['top1_err']:.2f}%  top-5 error {result['top5_err']:.2f}%")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="top-1/top-5 error of trained networks on a data split",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoints(p, "a training checkpoint (.pt), a model.safetensors, or weights from elsewhere that `resnets "
                       "convert` reads (converted on the fly); repeat --checkpoint for an ensemble (softmax scores "
                       "averaged, Table 5)", required=False)
    add_model_weights(p)
    p.add_argument("--dataset", choices=["cifar10", "imagenet"], help="default: the one the model was trained on")
    p.add_argument("--data", required=True, metavar="PATH", help="the data set location (any form training accepts)")
    p.add_argument("--split", default="val", help="val (the held-out 5k for CIFAR-10), test, or train "
                                                  "(default: %(default)s)")
    p.add_argument("--tta", choices=["center", "10crop", "multiscale"], default="center",
                   help="ImageNet test-time protocol (Sec. 3.4; default: %(default)s)")
    p.add_argument("--val-size", type=int, help="CIFAR-10: held-out images (default: as in training)")
    p.add_argument("--split-seed", type=int, help="CIFAR-10: split seed (default: as in training)")
    p.add_argument("--cache-dir", help="where decoded-data and file-index caches live "
                                       "(default: $RESNETS_CACHE or ~/.cache/resnets)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 500 for CIFAR-10, 50 for ImageNet)")
    p.add_argument("--workers", type=int,
                   help="CIFAR-10: processes decoding image files (default: automatic); ImageNet: DataLoader "
                        "workers (default: 4, at most one per CPU core)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="ImageNet: count and skip unreadable images instead of stopping")
    add_device(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="fp32, bf16 autocast, or auto (bf16 where the hardware is fast at it); default: the one the "
                        "network was trained with (its config's; auto for weights from elsewhere), so that eval "
                        "repeats the validation error training printed")
    add_json(p)
    p.set_defaults(func=run)
