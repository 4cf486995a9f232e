"""Top-1/top-5 error of trained networks (one, or an ensemble) on a CIFAR-10 or ImageNet split:
what `resnets eval` runs, through the one loop of `resnets.eval.evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..runtime import Runtime
from .evaluate import evaluate
from .tta import evaluate_protocol, protocol_transform


@torch.no_grad()
def evaluate_cifar(models, path: str, split: str, val_size: int, split_seed: int, runtime: Runtime,
                   batch_size: int = 500, workers: int | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 error of a network (or ensemble) on a CIFAR-10 split (the 32x32 images as they are, Sec. 4.2)."""
    from ..data.cifar import EvalBatches, load_cifar10

    data = load_cifar10(path, split, val_size, split_seed, cache_dir, workers)
    result = evaluate(models, EvalBatches(data.images, data.labels, batch_size, runtime.device), runtime)
    result.update(split=split, dataset="cifar10", data=data.source)
    return result


def imagenet_classes(path: str, model_config: dict[str, Any] | None) -> tuple[list[str] | None, str]:
    """The class order the labels must follow, and what it is, for messages: the classes the
    network was trained on if its weights record them (a run's `classes`; the `synsets` of
    ImageNet weights from elsewhere), else ROOT/train's folders (val may lack some classes),
    else None (val's own folders)."""
    import os

    config = model_config or {}
    if config.get("classes"):
        return list(config["classes"]), "classes the network was trained on"
    if config.get("synsets"):
        return list(config["synsets"]), "ImageNet synsets of the network's classes"
    train = os.path.join(path, "train")
    if os.path.isdir(train):
        return sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith(".")), \
            f"class folders of {train}"
    return None, "class folders"


def evaluate_imagenet(models, path: str, split: str, protocol: str, runtime: Runtime, batch_size: int,
                      workers: int, skip_bad_images: bool, model_config: dict[str, Any] | None = None,
                      cache_dir: str | None = None) -> dict[str, Any]:
    """Top-1/top-5 error on ROOT/<split>/<class>/*; the folders may hold any subset of the
    classes, numbered by the network's own class list (`imagenet_classes`)."""
    from ..data.imagenet import ImageFolder

    if split not in ("val", "train"):
        raise ConfigError(f"--split: ImageNet folders have 'val' and 'train', got {split!r}")
    classes, described = imagenet_classes(path, model_config)
    dataset = ImageFolder(Path(path) / split, transform=protocol_transform(protocol), classes=classes,
                          classes_described=described, skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    result = evaluate_protocol(models, dataset, protocol, batch_size, runtime, num_workers=workers)
    result.update(split=split, dataset="imagenet", protocol=protocol)
    return result
