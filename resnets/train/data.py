"""The data side of a run: what the engine trains and validates on, and CIFAR-10's share of it.

The engine sees two things: a training stream whose batch for step s depends only on
(seed, s) - so a resumed run sees exactly the batches an uninterrupted one would - and a
validation set sharded over processes without duplicates. Each data set's builder takes
the data settings, this process's `BatchShard`, the seed and the runtime; nothing else
of the run's config. (ImageNet's builder is `resnets.train.imagenet_data.build_imagenet`.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
from torch import Tensor

from ..config import DataConfig
from ..errors import ConfigError
from ..runtime import Runtime


class TrainStream(Protocol):
    steps_per_epoch: int

    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's (images, labels) for steps start_step, start_step + 1, ..., on the device."""
        ...


@dataclass
class RunData:
    train: TrainStream
    val: Iterable[tuple[Tensor, Tensor]] | None
    """Re-iterable batches of this process's share of the validation images (None: no validation)."""
    num_classes: int
    classes: list[str]
    mean_image: Callable[[], Tensor]
    """The per-pixel mean (3, H, W) in [0, 1] of the training images (Sec. 3.4, 4.2); computed on the
    first call where that is costly (ImageNet), and the same on every process."""
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


@dataclass(frozen=True)
class BatchShard:
    """This process's share of every global batch: the `rank`-th of `world_size` contiguous slices.

    The global batch of a step is the same for any number of processes; each process trains on
    its slice (the paper's BN statistics are per GPU as well, Sec. 3.4).
    """

    global_batch: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ConfigError(f"optim.batch_size: the global batch {self.global_batch} must divide evenly "
                              f"over {self.world_size} processes")

    @classmethod
    def of(cls, global_batch: int, runtime: Runtime) -> "BatchShard":
        return cls(global_batch, runtime.rank, runtime.world_size)

    @property
    def size(self) -> int:
        """Images per process and step."""
        return self.global_batch // self.world_size

    @property
    def part(self) -> slice:
        """This process's positions within the global batch."""
        return slice(self.rank * self.size, (self.rank + 1) * self.size)


class CifarStream:
    """The global batch of step s from `CifarBatches`; under DDP each process takes its slice."""

    def __init__(self, batches, shard: BatchShard) -> None:
        self.source = batches
        self.shard = shard
        self.steps_per_epoch = batches.steps_per_epoch

    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        step = start_step
        while True:
            x, y = self.source.batch_at(step)
            if self.shard.world_size > 1:
                x, y = x[self.shard.part], y[self.shard.part]
            yield x, y
            step += 1


def cifar_data_path(data: DataConfig) -> str:
    if data.path:
        return data.path
    if data.download:
        from ..data.cifar import default_cache_dir
        from ..data.download import download_cifar10

        return str(download_cifar10(data.cache_dir or default_cache_dir()))
    raise ConfigError("data.path: no CIFAR-10 location given; pass --data PATH or --download")


def build_cifar(data: DataConfig, shard: BatchShard, seed: int, runtime: Runtime) -> RunData:
    """CIFAR-10 decoded once and held on the device: the training split (Sec. 4.2's 45k/5k) as
    seeded, augmented batches, and this process's strided share of the validation images."""
    from ..data.cifar import CifarBatches, EvalBatches, load_cifar10, per_pixel_mean, stratified_subset

    path = cifar_data_path(data)
    train_split = "trainval" if data.val_size == 0 else "train"
    train = load_cifar10(path, train_split, data.val_size, data.split_seed, data.cache_dir)
    val = load_cifar10(path, "val", data.val_size, data.split_seed, data.cache_dir) if data.val_size > 0 else None
    fingerprint = data_fingerprint(train.images, train.labels, train.classes,
                                   *((val.images, val.labels) if val is not None else ()))
    if data.train_size is not None:
        train = stratified_subset(train, data.train_size, data.split_seed)
    mean = per_pixel_mean(train.images)
    batches = CifarBatches(train.images, train.labels, shard.global_batch, seed, runtime.device,
                           augment=data.augment != "none", pad_value=mean)
    if val is not None:
        # Strided shards: every validation image is scored exactly once across processes.
        share = slice(shard.rank, None, shard.world_size)
        val_batches = EvalBatches(val.images[share], val.labels[share], 500, runtime.device)
    else:
        val_batches = None
    return RunData(CifarStream(batches, shard), val_batches, len(train.classes), train.classes, lambda: mean,
                   train.source, fingerprint)
