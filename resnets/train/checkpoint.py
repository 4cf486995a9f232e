"""Training checkpoints: atomic, weights-only loadable, checked before a resume.

`RUN_DIR/checkpoints/last.pt` is replaced atomically (temp file, fsync, rename) and the
one it replaces is kept as `previous.pt`, so a kill -9 at any moment leaves at least one
complete checkpoint. Everything inside is tensors, numbers, strings, lists and dicts:
`torch.load(..., weights_only=True)` reads it and nothing is unpickled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..models.weights import atomic_write

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
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a resnets training checkpoint (expected keys 'model' and 'config')")
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
