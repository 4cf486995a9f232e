"""The `resnets` command line: one argparse parser, one module per command in this package.

Each command module exposes `add_parser(subparsers)`; its parser's `func` runs it. Options
common to several commands are spelled one way (`options.py`: `--out`, `--checkpoint`,
`--device`, `--iters`, `--json`). Errors caused by user input (`ResnetsError`) and by the
machine (a full disk, a read-only file system) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys

from .. import __version__
from ..errors import ResnetsError, TrainingStopped


# --- resnets models ----------------------------------------------------------------------

def model_rows() -> list[dict]:
    """One row per listed model: depth, shortcut, params and multiply-adds at its natural size,
    counted without building the networks at their depth (`resnets.models.network_counts`)."""
    from ..models import list_models, model_spec, network_counts  # here: `resnets --help` must not import torch

    rows = []
    for name in list_models():
        spec = model_spec(name)
        params, flops = network_counts(name)
        rows.append({
            "name": name, "family": spec.family, "depth": spec.depth,
            "shortcut": spec.default_shortcut or "none", "params": params,
            "input_size": spec.input_size, "gflops": flops / 1e9,
        })
    return rows


def run_models(args: argparse.Namespace) -> int:
    if args.table1:
        from ..analysis.tables import architecture_tables

        print(architecture_tables())
        return 0
    rows = model_rows()
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    header = f"{'model':<20}{'family':<10}{'depth':>6}  {'shortcut':<9}{'params':>14}{'input':>7}{'GFLOPs':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['name']:<20}{r['family']:<10}{r['depth']:>6}  {r['shortcut']:<9}{r['params']:>14,}"
              f"{r['input_size']:>7}{r['gflops']:>9.3f}")
    print("\nGFLOPs = multiply-adds (the paper's 'FLOPs', Table 1) for one image at the given input size;"
          "\nImageNet bottlenecks use the paper's stride placement (stride in the first 1x1).")
    return 0


def add_models_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list every network with its parameters and multiply-adds",
                              description="List every network of the paper: depth, default shortcut option, "
                                          "parameters and multiply-adds at its natural input size.")
    p.add_argument("--json", action="store_true",
                   help='print the table as one JSON object, {"models": [row, ...]}, the last line of the output')
    p.add_argument("--table1", action="store_true",
                   help="print the paper's Table 1 (ImageNet architectures) and the CIFAR architecture table")
    p.set_defaults(func=run_models)


# --- the parser ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnets",
        description="Deep Residual Learning for Image Recognition (He et al. 2015): "
                    "models, training, evaluation, analyses and detection.")
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_models_parser(subparsers)
    from . import analysis as analysis_cli
    from . import convert as convert_cli
    from . import detect as detect_cli
    from . import download
    from . import eval as eval_cli
    from . import export as export_cli
    from . import predict
    from . import train as train_cli

    download.add_parser(subparsers)
    train_cli.add_parser(subparsers)
    eval_cli.add_parser(subparsers)
    predict.add_parser(subparsers)
    convert_cli.add_parser(subparsers)
    export_cli.add_parser(subparsers)
    detect_cli.add_parser(subparsers)
    analysis_cli.add_reproduce_parser(subparsers)
    analysis_cli.add_plot_parser(subparsers)
    analysis_cli.add_analyze_parser(subparsers)
    return parser


# Errors that say something about the machine rather than the program: no traceback.
_MACHINE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TrainingStopped as e:  # asked for, not an error: the shell's status for that signal
        print(f"resnets {args.command}: {e}", file=sys.stderr)
        return e.exit_status
    except ResnetsError as e:
        print(f"resnets {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _MACHINE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"resnets {args.command}: error: {where}{e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resnets {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
