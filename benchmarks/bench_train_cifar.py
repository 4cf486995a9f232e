"""CIFAR-10 training throughput, end to end (batch assembly + augmentation + SGD step).

Compares, in the same process and on the same images:
  baseline  the common reference way: a per-image Dataset + DataLoader with Python
            transforms (pad, random crop, flip, normalise per image), eager fp32 NCHW;
  resnets   the project's pipeline: the decoded uint8 data set held on the device,
            whole-batch augmentation (`CifarBatches`), normalisation inside the model,
            channels_last, in fp32 and in bf16 autocast.

Prints a table and writes JSON. Figures are images/s after `--warmup` untimed steps;
ratios are against the baseline measured in the same run (these machines are noisy).

    python benchmarks/bench_train_cifar.py --data ../shared/data/cifar10-jpeg-train.tar.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from resnets import create_model
from resnets.data.cifar import CifarBatches, load_cifar10, per_pixel_mean
from resnets.models import Normalize


class PerImageCifar(torch.utils.data.Dataset):
    """The reference pipeline: one image at a time, Python transforms (torchvision-style)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: np.ndarray) -> None:
        self.images, self.labels, self.mean = images, labels, mean

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i].astype(np.float32) / 255 - self.mean
        img = np.pad(img, ((0, 0), (4, 4), (4, 4)))
        dy, dx = random.randint(0, 8), random.randint(0, 8)
        img = img[:, dy:dy + 32, dx:dx + 32]
        if random.random() < 0.5:
            img = img[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)), int(self.labels[i])


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def step(model, opt, x, y, bf16: bool) -> None:
    with torch.autocast("cpu" if x.device.type == "cpu" else "cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench_baseline(name, images, labels, mean, batch, steps, warmup, device, workers):
    model = create_model(name).to(device)
    opt = sgd(model)
    loader = torch.utils.data.DataLoader(PerImageCifar(images.numpy(), labels.numpy(), mean.numpy()),
                                         batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        step(model, opt, x.to(device), y.to(device), bf16=False)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def bench_resnets(name, images, labels, mean, batch, steps, warmup, device, bf16, compile=False):
    model = create_model(name)
    model.input_norm = Normalize(mean)
    model = model.to(device, memory_format=torch.channels_last)
    opt = sgd(model)
    if compile:  # `resnets train --compile`; the one-off compilation happens in the untimed warm-up
        model = torch.compile(model)
    batches = CifarBatches(images, labels, batch, seed=0, device=device, pad_value=mean)
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        x, y = batches.batch_at(i)
        step(model, opt, x.contiguous(memory_format=torch.channels_last), y, bf16)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CIFAR-10 in any form resnets accepts; default: random uint8 images")
    p.add_argument("--models", default="cifar_resnet20,cifar_resnet56,cifar_resnet110")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    p.add_argument("--compile", action="store_true", help="also time bf16 with torch.compile")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="benchmarks/results/train_cifar.json")
    args = p.parse_args()
    device = torch.device(args.device)

    if args.data:
        data = load_cifar10(args.data, "train")
        images, labels, source = data.images, data.labels, data.source
    else:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (45000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (45000,), generator=g)
        source = "random uint8 images"
    mean = per_pixel_mean(images)

    rows = []
    for name in args.models.split(","):
        base = bench_baseline(name, images, labels, mean, args.batch_size, args.steps, args.warmup, device, args.workers)
        fp32 = bench_resnets(name, images, labels, mean, args.batch_size, args.steps, args.warmup, device, bf16=False)
        bf16 = bench_resnets(name, images, labels, mean, args.batch_size, args.steps, args.warmup, device, bf16=True)
        comp = bench_resnets(name, images, labels, mean, args.batch_size, args.steps, args.warmup, device, bf16=True,
                             compile=True) if args.compile else float("nan")
        rows.append({"model": name, "baseline_fp32_nchw": base, "resnets_fp32": fp32, "resnets_bf16": bf16,
                     "resnets_bf16_compiled": comp, "speedup_fp32": fp32 / base, "speedup_bf16": bf16 / base,
                     "speedup_bf16_compiled": comp / base})

    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, {args.steps} timed steps, data: {source}")
    header = (f"{'model':<18}{'baseline img/s':>16}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16+compile':>14}"
              f"{'fp32 x':>9}{'bf16 x':>9}{'compile x':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<18}{r['baseline_fp32_nchw']:>16.0f}{r['resnets_fp32']:>12.0f}{r['resnets_bf16']:>12.0f}"
              f"{r['resnets_bf16_compiled']:>14.0f}{r['speedup_fp32']:>9.2f}{r['speedup_bf16']:>9.2f}"
              f"{r['speedup_bf16_compiled']:>11.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "batch_size": args.batch_size, "steps": args.steps, "data": source, "rows": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
