"""The "Real photos" section of docs/detection.md: AP against iterations, Appendix B on/off,
and a grid of validation photos with their detections.

    python docs/detection/real_photos.py --data PATH --run RUN_DIR [--snapshots DIR] \
        [--appendix-b] [--context-run RUN_DIR2] [--out docs/detection]

``--snapshots`` is a folder of copies of RUN_DIR/checkpoints/last.pt taken while the run
trained (any names); each is evaluated on the run's own validation split (the seeded split of
a folder without split files) and the curve is drawn from them. ``--appendix-b`` also
evaluates the final checkpoint with box refinement, multi-scale testing, and both (inference
options). Global context changes training, so it needs its own run: ``--context-run`` names a
run of the same recipe with ``global_context=true``, whose final checkpoint is evaluated on the
same split (refused if anything else in its config differs). Writes ap_vs_iterations.png,
grid.jpg and real_photos.json to --out, with the wall time and seconds per iteration of each
stretch a run trained without stopping.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from resnets.checkpoint import checkpoint_dir, load_checkpoint
from resnets.detection import VOCDetection, engine


def _evaluate(path: Path, val: VOCDetection, overrides: dict | None = None) -> dict:
    model = engine.load_detector(path, "cpu", overrides)
    t = time.perf_counter()
    metrics = engine.evaluate(model, val)
    metrics["seconds"] = round(time.perf_counter() - t, 1)
    metrics["iteration"] = int(load_checkpoint(path)["iteration"])
    return metrics


def _training(run: Path) -> list[dict]:
    """Wall time and speed of each stretch the run trained without stopping (``elapsed_s``
    restarts at every resume; a resumed run repeats the iterations after its last checkpoint)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    segments: list[list[dict]] = []
    for x in (x for x in lines if x.get("event") == "train"):
        if not segments or x["elapsed_s"] < segments[-1][-1]["elapsed_s"]:
            segments.append([])
        segments[-1].append(x)
    out = []
    for seg in segments:
        first, last = seg[0], seg[-1]
        if last is first:
            continue
        its, wall = last["iteration"] - first["iteration"], last["elapsed_s"] - first["elapsed_s"]
        out.append({"from_iteration": first["iteration"], "to_iteration": last["iteration"], "wall_s": round(wall, 1),
                    "s_per_iteration": round(wall / its, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the photo folder (images/ + annotations/)")
    ap.add_argument("--run", required=True, help="the fine-tune's run directory")
    ap.add_argument("--snapshots", default=None, help="folder of checkpoint copies taken during training")
    ap.add_argument("--appendix-b", action="store_true", help="evaluate the Appendix B inference options too")
    ap.add_argument("--checkpoint", default=None, help="the checkpoint to report (default: RUN_DIR/checkpoints/last.pt)")
    ap.add_argument("--context-run", default=None, help="the same recipe trained with global_context=true")
    ap.add_argument("--grid", type=int, default=8, help="validation photos in the picture grid")
    ap.add_argument("--out", default="docs/detection")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    final = Path(args.checkpoint) if args.checkpoint else checkpoint_dir(args.run) / "last.pt"
    cfg = load_checkpoint(final)["config"]
    val = VOCDetection(args.data, "val", cfg["class_names"], split_seed=cfg["seed"])
    report_path = out / "real_photos.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}

    def save() -> None:  # after every evaluation: a stopped job keeps what it measured
        report_path.write_text(json.dumps(report, indent=1))

    report["validation"] = {"images": len(val), "ids": val.ids}
    report["training"] = _training(Path(args.run))

    curve = {int(r["iteration"]): r for r in report.get("curve", [])}
    for snap in sorted(Path(args.snapshots).glob("*.pt")) if args.snapshots else []:
        it = int(load_checkpoint(snap)["iteration"])
        if it not in curve:
            curve[it] = _evaluate(snap, val)
            print(f"iteration {it}: {json.dumps(curve[it])}", flush=True)
            report["curve"] = [curve[k] for k in sorted(curve)]  # kept if this long job is stopped
            save()
    it = int(load_checkpoint(final)["iteration"])
    if it not in curve:
        curve[it] = _evaluate(final, val)
    report["curve"] = [curve[k] for k in sorted(curve)]
    save()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = sorted(curve)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(its, [curve[i]["mAP@0.5"] for i in its], "o-", label="AP@0.5")
    ax.plot(its, [curve[i]["mAP@0.5 (VOC07 11-point)"] for i in its], "s--", label="AP@0.5, VOC07 11-point")
    ax.plot(its, [curve[i]["mAP@[.5:.95]"] for i in its], "^-", label="AP@[.5:.95] (COCO-style)")
    ax.set_xlabel("training iteration (1 image each)")
    ax.set_ylabel(f"AP on {len(val)} validation photos")
    ax.set_ylim(0, 1)
    if its[-1] > it:  # snapshots of a continuation past the reported checkpoint
        ax.axvline(it, color="gray", linestyle=":", label=f"reported checkpoint (iteration {it})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ap_vs_iterations.png", dpi=110)

    if args.appendix_b:
        options = {"baseline": {}, "box refinement + voting": {"box_refinement": True},
                   "multi-scale testing": {"test_scales": [300, 416, 600]},
                   "both": {"box_refinement": True, "test_scales": [300, 416, 600]}}
        report["appendix_b"] = {name: _evaluate(final, val, o) for name, o in options.items()}
        save()
    if args.context_run:
        context_final = checkpoint_dir(args.context_run) / "last.pt"
        theirs = dict(load_checkpoint(context_final)["config"])
        ours = dict(cfg, global_context=True)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise SystemExit(f"--context-run {args.context_run}: its config differs from --run's in {differ}, "
                             "not only in global_context")
        report.setdefault("appendix_b", {})["global context (own run)"] = _evaluate(context_final, val)
        report["context_training"] = _training(Path(args.context_run))
        save()

    # The picture grid: the first validation photos, detections scoring >= 0.5.
    from PIL import Image

    model = engine.load_detector(final, "cpu")
    tiles_dir = out / "grid_tiles"
    paths = [str(p) for p in val.images[: args.grid]]
    engine.predict(model, paths, tiles_dir, 0.5)
    tiles = [Image.open(tiles_dir / f"{Path(p).stem}.png").convert("RGB") for p in paths]
    size = 300
    cols = 4
    grid = Image.new("RGB", (cols * size, -(-len(tiles) // cols) * size), "white")
    for i, tile in enumerate(tiles):
        tile.thumbnail((size, size))
        grid.paste(tile, ((i % cols) * size + (size - tile.width) // 2, (i // cols) * size + (size - tile.height) // 2))
    grid.save(out / "grid.jpg", quality=85)
    for f in tiles_dir.iterdir():
        f.unlink()
    tiles_dir.rmdir()
    print(json.dumps({k: v for k, v in report.items() if k != "validation"}, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
