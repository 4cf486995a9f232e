"""Benchmark the detection hot paths: roi_align / roi_pool (forward + backward), nms, and a
full detector train step and inference.

    .venv/bin/python benchmarks/bench_detection.py [--quick] [--device cpu|cuda] [--json out.json]

Prints a table and writes JSON (default benchmarks/results/detection.json). Shapes follow
Appendix A: conv4 of ResNet-50 (1024 channels, stride 16) for a 600x1000 image, 512 RoIs
pooled to 14x14.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from resnets.detection import DetectionConfig, build_detector
from resnets.detection.data import SyntheticShapes
from resnets.ops import nms, roi_align, roi_pool


def _time(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _rois(k: int, h: int, w: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([w * 16.0, h * 16.0])
    wh = torch.rand(k, 2, generator=gen) * 300 + 16
    return torch.cat([torch.zeros(k, 1), xy, xy + wh], dim=1).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes (CI smoke)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/results/detection.json")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    c, h, w, k = (256, 38, 63, 128) if args.quick else (1024, 38, 63, 512)
    rows = []

    feats = torch.randn(1, c, h, w, device=device, requires_grad=True)
    rois = _rois(k, h, w, device, gen)
    for name, op in [
        ("roi_align 14x14 (adaptive)", lambda: roi_align(feats, rois, 14, 1 / 16, 0, True)),
        ("roi_align 14x14 (ratio 2)", lambda: roi_align(feats, rois, 14, 1 / 16, 2, True)),
        ("roi_pool 14x14", lambda: roi_pool(feats, rois, 14, 1 / 16)),
    ]:
        fwd = _time(lambda: op(), args.repeat, device)
        fb = _time(lambda: op().sum().backward(), args.repeat, device)
        rows.append({"op": name, "shape": f"C={c} {h}x{w} K={k}", "forward_ms": fwd * 1e3, "fwd+bwd_ms": fb * 1e3})

    for n in ([1000, 3000] if args.quick else [1000, 6000, 12000]):
        xy = torch.rand(n, 2, generator=gen) * 1000
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 200 + 8], 1).to(device)
        scores = torch.rand(n, generator=gen).to(device)
        t = _time(lambda: nms(boxes, scores, 0.7), args.repeat, device)
        rows.append({"op": f"nms 0.7", "shape": f"N={n}", "forward_ms": t * 1e3, "fwd+bwd_ms": None})

    arch, size = ("resnet18", 320) if args.quick else ("resnet50", 600)
    cfg = DetectionConfig(arch=arch, num_classes=3, min_size=size, max_size=int(size * 5 / 3),
                          anchor_sizes=(32.0, 64.0, 128.0, 256.0), batch_size=1)
    torch.manual_seed(0)
    model = build_detector(cfg).to(device)
    data = SyntheticShapes(2, image_size=(size, int(size * 4 / 3)), max_object=size // 2, seed=0)
    img, tgt = data[0]
    img = img.to(device)
    tgt = {"boxes": tgt["boxes"].to(device), "labels": tgt["labels"].to(device)}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model.train()
        loss = sum(model([img], [tgt]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        model([img])

    rows.append({"op": f"train step ({arch}-C4, 1 image)", "shape": f"{size}px, 512 RoIs",
                 "forward_ms": None, "fwd+bwd_ms": _time(step, max(1, args.repeat - 1), device) * 1e3})
    rows.append({"op": f"inference ({arch}-C4, 1 image)", "shape": f"{size}px, 300 proposals",
                 "forward_ms": _time(infer, max(1, args.repeat - 1), device) * 1e3, "fwd+bwd_ms": None})

    print(f"{'op':40s} {'shape':24s} {'fwd ms':>10s} {'fwd+bwd ms':>12s}")
    for r in rows:
        f = f"{r['forward_ms']:.1f}" if r["forward_ms"] is not None else "-"
        b = f"{r['fwd+bwd_ms']:.1f}" if r["fwd+bwd_ms"] is not None else "-"
        print(f"{r['op']:40s} {r['shape']:24s} {f:>10s} {b:>12s}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.platform(), "quick": args.quick}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
