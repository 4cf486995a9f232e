"""Figures are real PNGs of the documented pixel size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from resnets.analysis import plots
from resnets.cli import main
from resnets.analysis.responses import ResponseStats
from resnets.analysis.runs import load_run


def test_training_curves_png(tmp_path, fake_run):
    rng = np.random.default_rng(0)
    dirs = []
    for model, seed in (("cifar_resnet20", 0), ("cifar_plain20", 1)):
        fake_run(tmp_path / f"{model}-s{seed}", model, seed, rng)
        dirs.append(str(tmp_path / f"{model}-s{seed}"))
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", *dirs, "--out", str(out), "--title", "Fig. 6"]) == 0
    with Image.open(out) as img:
        assert img.format == "PNG"
        w, h = plots.CURVES_FIGSIZE
        assert img.size == (int(w * plots.DPI), int(h * plots.DPI))
        # Not a blank canvas: the curves put many distinct colours on it.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10
    # The module function is what the CLI ran: same runs, same size.
    again = plots.plot_training_curves([load_run(d) for d in dirs], tmp_path / "again.png")
    assert Image.open(again).size == Image.open(out).size


def test_training_curves_ymax_zooms_the_error_axis(tmp_path, fake_run, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    fake_run(tmp_path / "run", "cifar_resnet20", 0, rng)
    closed = []
    monkeypatch.setattr(plots.plt, "close", closed.append)  # keep the figures to inspect them
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "zoom.png"), "--ymax", "20"]) == 0
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "full.png")]) == 0
    zoom, full = (fig.axes[0].get_ylim() for fig in closed)
    assert zoom == (0.0, 20.0) and full[0] == 0.0 and full[1] > 90  # fake errors reach ~100%
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "bad.png"), "--ymax", "0"]) == 2
    assert "--ymax" in capsys.readouterr().err


def test_responses_png(tmp_path):
    results = [ResponseStats("cifar_resnet8", [f"l{i}" for i in range(7)], list(np.linspace(1, 0.2, 7)), 10),
               ResponseStats("cifar_plain8", [f"l{i}" for i in range(7)], list(np.linspace(0.5, 2, 7)), 10)]
    out = plots.plot_responses(results, tmp_path / "fig7.png")
    with Image.open(out) as img:
        assert img.format == "PNG"
        w, h = plots.RESPONSES_FIGSIZE
        assert img.size == (int(w * plots.DPI), int(h * plots.DPI))


def test_fig6_puts_plain_left_and_resnets_right_on_one_axis(tmp_path, fake_run, monkeypatch):
    rng = np.random.default_rng(0)
    fake_run(tmp_path / "p20", "cifar_plain20", 0, rng)
    fake_run(tmp_path / "r20", "cifar_resnet20", 0, rng)
    plain, residual = [load_run(tmp_path / "p20")], [load_run(tmp_path / "r20")]
    closed = []
    monkeypatch.setattr(plots.plt, "close", closed.append)
    plots.plot_fig6(plain, residual, tmp_path / "fig6.png")
    left, right = closed[-1].axes
    assert "plain" in left.get_title() and "ResNets" in right.get_title()
    assert left.get_ylim() == right.get_ylim()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["cifar_plain20 (seed 0)"]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["cifar_resnet20 (seed 0)"]
    assert left.get_xlim() == right.get_xlim() == (0, 200)  # the whole schedule, runs finished or not
    # Finished full-length runs end at low error: the paper's 0-20% axis; random curves do not.
    assert left.get_ylim()[1] > 20
    for r in (*plain, *residual):
        r.train = [(it, e / 10) for it, e in r.train]
        r.val = [(it, e / 10) for it, e in r.val]
    plots.plot_fig6(plain, residual, tmp_path / "fig6_zoom.png")
    assert closed[-1].axes[0].get_ylim() == (0, 20.0)
    assert Image.open(tmp_path / "fig6.png").format == "PNG"


def test_fig6_gives_a_depth_one_colour_on_both_sides(tmp_path, fake_run, monkeypatch):
    rng = np.random.default_rng(0)
    for name, model in (("p20", "cifar_plain20"), ("p56", "cifar_plain56"), ("r56", "cifar_resnet56")):
        fake_run(tmp_path / name, model, 0, rng)
    closed = []
    monkeypatch.setattr(plots.plt, "close", closed.append)
    plots.plot_fig6([load_run(tmp_path / "p20"), load_run(tmp_path / "p56")], [load_run(tmp_path / "r56")],
                    tmp_path / "fig6.png")
    left, right = closed[-1].axes
    colours = {line.get_label(): line.get_color() for ax in (left, right) for line in ax.get_lines()
               if not line.get_label().startswith("_")}
    assert colours["cifar_resnet56 (seed 0)"] == colours["cifar_plain56 (seed 0)"] != colours["cifar_plain20 (seed 0)"]
