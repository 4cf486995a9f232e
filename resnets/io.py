"""Files that a crash cannot tear, PyTorch files read without unpickling, and settings read by
their dotted names.

Everything resnets writes that another run, command or person reads back (checkpoints,
weights, config.yaml, caches, downloads, exports) goes through `atomic_write`: a kill -9
at any moment leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import CheckpointError

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
        write(tmp)
        # After `write`: mkstemp's 0600 would keep others from reading shared caches and run
        # directories, and writers that replace the file (safetensors' save_file) make it 0600 again.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        if tmp in (e.filename, e.filename2):  # name the file the caller asked for, not the hidden temp file
            raise type(e)(e.errno, e.strerror, os.fspath(path)) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with one line saying why a file is refused.

    torch's own messages run over several lines and advise `weights_only=False`, which
    would execute whatever the file holds; a file that needs it is never loaded here.
    """
    import torch  # here, not at the top: `resnets --help` must not import torch (1-2 s)

    if not Path(path).is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(b"\x80") and _TORCH_LEGACY_MAGIC not in head:
        raise CheckpointError(f"{what} {path} is a plain Python pickle (pickle.dump), not a PyTorch file "
                              "(torch.save); only PyTorch files of tensors and plain values are read")
    try:
        with warnings.catch_warnings():
            # Legacy (pre-zip) torch files saved with pickle protocol > 2 load fine; torch's
            # UserWarning about the protocol says nothing a user can act on.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, refused globals
        raise CheckpointError(f"{what} {path} {_refusal_reason(e)}") from None


# torch.save's legacy (pre-zip) format opens with this number, pickled (torch.serialization's
# MAGIC_NUMBER 0x1950a86a20f9469cfc6c as a 10-byte LONG1); zip-format files start with "PK".
# A pickle without it is a plain pickle, which torch.load refuses as "corrupt".
_TORCH_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _refusal_reason(error: Exception) -> str:
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"is refused: it asks to import the Python object {found.group(1)}, and only tensors and plain "
                "values are ever loaded (nothing in it was run)")
    found = re.search(r"reading zip archive: ([^.]+)", text)
    if found:
        return f"is corrupt or truncated (its zip container: {found.group(1)})"
    if "Unsupported operand" in text or isinstance(error, (EOFError, ValueError)) or "pickle" in type(error).__name__.lower():
        return "is corrupt or truncated, or not a PyTorch file of tensors and plain values"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"cannot be read ({type(error).__name__}: {first[:160]})"


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
