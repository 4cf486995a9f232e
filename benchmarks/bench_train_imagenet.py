"""ResNet training throughput (images/s) on synthetic ImageNet-sized batches.

One training step is what the engine does: forward under (optional) bf16 autocast,
cross-entropy, backward, SGD with momentum and weight decay. Data is synthetic (a fixed
uint8 batch already on the device) so only the network is timed; the input pipeline has
its own benchmark (bench_imagenet_data.py). Variants: fp32 vs bf16 autocast, NCHW vs
channels_last, on the CPU and - when CUDA is available - on the GPU in the same run.

    python benchmarks/bench_train_imagenet.py --model resnet50 --batch-size 16 --iters 3 --json out.json
    python benchmarks/bench_train_imagenet.py --gpu-batch-size 128 --gpu-iters 20   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from resnets.models import Normalize, create_model
from resnets.runtime import fast_bf16_available


def time_training(model_name: str, device: torch.device, batch_size: int, size: int, precision: str,
                  channels_last: bool, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name, input_norm=Normalize.channel())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 1000, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):  # oneDNN/cuDNN algorithm selection, allocator warm-up
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    seconds = time.perf_counter() - t0
    return {"device": device.type, "model": model_name, "batch_size": batch_size, "size": size,
            "precision": precision, "memory_format": "channels_last" if channels_last else "NCHW",
            "iters": iters, "s_per_iter": seconds / iters, "images_per_s": batch_size * iters / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="CPU batch")
    p.add_argument("--iters", type=int, default=3, help="timed CPU iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gpu-batch-size", type=int, default=128)
    p.add_argument("--gpu-iters", type=int, default=20)
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU rows even when CUDA is available")
    p.add_argument("--json", metavar="PATH", help="write the results here")
    args = p.parse_args()

    cpu = torch.device("cpu")
    variants = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    rows = [time_training(args.model, cpu, args.batch_size, args.size, prec, cl, args.iters, args.warmup)
            for prec, cl in variants]
    if torch.cuda.is_available() and not args.no_gpu:
        gpu = torch.device("cuda")
        for prec, cl in (("fp32", False), ("bf16", True)):  # eager fp32 NCHW vs bf16 channels_last
            rows.append(time_training(args.model, gpu, args.gpu_batch_size, args.size, prec, cl,
                                      args.gpu_iters, max(args.warmup, 3)))

    print(f"{'device':<7}{'model':<10}{'batch':>6}{'precision':>10}{'layout':>15}{'s/iter':>9}{'images/s':>10}")
    for r in rows:
        print(f"{r['device']:<7}{r['model']:<10}{r['batch_size']:>6}{r['precision']:>10}{r['memory_format']:>15}"
              f"{r['s_per_iter']:>9.3f}{r['images_per_s']:>10.1f}")
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_threads": torch.get_num_threads(), "cpu_fast_bf16": fast_bf16_available(cpu),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_imagenet", "env": env, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
