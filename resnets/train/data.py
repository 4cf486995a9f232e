"""The data side of a run: what the engine trains and validates on.

The engine sees two things: a training stream whose batch for step s depends only on
(seed, s) - so a resumed run sees exactly the batches an uninterrupted one would - and a
validation set sharded over processes without duplicates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import ConfigError
from .runtime import Runtime


class TrainStream(Protocol):
    steps_per_epoch: int

    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's (uint8 images, labels) for steps start_step, start_step + 1, ..., on the device."""
        ...


@dataclass
class RunData:
    train: TrainStream
    val: Iterator[tuple[Tensor, Tensor]] | object  # re-iterable batches of this process's share
    num_classes: int
    classes: list[str]
    mean_image: Tensor  # (3, H, W) in [0, 1]: the per-pixel mean of the training images
    description: str
    fingerprint: str  # the data's content, wherever it lives (see `data_fingerprint`); checked on resume


def data_fingerprint(*parts: Tensor | np.ndarray | Sequence[str]) -> str:
    """sha256 over arrays (dtype, shape, bytes) and lists of names: equal for the same data
    wherever it is stored and in whichever layout (pickles, archive or PNG folders decode to
    the same arrays), different for different images, labels or classes. CIFAR-10's 50k
    images hash in about 0.2 s."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Tensor):
            part = part.cpu().numpy()
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(memoryview(part).cast("B"))
        else:
            digest.update(json.dumps(list(part)).encode())
    return "sha256:" + digest.hexdigest()


class CifarStream:
    """The global batch of step s from `CifarBatches`; under DDP each process takes its slice."""

    def __init__(self, batches, runtime: Runtime) -> None:
        self.source = batches
        self.steps_per_epoch = batches.steps_per_epoch
        self.rank, self.world = runtime.rank, runtime.world_size

    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        step = start_step
        while True:
            x, y = self.source.batch_at(step)
            if self.world > 1:
                per_rank = len(y) // self.world
                part = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
                x, y = x[part], y[part]
            yield x, y
            step += 1


def per_process_batch(config: TrainConfig, runtime: Runtime) -> int:
    if config.optim.batch_size % runtime.world_size:
        raise ConfigError(f"optim.batch_size: the global batch {config.optim.batch_size} must divide evenly "
                          f"over {runtime.world_size} processes")
    return config.optim.batch_size // runtime.world_size


def cifar_data_path(config: TrainConfig) -> str:
    if config.data.path:
        return config.data.path
    if config.data.download:
        from ..data.download import download_cifar10
        from ..data.cifar import default_cache_dir

        return str(download_cifar10(config.data.cache_dir or default_cache_dir()))
    raise ConfigError("data.path: no CIFAR-10 location given; pass --data PATH or --download")


def build_cifar(config: TrainConfig, runtime: Runtime) -> RunData:
    from ..data.cifar import CifarBatches, EvalBatches, load_cifar10, per_pixel_mean, stratified_subset

    path = cifar_data_path(config)
    d = config.data
    train_split = "trainval" if d.val_size == 0 else "train"
    train = load_cifar10(path, train_split, d.val_size, d.split_seed, d.cache_dir)
    val = load_cifar10(path, "val", d.val_size, d.split_seed, d.cache_dir) if d.val_size > 0 else None
    fingerprint = data_fingerprint(train.images, train.labels, train.classes,
                                   *((val.images, val.labels) if val is not None else ()))
    if d.train_size is not None:
        train = stratified_subset(train, d.train_size, d.split_seed)
    mean = per_pixel_mean(train.images)
    batches = CifarBatches(train.images, train.labels, config.optim.batch_size, config.seed, runtime.device,
                           augment=d.augment != "none", pad_value=mean)
    per_process_batch(config, runtime)
    if val is not None:
        # Strided shards: every validation image is scored exactly once across processes.
        share = slice(runtime.rank, None, runtime.world_size)
        val_batches = EvalBatches(val.images[share], val.labels[share], 500, runtime.device)
    else:
        val_batches = None
    return RunData(CifarStream(batches, runtime), val_batches, len(train.classes), train.classes, mean,
                   train.source, fingerprint)


def build_run_data(config: TrainConfig, runtime: Runtime) -> RunData:
    if config.data.dataset == "cifar10":
        return build_cifar(config, runtime)
    if config.data.dataset == "imagenet":
        from .imagenet_data import build_imagenet

        return build_imagenet(config, runtime)
    raise ConfigError(f"data.dataset: expected cifar10 or imagenet, got {config.data.dataset!r}")
