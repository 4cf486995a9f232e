"""ImageNet for the training engine: a resumable, sharded stream and a sharded validation set.

Recipe (Sec. 3.4): the shorter side is resized to a random value in [256, 480], a random
224x224 crop (or its flip) is taken, the per-pixel mean is subtracted and AlexNet's PCA
colour augmentation [21] is applied. Validation is the single 224 center crop of the
256-resized image (the "center" protocol of `resnets eval`).

Determinism, so a resumed run sees exactly the batches an uninterrupted one would:

* The order of epoch e is `randperm(N)` from a generator seeded with (seed, e). Step s
  belongs to epoch `s // steps_per_epoch` and takes the s-th slice of `global_batch`
  images of that order (drop_last); under DDP each process takes its contiguous
  share of that slice, so the global batch of step s is the same for any process count.
* A sample's crop/scale/flip comes from `random.Random(f"{seed}/{epoch}/{index}")`,
  not from the worker's global RNG, so it does not depend on which DataLoader worker
  decodes it or how many there are.
* PCA lighting runs on the device on the float batch with a generator seeded by
  (seed, step, rank).

The stream therefore yields float [0, 1] batches for the paper preset (PCA lighting
needs floats; the model's `Normalize` accepts them) and uint8 batches otherwise.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import DataConfig
from ..data.imagenet import ImageFolder, SkipEmpty, compute_mean_image, imagenet_datasets, imagenet_loader
from ..data.transforms import eval_transform, pca_lighting, train_transform
from ..errors import ConfigError
from ..io import atomic_write
from ..runtime import Runtime
from .data import BatchShard, RunData, data_fingerprint

logger = logging.getLogger(__name__)

CROP = 224  # Sec. 3.4: "224x224 crop"
SCALE_RANGE = (256, 480)  # Sec. 3.4: shorter side "randomly sampled in [256, 480]"
VAL_RESIZE = 256  # the center view of the 256-resized image
MEAN_IMAGES = 10_000  # images averaged for the per-pixel mean (smooth: ~1e-3 accurate)
MEAN_FILE = "mean_image.pt"


class SeededTransform:
    """Calls `transform(img, rng)` with the rng set by `SeededSamples` for the current item.

    Each DataLoader worker holds its own copy and decodes items one at a time, so a plain
    attribute is enough.
    """

    def __init__(self, transform: Any) -> None:
        self.transform = transform
        self.rng: random.Random | None = None

    @property
    def decode_hint(self) -> int | None:
        return getattr(self.transform, "decode_hint", None)

    def __call__(self, img: Any, rng: random.Random | None = None) -> Tensor:
        return self.transform(img, self.rng)

    def __repr__(self) -> str:
        return f"SeededTransform({self.transform!r})"


class SeededSamples(torch.utils.data.Dataset):
    """Items are `(epoch, index)` keys; the augmentation of each is seeded by (seed, epoch, index)."""

    def __init__(self, dataset: ImageFolder, transform: Any, seed: int) -> None:
        self.transform = SeededTransform(transform)
        self.dataset = dataset.with_transform(self.transform)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor | None, int]:
        epoch, index = key
        # A str seed is hashed with SHA-512 by `random`: stable across processes and runs.
        self.transform.rng = random.Random(f"{self.seed}/{epoch}/{index}")
        return self.dataset[index]


class ResumableShardSampler(torch.utils.data.Sampler):
    """Endless `(epoch, index)` keys of this process's share of every global batch, from `start_step` on.

    Like `DistributedSampler` with `set_epoch` and drop_last, but the epoch follows from the
    step (epoch = step // steps_per_epoch) and it can start in the middle of an epoch.
    """

    def __init__(self, num_samples: int, shard: BatchShard, seed: int, start_step: int = 0) -> None:
        if shard.global_batch > num_samples:
            raise ConfigError(f"optim.batch_size: the global batch {shard.global_batch} is larger than the "
                              f"{num_samples} training images")
        self.num_samples, self.shard = num_samples, shard
        self.seed, self.start_step = seed, start_step
        self.steps_per_epoch = num_samples // shard.global_batch

    def epoch_order(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def indices_at(self, step: int) -> list[int]:
        """This process's sample indices for global step `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[self._positions(i)].tolist()

    def _positions(self, i: int) -> slice:
        """This process's positions in an epoch's order at step i of the epoch."""
        start = i * self.shard.global_batch
        return slice(start + self.shard.part.start, start + self.shard.part.stop)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        epoch, order = -1, None
        while True:
            e, i = divmod(step, self.steps_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_order(e)
            for index in order[self._positions(i)].tolist():
                yield epoch, index
            step += 1


class ImagenetStream:
    """The engine's `TrainStream` for ImageNet class folders."""

    def __init__(self, samples: SeededSamples, shard: BatchShard, seed: int, device: torch.device, workers: int,
                 pca: bool) -> None:
        self.samples, self.shard, self.seed = samples, shard, seed
        self.device, self.workers, self.pca = device, workers, pca
        self.steps_per_epoch = ResumableShardSampler(len(samples), shard, seed).steps_per_epoch

    @property
    def num_bad_images(self) -> int:
        """Unreadable training images skipped so far by this process (--skip-bad-images)."""
        return self.samples.dataset.num_bad_images

    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        sampler = ResumableShardSampler(len(self.samples), self.shard, self.seed, start_step)
        loader = imagenet_loader(self.samples, self.shard.size, sampler=sampler, num_workers=self.workers,
                                 pin_memory=self.device.type == "cuda")
        step = start_step
        for batch in loader:
            if batch is None:  # every image of this share was unreadable (--skip-bad-images)
                step += 1
                continue
            x, y = batch
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.pca:
                g = torch.Generator(self.device).manual_seed((self.seed * 1_000_003 + step) * 4099 + self.shard.rank)
                x = pca_lighting(x.float().div_(255), generator=g)
            yield x, y
            step += 1


def load_or_compute_mean_image(train: ImageFolder, cache: Path | None, runtime: Runtime, crop: int,
                               max_images: int, workers: int, seed: int) -> Tensor:
    """The per-pixel mean (3, crop, crop), computed once by rank 0 and cached in the file `cache`.

    Other processes receive it by broadcast (no shared file system needed across nodes).
    """
    # The cache records what it was computed from; a different data set or size recomputes it.
    source = {"train_root": train.root, "num_images": len(train), "crop": crop, "max_images": max_images,
              "seed": seed}
    mean = torch.zeros(3, crop, crop)
    if runtime.is_main:
        cached = torch.load(cache, map_location="cpu", weights_only=True) if cache and cache.is_file() else None
        if isinstance(cached, dict) and cached.get("source") == source:
            mean = cached["mean"]
        else:
            mean = compute_mean_image(train, crop, max_images, num_workers=workers, seed=seed)
            if cache is not None:
                atomic_write(cache, lambda tmp: torch.save({"mean": mean, "source": source}, tmp))
    if runtime.distributed:
        buf = mean.to(runtime.device)
        dist.broadcast(buf, src=0)
        mean = buf.cpu()
    return mean


def build_imagenet(data: DataConfig, shard: BatchShard, seed: int, runtime: Runtime, *, mean_cache: Path | None = None,
                   crop: int = CROP, scale_range: tuple[int, int] = SCALE_RANGE,
                   mean_max_images: int = MEAN_IMAGES) -> RunData:
    """Training stream and validation batches for ROOT/train and ROOT/val class folders.

    The per-pixel mean is computed only when asked for (`RunData.mean_image`) and cached in
    the file `mean_cache` (the run directory's MEAN_FILE). `crop` and `scale_range` are the
    paper's (224, [256, 480]); tests use smaller ones.
    """
    if not data.path:
        raise ConfigError("data.path: no ImageNet location given; pass --data ROOT (ROOT/train/<class>/*, ROOT/val/<class>/*)")
    if data.augment == "paper":
        augment = train_transform("paper", crop=crop, scale_range=scale_range)
    elif data.augment == "randomresizedcrop":
        augment = train_transform("randomresizedcrop", crop=crop)
    else:  # "none": the validation view
        augment = eval_transform(round(crop * VAL_RESIZE / CROP), crop)
    val_view = eval_transform(round(crop * VAL_RESIZE / CROP), crop)
    train, val = imagenet_datasets(data.path, None, val_view, skip_bad_images=data.skip_bad_images,
                                   cache_dir=data.cache_dir)
    mean_image = functools.cache(lambda: load_or_compute_mean_image(train, mean_cache, runtime, crop, mean_max_images,
                                                                    data.workers, seed))
    stream = ImagenetStream(SeededSamples(train, augment, seed), shard, seed, runtime.device, data.workers,
                            pca=data.augment == "paper")
    # Strided shards: every validation image is scored exactly once across processes (no padding).
    val_share = list(range(shard.rank, len(val), shard.world_size))
    val_loader = imagenet_loader(val, shard.size, sampler=val_share, num_workers=data.workers,
                                 pin_memory=runtime.device.type == "cuda")
    description = (f"ImageNet folders {data.path} ({len(train)} train / {len(val)} val images, "
                   f"{len(train.classes)} classes, augment {data.augment})")
    # The file listing, not the pixels: hashing ImageNet's 140 GB would take longer than an epoch.
    fingerprint = data_fingerprint(train.relative_paths, train.targets, train.classes, val.relative_paths, val.targets)
    return RunData(stream, SkipEmpty(val_loader), len(train.classes), list(train.classes), mean_image, description,
                   fingerprint)
