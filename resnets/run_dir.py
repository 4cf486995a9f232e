"""What every run directory needs, for classification and detection alike.

- `prepare_run_dir`: create it, or say in one line why it cannot be (a file in the way,
  a read-only file system, no permission).
- `RunLock`: one process writes a run directory at a time. An exclusive `flock` on
  `RUN_DIR/run.lock`: the operating system drops it when the holder exits, however it
  exits (kill -9 included), so there is no stale marker to clean up. The file names the
  holder, for the refusal the second process prints.
- `config_changes` and `append_history`: a resumed run may change settings that do not
  make it another experiment (more iterations, new milestones, a new lr). Each start and
  resume appends the config in effect from then on, the iteration it took effect and what
  changed, to `RUN_DIR/config_history.jsonl`; earlier lines are never rewritten.
- `non_finite`: the names of tensors holding NaN or inf, checked before any checkpoint is
  written, so a checkpoint is never poisoned; `describe_failed_write` says in one line why
  a checkpoint could not be written (a full disk) and that the previous one is intact.
- `code_version` and `file_sha256`: the provenance a run records (the history's every line,
  the final weights): which code trained it and which data file it read.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .errors import ConfigError, RunDirectoryBusy

LOCK_FILE = "run.lock"
HISTORY_FILE = "config_history.jsonl"


def prepare_run_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the run directory (and its parents); ConfigError naming `option` if it cannot be."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == path else f"cannot hold {path}: {parent} is a file"
            raise ConfigError(f"{option} {path}: {what}; expected a run directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write the run directory ({e.strerror or e})") from None
    return path


class RunLock:
    """Hold `RUN_DIR/run.lock` exclusively while a run writes the directory (see the module doc)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not a POSIX system (Windows): runs there are not locked
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryBusy(f"{self.path.parent} is in use by {holder}; wait for it to end or stop it "
                                   "(the lock is released when that process exits)") from None
        command = " ".join([Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:3]])
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({command} ...)"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        # The file stays: deleting it while a second process waits on it would let two hold "the" lock.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any],
                   ignore: Iterable[str] = ()) -> dict[str, list[Any]]:
    """{dotted key: [saved value, current value]} for every setting that differs."""
    old, new = flatten(saved), flatten(current)
    skip = set(ignore)
    return {k: [old.get(k), new.get(k)] for k in sorted(old.keys() | new.keys())
            if k not in skip and old.get(k) != new.get(k)}


def describe_changes(changes: Mapping[str, list[Any]]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def code_version() -> str:
    """The code that is running: "git:<commit>" of the checkout `resnets` is imported from
    ("+dirty" when tracked files differ from it), else "resnets <version>" for an installed
    package. A run spanning sessions may resume under newer code; each history line says which."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        # Only the checkout that holds this very package, not a repository around a venv it is installed in.
        if Path(git("rev-parse", "--show-toplevel")).resolve() == root:
            return f"git:{git('rev-parse', 'HEAD')}{'+dirty' if git('status', '--porcelain', '--untracked-files=no') else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"resnets {importlib.metadata.version('resnets')}"
    except importlib.metadata.PackageNotFoundError:
        return "resnets (unknown version)"


def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a data file (what `sha256sum` prints); None for a directory of files."""
    if not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def append_history(run_dir: str | os.PathLike, event: str, iteration: int, config: Mapping[str, Any],
                   changes: Mapping[str, list[Any]] | None = None, **extra: Any) -> None:
    """One line: the config in effect from `iteration` on, what changed there, and the code that ran."""
    row = {"event": event, "iteration": iteration, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "changes": dict(changes or {}), "code": code_version(), **extra, "config": dict(config)}
    with open(Path(run_dir) / HISTORY_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill
    return rows


def non_finite(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf.

    One device-to-host copy for all of them (a stacked flag vector), not one per tensor.
    """
    named = [(n, t) for n, t in tensors if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [n for (n, _), ok in zip(named, flags) if not ok]


def optimizer_tensors(optimizer_state: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, tensor) for the per-parameter state of an optimizer's state_dict (momentum buffers...)."""
    return [(f"optimizer.state.{index}.{key}", value)
            for index, state in optimizer_state.get("state", {}).items() for key, value in state.items()]


# Below this much free space a failed write is reported as a full disk.
_FULL_DISK_BYTES = 64 << 20


def describe_failed_write(path: Path, error: BaseException) -> str:
    kept = f"{path} is intact" if path.exists() else "no checkpoint had been written yet"
    free = shutil.disk_usage(path.parent).free
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < _FULL_DISK_BYTES:
        return (f"cannot write {path}: the disk is full ({free / 2**20:.0f} MB free in {path.parent}); "
                f"{kept}. Free some space and resume with --resume")
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0][:160]
    return f"cannot write {path} ({reason}); {kept}"
