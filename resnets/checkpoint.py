"""Run checkpoints (training and detection): atomic, weights-only loadable, checked before a resume.

`RUN_DIR/checkpoints/last.pt` is replaced atomically (temp file, fsync, rename) and the
one it replaces is kept as `previous.pt`, so a kill -9 at any moment leaves at least one
complete checkpoint; `--resume` falls back to `previous.pt` when `last.pt` cannot be read.
A checkpoint is never written from weights, buffers or optimizer state holding NaN or inf,
and a failed write (a full disk) leaves the existing `last.pt` as it was. Everything
inside is tensors, numbers, strings, lists and dicts: `torch.load(..., weights_only=True)`
reads it and nothing is unpickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import CRITICAL, TrainConfig, changed_settings, from_dict
from .errors import CheckpointError, ConfigError, TrainingDiverged
from .io import atomic_write, load_torch_file
from .run_dir import describe_failed_write, non_finite, optimizer_tensors

LAST = "last.pt"
PREVIOUS = "previous.pt"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_tensors(state: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every weight, buffer and optimizer-state tensor of a checkpoint, by name."""
    return [*state["model"].items(), *optimizer_tensors(state.get("optimizer") or {})]


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` as checkpoints/last.pt, keeping the one it replaces as previous.pt.

    Raises TrainingDiverged (nothing written) if any weight, buffer or optimizer state is
    NaN or inf, and CheckpointError if the write fails (a full disk), with last.pt intact.
    """
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    last, previous = directory / LAST, directory / PREVIOUS
    bad = non_finite(checkpoint_tensors(state))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainingDiverged(f"{len(bad)} weight, buffer or optimizer tensors hold NaN or inf ({shown}); "
                               f"{last} was not written from them")

    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except (OSError, RuntimeError) as e:
            # torch reports a short write as "unexpected pos ..."; say what it means while the
            # temporary file still holds the space it took.
            raise CheckpointError(describe_failed_write(last, e)) from None
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
    state = load_torch_file(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a resnets checkpoint (expected keys 'model' and 'config')")
    return state


def load_resume_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The newest good checkpoint of a run and its path: last.pt, or previous.pt if last.pt
    cannot be read or holds NaN/inf (a checkpoint written before such checks existed)."""
    directory = checkpoint_dir(run_dir)
    last, previous = directory / LAST, directory / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(f"cannot resume: {directory} holds no checkpoint ({LAST} or {PREVIOUS})")
    problems = []
    for path in (last, previous):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        bad = non_finite(checkpoint_tensors(state))
        if bad:
            problems.append(f"checkpoint {path} holds NaN or inf in {len(bad)} tensors ({', '.join(bad[:3])})")
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from {path} instead", stacklevel=2)
        return state, path
    raise CheckpointError("cannot resume: " + "; ".join(problems))


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


def check_data_fingerprint(saved: str | None, current: str, data_path: str | None) -> None:
    """A resumed run must see the data it trained on, wherever that data now lives.

    `saved` is None for checkpoints written before fingerprints were recorded: accepted.
    """
    if saved is not None and saved != current:
        raise ConfigError(f"refusing to resume: the data at {data_path} is not the data this run trained on "
                          f"(content fingerprint {current[:19]}..., the checkpoint's {saved[:19]}...); point --data "
                          "at the original data set, or start a new run directory")
