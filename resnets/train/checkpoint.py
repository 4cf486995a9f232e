"""Training checkpoints: atomic, weights-only loadable, checked before a resume.

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
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..models.weights import atomic_write, load_torch_file
from ..run_dir import describe_failed_write, non_finite, optimizer_tensors

LAST = "last.pt"
PREVIOUS = "previous.pt"

# Settings that make a resumed run a different experiment (a changed `iters`, `eval_every`
# or lr milestones is allowed: that is how a run is extended or re-scheduled).
CRITICAL_SETTINGS = (
    "model.name", "model.num_classes", "model.shortcut", "model.stride_in_1x1", "model.zero_init_residual",
    "model.normalization", "data.dataset", "data.val_size", "data.train_size", "data.split_seed", "data.augment",
    "optim.batch_size", "optim.momentum", "optim.weight_decay", "seed",
)


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_tensors(state: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every weight, buffer and optimizer-state tensor of a training checkpoint, by name."""
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
        raise CheckpointError(f"checkpoint {path} is not a resnets training checkpoint (expected keys 'model' and 'config')")
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


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def check_resume_compatible(saved: dict[str, Any], current: dict[str, Any]) -> None:
    changed = [f"{k} ({_get(saved, k)!r} -> {_get(current, k)!r})"
               for k in CRITICAL_SETTINGS if _get(saved, k) != _get(current, k)]
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


def model_from_file(path: str | os.PathLike):
    """A trained network, ready for inference, from a training checkpoint (.pt) or a
    `model.safetensors` written by a run. Returns (model, info) where info holds the model
    config and, for checkpoints, the run's config."""
    from ..config import from_dict
    from ..models import Normalize, create_model
    from ..models.weights import read_weights_config

    path = Path(path)
    if path.suffix == ".safetensors":
        model_config = read_weights_config(path)
        if "name" not in model_config:
            raise CheckpointError(f"{path}: not a resnets weights file (no model config in its metadata); "
                                  "use `resnets convert` for weights from elsewhere")
        model = create_model(model_config["name"], num_classes=model_config.get("num_classes"),
                             shortcut=model_config.get("shortcut"),
                             stride_in_1x1=model_config.get("stride_in_1x1", True), weights=str(path))
        from ..models.weights import read_weights_metadata

        return model, {"model": model_config, "run": read_weights_metadata(path).get("config")}
    state = load_checkpoint(path)
    try:
        config = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an unreadable config: {e}") from None
    m = config.model
    num_classes = state["model"]["fc.weight"].shape[0]
    model = create_model(m.name, num_classes=num_classes, shortcut=m.shortcut, stride_in_1x1=m.stride_in_1x1)
    from ..models.weights import load_state_dict

    load_state_dict(model, state["model"])
    if m.normalization == "per_pixel_mean":
        model.input_norm = Normalize(state["normalize"]["mean"])
    elif m.normalization == "channel_mean_std":
        model.input_norm = Normalize.channel()
    return model, {"model": {"name": m.name, "num_classes": num_classes}, "run": state["config"],
                   "iteration": state["iteration"]}
