"""`resnets convert`: weights trained elsewhere -> a resnets `model.safetensors`.

The result carries the network, its input normalisation and its model config, so
`resnets.create_model(NAME, weights=OUT)` and `resnets eval --checkpoint OUT` work on it.
See `resnets.models.convert` for the formats understood.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .options import add_json, report


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got {text!r}")


def run(args: argparse.Namespace) -> int:
    from ..models.convert import convert_weights

    if args.stride_in_1x1 and args.stride_in_3x3:
        raise ConfigError("--stride-in-1x1 and --stride-in-3x3 exclude each other")
    stride_in_1x1 = True if args.stride_in_1x1 else (False if args.stride_in_3x3 else None)
    if args.dst is not None:
        print("resnets: convert SRC DST is deprecated; use convert SRC --out DST", file=sys.stderr)
    out = args.out or args.dst
    if out is None:
        raise ConfigError("--out is required: the resnets weights file to write")
    config = convert_weights(args.src, out, source=args.format, model=args.model, stride_in_1x1=stride_in_1x1,
                             normalization=args.normalization, mean=args.mean, std=args.std)
    report(args, {"written": out, "model": config}, f"wrote {out} ({config['name']})")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert torchvision or akamaster CIFAR ResNet weights",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a .pth/.pt state dict (bare, or under 'state_dict'/'model') or a .safetensors file")
    p.add_argument("dst", nargs="?", help=argparse.SUPPRESS)  # the spelling before --out, still accepted
    p.add_argument("--out", metavar="FILE", help="the resnets weights file to write, e.g. model.safetensors")
    p.add_argument("--format", choices=["auto", "torchvision", "akamaster"], default="auto",
                   help="auto: classifier 'fc' means torchvision, 'linear' means akamaster/pytorch_resnet_cifar10")
    p.add_argument("--model", metavar="NAME", help="resnets model name (default: inferred from the layers)")
    p.add_argument("--stride-in-1x1", action="store_true",
                   help="bottleneck stride in the first 1x1, as the paper and Caffe models")
    p.add_argument("--stride-in-3x3", action="store_true",
                   help="bottleneck stride in the 3x3 ('v1.5', torchvision's; the default)")
    p.add_argument("--normalization", choices=["channel_mean_std", "none"], default="channel_mean_std",
                   help="input normalisation the weights were trained with (default: ImageNet channel mean/std)")
    p.add_argument("--mean", type=_floats, metavar="R,G,B", help="channel mean for pixels in [0, 1]")
    p.add_argument("--std", type=_floats, metavar="R,G,B", help="channel std for pixels in [0, 1]")
    add_json(p)
    p.set_defaults(func=run)
