"""`resnets download-cifar10`: fetch and extract the official CIFAR-10 archive (md5-checked)."""

from __future__ import annotations

from pathlib import Path

from ..data.download import OFFICIAL_MD5, OFFICIAL_URL, download_cifar10


def add_parser(subparsers) -> None:  # type: ignore[no-untyped-def]
    """`resnets download-cifar10 --dir DIR [--url URL --md5 MD5]` (for the lead's cli.py)."""
    parser = subparsers.add_parser(
        "download-cifar10", help="download and extract the official CIFAR-10 python archive (md5-checked)"
    )
    parser.add_argument("--dir", required=True, type=Path, help="folder to keep the archive and cifar-10-batches-py/ in")
    parser.add_argument("--url", default=OFFICIAL_URL, help="archive URL (default: the official one)")
    parser.add_argument("--md5", default=OFFICIAL_MD5, help="expected md5 of the archive")
    parser.set_defaults(func=run)


def run(args) -> int:  # type: ignore[no-untyped-def]
    """Run the `download-cifar10` subcommand; prints the folder to pass as --data."""
    print(download_cifar10(args.dir, url=args.url, md5=args.md5))
    return 0
