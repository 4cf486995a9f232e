"""DIR/report.md for `resnets reproduce cifar10`: Table 6 beside our numbers, the data, the
schedule, and the figures.

Everything in the report is read back from the run directories (config.yaml,
metrics.jsonl, the summary line), so a report can be regenerated at any time from
whatever runs exist, finished or not.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..config import PRESETS, REPORT, TrainConfig, marked_keys
from ..io import get_dotted
from ..models.weights import without_machine_paths
from .runs import FINAL_TRAIN_FRACTION, ModelRow, RunResult, summarize

if TYPE_CHECKING:
    from .responses import ResponseStats

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
             "| training time (h) | device, precision | warm-up (Sec. 4.2) |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        last = r.train[-1][0] if r.train else (r.summary or {}).get("iteration", 0)
        speed = "–" if r.images_per_s is None else f"{r.images_per_s:.0f}"
        hours = f"{r.training_seconds / 3600:.1f}" if r.training_seconds else "–"
        where = f"{r.summary.get('device')}, {r.summary.get('precision')}" if r.summary else "–"
        state = (r.state if not r.restored else f"{r.state} (restored from its weights)" if r.train
                 else f"{r.state} (restored from its weights; no curves)")
        lines.append(f"| {r.run_dir.name} | {state} | {last} | {fmt_mean_std(r.final_train_error, None)} "
                     f"| {fmt_mean_std(r.final_val_error, None)} | {speed} | {hours} | {where} | {r.warmup} |")
    return "\n".join(lines)


# The seed-to-seed std of a final error. Measured: pooled over the networks with two or more
# finished seeds, once it rests on at least MIN_NOISE_DOF degrees of freedom (one network with 3
# seeds, or two with 2); until then the paper's own, ResNet-110's "6.61±0.16" over 5 runs (Table 6).
PAPER_SEED_STD = 0.16
MIN_NOISE_DOF = 2
# A difference of two networks' means is called a result only beyond this many of its stds:
# with std s per run, the difference of means over n_a and n_b seeds has std s*sqrt(1/n_a + 1/n_b).
NOISE_SIGMAS = 2.0


@dataclass(frozen=True)
class SeedNoise:
    """The seed-to-seed std of the final training and validation errors (points)."""

    train: float
    val: float
    dof: int  # degrees of freedom of the measured estimate; 0: the paper's PAPER_SEED_STD stands in
    networks: int  # networks it was pooled over

    def margin(self, which: str, n_a: int, n_b: int) -> float:
        """How far apart the means of n_a and n_b seeds must be to count (NOISE_SIGMAS of their difference)."""
        return NOISE_SIGMAS * getattr(self, which) * math.sqrt(1 / n_a + 1 / n_b)


def seed_noise(rows: Sequence[ModelRow]) -> SeedNoise:
    """Pooled sample variance, sum((n_i - 1) s_i^2) / sum(n_i - 1), over networks with >= 2 finished seeds."""
    def pooled(values: list[list[float]]) -> tuple[float, int]:
        groups = [v for v in values if len(v) > 1]
        dof = sum(len(v) - 1 for v in groups)
        if dof < MIN_NOISE_DOF:
            return PAPER_SEED_STD, 0
        return math.sqrt(sum((len(v) - 1) * statistics.variance(v) for v in groups) / dof), dof

    train, _ = pooled([r.train_errors for r in rows])
    val, dof = pooled([r.val_errors for r in rows])
    networks = sum(len(r.val_errors) > 1 for r in rows) if dof else 0
    return SeedNoise(train if dof else PAPER_SEED_STD, val, dof, networks)


def noise_statement(noise: SeedNoise) -> str:
    if noise.dof == 0:
        source = (f"No network has enough finished seeds yet to measure the seed-to-seed std, so the paper's "
                  f"±{PAPER_SEED_STD} (ResNet-110 over 5 runs, Table 6) stands in for it, for training and "
                  "validation error alike.")
    else:
        source = (f"Seed-to-seed std, measured: training error {noise.train:.2f}, validation error "
                  f"{noise.val:.2f} points (sample stds pooled over the {noise.networks} networks with two or "
                  f"more finished seeds, {noise.dof} degrees of freedom).")
    one, three = noise.margin("val", 1, 1), noise.margin("val", 3, 3)
    return (f"{source} A difference of two networks' mean errors counts when it exceeds {NOISE_SIGMAS:g} stds of "
            f"that difference, {NOISE_SIGMAS:g}·std·sqrt(1/n_a + 1/n_b) for n_a and n_b seeds: in validation "
            f"error {one:.2f} points between single runs, {three:.2f} between means of three seeds.")


def _compare(lower: ModelRow, higher: ModelRow, what: str, noise: SeedNoise) -> str:
    """'`higher` has higher training and validation error than `lower`', checked on the finished runs."""
    parts, verdicts = [], []
    for label, which, a, b in (("training", "train", lower.train_errors, higher.train_errors),
                               ("validation", "val", lower.val_errors, higher.val_errors)):
        if not a or not b:
            return f"- {what}: not checked yet ({lower.model} and {higher.model} must both finish)."
        margin = noise.margin(which, len(a), len(b))
        difference = statistics.fmean(b) - statistics.fmean(a)
        verdicts.append("holds" if difference > margin else "within noise" if difference > -margin
                        else "does not hold")
        parts.append(f"{label} {higher.model} {statistics.fmean(b):.2f}% vs {lower.model} {statistics.fmean(a):.2f}% "
                     f"({difference:+.2f} points, margin {margin:.2f}; {verdicts[-1]})")
    overall = ("**holds**" if set(verdicts) == {"holds"} else "**does not hold**" if "does not hold" in verdicts
               else "**not shown beyond noise**")
    return f"- {what}: {'; '.join(parts)}. {overall}."


def claims_markdown(rows: Sequence[ModelRow]) -> str:
    """The paper's claims about Table 6 / Fig. 6 (Sec. 4.2), checked on these runs' final errors."""
    residual = sorted((r for r in rows if r.residual), key=lambda r: r.depth)
    plain = {r.depth: r for r in rows if not r.residual}
    noise = seed_noise(rows)
    lines = []
    for shallow, deep in zip(sorted(plain), sorted(plain)[1:]):
        lines.append(_compare(plain[shallow], plain[deep],
                              f"Degradation (Fig. 6 left): plain-{deep} has higher error than plain-{shallow}", noise))
    # Deeper against the next shallower network that has finished, so one still training leaves no gap.
    finished = [r for r in residual if r.val_errors]
    for shallow, deep in zip(finished, finished[1:]):
        lines.append(_compare(deep, shallow, f"Depth pays with shortcuts (Table 6): ResNet-{deep.depth} "
                                             f"has lower error than ResNet-{shallow.depth}", noise))
    waiting = [f"ResNet-{r.depth}" for r in residual if not r.val_errors]
    if waiting and len(residual) > 1:
        lines.append(f"- Depth pays with shortcuts (Table 6): {', '.join(waiting)} not checked yet (no finished run).")
    for r in residual:
        if r.depth in plain:
            lines.append(_compare(r, plain[r.depth], f"Shortcuts pay (Fig. 6): ResNet-{r.depth} has lower error "
                                                     f"than plain-{r.depth}", noise))
    if not lines:
        return "No pair of networks to compare yet."
    return "\n".join(lines) + "\n\n" + noise_statement(noise)


def _network(depth: int, residual: bool) -> str:
    return f"{'ResNet' if residual else 'plain'}-{depth}"


def responses_markdown(measured: Sequence[tuple[RunResult, "ResponseStats"]], n_images: int) -> str:
    """Fig. 7's two claims (Sec. 4.2), checked on the measured stds: ResNets respond with smaller stds
    than their plain twins, and "the deeper ResNet has smaller magnitudes of responses". A network's
    response size is the mean of its 3x3 layers' stds (the networks have different layer counts)."""
    size = {(run.depth, run.residual): statistics.fmean(stats.stds) for run, stats in measured}
    sorted_stds = {(run.depth, run.residual): sorted(stats.stds, reverse=True) for run, stats in measured}
    text = [f"Fig. 7 numbers: `responses.json`. Each layer's std is measured on the first {n_images} validation "
            "images with the trained model (its lowest finished seed) in evaluation mode: the std of each channel over images "
            "and positions, averaged over the channels. A network's response size below is the mean over its "
            "3x3 layers; one model per network, so no noise margin applies.", ""]
    text.append("Mean std of the 3x3 layer responses: " + ", ".join(
        f"{_network(d, r)} {v:.3f}" for (d, r), v in sorted(size.items(), key=lambda kv: (not kv[0][1], kv[0][0])))
        + ".")
    text.append("")
    residual = sorted(d for d, r in size if r)
    lines = []
    for depth in residual:
        if (depth, False) in size:
            res, plain = size[depth, True], size[depth, False]
            # Same depth, same layer count: compare the sorted curves position by position too.
            below = sum(a < b for a, b in zip(sorted_stds[depth, True], sorted_stds[depth, False]))
            lines.append(f"- ResNet-{depth} responds smaller than plain-{depth}: {res:.3f} vs {plain:.3f}; its "
                         f"sorted curve lies below at {below} of {len(sorted_stds[depth, True])} layers. "
                         f"**{'holds' if res < plain else 'does not hold'}**.")
    for shallow, deep in zip(residual, residual[1:]):
        a, b = size[shallow, True], size[deep, True]
        lines.append(f"- The deeper ResNet responds smaller: ResNet-{deep} {b:.3f} vs ResNet-{shallow} {a:.3f}. "
                     f"**{'holds' if b < a else 'does not hold'}**.")
    return "\n".join(text + (lines or ["No pair of networks to compare yet."]))


