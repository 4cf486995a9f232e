"""Check the GPU path end to end: the commands a user runs, on CUDA, in a few minutes.

    python benchmarks/gpu_check.py                      # GPU 0 (cuda), fp32 and bf16
    python benchmarks/gpu_check.py --device cuda:1      # another GPU
    python benchmarks/gpu_check.py --device cpu         # dry run of the same steps on the CPU

No GPU is lent to the project's machines, so the CUDA code is checked there by reading and by
tests that script torch.cuda's answers (tests/train/test_gpu_path.py); this script is how it is
checked on real hardware. It runs, through `resnets.cli.main` as the `resnets` command does:

- for each precision (fp32, bf16): `train` (a small CIFAR ResNet on a generated class-folder
  tree, or --data), `train --resume` to twice the iterations, `eval` of the weights;
- `export` to ONNX (checked in onnxruntime against PyTorch), once;
- `detect train` (Faster R-CNN, resnet18-C4, generated shapes), once;
- with two or more GPUs: `train` under `torchrun --nproc_per_node=2` (DDP, NCCL).

Each step checks what it can (the run's device and precision in the summary, the resumed
iteration, the number of images evaluated) and the script prints a table of what ran, how long
it took and what it found, and writes it as JSON (default benchmarks/results/gpu_check.json).
Exit status 1 if any step failed. Timings include start-up (data decoding, cuDNN autotuning),
so they show that the GPU is used, not its peak speed: see bench_train_cifar.py for that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from resnets.cli import main as resnets_main
from resnets.runtime import resolve_device

DETECT_SETTINGS = [  # resnet18-C4 at a 64-pixel shorter side: seconds per iteration on a CPU
    "arch=resnet18", "min_size=64", "max_size=96", "anchor_sizes=[16,32,64]", "pooled_size=4",
    "rpn_pre_nms_top_n_train=200", "rpn_post_nms_top_n_train=40", "rpn_batch_size_per_image=32",
    "roi_batch_size_per_image=16", "batch_size=1", "log_every=1", "checkpoint_every=2", "lr=0.002",
    "num_classes=3", "class_names=[rectangle,ellipse,triangle]",
]
STEPS = ("train", "resume", "eval", "export", "detect", "ddp")


def write_cifar_tree(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """A CIFAR-10-shaped class-folder tree (ROOT/train/<class>/*.png): a colour per class plus noise."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(10, 3))
    for c in range(10):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(colours[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def run_command(argv: list[str]) -> dict[str, Any]:
    """`resnets ARGV --json` in this process; its JSON result (a failure raises, with the error line)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = resnets_main([*argv, "--json"])
    if code != 0:
        lines = err.getvalue().strip().splitlines() or ["(no message)"]
        raise RuntimeError(f"exit {code}: {lines[-1]}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(what)


class Checker:
    """Runs the steps in order, recording a row for each; a step whose input failed is skipped."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.failed: set[str] = set()

    def step(self, name: str, precision: str, needs: list[str], fn: Callable[[], str]) -> None:
        row: dict[str, Any] = {"step": name, "precision": precision}
        missing = [n for n in needs if n in self.failed]
        if missing:
            row.update(status="skipped", seconds=None, detail=f"needs {', '.join(missing)}")
            self.failed.add(f"{name}/{precision}")
        else:
            start = time.perf_counter()
            try:
                detail, status = fn(), "ok"
            except Exception as e:  # a check script reports every failure and goes on
                detail, status = f"{type(e).__name__}: {e}".splitlines()[0][:160], "FAILED"
                self.failed.add(f"{name}/{precision}")
            row.update(status=status, seconds=round(time.perf_counter() - start, 2), detail=detail)
        self.rows.append(row)
        print(f"  {name:<7} {precision:<5} {row['status']:<8} {row['detail']}", flush=True)

    def skip(self, name: str, precision: str, why: str) -> None:
        self.rows.append({"step": name, "precision": precision, "status": "skipped", "seconds": None, "detail": why})


def images_per_s(run_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if r.get("event") == "train" and "images_per_s" in r]
    return rates[-1] if rates else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default: cuda)")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated (default: fp32,bf16)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--iters", type=int, default=40,
                    help="training iterations before the resume, 4 or more (default: 40)")
    ap.add_argument("--data", default=None, help="CIFAR-10 in any form `resnets train` takes "
                                                  "(default: a generated 200-image tree)")
    ap.add_argument("--work-dir", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default="benchmarks/results/gpu_check.json", help="the JSON written")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)  # "cuda" without a GPU: a one-line error
    if device.type == "cuda":
        device_name = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        device_name = f"cpu (dry run: {platform.processor() or platform.machine()})"
    if args.iters < 4:
        ap.error("--iters: expected 4 or more (the lr drops at --iters/2 and 3*--iters/4)")
    precisions = [p for p in args.precisions.split(",") if p]
    steps = set(args.steps.split(","))
    if unknown := steps - set(STEPS):
        ap.error(f"--steps: unknown {', '.join(sorted(unknown))}; expected some of {', '.join(STEPS)}")
    print(f"gpu_check: {device_name}, torch {torch.__version__}, steps {', '.join(s for s in STEPS if s in steps)}",
          flush=True)

    with contextlib.ExitStack() as stack:
        work = Path(args.work_dir) if args.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data = args.data or str(write_cifar_tree(work / "cifar"))
        common = ["--data", data, "--device", str(device)]
        train_args = ["--model", args.model, *common, "--val-size", "50", "--batch-size", "32",
                      # lr drops inside the first run, so the resumed one changes only --iters
                      "--milestones", f"{args.iters // 2},{args.iters * 3 // 4}", "--eval-every", str(args.iters),
                      "--no-tensorboard",
                      # (CPU dry run: the fused CPU kernel is no part of the GPU path, and compiling it takes minutes)
                      *(["--no-fused-bn-relu"] if device.type == "cpu" else [])]
        c = Checker()
        for p in precisions:
            run_dir = work / f"run-{p}"

            def train(p=p, run_dir=run_dir) -> str:
                s = run_command(["train", *train_args, "--precision", p, "--iters", str(args.iters), "--out", str(run_dir)])
                check(s["device"] == str(device) and s["precision"] == p,
                      f"ran on {s['device']} in {s['precision']}, not {device} in {p}")
                return f"iteration {s['iteration']}, {images_per_s(run_dir)} img/s, val error {s['val_error']:.1f}%"

            def resume(p=p, run_dir=run_dir) -> str:
                s = run_command(["train", *train_args, "--precision", p, "--iters", str(2 * args.iters),
                                 "--out", str(run_dir), "--resume"])
                check(s["iteration"] == 2 * args.iters, f"stopped at iteration {s['iteration']}")
                return f"iteration {args.iters} -> {s['iteration']}, {images_per_s(run_dir)} img/s"

            def evaluate(p=p, run_dir=run_dir) -> str:
                r = run_command(["eval", "--checkpoint", str(run_dir / "model.safetensors"), *common,
                                 "--val-size", "50", "--precision", p])
                check(r["n"] == 50, f"evaluated {r['n']} images, not the 50 held out")
                return f"{r['n']} images, top-1 error {r['top1_err']:.1f}%"

            for name, fn, needs in (("train", train, []), ("resume", resume, [f"train/{p}"]),
                                    ("eval", evaluate, [f"train/{p}", f"resume/{p}"])):
                if name in steps:
                    c.step(name, p, needs, fn)

        first = work / f"run-{precisions[0]}" if precisions else None

        def export() -> str:
            r = run_command(["export", "--checkpoint", str(first / "model.safetensors"), "--out", str(work / "m.onnx")])
            return f"onnxruntime vs PyTorch: max |diff| {r.get('max_abs_diff', float('nan')):.2g}"

        def detect() -> str:
            sets = [x for s in DETECT_SETTINGS for x in ("--set", s)]
            r = run_command(["detect", "train", "--format", "synthetic", "--synthetic-images", "4", "--iters", "4",
                             "--device", str(device), "--out", str(work / "detect"), *sets])
            last = json.loads((work / "detect" / "metrics.jsonl").read_text().splitlines()[-1])
            losses = {k: v for k, v in last.items() if k.startswith("loss")}
            check(r["iterations"] == 4 and last.get("iteration") == 4, f"stopped at iteration {last.get('iteration')}")
            return f"4 iterations, final {', '.join(f'{k} {v:.3g}' for k, v in losses.items())}"

        if "export" in steps:
            if first is None:
                c.skip("export", "fp32", "no training run to export")
            else:
                c.step("export", "fp32", [f"train/{precisions[0]}", f"resume/{precisions[0]}"], export)
        if "detect" in steps:
            c.step("detect", "fp32", [], detect)
        if "ddp" in steps:
            gpus = torch.cuda.device_count() if device.type == "cuda" else 0
            if gpus < 2:
                c.skip("ddp", "-", f"needs 2 GPUs, {gpus} visible")
            else:
                def ddp() -> str:
                    out = work / "run-ddp"
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "resnets", "train", *[a if a != str(device) else "cuda" for a in train_args],
                           "--iters", str(args.iters), "--out", str(out), "--json"]
                    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
                    check(done.returncode == 0, f"torchrun exit {done.returncode}: "
                          f"{(done.stderr.strip().splitlines() or [''])[-1]}")
                    # rank 0 reports; the last JSON line is its summary
                    s = json.loads(next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{")))
                    check(s["processes"] == 2, f"{s['processes']} processes")
                    return f"2 processes, iteration {s['iteration']}, {images_per_s(out)} img/s"

                c.step("ddp", "auto", [], ddp)

    print()
    print(f"{'step':<8}{'precision':<11}{'status':<9}{'seconds':>8}  detail")
    for r in c.rows:
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        print(f"{r['step']:<8}{r['precision']:<11}{r['status']:<9}{secs:>8}  {r['detail']}")
    result = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "dry_run": device.type != "cuda", "rows": c.rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwritten to {args.json}")
    return 1 if any(r["status"] == "FAILED" for r in c.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
