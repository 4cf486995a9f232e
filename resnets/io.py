"""Files that a crash cannot tear, and settings read by their dotted names.

Everything resnets writes that another run, command or person reads back (checkpoints,
weights, config.yaml, caches, downloads, exports) goes through `atomic_write`: a kill -9
at any moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

_UMASK = os.umask(0o022)  # read the process's umask (there is no getter) and put it back
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write via `write(tmp_path)` to a temp file in the same directory, fsync, then rename.

    The rename is atomic on POSIX file systems; the directory is fsynced after it so the new
    name survives a power cut too. On any error the temp file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would keep others from reading shared caches
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def get_dotted(values: Mapping[str, Any], dotted: str) -> Any:
    """`values["optim"]["lr"]` for "optim.lr". An unknown key is a KeyError naming it, never None:
    a misspelt key must not compare equal to another misspelt key."""
    node: Any = values
    for i, part in enumerate(dotted.split(".")):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(dotted.split(".")[:i]) or "the top level"
            raise KeyError(f"no setting {dotted!r} ({part!r} is not a key of {where})")
        node = node[part]
    return node