def data_description(runs: Sequence[RunResult]) -> str:
    """Which images the numbers were measured on, with the caveats that matter for Table 6."""
    # The first run that decodes the images names its cache, later ones do not: drop that detail. A run
    # restored from shipped weights names its data file without the folder (issue 28): name every one so.
    sources = sorted({without_machine_paths(re.sub(r" \(decoded cache [^)]*\)", "", r.summary["data"]))
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
                  command: str | None = None, models: Sequence[str] = ()) -> str:
    """The whole report as markdown. `figures`: caption -> path relative to the report. `models`: the
    networks the experiment plans, each given a Table 6 row even before its first run starts."""
    rows = summarize(runs, models)
    parts = ["# CIFAR-10 experiments of Sec. 4.2 (Table 6, Fig. 6, Fig. 7)", ""]
    if command:
        parts += ["Command:", "", f"    {command}", ""]
    parts += [data_description(runs), "", schedule_description(runs), "",
              "## Table 6", "",
              table6_markdown(rows), "",
              "Validation error: top-1 error at the end of training, mean ± sample standard deviation (n-1) over "
              "the finished seeds (no ± with one seed). Final training error: mean of the logged training-error "
              f"windows in the last {FINAL_TRAIN_FRACTION:.0%} of iterations (augmented images, training-mode BN); "
              "for a run restored from its weights, whose log is lost, the last window, as its summary recorded it. "
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
        parts += ["## Fig. 7: the paper's claims on layer responses, checked", "", responses_note, ""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, runs: Sequence[RunResult], figures: dict[str, str],
                 responses_note: str | None = None, command: str | None = None,
                 models: Sequence[str] = ()) -> Path:
    path = Path(out_dir) / "report.md"
    path.write_text(render_report(runs, figures, responses_note, command, models))
    return path
