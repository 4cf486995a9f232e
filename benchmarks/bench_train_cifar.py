"""CIFAR-10 training throughput, end to end, with a roofline column.

Measured in one process, on the same images:
  baseline   the common reference way: a per-image Dataset + DataLoader with Python
             transforms (pad, random crop, flip, normalise per image), eager fp32 NCHW;
  fp32/bf16  the engine's own step (`resnets.train.engine.train_step`) fed by its own
             batch pipeline (`CifarBatches`: the uint8 data set in memory, whole-batch
             augmentation, normalisation inside the model, channels_last), in fp32 and in
             bf16 autocast;
  peaks      a 2048x2048 matmul in bf16 and in fp32, the practical peak of this machine.

The roofline column: one training image costs 3x the forward multiply-adds (forward,
backward-data, backward-weights; `count_flops` counts the forward), so achieved GFLOP/s
= images/s x 3 x 2 x forward MACs. Its ratio to the matmul peak shows how far the step is
from the hardware.

These machines are noisy (other tenants, frequency changes), so variants are timed in
interleaved rounds and the median round is reported; ratios compare numbers taken in the
same run. Prints a table and writes JSON.

    python benchmarks/bench_train_cifar.py --data ../shared/data/cifar10-jpeg-train.tar.gz
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from resnets import count_flops, create_model
from resnets.data.cifar import CifarBatches, load_cifar10, per_pixel_mean
from resnets.models import Normalize
from resnets.train.engine import train_step
from resnets.runtime import Runtime, fast_bf16_available


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


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def baseline_runner(name, images, labels, mean, batch, device, workers):
    """A callable running n steps of the per-image DataLoader loop (fp32, NCHW)."""
    model = create_model(name).to(device)
    opt = sgd(model)
    fp32 = Runtime(device, "fp32")
    loader = torch.utils.data.DataLoader(PerImageCifar(images.numpy(), labels.numpy(), mean.numpy()),
                                         batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    state = {"it": iter(loader)}

    def run(n: int) -> None:
        for _ in range(n):
            try:
                x, y = next(state["it"])
            except StopIteration:
                state["it"] = iter(loader)
                x, y = next(state["it"])
            train_step(model, opt, x.to(device), y.to(device), fp32)

    return run


def engine_runner(name, images, labels, mean, batch, device, precision, compile_mode=None, fused_bn_relu=False):
    """A callable running n steps exactly as `resnets train` does (data pipeline + train_step)."""
    model = create_model(name, input_norm=Normalize(mean))
    model = model.to(device, memory_format=torch.channels_last)
    opt = sgd(model)
    if compile_mode is not None:  # `resnets train --compile`; compiled during the untimed warm-up
        model = torch.compile(model, mode=None if compile_mode == "default" else compile_mode)
    rt = Runtime(device, precision, fused_bn_relu=fused_bn_relu)
    batches = CifarBatches(images, labels, batch, seed=0, device=device, pad_value=mean)
    state = {"step": 0}

    def run(n: int) -> None:
        for _ in range(n):
            x, y = batches.batch_at(state["step"])
            train_step(model, opt, x.contiguous(memory_format=torch.channels_last), y, rt)
            state["step"] += 1

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rounds(runners: dict, steps: int, rounds: int, warmup: int, batch: int, device) -> dict[str, list[float]]:
    """images/s of each runner per round; rounds interleave the runners so drift hits all alike."""
    for run in runners.values():
        run(warmup)
    result: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            _sync(device)
            t0 = time.perf_counter()
            run(steps)
            _sync(device)
            result[key].append(batch * steps / (time.perf_counter() - t0))
    return result


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n matmul: the practical compute peak for this dtype."""
    a = torch.randn(n, n, device=device).to(dtype)
    best = 0.0
    for _ in range(3):
        a @ a
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        _sync(device)
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="CIFAR-10 in any form resnets accepts; default: random uint8 images")
    p.add_argument("--models", default="cifar_resnet20,cifar_resnet56,cifar_resnet110")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    p.add_argument("--no-baseline", action="store_true", help="skip the per-image DataLoader baseline")
    p.add_argument("--compile", default="", metavar="MODE[,MODE]",
                   help="also time bf16 with torch.compile in these modes (default, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--fused-bn-relu", action="store_true",
                   help="also time bf16 with the fused BN+ReLU kernel (resnets.ops.fused_bn_relu)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/train_cifar.json", help="where the JSON goes")
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
    peak = {"bf16": matmul_peak(torch.bfloat16, device), "fp32": matmul_peak(torch.float32, device)}
    bf16_ok = fast_bf16_available(device)

    rows = []
    for name in args.models.split(","):
        runners = {}
        if not args.no_baseline:
            runners["baseline"] = baseline_runner(name, images, labels, mean, args.batch_size, device, args.workers)
        runners["fp32"] = engine_runner(name, images, labels, mean, args.batch_size, device, "fp32")
        if bf16_ok:
            runners["bf16"] = engine_runner(name, images, labels, mean, args.batch_size, device, "bf16")
        if args.fused_bn_relu and bf16_ok:
            runners["bf16+fused_bn_relu"] = engine_runner(name, images, labels, mean, args.batch_size, device, "bf16",
                                                          fused_bn_relu=True)
        for mode in filter(None, args.compile.split(",")):
            runners[f"bf16+compile:{mode}"] = engine_runner(name, images, labels, mean, args.batch_size, device,
                                                            "bf16" if bf16_ok else "fp32", compile_mode=mode)
        rounds = timed_rounds(runners, args.steps, args.rounds, args.warmup, args.batch_size, device)
        macs = count_flops(create_model(name), 32)  # forward multiply-adds per image
        row = {"model": name, "forward_macs": macs, "rounds": rounds}
        for key, values in rounds.items():
            row[key] = statistics.median(values)
        for key in ("fp32", "bf16"):
            if key in row:
                gflops = row[key] * 3 * 2 * macs / 1e9
                row[f"{key}_gflops"] = gflops
                row[f"{key}_of_peak"] = gflops / peak[key]
                if "baseline" in row:
                    row[f"{key}_x_baseline"] = row[key] / row["baseline"]
        rows.append(row)

    print(f"device {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, median of {args.rounds} interleaved rounds of {args.steps} steps, data: {source}")
    print(f"matmul peak: bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s")
    header = (f"{'model':<17}{'baseline':>9}{'fp32':>7}{'bf16':>7}{'bf16 x base':>12}{'bf16 x fp32':>12}"
              f"{'bf16 GFLOP/s':>13}{'of bf16 peak':>13}{'fp32 of peak':>13}")
    print(header + "\n" + "-" * len(header))
    nan = float("nan")
    for r in rows:
        print(f"{r['model']:<17}{r.get('baseline', nan):>9.0f}{r['fp32']:>7.0f}{r.get('bf16', nan):>7.0f}"
              f"{r.get('bf16_x_baseline', nan):>12.2f}{r.get('bf16', nan) / r['fp32']:>12.2f}"
              f"{r.get('bf16_gflops', nan):>13.0f}{r.get('bf16_of_peak', nan):>13.2f}{r['fp32_of_peak']:>13.2f}")
    for r in rows:
        for key in r["rounds"]:
            if key.startswith("bf16+") and "bf16" in r:
                print(f"{r['model']:<17}{key:<44}{r[key]:>7.0f} images/s  {r[key] / r['bf16']:.2f}x eager bf16")
    print("(images/s; GFLOP/s = images/s x 3 x 2 x forward MACs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "train_cifar", "device": str(device), "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                               "steps": args.steps, "rounds": args.rounds, "data": source,
                               "matmul_peak_gflops": peak, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
