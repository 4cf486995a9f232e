"""`resnets download-cifar10`: fetch and extract the official CIFAR-10 archive (md5-checked)."""

from __future__ import annotations

import argparse

from ..data.download import OFFICIAL_MD5, OFFICIAL_URL, download_cifar10
from .options import add_json, add_out, prepare_out, report, require


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "download-cifar10", help="download and extract the official CIFAR-10 python archive (md5-checked)",
        description="Download the official CIFAR-10 python archive, check its md5 and extract "
                    "cifar-10-batches-py/ next to it. Interrupted downloads leave nothing half-written; "
                    "a second call reuses what is there. Prints the folder to pass as --data.")
    add_out(parser, "folder to keep the archive and cifar-10-batches-py/ in", metavar="DIR", old="--dir")
    parser.add_argument("--url", default=OFFICIAL_URL, help="archive URL (default: the official one)")
    parser.add_argument("--md5", default=OFFICIAL_MD5, help="expected md5 of the archive (default: the official one)")
    add_json(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = download_cifar10(prepare_out(require(args, "out", "--out"), "folder"), url=args.url, md5=args.md5)
    report(args, {"data": str(folder)}, str(folder))
    return 0
