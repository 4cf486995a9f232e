"""`resnets reproduce`, `resnets plot` and `resnets analyze`: the paper's experiments and figures."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ..errors import ConfigError
from ..io import atomic_write_text
from .options import add_checkpoints, add_json, prepare_out, report

# Training flags `reproduce` passes through to every run (same meaning and help as `resnets train`).
PASSTHROUGH_FLAGS = ("--iters", "--milestones", "--batch-size", "--lr", "--warmup", "--eval-every", "--log-every",
                     "--checkpoint-every", "--val-size", "--train-size", "--split-seed", "--cache-dir", "--precision", "--device",
                     "--no-channels-last", "--no-fused-bn-relu", "--no-tensorboard")


def parse_depths(text: str, option: str = "--depths") -> list[int]:
    try:
        depths = [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers like 20,32,44,56,110, got {text!r}") from None
    if not depths:
        raise ConfigError(f"{option}: expected at least one depth")
    return depths


# --- resnets reproduce ---------------------------------------------------------------------

def run_reproduce(args: argparse.Namespace) -> int:
    from .train import overrides_from_args
    from ..analysis.reproduce import reproduce_cifar10

    overrides = overrides_from_args(args, PASSTHROUGH_FLAGS)
    prepare_out(args.out, "folder")
    command = "resnets " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if "reproduce" in sys.argv[1:2] else None
    depths = parse_depths(args.depths)
    plain = [] if args.plain is None else depths if args.plain == "all" else parse_depths(args.plain, "--plain")
    path = reproduce_cifar10(depths, out=args.out, data=args.data, plain=plain,
                             seeds=args.seeds, overrides=overrides, response_images=args.response_images,
                             command=command, report_only=args.report_only, jobs=args.jobs)
    report(args, {"report": str(path)}, f"report: {path}")
    return 0


def add_reproduce_parser(subparsers) -> None:
    from .train import add_config_flags

    p = subparsers.add_parser(
        "reproduce", help="run a table's experiments and write a report with figures",
        description="Train the CIFAR-10 networks of Sec. 4.2 (residual, and with --plain also plain) at each "
                    "depth and seed, one run directory each under OUT/runs/, then write OUT/report.md with "
                    "Table 6 beside the paper's numbers, Fig. 6 curves and Fig. 7 layer responses. Re-running "
                    "the command skips finished runs and resumes interrupted ones.")
    p.add_argument("experiment", choices=["cifar10"], help="which experiment (Table 6 / Figs. 6-7)")
    p.add_argument("--depths", default="20,32,44,56,110", help="comma-separated 6n+2 depths (default: %(default)s)")
    p.add_argument("--plain", nargs="?", const="all", metavar="DEPTHS",
                   help="also train the plain twins (Fig. 6 left): of every depth, or of the comma-separated "
                        "DEPTHS only (e.g. 20,56: the two the degradation claim needs)")
    p.add_argument("--seeds", type=int, default=1, help="runs per network, seeds 0..K-1 (default: %(default)s)")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 location (as for `resnets train --data`)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment directory (runs/, figures, report.md)")
    p.add_argument("--response-images", type=int, default=500, metavar="N",
                   help="validation images for Fig. 7 (0: skip it; default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N runs at once, one process each with its share of the CPU threads; on a 2-core "
                        "CPU --jobs 2 trains about 10%% more images/s than one run on both cores (default: 1)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the figures and report.md from the runs as they are now")
    group = p.add_argument_group("schedule and run settings (shortening the schedule is noted in the report)")
    add_config_flags(group, PASSTHROUGH_FLAGS, config_file=False)
    add_json(p)
    p.set_defaults(func=run_reproduce)


# --- resnets plot --------------------------------------------------------------------------

def run_plot(args: argparse.Namespace) -> int:
    from ..analysis.plots import plot_training_curves
    from ..analysis.runs import load_run

    runs = [load_run(d) for d in args.run_dirs]
    prepare_out(args.out, "file")
    out = plot_training_curves(runs, args.out, args.title, ymax=args.ymax)
    report(args, {"written": str(out)}, f"wrote {out}")
    return 0


def add_plot_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help="training curves of runs (Figs. 1, 4, 6)",
        description="Plot training error (dashed) and validation error (bold) against iterations, one colour "
                    "per run, as in the paper's Figs. 1, 4 and 6.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by `resnets train`")
    p.add_argument("--out", required=True, metavar="FIG.png", help="the PNG file to write")
    p.add_argument("--title", help="figure title")
    p.add_argument("--ymax", type=float, metavar="PERCENT",
                   help="top of the error axis, e.g. 20 to see low training errors (default: fit the curves)")
    add_json(p)
    p.set_defaults(func=run_plot)


# --- resnets analyze -----------------------------------------------------------------------

def run_responses(args: argparse.Namespace) -> int:
    from ..analysis.plots import plot_responses
    from ..analysis.responses import measure_checkpoints

    results = measure_checkpoints(args.checkpoint, args.data, args.images, args.val_size, args.split_seed,
                                  args.cache_dir)
    out = prepare_out(args.out, "folder")
    atomic_write_text(out / "responses.json", json.dumps([r.to_dict() for r in results], indent=1))
    plot_responses(results, out / "responses.png", args.title)
    lines = [f"{r.label}: {len(r.stds)} layers, mean std {sum(r.stds) / len(r.stds):.4f}, "
             f"max {max(r.stds):.4f}, min {min(r.stds):.4f}" for r in results]
    report(args, {"written": [str(out / "responses.json"), str(out / "responses.png")],
                  "responses": [r.to_dict() for r in results]},
           "\n".join(lines + [f"wrote {out / 'responses.json'} and {out / 'responses.png'}"]))
    return 0


def add_analyze_parser(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="analyses of trained networks (Fig. 7 layer responses)",
                              description="Analyses of trained networks.")
    analyses = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    r = analyses.add_parser(
        "responses", help="Fig. 7: std of each 3x3 layer's response",
        description="Fig. 7: the std of each 3x3 layer's response (after BN, before ReLU and addition) over the "
                    "first N validation images: per channel over images and positions, averaged over channels. "
                    "Writes OUT/responses.json and OUT/responses.png (network order on top, sorted below).")
    add_checkpoints(r, "model.safetensors or checkpoints/*.pt of a trained CIFAR network; repeat --checkpoint "
                       "to compare several on one figure")
    r.add_argument("--data", required=True, metavar="PATH", help="CIFAR-10 location")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for responses.json and responses.png")
    r.add_argument("--images", type=int, default=500, help="first N validation images (default: %(default)s)")
    r.add_argument("--val-size", type=int, default=5000, help="validation split size (default: %(default)s)")
    r.add_argument("--split-seed", type=int, default=0, help="validation split seed (default: %(default)s)")
    r.add_argument("--cache-dir", help="decode cache directory (default: $RESNETS_CACHE or ~/.cache/resnets)")
    r.add_argument("--title", help="figure title")
    add_json(r)
    r.set_defaults(func=run_responses)
