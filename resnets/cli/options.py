"""The options every command spells the same way.

- `--out`: where a command's output goes (a run directory, a folder or a file). Every command
  treats missing folders above it the same way (`prepare_out`): they are created, as `mkdir -p`
  would, and named on stderr, so that a mistyped path shows at once instead of silently growing
  a tree.
- `--checkpoint FILE`: the trained network to use; repeated where several form an ensemble.
- `--device {auto,cpu,cuda,cuda:N}`: "auto" is CUDA when available, else the CPU.
- `--iters N`: a number of training iterations.
- `--json`: print the result as one JSON object, the last line of the output.

Spellings from before this convention (`--run-dir`, `--out-dir`, `--iterations`, `--dir`)
still work, hidden from --help and with a warning, so existing commands keep running.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import DEVICE_SPELLINGS, is_device_spelling
from ..errors import ConfigError

DEVICE_METAVAR = "{auto,cpu,cuda,cuda:N}"


def device_option(value: str) -> str:
    """argparse `type` of every --device: auto, cpu, cuda or cuda:N (GPU N)."""
    if not is_device_spelling(value):
        raise argparse.ArgumentTypeError(f"expected {DEVICE_SPELLINGS}, got {value!r}")
    return value


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new option's dest and says so on stderr."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs) -> None:
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"resnets: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new_name=new, help=argparse.SUPPRESS, **kwargs)


def add_out(parser, help: str, metavar: str, required: bool = True, old: str | None = None) -> None:
    """`--out`; with `old`, that spelling is also accepted (and `--out` checked by `require`)."""
    parser.add_argument("--out", metavar=metavar, required=required and old is None, help=help)
    if old is not None:
        add_deprecated_alias(parser, old, "--out", dest="out", metavar=metavar)


def prepare_out(out: str | os.PathLike, kind: str) -> Path:
    """The one handling of `--out` (every command calls it before writing). `kind` is what
    `out` is: "file", "folder" or "run directory"; the command writes it. Missing folders
    above it are created here and the first of them named on stderr ("created ..."), so that
    a mistyped path shows. A file where a folder belongs, or a folder where a file belongs, is
    a ConfigError in the words of `run_dir.prepare_run_dir`."""
    path = Path(out)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir() and (parent != path or kind != "file"):
            what = "is a file" if parent == path else f"cannot hold {path}: {parent} is a file"
            raise ConfigError(f"--out {path}: {what}; expected a {kind}")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"--out {path}: is a folder; expected a file name")
    if path.parent.is_dir():
        return path
    missing = path.parent  # the first folder to create
    while not missing.parent.exists():
        missing = missing.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process says so
        print(f"resnets: created {missing}{os.sep} for --out {out}", file=sys.stderr)
    return path


def require(args: argparse.Namespace, dest: str, option: str) -> Any:
    value = getattr(args, dest, None)
    if value is None:
        raise ConfigError(f"{option} is required")
    return value


def add_device(parser, default: str = "auto") -> None:
    parser.add_argument("--device", type=device_option, metavar=DEVICE_METAVAR, default=default,
                        help='where to run: "auto" is CUDA when available, else the CPU; "cuda:N" is GPU N '
                             '(default: %(default)s)')


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object, the last line of the output")


def add_checkpoints(parser, help: str, required: bool = True) -> None:
    """A repeated `--checkpoint FILE` (several files after one `--checkpoint` are accepted too)."""
    parser.add_argument("--checkpoint", action="extend", nargs="+", required=required, metavar="FILE", help=help)


def add_model_weights(parser) -> None:
    """`--model NAME --weights TAG`: named pretrained weights, the alternative to `--checkpoint FILE`
    (read by `eval.predict.network_from_args`, the one loader behind eval, predict and export)."""
    parser.add_argument("--model", metavar="NAME", help="the network whose --weights TAG to use; with --checkpoint, "
                        "the network the files must hold (optional)")
    parser.add_argument("--weights", metavar="TAG", help="named pretrained weights of --model instead of --checkpoint, "
                                                         "downloaded on first use (tags: `resnets predict -h`)")


def report(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print `text` for people, or with --json the result as one JSON object on the last line."""
    print(json.dumps(result) if getattr(args, "json", False) else text, flush=True)
