"""The paper's figures as PNG files (matplotlib with the headless Agg backend).

Figs. 1, 4 and 6: training curves; "dashed lines denote training error, and bold lines
denote testing error", one colour per network, iterations on x, error in percent on y.
Fig. 7: the std of each 3x3 layer's response, in network order (top) and sorted (bottom).
Figures have a fixed pixel size (FIGSIZE x DPI) so they embed predictably in reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from .runs import RunResult  # noqa: E402

if TYPE_CHECKING:
    from .responses import ResponseStats

DPI = 100
CURVES_FIGSIZE = (8.0, 5.0)  # inches -> 800 x 500 px
RESPONSES_FIGSIZE = (8.0, 8.0)  # two panels -> 800 x 800 px
FIG6_ZOOM_BELOW = 15.0  # final errors (%) under which Fig. 6 uses the paper's 0-20% axis


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _draw_curves(ax, runs: Sequence[RunResult], ymax: float | None, colors: Sequence | None = None) -> None:
    """Training error dashed, validation error bold, one colour per run (the paper's Fig. 6 style)."""
    highest = 0.0
    for run, color in zip(runs, colors or _colors(len(runs))):
        if run.train:
            its, errs = zip(*run.train)
            ax.plot(its, errs, linestyle="--", linewidth=1.0, color=color)
            highest = max(highest, max(errs))
        if run.val:
            its, errs = zip(*run.val)
            ax.plot(its, errs, linestyle="-", linewidth=2.5, color=color, marker="o" if len(its) < 4 else None,
                    label=run.name)
            highest = max(highest, max(errs))
        elif run.train:
            ax.plot([], [], linestyle="-", linewidth=2.5, color=color, label=run.name)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_ylim(0, ymax if ymax is not None else (min(100.0, highest * 1.05) or 100.0))
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="best", fontsize="small")


def _check_ymax(ymax: float | None) -> None:
    if ymax is not None and not 0 < ymax <= 100:
        raise ConfigError(f"--ymax: expected an error in (0, 100] percent, got {ymax}")


def _save(fig, out: Path) -> Path:
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def plot_training_curves(runs: Sequence[RunResult], out: str | Path, title: str | None = None,
                         ymax: float | None = None) -> Path:
    """Training error (dashed) and validation error (bold) of each run against iterations.

    `ymax`: the top of the error axis in %, to look closely at low errors (Fig. 6 right
    spans 0-20%); by default just above the highest error plotted.
    """
    _check_ymax(ymax)
    fig, ax = plt.subplots(figsize=CURVES_FIGSIZE, dpi=DPI)
    _draw_curves(ax, runs, ymax)
    ax.set_title((title + "\n" if title else "") + "dashed: training error, bold: validation error", fontsize="medium")
    return _save(fig, Path(out))


def plot_fig6(plain: Sequence[RunResult], residual: Sequence[RunResult], out: str | Path,
              ymax: float | None = None) -> Path:
    """Fig. 6 as the paper draws it: plain networks on the left, ResNets on the right, on one
    error axis, training error dashed, held-out error bold. A side with no runs is left out.

    `ymax` by default: the paper's 0-20% when every run ends below FIG6_ZOOM_BELOW (where
    the differences between depths are), otherwise the whole range (short or early runs).
    """
    _check_ymax(ymax)
    if ymax is None:
        finals = [(r.val or r.train)[-1][1] for r in (*plain, *residual) if r.val or r.train]
        ymax = 20.0 if finals and max(finals) < FIG6_ZOOM_BELOW else None
    panels = [(title, runs) for title, runs in (("plain networks", plain), ("ResNets", residual)) if runs]
    if not panels:
        raise ConfigError("Fig. 6: no runs to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(CURVES_FIGSIZE[0] * len(panels) * 0.75, CURVES_FIGSIZE[1]),
                             dpi=DPI, sharey=True, squeeze=False)
    # One colour per depth on both sides, so plain-20 and ResNet-20 match; the x axis spans the whole
    # schedule, so runs still training show how far they have come.
    depths = sorted({r.depth for r in (*plain, *residual)})
    palette = dict(zip(depths, _colors(len(depths))))
    schedule = max((r.config.get("optim", {}).get("iters") or 0 for r in (*plain, *residual)), default=0)
    for ax, (title, runs) in zip(axes[0], panels):
        _draw_curves(ax, runs, ymax, [palette[r.depth] for r in runs])
        ax.set_title(f"{title} on CIFAR-10", fontsize="medium")
        if schedule:
            ax.set_xlim(0, schedule)
    fig.suptitle("Fig. 6: dashed: training error, bold: validation error (held-out 5k)", fontsize="medium")
    return _save(fig, Path(out))


def plot_responses(results: Sequence["ResponseStats"], out: str | Path, title: str | None = None) -> Path:
    """Fig. 7: per-layer response std in network order (top) and sorted descending (bottom)."""
    out = Path(out)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=RESPONSES_FIGSIZE, dpi=DPI)
    for result, color in zip(results, _colors(len(results))):
        stds = result.stds
        x = range(1, len(stds) + 1)
        top.plot(x, stds, color=color, marker=".", label=result.label)
        bottom.plot(x, sorted(stds, reverse=True), color=color, marker=".", label=result.label)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are counted, not measured
        ax.grid(True, alpha=0.3)
        if results:
            ax.legend(loc="best", fontsize="small")
    top.set_title(title or "std of 3x3 layer responses (after BN, before nonlinearity / addition)",
                  fontsize="medium")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
