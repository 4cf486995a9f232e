"""Benchmark the CIFAR-10 input pipeline: decode/cache load time and augmentation throughput.

Compares, in one run and on one device:
  * `augment_batch` (pad + crop + flip of a whole batch with one gather), and
    `CifarBatches.batch_at` (index the on-device data set + augment),
  * a per-image baseline: a map-style Dataset doing pad/crop/flip per image in Python,
    batched by a DataLoader (num_workers=0) and copied to the device.
Optionally (--root) also times loading a CIFAR-10 source twice: the first load decodes
into a fresh cache folder, the second reads the cache.

    PYTHONPATH=. python benchmarks/bench_cifar_data.py --root DIR [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from resnets.data.cifar import CifarBatches, load_cifar10, per_pixel_mean
from resnets.data.gpu_augment import augment_batch


class PerImageAugment(Dataset):
    """The usual per-image pipeline: pad 4, random 32x32 crop, random flip, one image at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(self.images[i], (4, 4, 4, 4))
        dy, dx, flip = torch.randint(0, 9, (3,), generator=self.g).tolist()
        x = x[:, dy : dy + 32, dx : dx + 32]
        if flip % 2:
            x = x.flip(-1)
        return x, self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, images_per_call: int, device: torch.device, min_seconds: float) -> float:
    fn()  # warm-up
    _sync(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        calls += 1
    _sync(device)
    return calls * images_per_call / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="CIFAR-10 source to time loading (any layout)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum time per measurement")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: torch's choice). Use 1 on a busy shared machine: with more "
        "OpenMP threads than free cores every parallel op can stall for milliseconds",
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cifar_data.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
    }

    if args.root is not None:
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            train = load_cifar10(args.root, "trainval", cache_dir=cache)
            t1 = time.perf_counter()
            load_cifar10(args.root, "trainval", cache_dir=cache)
            t2 = time.perf_counter()
        results["load"] = {"root": str(args.root), "images": len(train), "first_s": t1 - t0, "cached_s": t2 - t1}
        images, labels = train.images, train.labels
    else:
        images = torch.randint(0, 256, (50000, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (50000,))

    b = args.batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    on_device = images[:b].to(device)
    mean = per_pixel_mean(images).to(device)
    batches = CifarBatches(images, labels, b, seed=0, device=device)
    step = iter(range(10**9))
    loader = DataLoader(PerImageAugment(images, labels), batch_size=b, shuffle=True, num_workers=0, drop_last=True)

    def endless():
        while True:
            yield from loader

    loader_iter = endless()

    def per_image() -> None:
        x, y = next(loader_iter)
        x.to(device), y.to(device)

    rates = {
        "augment_batch (uint8, mean padding)": _rate(lambda: augment_batch(on_device, gen, pad_value=mean), b, device, args.seconds),
        "CifarBatches.batch_at (index + augment)": _rate(lambda: batches.batch_at(next(step)), b, device, args.seconds),
        "per-image Dataset + DataLoader": _rate(per_image, b, device, args.seconds),
    }
    baseline = rates["per-image Dataset + DataLoader"]
    results["augment_images_per_s"] = rates

    print(f"device: {results['device']}  torch {results['torch']}  threads {results['threads']}  batch {b}")
    if "load" in results:
        load = results["load"]
        print(f"load {load['root']} ({load['images']} images): first {load['first_s']:.2f} s, cached {load['cached_s']:.2f} s")
    print(f"{'pipeline':<42} {'images/s':>12} {'vs per-image':>13}")
    for name, rate in rates.items():
        print(f"{name:<42} {rate:>12,.0f} {rate / baseline:>12.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
