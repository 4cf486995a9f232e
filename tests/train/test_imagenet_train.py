"""ImageNet training data (resnets.train.imagenet_data) and the imagenet-paper preset end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.config import resolve_config
from resnets.errors import DataError
from resnets.models import create_model
from resnets.train import imagenet_data
from resnets.runtime import Runtime
from resnets.train.data import BatchShard
from resnets.train.imagenet_data import ResumableShardSampler, build_imagenet

CLASSES = ["n01", "n02", "n03"]


def make_tree(root: Path, train_per_class: int, val_per_class: int, size: tuple[int, int], seed: int = 0) -> Path:
    """ROOT/{train,val}/<class>/*.JPEG with class-dependent colours plus noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = np.array([60 + 70 * c, 200 - 60 * c, 40 + 50 * ((c + i) % 3)], dtype=np.int64)
                img = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{name}_{i}.JPEG", quality=90)
    return root


def small_config(tmp_path: Path, root: Path, **overrides):
    values = {"model.name": "resnet18", "data.path": str(root), "data.workers": 0,
              "data.cache_dir": str(tmp_path / "cache"), "optim.batch_size": 4, "optim.iters": 4,
              "device": "cpu", "precision": "fp32", "out": str(tmp_path / "run"), "tensorboard": False}
    values.update(overrides)
    return resolve_config(None, values, preset="imagenet-paper")


CPU = Runtime(torch.device("cpu"), "fp32")


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("imagenet_small"), 8, 3, (60, 50))


def take(stream, start: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = stream.batches(start)
    return [next(it) for _ in range(n)]


def build_small(config, runtime=CPU, crop=32):
    return build_imagenet(config.data, BatchShard.of(config.optim.batch_size, runtime), config.seed, runtime,
                          mean_cache=Path(config.out) / imagenet_data.MEAN_FILE, crop=crop, scale_range=(36, 48),
                          mean_max_images=100)


def test_sampler_epochs_cover_data_once_and_resume_mid_epoch():
    s = ResumableShardSampler(num_samples=10, shard=BatchShard(4), seed=3)
    assert s.steps_per_epoch == 2  # drop_last: 2 images of each epoch are left out
    epoch0 = s.indices_at(0) + s.indices_at(1)
    assert len(set(epoch0)) == 8
    assert s.indices_at(2) + s.indices_at(3) != epoch0  # a new order each epoch
    keys = iter(ResumableShardSampler(10, BatchShard(4), seed=3, start_step=3))
    assert [next(keys) for _ in range(4)] == [(1, i) for i in s.indices_at(3)]
    # Two processes split each global batch without overlap.
    shards = [ResumableShardSampler(10, BatchShard(4, r, 2), seed=3).indices_at(5) for r in range(2)]
    assert shards[0] + shards[1] == s.indices_at(5)


def test_stream_resumes_exactly_and_does_not_depend_on_workers(tmp_path, small_tree):
    config = small_config(tmp_path, small_tree)
    data = build_small(config)
    assert data.num_classes == 3 and data.train.steps_per_epoch == 6
    full = take(data.train, 0, 8)  # crosses the epoch boundary at step 6
    x, y = full[0]
    # Paper preset: PCA lighting makes float [0,1]-ish batches on the device.
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.shape == (4,)
    resumed = take(data.train, 5, 3)
    for (xa, ya), (xb, yb) in zip(full[5:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][0], full[6][0])  # augmentation differs between epochs

    with_workers = build_small(small_config(tmp_path, small_tree, **{"data.workers": 2}))
    for (xa, ya), (xb, yb) in zip(full[:3], take(with_workers.train, 0, 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_two_process_shards_make_the_one_process_batch(tmp_path, small_tree):
    # randomresizedcrop: no PCA lighting, uint8 batches that must match bit for bit.
    overrides = {"data.augment": "randomresizedcrop", "model.normalization": "channel_mean_std"}
    one = build_small(small_config(tmp_path, small_tree, **overrides))
    ranks = [build_small(small_config(tmp_path, small_tree, **overrides),
                         Runtime(torch.device("cpu"), "fp32", rank=r, world_size=2)) for r in range(2)]
    for step in (0, 7):
        x1, y1 = take(one.train, step, 1)[0]
        parts = [take(r.train, step, 1)[0] for r in ranks]
        assert x1.dtype == torch.uint8
        assert torch.equal(x1, torch.cat([p[0] for p in parts])) and torch.equal(y1, torch.cat([p[1] for p in parts]))
    # Validation: strided shards, each image exactly once.
    shards = [list(r.val.loader.sampler) for r in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(9)) and not set(shards[0]) & set(shards[1])
    assert sum(len(y) for _, y in ranks[0].val) + sum(len(y) for _, y in ranks[1].val) == 9


def test_mean_image_is_cached_in_the_run_dir(tmp_path, small_tree, monkeypatch):
    config = small_config(tmp_path, small_tree)
    first = build_small(config)
    cached = Path(config.out) / imagenet_data.MEAN_FILE
    assert not cached.exists()  # computed only when a model asks for it
    first_mean = first.mean_image()
    assert cached.is_file() and first_mean.shape == (3, 32, 32)
    assert 0.1 < float(first_mean.mean()) < 0.9

    def refuse(*args, **kwargs):
        raise AssertionError("the mean image was recomputed")

    monkeypatch.setattr(imagenet_data, "compute_mean_image", refuse)
    again = build_small(config)
    assert torch.equal(first_mean, again.mean_image())
    # Another data set (here: another crop size) does not reuse it.
    with pytest.raises(AssertionError, match="recomputed"):
        build_small(config, crop=24).mean_image()


def test_bad_images_are_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "tree", 4, 1, (60, 50))
    (root / "train" / "n02" / "broken.JPEG").write_bytes(b"not a jpeg at all")
    strict = small_config(tmp_path, root, **{"model.normalization": "none"})
    with pytest.raises(DataError, match="broken.JPEG"):
        take(build_small(strict).train, 0, 3)
    lenient = small_config(tmp_path, root, **{"model.normalization": "none", "data.skip_bad_images": True})
    data = build_small(lenient)
    batches = take(data.train, 0, 6)  # 13 images, 3 steps per epoch: the broken one is met by step 6
    assert data.train.num_bad_images >= 1
    assert all(len(y) >= 3 for _, y in batches)


def test_imagenet_paper_preset_end_to_end(tmp_path):
    """resnet18 on 224 crops from [256, 480]-scaled images, plateau schedule, per-pixel mean."""
    root = make_tree(tmp_path / "tree", 4, 1, (300, 260))
    config = small_config(tmp_path, root, **{"optim.iters": 2, "optim.batch_size": 2, "eval_every": 1, "log_every": 1,
                                             "optim.plateau_patience": 1})
    assert config.optim.schedule == "plateau" and config.model.normalization == "per_pixel_mean"
    from resnets.train.engine import train

    summary = train(config)
    assert summary["iteration"] == 2 and summary["val_error"] is not None
    rows = [json.loads(line) for line in (Path(config.out) / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r["event"] == "val"]
    assert [r["iteration"] for r in vals] == [1, 2] and all(r["val_images"] == 3 for r in vals)
    assert all(r["bad_images"] == 0 for r in rows if r["event"] == "train")
    mean = torch.load(Path(config.out) / imagenet_data.MEAN_FILE, weights_only=True)["mean"]
    assert mean.shape == (3, 224, 224)
    model = create_model("resnet18", weights=str(Path(config.out) / "model.safetensors"))
    assert model.input_norm is not None and model.input_norm.kind == "per_pixel_mean"
    assert torch.allclose(model.input_norm.mean, mean)
