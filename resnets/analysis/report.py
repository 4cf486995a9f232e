"""DIR/report.md for `resnets reproduce cifar10`: Table 6 beside our numbers, the data, the
schedule, and the figures.

Everything in the report is read back from the run directories (config.yaml,
metrics.jsonl, the summary line), so a report can be regenerated at any time from
whatever runs exist, finished or not.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

from ..config import PRESETS, REPORT, TrainConfig, marked_keys
from ..io import get_dotted
from .runs import FINAL_TRAIN_FRACTION, ModelRow, RunResult, summarize

# Table 6 of the paper: CIFAR-10 *test* error (%), lossless images, 64k iterations.
PAPER_TABLE6_ERROR: dict[int, str] = {
    20: "8.75", 32: "7.51", 44: "7.17", 56: "6.97", 110: "6.43 (6.61±0.16)", 1202: "7.93",
}
PAPER_TABLE6_PARAMS: dict[int, str] = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}
# Plain nets are not in Table 6; Fig. 6 (left) shows them only as curves.
PLAIN_NOTE = ("not in Table 6; Fig. 6 (left): deeper plain nets have *higher* training and test error "
              "(plain-56 > plain-20; plain-110 above 60%, not shown)")



def fmt_mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def fmt_params(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M"


def table6_markdown(rows: Sequence[ModelRow]) -> str:
    """Our val error (mean ± sample std over seeds) beside the paper's Table 6."""
    lines = [
        "| network | # layers | # params | finished runs | final training error (%) | validation error (%) "
        "| paper: test error (%), Table 6 | paper: # params |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        runs = f"{r.runs}" + (f" (+{r.unfinished} unfinished)" if r.unfinished else "")
        paper = PAPER_TABLE6_ERROR.get(r.depth, "not reported") if r.residual else PLAIN_NOTE
        paper_params = PAPER_TABLE6_PARAMS.get(r.depth, "–") if r.residual else "–"
        lines.append(f"| {r.model} | {r.depth} | {fmt_params(r.params)} | {runs} | {fmt_mean_std(*r.train_mean_std)} "
                     f"| {fmt_mean_std(*r.val_mean_std)} | {paper} | {paper_params} |")
    return "\n".join(lines)


def runs_markdown(runs: Sequence[RunResult]) -> str:
    lines = ["| run | state | iterations | final training error (%) | validation error (%) | images/s (median) "
             "| training time (h) | device, precision |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        last = r.train[-1][0] if r.train else 0
        speed = "–" if r.images_per_s is None else f"{r.images_per_s:.0f}"
        hours = f"{r.training_seconds / 3600:.1f}" if r.training_seconds else "–"
        where = f"{r.summary.get('device')}, {r.summary.get('precision')}" if r.summary else "–"
        lines.append(f"| {r.run_dir.name} | {r.state} | {last} | {fmt_mean_std(r.final_train_error, None)} "
                     f"| {fmt_mean_std(r.final_val_error, None)} | {speed} | {hours} | {where} |")
    return "\n".join(lines)


# With one seed per network a difference is called a result only when it exceeds this many
# points: twice the seed-to-seed std the paper reports for ResNet-110 (6.61±0.16, Table 6).
# With several seeds, twice the larger of the two networks' measured stds is used instead.
ONE_SEED_NOISE = 0.32


def _compare(lower: ModelRow, higher: ModelRow, what: str) -> str:
    """'`higher` has higher training and validation error than `lower`', checked on the finished runs."""
    parts, verdicts = [], []
    for label, a, b in (("training", lower.train_mean_std, higher.train_mean_std),
                        ("validation", lower.val_mean_std, higher.val_mean_std)):
        if a[0] is None or b[0] is None:
            return f"- {what}: not checked yet ({lower.model} and {higher.model} must both finish)."
        stds = [x for x in (a[1], b[1]) if x is not None]
        noise = 2 * max(stds) if len(stds) == 2 else ONE_SEED_NOISE
        margin = b[0] - a[0]
        verdicts.append("holds" if margin > noise else "within noise" if margin > -noise else "does not hold")
        parts.append(f"{label} {higher.model} {b[0]:.2f}% vs {lower.model} {a[0]:.2f}% "
                     f"({margin:+.2f} points; {verdicts[-1]})")
    overall = ("**holds**" if set(verdicts) == {"holds"} else "**does not hold**" if "does not hold" in verdicts
               else "**not shown beyond noise**")
    return f"- {what}: {'; '.join(parts)}. {overall}."


def claims_markdown(rows: Sequence[ModelRow]) -> str:
    """The paper's claims about Table 6 / Fig. 6 (Sec. 4.2), checked on these runs' final errors."""
    residual = sorted((r for r in rows if r.residual), key=lambda r: r.depth)
    plain = {r.depth: r for r in rows if not r.residual}
    lines = []
    for shallow, deep in zip(sorted(plain), sorted(plain)[1:]):
        lines.append(_compare(plain[shallow], plain[deep],
                              f"Degradation (Fig. 6 left): plain-{deep} has higher error than plain-{shallow}"))
    for shallow, deep in zip(residual, residual[1:]):
        lines.append(_compare(deep, shallow, f"Depth pays with shortcuts (Table 6): ResNet-{deep.depth} "
                                             f"has lower error than ResNet-{shallow.depth}"))
    for r in residual:
        if r.depth in plain:
            lines.append(_compare(r, plain[r.depth], f"Shortcuts pay (Fig. 6): ResNet-{r.depth} has lower error "
                                                     f"than plain-{r.depth}"))
    if not lines:
        return "No pair of networks to compare yet."
    noise = (f"A difference counts when it exceeds twice the larger seed-to-seed std of the two networks, or "
             f"{ONE_SEED_NOISE} points with one seed (twice the paper's ±0.16 for ResNet-110).")
    return "\n".join(lines) + "\n\n" + noise


def data_description(runs: Sequence[RunResult]) -> str:
    """Which images the numbers were measured on, with the caveats that matter for Table 6."""
    # The first run that decodes the images names its cache, later ones do not: drop that detail.
    sources = sorted({re.sub(r" \(decoded cache [^)]*\)", "", r.summary["data"])
                      for r in runs if r.summary and r.summary.get("data")})
    paths = sorted({p for r in runs if (p := get_dotted(r.config, "data.path"))})
    text = ["Data: " + ("; ".join(f"`{s}`" for s in sources) if sources else
                        ", ".join(f"`{p}`" for p in paths) or "unknown (no finished run)") + "."]
    if any(_is_jpeg_tree(p) for p in paths):
        text.append("These are JPEG (quality 75) re-encodings of the CIFAR-10 training images: lossy, so the "
                    "errors here are **not comparable** to Table 6, which was measured on the lossless originals.")
    val_sizes = sorted({v for r in runs if (v := get_dotted(r.config, "data.val_size"))})
    if val_sizes:
        text.append(f"Validation error is measured on {', '.join(map(str, val_sizes))} images held out of the "
                    "training set (the paper's 45k/5k split for tuning, Sec. 4.2), not on the CIFAR-10 test set "
                    "of Table 6.")
    return " ".join(text)


def _is_jpeg_tree(path: str) -> bool:
    """True when a class-folder tree (a folder or a .tar/.tar.gz of one) holds .jpg/.jpeg images
    (checks the first file found)."""
    if Path(path).is_file() and path.endswith((".tar", ".tar.gz", ".tgz")):
        import tarfile

        try:
            with tarfile.open(path) as archive:
                first = next((m for m in archive if m.isfile()), None)
        except (OSError, tarfile.TarError):
            return False
        return first is not None and first.name.lower().endswith((".jpg", ".jpeg"))
    train = Path(path) / "train"
    if not train.is_dir():
        return False
    for class_dir in sorted(train.iterdir()):
        if class_dir.is_dir():
            for entry in os.scandir(class_dir):
                return entry.name.lower().endswith((".jpg", ".jpeg"))
    return False


def schedule_description(runs: Sequence[RunResult]) -> str:
    """The schedule the runs used, flagged when it is shorter than the paper's (Sec. 4.2)."""
    if not runs:
        return "No runs."
    # JSON text makes the settings hashable and prints lists as [32000, 48000].
    schedules = {tuple(f"`{k}={json.dumps(get_dotted(r.config, k))}`" for k in marked_keys(TrainConfig, REPORT))
                 for r in runs}
    parts = [", ".join(sched) for sched in sorted(schedules)]
    text = "Schedule: " + "; ".join(parts) + "."
    if len(schedules) > 1:
        text += " **The runs used different schedules; compare them with care.**"
    paper = PRESETS["cifar-paper"]["optim"]
    shortened = [r for r in runs if get_dotted(r.config, "optim.iters") != paper["iters"]
                 or get_dotted(r.config, "optim.milestones") != paper["milestones"]
                 or get_dotted(r.config, "optim.batch_size") != paper["batch_size"]]
    if shortened:
        text += (f" **Shortened schedule**: the paper trains {paper['iters']} iterations at batch "
                 f"{paper['batch_size']}, lr {paper['lr']} divided by 10 at {paper['milestones'][0]} and "
                 f"{paper['milestones'][1]} (Sec. 4.2); these runs are shorter, so their errors are higher and "
                 "only the comparison between them is meaningful.")
    other_lr = sorted({lr for r in runs if (lr := get_dotted(r.config, "optim.lr")) != paper["lr"]})
    if other_lr:
        text += (f" **Learning rate** {', '.join(map(str, other_lr))} instead of the paper's {paper['lr']}.")
    subsets = sorted({n for r in runs if (n := get_dotted(r.config, "data.train_size"))})
    if subsets:
        text += (f" **Training subset**: {', '.join(map(str, subsets))} class-stratified images of the training "
                 "split instead of all of it (validation unchanged).")
    return text


def render_report(runs: Sequence[RunResult], figures: dict[str, str], responses_note: str | None = None,
                  command: str | None = None) -> str:
    """The whole report as markdown. `figures`: caption -> path relative to the report."""
    rows = summarize(runs)
    parts = ["# CIFAR-10 experiments of Sec. 4.2 (Table 6, Fig. 6, Fig. 7)", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    parts += [data_description(runs), "", schedule_description(runs), "",
              "## Table 6", "",
              table6_markdown(rows), "",
              "Validation error: top-1 error at the end of training, mean ± sample standard deviation (n-1) over "
              "the finished seeds (no ± with one seed). Final training error: mean of the logged training-error "
              f"windows in the last {FINAL_TRAIN_FRACTION:.0%} of iterations (augmented images, training-mode BN). "
              "Paper: Table 6 reports CIFAR-10 *test* error; ResNet-110 as \"best (mean±std)\" of 5 runs.", "",
              "## The paper's claims, checked on these runs", "", claims_markdown(rows), "",
              "## Runs", "", runs_markdown(runs), "",
              "State: finished (weights written), interrupted (a checkpoint to resume from: stopped, or still "
              "training as the report was made), new (no checkpoint yet). Training time: the logged windows' "
              "wall time summed (evaluation excluded), as the runs met the machine, with whatever else it was "
              "running at the time.", ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, path in figures.items():
            parts += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    if responses_note:
        parts += [responses_note, ""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, runs: Sequence[RunResult], figures: dict[str, str],
                 responses_note: str | None = None, command: str | None = None) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(render_report(runs, figures, responses_note, command))
    return path
