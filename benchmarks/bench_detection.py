"""Benchmark the detector: RoI Align / RoI Pool (forward + backward) and NMS, a profile of
the train step (trunk, RPN, NMS, sampling, RoI Align, res5 head, losses), and the train step and
inference per image at 600 px (Appendix A: 512 RoIs; with RoI Align and with the paper's RoI
pooling, ``roi_op="pool"``) and at the `finetune` preset's settings.

    python benchmarks/bench_detection.py [--quick] [--parts ops,steps,profile] [--baseline REV] [--json FILE]

``--parts ops`` runs only the operator rows (RoI Align, RoI Pool, NMS), ``steps`` the train
step and inference, ``profile`` the train step taken apart (default: all three).

``--baseline REV`` runs the same measurements on the code of git revision REV (extracted with
``git archive`` into a temporary folder, in a subprocess) right before this code's, and adds
the ratio baseline / now to every row: before and after from the same run. Prints tables and
writes JSON (default benchmarks/results/detection.json). Shapes follow Appendix A: conv4 of
ResNet-50 (1024 channels, stride 16) of a 600x1000 image, 512 RoIs pooled to 14x14. The
machine may be shared: compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnets.detection import DetectionConfig, build_detector
from resnets.detection.data import SyntheticShapes
from resnets.detection.model import resize_and_batch
from resnets.ops import nms, roi_align, roi_pool


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _rois(k: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([w * 16.0, h * 16.0])
    wh = torch.rand(k, 2, generator=gen) * 300 + 16
    return torch.cat([torch.zeros(k, 1), xy, xy + wh], dim=1)


def op_rows(quick: bool, repeat: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    c, h, w, k = (256, 38, 63, 128) if quick else (1024, 38, 63, 512)
    feats = torch.randn(1, c, h, w, requires_grad=True)
    rois = _rois(k, h, w, gen)
    rows = []
    for name, op in [
        ("roi_align 14x14 (adaptive)", lambda: roi_align(feats, rois, 14, 1 / 16, 0, True)),
        ("roi_align 14x14 (ratio 2)", lambda: roi_align(feats, rois, 14, 1 / 16, 2, True)),
        ("roi_pool 14x14", lambda: roi_pool(feats, rois, 14, 1 / 16)),
    ]:
        rows.append({"what": f"{name} forward", "shape": f"C={c} {h}x{w} K={k}", "ms": _time(op, repeat) * 1e3})
        # Backward with a dense gradient laid out like the output, as res5's first convolution
        # returns it in a train step (`.sum().backward()` would hand the op an expanded 0-stride
        # gradient that a step never sees, and time materialising it: 411 MB here).
        grad = torch.randn_like(op())
        rows.append({"what": f"{name} fwd+bwd", "shape": f"C={c} {h}x{w} K={k}",
                     "ms": _time(lambda: op().backward(grad), repeat) * 1e3})
        del grad
    for n in ([1000, 3000] if quick else [1000, 6000, 12000]):
        xy = torch.rand(n, 2, generator=gen) * 1000
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 200 + 8], 1)
        scores = torch.rand(n, generator=gen)
        rows.append({"what": "nms 0.7", "shape": f"N={n}", "ms": _time(lambda: nms(boxes, scores, 0.7), repeat) * 1e3})
    return rows


def _detector(size: int, rois: int, anchors: tuple[float, ...], arch: str,
              roi_op: str = "align") -> tuple[torch.nn.Module, torch.Tensor, dict]:
    cfg = DetectionConfig(arch=arch, num_classes=3, min_size=size, max_size=int(size * 5 / 3), anchor_sizes=anchors,
                          batch_size=1, roi_batch_size_per_image=rois, roi_op=roi_op)
    torch.manual_seed(0)
    model = build_detector(cfg)
    data = SyntheticShapes(1, image_size=(size, int(size * 4 / 3)), max_object=size // 2, seed=0)
    img, tgt = data[0]
    return model, img, {"boxes": tgt["boxes"], "labels": tgt["labels"]}


def step_rows(quick: bool, repeat: int) -> list[dict]:
    arch = "resnet18" if quick else "resnet50"
    settings = [("Appendix A", 320 if quick else 600, 512, (128.0, 256.0, 512.0), "align"),
                ("Appendix A, RoI pooling", 320 if quick else 600, 512, (128.0, 256.0, 512.0), "pool"),
                ("finetune preset", 224 if quick else 416, 64, (64.0, 128.0, 256.0, 512.0), "align")]
    rows = []
    for name, size, rois, anchors, roi_op in settings:
        label = f"{name}: {size} px, {rois} RoIs"
        model, img, tgt = _detector(size, rois, anchors, arch, roi_op)
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

        rows.append({"what": f"train step ({arch}-C4, 1 image)", "shape": label, "ms": _time(step, repeat) * 1e3})
        rows.append({"what": f"inference ({arch}-C4, 1 image)", "shape": label, "ms": _time(infer, repeat) * 1e3})
    return rows


def profile_rows(quick: bool, repeat: int) -> list[dict]:
    """The train step at 600 px / 512 RoIs taken apart: each piece timed on its own, forward
    and backward, with the inputs the full step gives it."""
    arch, size = ("resnet18", 320) if quick else ("resnet50", 600)
    model, img, tgt = _detector(size, 512, (128.0, 256.0, 512.0), arch)
    model.train()
    cfg, head, rpn = model.cfg, model.head, model.rpn
    batch, sizes, scales = resize_and_batch([img], cfg.min_size, cfg.max_size, model.normalize)
    scaled = [{"boxes": tgt["boxes"] * scales[0].repeat(2), "labels": tgt["labels"]}]
    rows = []

    def add(name: str, fn) -> None:
        rows.append({"what": name, "shape": f"{arch}-C4 {size}px 512 RoIs", "ms": _time(fn, repeat) * 1e3})

    with model.precision(batch.device):
        features = model.features(batch)
        feats = features.detach().requires_grad_()
        proposals, _, _ = rpn(feats, sizes, scaled)
        rois, labels, reg = head.sample(proposals, scaled)
        pooled = head._pool(feats, rois).detach().requires_grad_()
        box_feats = head._res5(pooled)
        logits, deltas = head.predict(box_feats)

        def trunk():
            model.features(batch).float().sum().backward()

        def rpn_head():
            t = torch.relu(rpn.conv(feats))
            (rpn.cls_logits(t).float().sum() + rpn.bbox_pred(t).float().sum()).backward()

        def proposals_nms():
            with torch.no_grad():
                rpn(feats, sizes)

        add("trunk conv1-conv4 (fwd+bwd)", trunk)
        add("RPN conv + sibling 1x1 (fwd+bwd)", rpn_head)
        add("RPN proposals: decode, top-12k, NMS", proposals_nms)
        add("  of which NMS of 12k boxes", lambda: nms(torch.cat([torch.rand(12000, 2) * 600,
                                                                  torch.rand(12000, 2) * 300 + 600], 1),
                                                       torch.rand(12000), 0.7, max_output=2000))
        add("anchor + RoI matching and sampling", lambda: (rpn._loss(*_rpn_out(rpn, feats), scaled), head.sample(proposals, scaled)))
        add("RoI Align 14x14 (fwd+bwd)", lambda: head._pool(feats, rois).float().sum().backward())
        add("res5 head + classifier (fwd+bwd)", lambda: sum(t.sum() for t in head.predict(head._res5(pooled))).backward())
    add("losses (fwd+bwd)", lambda: sum(head.loss(logits.detach().requires_grad_(), deltas.detach().requires_grad_(),
                                                  labels, reg).values()).backward())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = sum(model([img], [tgt]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    add("whole train step", step)
    return rows


def _rpn_out(rpn, feats):
    b, _, fh, fw = feats.shape
    t = torch.relu(rpn.conv(feats))
    c, a = rpn.num_outputs, rpn.num_anchors
    logits = rpn.cls_logits(t).float().view(b, a, c, fh, fw).permute(0, 3, 4, 1, 2).reshape(b, -1, c)
    deltas = rpn.bbox_pred(t).float().view(b, a, c, 4, fh, fw).permute(0, 4, 5, 1, 2, 3).reshape(b, -1, c, 4)
    from resnets.detection.rpn import grid_anchors

    return logits.detach(), deltas.detach(), grid_anchors(rpn.cell_anchors, fh, fw, rpn.stride)


def measure(quick: bool, repeat: int, parts: list[str]) -> list[dict]:
    rows = []
    if "ops" in parts:
        rows += op_rows(quick, repeat)
    if "steps" in parts:
        rows += step_rows(quick, repeat)
    if "profile" in parts:
        rows += profile_rows(quick, repeat)
    return rows


def baseline(rev: str, args: argparse.Namespace) -> list[dict]:
    """The same measurements on the code of git revision ``rev`` (the parts asked for among ops
    and steps; the profile needs this code's pieces)."""
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "resnets"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / "rows.json"
        # Its own build folder for the C++ kernels: they have the same names in both versions, so
        # a shared one would rebuild them at every switch and could hand one version the other's.
        env = {**os.environ, "PYTHONPATH": tmp, "TORCH_EXTENSIONS_DIR": str(Path(tmp) / "torch_extensions")}
        parts = ",".join(p for p in args.parts.split(",") if p in ("ops", "steps"))
        cmd = [sys.executable, __file__, "--parts", parts, "--repeat", str(args.repeat), "--rows-only", str(out)]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True, env=env, cwd=tmp)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes and ResNet-18 (CI smoke)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per row after one warm-up (best is kept)")
    ap.add_argument("--parts", default="ops,steps,profile", help="comma-separated: ops, steps, profile")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also measure git revision REV, for ratios")
    ap.add_argument("--json", default="benchmarks/results/detection.json")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--rows-only", default=None, help=argparse.SUPPRESS)  # the baseline subprocess's output
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    if args.rows_only:
        Path(args.rows_only).write_text(json.dumps(measure(args.quick, args.repeat, parts)))
        return
    before = baseline(args.baseline, args) if args.baseline else []
    rows = measure(args.quick, args.repeat, parts)
    old = {(r["what"], r["shape"]): r["ms"] for r in before}
    print(f"{'what':44s} {'shape':34s} {'ms':>10s}" + (f" {args.baseline[:10] + ' ms':>14s} {'speed-up':>9s}" if before else ""))
    for r in rows:
        line = f"{r['what']:44s} {r['shape']:34s} {r['ms']:10.1f}"
        if (r["what"], r["shape"]) in old:
            r["baseline_ms"] = old[(r["what"], r["shape"])]
            r["speedup"] = r["baseline_ms"] / r["ms"]
            line += f" {r['baseline_ms']:14.1f} {r['speedup']:8.2f}x"
        print(line)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "quick": args.quick, "baseline": args.baseline,
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
