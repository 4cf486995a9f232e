"""`resnets convert`: weights trained elsewhere -> a resnets `model.safetensors`.

The result carries the network, its input normalisation and its model config, so
`resnets.create_model(NAME, weights=OUT)`, `resnets eval --checkpoint OUT` and
`resnets predict --checkpoint OUT` work on it. Understood: torchvision-format ResNets,
akamaster/pytorch_resnet_cifar10 checkpoints, resnets training checkpoints, the authors'
Caffe models (SRC a .caffemodel with --prototxt and --mean-file), and Keras Applications'
ResNet-50/101/152 (SRC a TF.js folder or its model.json, or a Keras .h5). See
`resnets.models.formats`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .options import add_json, prepare_out, report


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}")


def run(args: argparse.Namespace) -> int:
    from ..models.loading import convert_weights

    if args.dst is not None:
        print("resnets: convert SRC DST is deprecated; use convert SRC --out DST", file=sys.stderr)
    out = args.out or args.dst
    if out is None:
        raise ConfigError("--out is required: the resnets weights file to write")
    prepare_out(out, "file")
    config = convert_weights(args.src, out, source=args.format, model=args.model, stride_in_1x1=args.stride_in_1x1,
                             normalization=args.normalization, mean=args.mean, std=args.std,
                             prototxt=args.prototxt, mean_file=args.mean_file)
    summary = {k: v for k, v in config.items() if k not in ("classes", "class_names", "synsets")}
    report(args, {"written": out, "model": summary}, f"wrote {out} ({config['name']})")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert torchvision, akamaster CIFAR, the authors' Caffe or Keras ResNet weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a .pth/.pt/.th checkpoint (bare state dict, or under 'state_dict'/'model'/'net'), "
                               "a .safetensors file, a Caffe .caffemodel, or Keras weights (a TF.js folder or "
                               "model.json, a .h5)")
    p.add_argument("dst", nargs="?", help=argparse.SUPPRESS)  # the spelling before --out, still accepted
    p.add_argument("--out", metavar="FILE", help="the resnets weights file to write, e.g. model.safetensors")
    p.add_argument("--format", choices=["auto", "torchvision", "akamaster", "caffe", "keras"], default="auto",
                   help="auto: a .caffemodel is Caffe, a folder with model.json, a .json or .h5 Keras; for state "
                        "dicts classifier 'fc' means torchvision, 'linear' akamaster/pytorch_resnet_cifar10")
    p.add_argument("--model", metavar="NAME", help="resnets model name (default: inferred from the layers; a file "
                                                   "holding another network is refused)")
    # The same pair, with the same default, as `resnets train`.
    stride = p.add_mutually_exclusive_group()
    stride.add_argument("--stride-in-1x1", dest="stride_in_1x1", action="store_const", const=True, default=None,
                        help="bottleneck stride in the first 1x1, as the paper and its Caffe models (the default, "
                             "unless the weights record their placement)")
    stride.add_argument("--stride-in-3x3", dest="stride_in_1x1", action="store_const", const=False,
                        help="bottleneck stride in the 3x3 ('v1.5', as torchvision trains; its published files "
                             "are recognised and get it automatically)")
    p.add_argument("--normalization", choices=["channel_mean_std", "none"],
                   help="input normalisation the weights were trained with (default: the one the file carries, "
                        "else the format's: ImageNet channel mean/std)")
    p.add_argument("--mean", type=_floats, metavar="R,G,B", help="channel mean for pixels in [0, 1]")
    p.add_argument("--std", type=_floats, metavar="R,G,B", help="channel std for pixels in [0, 1]")
    p.add_argument("--prototxt", metavar="FILE", help="Caffe: the deploy prototxt of the .caffemodel")
    p.add_argument("--mean-file", metavar="FILE", help="Caffe: the mean image (ResNet_mean.binaryproto)")
    add_json(p)
    p.set_defaults(func=run)
