"""The pieces of `resnets predict` (the command is `resnets.cli.predict`): the network from a
pretrained tag or a file, the view its own evaluation used (`eval_view`), the images named
by files, folders and globs (`find_images`), and the top classes of a batch (`predict`)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["eval_view", "find_images", "network_from_args", "predict"]


def network_from_args(model: str | None, weights: str | None, checkpoint: str | None):
    """(network, model config) from `--model NAME --weights TAG` or `--checkpoint FILE`."""
    from ..models.loading import load_network
    from ..models.pretrained import tags_for

    if (weights is None) == (checkpoint is None):
        raise ConfigError("give either --weights TAG (with --model NAME) or --checkpoint FILE")
    if weights is not None and model is None:
        raise ConfigError("--weights TAG needs --model NAME (tags are per network, e.g. --model resnet50 "
                          "--weights torchvision-imagenet1k-v1)")
    if weights is not None and weights not in tags_for(model):
        raise ConfigError(f"--weights: no pretrained weights {weights!r} for {model}; known tags: "
                          f"{', '.join(tags_for(model)) or 'none'}")
    return load_network(weights if weights is not None else checkpoint, model)


def eval_view(config: dict[str, Any]) -> tuple[int, int]:
    """(shorter side to resize to, center crop) with which the weights were evaluated."""
    from ..models import model_spec

    if config.get("eval_resize") and config.get("eval_crop"):
        return int(config["eval_resize"]), int(config["eval_crop"])
    spec = model_spec(config["name"])
    # CIFAR: the 32x32 images as they are (Sec. 4.2); ImageNet: the paper's 224 center crop of
    # the 256-resized image, the "center" view of `resnets eval` (Sec. 3.4).
    return (spec.input_size, spec.input_size) if spec.family == "cifar" else (256, 224)


def find_images(patterns: list[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Image files named by files, folders (recursively) and globs; and the arguments that named none."""
    from ..data.imagenet import IMG_EXTENSIONS

    found, missing = [], []
    for pattern in patterns:
        if os.path.isfile(pattern):
            found.append(pattern)
            continue
        if os.path.isdir(pattern):
            matches = sorted(str(p) for p in Path(pattern).rglob("*")
                             if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS
                             and not any(part.startswith(".") for part in p.relative_to(pattern).parts))
        else:
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if matches:
            found.extend(matches)
        else:
            missing.append({"image": pattern, "error": f"{pattern}: no such file, or no images in that folder or glob"})
    return found, missing


@torch.no_grad()
def predict(models: torch.nn.Module | list[torch.nn.Module], images: torch.Tensor,
            top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the `top` best classes for a uint8 batch; several models
    form an ensemble that averages their probabilities (Table 5)."""
    models = [models] if isinstance(models, torch.nn.Module) else models
    probs = torch.stack([torch.softmax(m(images).float(), dim=1) for m in models]).mean(0)
    return probs.topk(min(top, probs.shape[1]), dim=1)
