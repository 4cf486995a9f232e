"""Generated run directories and a tiny class-folder CIFAR-10 tree (no real data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from resnets.config import resolve_config, to_dict

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_run(run_dir: Path, model: str, seed: int, rng: np.random.Generator, *, iters: int = 200,
                   log_every: int = 10, eval_every: int = 50, finished: bool = True, params: int = 1000,
                   data_path: str = "/nowhere/cifar", overrides: dict | None = None) -> dict:
    """A run directory as `train` writes it, with random curves; returns the generated numbers."""
    config = resolve_config(None, {"model.name": model, "seed": seed, "out": str(run_dir), "optim.iters": iters,
                                   "optim.milestones": [iters // 2, iters * 3 // 4], "data.path": data_path,
                                   "log_every": log_every, "eval_every": eval_every, **(overrides or {})})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    rows, train, val = [], [], []
    for it in range(log_every, iters + 1, log_every):
        err = float(rng.uniform(0, 100))
        train.append((it, err))
        rows.append({"event": "train", "iteration": it, "epoch": it / 350, "lr": 0.1, "train_loss": 1.0,
                     "train_error": err, "images_per_s": float(rng.uniform(10, 100))})
        if it % eval_every == 0:
            v = float(rng.uniform(0, 100))
            val.append((it, v))
            rows.append({"event": "val", "iteration": it, "val_error": v})
    if finished:
        rows.append({"event": "summary", "iteration": iters, "model": model, "dataset": "cifar10",
                     "data": f"class folders {data_path} [split=train, val_size=5000, split_seed=0]",
                     "val_error": val[-1][1], "params": params, "device": "cpu", "precision": "bf16"})
        (run_dir / "model.safetensors").write_bytes(b"")  # only its presence matters to the report
    else:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train": train, "val": val}


@pytest.fixture
def tiny_cifar(tmp_path_factory) -> Path:
    """10 classes x 20 random PNG images in ROOT/train/<class>/ (lossless, deterministic)."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(20):
            pixels = (rng.integers(0, 200, (32, 32, 3)) + 5 * c).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture
def fake_run():
    """`write_fake_run`, handed out as a fixture: test folders are not packages, so test
    modules cannot import this conftest."""
    return write_fake_run
