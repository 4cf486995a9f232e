"""ImageNet inference throughput of ResNet-50 under the paper's test protocols (Sec. 3.4).

For each protocol (`center`: one 224 crop; `10crop`: Table 3's ten views; `multiscale`: the
fully convolutional form over shorter sides {224, 256, 384, 480, 640} with flips, Table 4) and
each precision (fp32, bf16 autocast), times resnets' evaluation loop
(`resnets.eval.evaluate.evaluate` with `protocol_predict`, channels_last) against a plain
PyTorch loop written here (NCHW, `model(x).softmax(1)`, the views averaged), in the same run,
on the same decoded images. Images are decoded and prepared once, before timing: the table is
the network and the protocol, not JPEG decoding (see bench_imagenet_data.py for that).

    python benchmarks/bench_imagenet_eval.py --data ../shared/data/imagenet-sample \
        --checkpoint keras_resnet50.safetensors --images 16

--data: a folder of images (any layout; e.g. the 500-photo sample). --checkpoint: any weights
file `resnets eval` reads (default: a randomly initialised ResNet-50, the same speed). Prints
a table and writes JSON (default benchmarks/results/imagenet_eval.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from resnets.eval.evaluate import evaluate
from resnets.eval.predict import find_images
from resnets.eval.tta import MULTISCALE_SCALES, protocol_predict, protocol_transform
from resnets.models import create_model, model_from_file
from resnets.runtime import Runtime

PROTOCOLS = ("center", "10crop", "multiscale")


def prepared(paths: list[str], protocol: str, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The images in the protocol's form, batched as `resnets eval` batches them (multiscale: one by one)."""
    transform = protocol_transform(protocol)
    views = [transform(Image.open(p).convert("RGB")) for p in paths]
    size = 1 if protocol == "multiscale" else batch_size
    return [(torch.stack(views[i:i + size]), torch.zeros(len(views[i:i + size]), dtype=torch.int64))
            for i in range(0, len(views), size)]


@torch.no_grad()
def plain_loop(model: torch.nn.Module, batches, protocol: str, bf16: bool) -> None:
    """What one writes without resnets: NCHW floats, softmax of each view, views averaged."""
    for x, _ in batches:
        x = x.float() / 255
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if protocol == "center":
                probs = model(x).float().softmax(1)
            elif protocol == "10crop":
                probs = model(x.flatten(0, 1)).float().softmax(1).view(x.shape[0], 10, -1).mean(1)
            else:
                scores = []
                for s in MULTISCALE_SCALES:
                    h, w = x.shape[-2:]
                    size = (s, round(w * s / h)) if h <= w else (round(h * s / w), s)
                    xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                    scores.append(model(torch.cat([xs, xs.flip(-1)])).float().softmax(1))
                probs = torch.cat(scores).mean(0, keepdim=True)
        probs.topk(5, dim=1)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of images (e.g. ../shared/data/imagenet-sample)")
    parser.add_argument("--checkpoint", help="ResNet-50 weights (default: random initialisation)")
    parser.add_argument("--images", type=int, default=16, help="images per protocol (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="center/10crop batch (default: %(default)s)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "imagenet_eval.json"))
    args = parser.parse_args()

    paths, _ = find_images([args.data])
    paths = paths[:args.images]
    model = (model_from_file(args.checkpoint)[0] if args.checkpoint else create_model("resnet50")).eval()
    ours = copy.deepcopy(model).to(memory_format=torch.channels_last)  # as `resnets eval` holds it
    rows = []
    for protocol in args.protocols:
        batches = prepared(paths, protocol, args.batch_size)
        for precision in args.precisions:
            runtime = Runtime(torch.device("cpu"), precision)
            bf16 = precision == "bf16"
            plain_loop(model, batches[:1], protocol, bf16)  # warm-up: oneDNN picks its kernels per shape
            evaluate(ours, batches[:1], runtime, protocol_predict(protocol))
            plain_s = timed(lambda: plain_loop(model, batches, protocol, bf16))
            ours_s = timed(lambda: evaluate(ours, batches, runtime, protocol_predict(protocol)))
            row = {"protocol": protocol, "precision": precision, "images": len(paths),
                   "plain_images_per_s": len(paths) / plain_s, "resnets_images_per_s": len(paths) / ours_s,
                   "resnets_s_per_image": ours_s / len(paths), "ratio_vs_plain": plain_s / ours_s}
            rows.append(row)
            print(f"{protocol:<11} {precision:<5} plain {row['plain_images_per_s']:7.2f} img/s   resnets "
                  f"{row['resnets_images_per_s']:7.2f} img/s ({row['resnets_s_per_image']:.3f} s/img)   "
                  f"{row['ratio_vs_plain']:.2f}x", flush=True)
    print("\n| protocol | precision | plain torch loop (images/s) | resnets eval loop (images/s) | s/image | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protocol']} | {r['precision']} | {r['plain_images_per_s']:.2f} | "
              f"{r['resnets_images_per_s']:.2f} | {r['resnets_s_per_image']:.3f} | {r['ratio_vs_plain']:.2f}x |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average": os.getloadavg(),
            "checkpoint": os.path.basename(args.checkpoint) if args.checkpoint else None}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
