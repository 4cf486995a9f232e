"""BatchNorm (training) + ReLU: ATen against the fused CPU kernel (resnets/ops/fused_bn_relu.py).

Shapes are ResNet-20's three stages at batch 128 (CIFAR, Sec. 4.2): 16x32x32, 32x16x16,
64x8x8 (`--shapes imagenet`: ResNet-50's at batch 32), with bf16 channels_last activations and fp32 BN parameters, as under the engine's CPU
bf16 autocast. Variants:
  aten          relu_(bn(x)), the modules the model calls today
  fused         the fused kernel
  aten+add      relu_(bn(x) + r), a block's last BN with its residual
  fused+add     the fused kernel with the residual

Each is timed forward only and forward + backward. Variants run in interleaved rounds and the
median round is reported, with the ratio against ATen from the same run. Prints a table and
writes JSON.

    python benchmarks/bench_bn_relu.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from resnets.ops.fused_bn_relu import batch_norm_relu, fused_bn_relu_enabled, load_extension

SHAPES = {
    "cifar": [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)],  # ResNet-20's stages, batch 128
    # ResNet-50's BN widths at batch 32 (Table 1): conv2_x .. conv5_x, reduce and expand widths.
    "imagenet": [(32, 64, 56, 56), (32, 256, 56, 56), (32, 128, 28, 28), (32, 512, 28, 28), (32, 1024, 14, 14),
                 (32, 2048, 7, 7)],
}


def make_case(shape, residual: bool, fused: bool, backward: bool):
    """A callable running one forward (and backward) of one variant on fixed random data."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    cl = torch.channels_last

    def act():
        return torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=cl)

    x = act().requires_grad_(backward)
    r = act().requires_grad_(backward) if residual else None
    grad = act()
    bn = nn.BatchNorm2d(c).train()
    relu = nn.ReLU(inplace=True)

    # The gradients are returned, not accumulated into .grad: in the network they flow on into
    # the convolution's backward, and an accumulation pass would add the same cost to both.
    inputs = [x, bn.weight, bn.bias] + ([r] if residual else [])

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16), fused_bn_relu_enabled(fused):
            y = batch_norm_relu(bn, relu, x, r)
        if backward:
            torch.autograd.grad(y, inputs, grad)

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", choices=sorted(SHAPES), default="cifar")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the median is reported")
    p.add_argument("--reps", type=int, default=20, help="calls per variant per round")
    p.add_argument("--out", default="benchmarks/results/bn_relu.json", help="where the JSON goes")
    args = p.parse_args()

    t0 = time.perf_counter()
    if load_extension() is None:
        raise SystemExit("the fused kernel could not be built; see the log")
    build_s = time.perf_counter() - t0

    shapes = SHAPES[args.shapes]
    cases = {}
    for shape in shapes:
        for residual in (False, True):
            for fused in (False, True):
                for backward in (False, True):
                    key = (shape, residual, fused, backward)
                    cases[key] = make_case(shape, residual, fused, backward)
    for run in cases.values():  # warm-up
        for _ in range(3):
            run()
    times: dict = {k: [] for k in cases}
    for _ in range(args.rounds):
        for key, run in cases.items():
            t = time.perf_counter()
            for _ in range(args.reps):
                run()
            times[key].append((time.perf_counter() - t) / args.reps * 1e3)

    rows = []
    for shape in shapes:
        for residual in (False, True):
            for backward in (False, True):
                aten = statistics.median(times[(shape, residual, False, backward)])
                fused = statistics.median(times[(shape, residual, True, backward)])
                rows.append({"shape": list(shape), "residual": residual, "pass": "fwd+bwd" if backward else "fwd",
                             "aten_ms": aten, "fused_ms": fused, "speedup": aten / fused,
                             "aten_rounds_ms": times[(shape, residual, False, backward)],
                             "fused_rounds_ms": times[(shape, residual, True, backward)]})

    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, median of {args.rounds} interleaved rounds "
          f"x {args.reps} calls; kernel load/build {build_s:.1f} s")
    header = f"{'shape':<19}{'variant':<12}{'pass':<9}{'ATen ms':>9}{'fused ms':>10}{'speedup':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        variant = "bn+add+relu" if r["residual"] else "bn+relu"
        print(f"{shape:<19}{variant:<12}{r['pass']:<9}{r['aten_ms']:>9.3f}{r['fused_ms']:>10.3f}{r['speedup']:>8.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "bn_relu", "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "capability": torch.backends.cpu.get_cpu_capability(), "shapes": args.shapes, "rounds": args.rounds,
                               "reps": args.reps, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
