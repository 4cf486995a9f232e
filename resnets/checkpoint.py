"""Run checkpoints (training and detection): atomic, weights-only loadable, checked before a resume.

`RUN_DIR/checkpoints/last.pt` is replaced atomically (temp file, fsync, rename) and the
one it replaces is kept as `previous.pt`, so a kill -9 at any moment leaves at least one
complete checkpoint. Everything inside is tensors, numbers, strings, lists and dicts:
`torch.load(..., weights_only=True)` reads it and nothing is unpickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import CRITICAL, TrainConfig, changed_settings, from_dict
from .errors import CheckpointError, ConfigError
from .io import atomic_write

LAST = "last.pt"
PREVIOUS = "previous.pt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    last, previous = directory / LAST, directory / PREVIOUS

    def write(tmp: str) -> None:
        torch.save(state, tmp)
        if last.exists():
            # Keep the outgoing checkpoint: hard-link it aside, so last.pt never disappears.
            link = directory / f".{PREVIOUS}.link"
            if link.exists():
                link.unlink()
            os.link(last, link)
            os.replace(link, previous)

    atomic_write(last, write)
    return last


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused global: one clear message
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a resnets checkpoint (expected keys 'model' and 'config')")
    return state


def load_resume_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The newest loadable checkpoint of a run: last.pt, or previous.pt if last.pt is damaged."""
    directory = checkpoint_dir(run_dir)
    last, previous = directory / LAST, directory / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(f"cannot resume: {directory} holds no checkpoint ({LAST} or {PREVIOUS})")
    try:
        return load_checkpoint(last)
    except CheckpointError as e:
        if not previous.exists():
            raise
        warnings.warn(f"{e}; resuming from {previous} instead", stacklevel=2)
        return load_checkpoint(previous)


def check_resume_compatible(saved: Mapping[str, Any], current: TrainConfig) -> None:
    """Refuse to resume when a setting marked CRITICAL in the config differs from the checkpoint's."""
    try:
        saved_config = from_dict(saved)
    except ConfigError as e:
        raise CheckpointError(f"the checkpoint holds an unreadable config: {e}") from None
    changed = [f"{key} ({old!r} -> {new!r})" for key, old, new in changed_settings(saved_config, current, CRITICAL)]
    if changed:
        raise ConfigError("refusing to resume: critical settings differ from the checkpoint's: " + ", ".join(changed)
                          + "; start a new run directory instead")
