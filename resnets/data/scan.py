"""What a directory entry is, for the scans of image folders (CIFAR class folders, ImageNet trees).

A link that cannot be followed (a symlink loop such as `train/cat/loop -> loop`, a link into an
unreadable place) is neither an image nor a folder of images: it is skipped, as `resnets
predict` (pathlib's `is_file`/`is_dir`) skips it, instead of `os.DirEntry.is_file` raising
ELOOP out of the scan (issue 26).
"""

from __future__ import annotations

import os
from typing import Literal


def entry_kind(entry: os.DirEntry) -> Literal["dir", "file"] | None:
    """"dir" or "file" (links followed), None for anything else or a link that cannot be followed."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:  # ELOOP, EACCES on the link's target, ...
        pass
    return None
