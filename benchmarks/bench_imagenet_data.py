"""ImageNet input-pipeline throughput: JPEG decode + augment, images/s per DataLoader worker count.

Generates ImageNet-like 500x375 JPEGs (the data set's typical size) in a temporary
class-folder tree, then times full epochs of ``ImageFolder`` + a transform through a
``DataLoader`` for each worker count. Worker start-up is excluded (one warm-up epoch
with persistent workers). Prints a table and writes JSON.

    python benchmarks/bench_imagenet_data.py --images 512 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnets.data.imagenet import ImageFolder, skip_bad_collate
from resnets.data.transforms import eval_transform, train_transform
from resnets.eval.tta import TenCrop


def make_jpegs(root: Path, n: int, classes: int = 8, size: tuple[int, int] = (500, 375), seed: int = 0) -> None:
    """Photo-like JPEGs (smooth gradients + noise compress like real photos, not like pure noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c = i % classes
        (root / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], -1)
        img = base * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"n{c:08d}" / f"img_{i}.JPEG", quality=90)


def time_loader(ds: ImageFolder, workers: int, batch_size: int, epochs: int) -> float:
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=skip_bad_collate,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up: worker start-up, page cache
        pass
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs):
        for images, _ in loader:
            n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=384, help="JPEGs to generate")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the images")
    p.add_argument("--json", default="benchmarks/results/imagenet_data.json")
    args = p.parse_args()

    torch.set_num_threads(1)  # as in DataLoader workers; keeps the 0-worker row comparable
    transforms = {
        "paper (scale 256-480, crop 224, flip)": train_transform("paper"),
        "randomresizedcrop 224": train_transform("randomresizedcrop"),
        "eval center 256/224": eval_transform(256, 224),
        "eval 10-crop 256/224": TenCrop(256, 224),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        t0 = time.perf_counter()
        make_jpegs(root, args.images)
        print(f"generated {args.images} 500x375 JPEGs in {time.perf_counter() - t0:.1f}s")
        base = ImageFolder(root, cache=False)
        for name, tf in transforms.items():
            ds = base.with_transform(tf)
            for w in args.workers:
                ips = time_loader(ds, w, args.batch_size, args.epochs)
                rows.append({"transform": name, "workers": w, "images_per_s": round(ips, 1)})
                print(f"{name:40s} workers={w}  {ips:8.1f} img/s", flush=True)

    print()
    print(f"| {'transform':40s} | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
    print("|" + "-" * 42 + "|" + "|".join("-" * 11 for _ in args.workers) + "|")
    for name in transforms:
        vals = [r["images_per_s"] for r in rows if r["transform"] == name]
        print(f"| {name:40s} | " + " | ".join(f"{v:9.1f}" for v in vals) + " |")

    out = {
        "benchmark": "imagenet_data",
        "unit": "images/s (decode + augment + collate, 500x375 JPEG q90)",
        "images": args.images,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": Image.__version__,
        "results": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
