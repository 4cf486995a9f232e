"""Top-1/top-5 error of trained networks (one, or an ensemble) on a CIFAR-10 or ImageNet split."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .metrics import TopKAccumulator


@torch.no_grad()
def evaluate_cifar(models, path: str, split: str, val_size: int, split_seed: int, device: torch.device,
                   precision: str, batch_size: int = 500, cache_dir: str | None = None) -> dict[str, Any]:
    from ..data.cifar import EvalBatches, load_cifar10

    data = load_cifar10(path, split, val_size, split_seed, cache_dir)
    acc = TopKAccumulator((1, 5), device=device)
    for m in models:
        m.eval().to(device, memory_format=torch.channels_last)
    for x, y in EvalBatches(data.images, data.labels, batch_size, device):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            probs = torch.stack([F.softmax(m(x).float(), dim=1) for m in models]).mean(0)
        acc.update(probs, y)
    result = acc.compute()
    result.update(split=split, dataset="cifar10", data=data.source)
    return result


def imagenet_classes(path: str, model_classes: list[str] | None) -> list[str] | None:
    """The class order the labels must follow: the model's training classes if it recorded them,
    else ROOT/train's folders (val may lack some classes), else None (val's own folders)."""
    import os

    if model_classes:
        return list(model_classes)
    train = os.path.join(path, "train")
    if os.path.isdir(train):
        return sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    return None


def evaluate_imagenet(models, path: str, split: str, protocol: str, device: torch.device, batch_size: int,
                      workers: int, skip_bad_images: bool, classes: list[str] | None = None) -> dict[str, Any]:
    from pathlib import Path

    from ..data.imagenet import ImageFolder
    from ..eval.tta import evaluate, protocol_transform

    if split not in ("val", "train"):
        raise ConfigError(f"--split: ImageNet folders have 'val' and 'train', got {split!r}")
    dataset = ImageFolder(Path(path) / split, transform=protocol_transform(protocol),
                          classes=imagenet_classes(path, classes), skip_bad_images=skip_bad_images)
    # The models carry their own input normalisation; the protocols hand them [0, 1] floats.
    result = evaluate(list(models), [lambda x: x] * len(models), dataset, protocol, batch_size, device,
                      num_workers=workers)
    result.update(split=split, dataset="imagenet", protocol=protocol)
    return result
