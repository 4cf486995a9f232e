"""Report tables are computed from the run directories, not typed in."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from resnets.analysis.report import PAPER_TABLE6_ERROR, render_report, table6_markdown
from resnets.analysis.runs import FINAL_TRAIN_FRACTION, find_runs, load_run, run_state, summarize
from resnets.config import resolve_config, to_dict
from resnets.errors import DataError


@pytest.fixture
def experiment(tmp_path, fake_run):
    """3 seeds of resnet20 and resnet56, 2 of plain20, and one unfinished plain20 run."""
    rng = np.random.default_rng(1234)
    jpeg_root = tmp_path / "data"
    (jpeg_root / "train" / "airplane").mkdir(parents=True)
    (jpeg_root / "train" / "airplane" / "0000.jpg").write_bytes(b"")
    made = {}
    for model, seeds, params in (("cifar_resnet20", 3, 270_000), ("cifar_resnet56", 3, 850_000),
                                 ("cifar_plain20", 2, 270_000)):
        for seed in range(seeds):
            made[(model, seed)] = fake_run(tmp_path / "exp" / "runs" / f"{model}-s{seed}", model, seed, rng,
                                                 params=params, data_path=str(jpeg_root))
    fake_run(tmp_path / "exp" / "runs" / "cifar_plain20-s2", "cifar_plain20", 2, rng, finished=False,
                   data_path=str(jpeg_root))
    return tmp_path / "exp", made


def expected_train_error(train: list[tuple[int, float]]) -> float:
    last = train[-1][0]
    return statistics.fmean(e for it, e in train if it > last * (1 - FINAL_TRAIN_FRACTION))


def test_table_numbers_are_mean_and_std_of_the_runs(experiment):
    out, made = experiment
    runs = find_runs(out)
    assert [r.run_dir.name for r in runs][:3] == ["cifar_resnet20-s0", "cifar_resnet20-s1", "cifar_resnet20-s2"]
    rows = {r.model: r for r in summarize(runs)}
    for model in ("cifar_resnet20", "cifar_resnet56", "cifar_plain20"):
        seeds = [s for (m, s) in made if m == model]
        val = [made[(model, s)]["val"][-1][1] for s in seeds]
        train = [expected_train_error(made[(model, s)]["train"]) for s in seeds]
        mean, std = rows[model].val_mean_std
        assert mean == pytest.approx(statistics.fmean(val)) and std == pytest.approx(statistics.stdev(val))
        tmean, tstd = rows[model].train_mean_std
        assert tmean == pytest.approx(statistics.fmean(train)) and tstd == pytest.approx(statistics.stdev(train))
        assert rows[model].runs == len(seeds)
    assert rows["cifar_plain20"].unfinished == 1

    table = table6_markdown(list(rows.values()))
    r56 = rows["cifar_resnet56"]
    line = next(l for l in table.splitlines() if l.startswith("| cifar_resnet56 "))
    assert f"{r56.val_mean_std[0]:.2f} ± {r56.val_mean_std[1]:.2f}" in line
    assert PAPER_TABLE6_ERROR[56] in line and "0.85M" in line
    plain = next(l for l in table.splitlines() if l.startswith("| cifar_plain20 "))
    assert "2 (+1 unfinished)" in plain and "Fig. 6" in plain


def test_report_names_data_schedule_and_figures(experiment):
    out, _ = experiment
    text = render_report(find_runs(out), {"Fig. 6: plain networks (left) and ResNets (right)": "fig6.png"})
    assert "JPEG" in text and "not comparable" in text.replace("**", "")
    assert "Shortened schedule" in text and "`optim.iters=200`" in text
    assert "![Fig. 6: plain networks (left) and ResNets (right)](fig6.png)" in text
    assert "cifar_plain20-s2 | interrupted" in text


def test_report_flags_lr_subset_and_jpeg_archive(tmp_path, fake_run):
    import io
    import tarfile

    archive = tmp_path / "cifar10-jpeg-train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("train/", None), ("train/cat/0000.jpg", b"\xff\xd8")):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    rng = np.random.default_rng(0)
    fake_run(tmp_path / "exp" / "runs" / "cifar_resnet20-s0", "cifar_resnet20", 0, rng, data_path=str(archive),
             overrides={"optim.lr": 0.02, "data.train_size": 5000})
    text = render_report(find_runs(tmp_path / "exp"), {}).replace("**", "")
    assert "Learning rate 0.02 instead of the paper's 0.1" in text
    assert "Training subset: 5000 class-stratified images" in text
    assert "JPEG" in text and "not comparable" in text
    # the paper's lr on all the data: neither flag
    fake_run(tmp_path / "exp2" / "runs" / "cifar_resnet20-s0", "cifar_resnet20", 0, rng)
    plain_text = render_report(find_runs(tmp_path / "exp2"), {})
    assert "Learning rate" not in plain_text and "Training subset" not in plain_text and "JPEG" not in plain_text


def test_run_states_and_bad_run_dir(tmp_path, fake_run):
    rng = np.random.default_rng(0)
    fake_run(tmp_path / "done", "cifar_resnet8", 0, rng)
    fake_run(tmp_path / "half", "cifar_resnet8", 0, rng, finished=False)
    (tmp_path / "new").mkdir()
    assert [run_state(tmp_path / n) for n in ("done", "half", "new")] == ["finished", "interrupted", "new"]
    with pytest.raises(DataError, match="no config.yaml"):
        load_run(tmp_path / "new")


def test_report_only_reports_the_planned_runs(experiment):
    from resnets.analysis.reproduce import reproduce_cifar10

    out, _ = experiment
    # Plan: resnet20 and plain20, seeds 0-1; resnet56 and the other seeds are not in it.
    report = reproduce_cifar10([20], out=out, data=None, plain=[20], seeds=2, report_only=True)
    text = report.read_text()
    assert "| cifar_resnet20 | 20 |" in text and "| cifar_plain20 | 20 |" in text
    assert "cifar_resnet56" not in text and "cifar_resnet20-s2" not in text
    assert (out / "fig6.png").is_file()


def test_a_planned_network_without_a_run_yet_keeps_its_table6_row(experiment):
    # A run directory can be missing (not started, or lost with a machine): the report must show the
    # network as not run rather than drop it from Table 6 and from the depth claims.
    from resnets.analysis.reproduce import reproduce_cifar10

    out, _ = experiment
    text = reproduce_cifar10([20, 44, 56], out=out, data=None, seeds=3, report_only=True).read_text()
    table = text[text.index("## Table 6"):text.index("## The paper's claims")]
    names = [l.split(" | ")[0][2:] for l in table.splitlines() if l.startswith("| cifar_")]
    assert names == ["cifar_resnet20", "cifar_resnet44", "cifar_resnet56"]
    assert "| cifar_resnet44 | 44 | 0.66M | 0 | – | – | 7.17 | 0.66M |" in table
    assert "- Depth pays with shortcuts (Table 6): ResNet-44 not checked yet (no finished run)." in text
    assert "cifar_resnet44-s0" not in text  # no run of it to list


def _row(model, depth, residual, train, val):
    from resnets.analysis.runs import ModelRow

    return ModelRow(model, depth, residual, 1000, len(val), 0, list(val), list(train))


def test_claims_are_computed_from_the_errors_with_a_noise_margin():
    from resnets.analysis.report import PAPER_SEED_STD, claims_markdown

    rows = [_row("cifar_resnet20", 20, True, [2.0], [8.5]), _row("cifar_resnet56", 56, True, [0.5], [7.0]),
            _row("cifar_plain20", 20, False, [3.0], [9.0]), _row("cifar_plain56", 56, False, [6.0], [11.0])]
    text = claims_markdown(rows)
    lines = {l.split(":")[1].strip(): l for l in text.splitlines() if l.startswith("- ")}
    assert len(lines) == 4
    # One seed each: the paper's std stands in, and the margin is 2 stds of a difference of two runs.
    one_seed = 2 * PAPER_SEED_STD * 2 ** 0.5
    assert f"training cifar_plain56 6.00% vs cifar_plain20 3.00% (+3.00 points, margin {one_seed:.2f}; holds)" \
        in lines["plain-56 has higher error than plain-20"]
    assert lines["plain-56 has higher error than plain-20"].endswith("**holds**.")
    assert "validation cifar_resnet20 8.50% vs cifar_resnet56 7.00% (+1.50 points" in lines["ResNet-56 has lower error than ResNet-20"]
    assert lines["ResNet-20 has lower error than plain-20"].endswith("**holds**.")
    assert "the paper's ±0.16" in text and "stands in" in text
    # A claim the numbers contradict is said so, and one inside the noise is not called a result.
    rows[3] = _row("cifar_plain56", 56, False, [2.0], [9.0 + one_seed / 2])
    text = claims_markdown(rows)
    degradation = next(l for l in text.splitlines() if "plain-56 has higher" in l)
    assert "training cifar_plain56 2.00% vs cifar_plain20 3.00% (-1.00 points" in degradation
    assert "does not hold" in degradation.split(";")[0] + degradation.split(";")[1]
    assert "validation" in degradation and "within noise" in degradation and degradation.endswith("**does not hold**.")


def test_noise_margins_come_from_the_measured_seed_to_seed_std():
    from resnets.analysis.report import claims_markdown, seed_noise

    # Pooled over the networks with >= 2 seeds: validation variances 2 (1 dof) and 1 (2 dof) -> 4/3.
    rows = [_row("cifar_resnet20", 20, True, [1.0, 1.4], [8.0, 10.0]),
            _row("cifar_plain20", 20, False, [2.0, 2.2, 2.4], [9.0, 10.0, 11.0]),
            _row("cifar_resnet56", 56, True, [0.5], [7.0])]
    noise = seed_noise(rows)
    assert (noise.dof, noise.networks) == (3, 2)
    assert noise.val == pytest.approx((4 / 3) ** 0.5)
    assert noise.train == pytest.approx(((0.08 + 2 * 0.04) / 3) ** 0.5)
    text = claims_markdown(rows)
    shortcuts = next(l for l in text.splitlines() if "ResNet-20 has lower error than plain-20" in l)
    margin = 2 * (4 / 3) ** 0.5 * (1 / 2 + 1 / 3) ** 0.5  # 2 stds of a difference of a 2- and a 3-seed mean
    assert f"validation cifar_plain20 10.00% vs cifar_resnet20 9.00% (+1.00 points, margin {margin:.2f}; within noise)" \
        in shortcuts
    assert "measured" in text and "3 degrees of freedom" in text
    # One network with two seeds is too little to measure (1 dof): the paper's value still stands in.
    assert seed_noise(rows[:1] + rows[2:]).dof == 0


def test_training_time_is_the_sum_of_the_logged_windows(experiment):
    import json

    out, _ = experiment
    run = load_run(out / "runs" / "cifar_resnet20-s0")
    rows = [json.loads(l) for l in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    batch = run.config["optim"]["batch_size"]
    previous, expected = 0, 0.0
    for r in rows:
        if r["event"] == "train":
            expected += (r["iteration"] - previous) * batch / r["images_per_s"]
            previous = r["iteration"]
    assert run.training_seconds == pytest.approx(expected) and expected > 0
    assert f"| {expected / 3600:.1f} |" in render_report(find_runs(out), {})


def test_a_run_still_training_shows_its_counted_parameters(experiment):
    # Table 6 lists # params for every network, finished or not: counted on the network the config builds.
    from resnets import count_params, create_model

    out, _ = experiment
    unfinished = load_run(out / "runs" / "cifar_plain20-s2")
    assert unfinished.summary is None
    assert unfinished.params == count_params(create_model("cifar_plain20")) == 269_722  # Table 6: 0.27M


def test_a_lost_run_directory_is_restored_from_its_weights(tmp_path):
    # The weights file carries the run's config and final errors: Table 6 counts the run again.
    from resnets.analysis.runs import restore_run
    from resnets.models import create_model, save_weights
    from resnets.models.loading import model_from_file

    config = resolve_config(None, {"model.name": "cifar_resnet8", "seed": 0, "out": "gone/cifar_resnet8-s0"},
                            preset="cifar-paper")
    portable = to_dict(config)
    portable["data"]["path"] = "cifar10-jpeg-train.tar.gz"
    weights = tmp_path / "cifar_resnet8.safetensors"
    model = create_model("cifar_resnet8")
    save_weights(weights, model, {"name": "cifar_resnet8"},
                 metadata={"iteration": 64000, "model": "cifar_resnet8", "val_error": 13.5, "train_error": 2.25,
                           "params": 78042, "device": "cpu", "precision": "bf16", "config": portable,
                           "code": "git:abc", "data_sha256": "00"})
    run = restore_run(weights, tmp_path / "exp" / "runs" / "cifar_resnet8-s0", data="/data/cifar.tar.gz")
    assert run.finished and run.restored and (run.train, run.val) == ([], [])
    assert (run.final_val_error, run.final_train_error) == (13.5, 2.25)
    assert run.config["data"]["path"] == "/data/cifar.tar.gz" and run.config["optim"]["iters"] == 64000
    assert run.config["out"].endswith("cifar_resnet8-s0")
    restored, _ = model_from_file(run.run_dir / "model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), model.state_dict().values()))
    row = summarize(find_runs(tmp_path / "exp"))[0]
    assert (row.runs, row.val_errors, row.train_errors) == (1, [13.5], [2.25])
    assert "restored from its weights" in render_report(find_runs(tmp_path / "exp"), {})
    # Restoring never overwrites a run, and a file without a run's record is refused by name.
    with pytest.raises(DataError, match="already holds a run"):
        restore_run(weights, run.run_dir)
    bare = tmp_path / "bare.safetensors"
    save_weights(bare, model, {"name": "cifar_resnet8"})
    with pytest.raises(DataError, match="bare.safetensors: no training run recorded"):
        restore_run(bare, tmp_path / "other")


def test_a_restored_run_has_its_curves_speed_and_warmup_back(tmp_path, tiny_cifar):
    # The weights carry the run's log in compact form: a run directory lost with its machine comes
    # back from them as the report read it before, curves, speeds and warm-up included.
    import shutil

    from resnets.analysis.runs import restore_run
    from resnets.train.engine import train

    run_dir = tmp_path / "machine-1" / "cifar_resnet8-s0"
    config = resolve_config(None, {
        "model.name": "cifar_resnet8", "seed": 0, "out": str(run_dir), "data.path": str(tiny_cifar),
        "optim.iters": 12, "optim.milestones": [8, 10], "optim.batch_size": 16, "optim.warmup": "on",
        "optim.warmup_until_error": 100.1, "data.val_size": 50, "data.cache_dir": str(tmp_path / "cache"),
        "eval_every": 4, "log_every": 2, "checkpoint_every": 6, "precision": "fp32", "device": "cpu",
        "tensorboard": False}, preset="cifar-paper")
    train(config)
    before = load_run(run_dir)
    assert len(before.train) == 6 and len(before.val) == 3 and before.warmup_end is not None
    shutil.copyfile(run_dir / "model.safetensors", tmp_path / "shipped.safetensors")
    shutil.rmtree(tmp_path / "machine-1")

    after = restore_run(tmp_path / "shipped.safetensors", tmp_path / "machine-2" / "cifar_resnet8-s0")
    assert after.restored and after.finished
    for field in ("train", "val", "warmup_end", "images_per_s", "training_seconds", "final_train_error",
                  "final_val_error", "warmup"):
        assert getattr(after, field) == getattr(before, field), field
    row = next(l for l in render_report([after], {}).splitlines() if l.startswith("| cifar_resnet8-s0 "))
    assert "| finished (restored from its weights) |" in row


def test_fig7_claims_are_checked_on_the_measured_stds(tmp_path):
    from resnets.analysis.report import responses_markdown
    from resnets.analysis.responses import ResponseStats
    from resnets.analysis.runs import RunResult

    def measured(model, depth, residual, stds):
        run = RunResult(tmp_path / model, model, 0, depth, residual, "finished", {})
        return run, ResponseStats(model, [f"l{i}" for i in range(len(stds))], stds, 100)

    pairs = [measured("cifar_resnet20", 20, True, [0.5, 0.7, 0.9]),  # mean 0.7; sorted 0.9 0.7 0.5
             measured("cifar_plain20", 20, False, [0.8, 1.0, 0.45]),  # mean 0.75; sorted 1.0 0.8 0.45
             measured("cifar_resnet56", 56, True, [0.3, 0.5]),  # mean 0.4
             measured("cifar_resnet110", 110, True, [0.2, 0.3, 0.8])]  # mean 0.433: not below ResNet-56
    text = responses_markdown(pairs, 100)
    assert "first 100 validation images" in text
    assert "ResNet-20 0.700, ResNet-56 0.400, ResNet-110 0.433, plain-20 0.750." in text
    lines = [l for l in text.splitlines() if l.startswith("- ")]
    assert lines == [
        "- ResNet-20 responds smaller than plain-20: 0.700 vs 0.750; its sorted curve lies below at 2 of 3 layers. "
        "**holds**.",
        "- The deeper ResNet responds smaller: ResNet-56 0.400 vs ResNet-20 0.700. **holds**.",
        "- The deeper ResNet responds smaller: ResNet-110 0.433 vs ResNet-56 0.400. **does not hold**.",
    ]


def test_fig6_draws_one_curve_per_network_its_lowest_seed_with_a_curve(experiment, monkeypatch):
    import shutil

    from resnets.analysis import reproduce

    out, _ = experiment
    # ResNet-20's seed 0 lost its log (as a restored run has no curves): seed 1 draws it.
    (out / "runs" / "cifar_resnet20-s0" / "metrics.jsonl").write_text(
        '{"event": "summary", "iteration": 200, "val_error": 9.0, "restored_from": "x.safetensors"}\n')
    drawn = {}
    monkeypatch.setattr(reproduce, "plot_fig6", lambda plain, residual, path: drawn.update(
        plain=[r.run_dir.name for r in plain], residual=[r.run_dir.name for r in residual]))
    reproduce.reproduce_cifar10([20, 56], out=out, data=None, plain=[20, 56], seeds=3, report_only=True)
    assert drawn == {"residual": ["cifar_resnet20-s1", "cifar_resnet56-s0"], "plain": ["cifar_plain20-s0"]}
    shutil.rmtree(out / "runs" / "cifar_plain20-s0")
    shutil.rmtree(out / "runs" / "cifar_plain20-s1")  # only the unfinished seed 2 is left: it is drawn
    reproduce.reproduce_cifar10([20, 56], out=out, data=None, plain=[20, 56], seeds=3, report_only=True)
    assert drawn["plain"] == ["cifar_plain20-s2"]


def test_depth_claim_skips_a_network_still_training():
    from resnets.analysis.report import claims_markdown

    rows = [_row("cifar_resnet20", 20, True, [2.0], [8.5]), _row("cifar_resnet32", 32, True, [], []),
            _row("cifar_resnet56", 56, True, [0.5], [7.0])]
    lines = [l for l in claims_markdown(rows).splitlines() if l.startswith("- ")]
    assert lines[0].startswith("- Depth pays with shortcuts (Table 6): ResNet-56 has lower error than ResNet-20: ")
    assert lines[0].endswith("**holds**.")
    assert lines[1] == "- Depth pays with shortcuts (Table 6): ResNet-32 not checked yet (no finished run)."
    unfinished = [_row("cifar_resnet56", 56, True, [], []), _row("cifar_plain56", 56, False, [1.0], [7.0])]
    assert "not checked yet (cifar_resnet56 and cifar_plain56 must both finish)" in claims_markdown(unfinished)


def test_data_line_names_each_data_file_once():
    # A run restored from shipped weights names its data file without the folder (issue 28), a run
    # trained here with it: the same file, so the report's data line names it once.
    from pathlib import Path

    from resnets.analysis.report import data_description
    from resnets.analysis.runs import RunResult

    def run(seed, path):
        return RunResult(Path(f"cifar_resnet20-s{seed}"), "cifar_resnet20", seed, 20, True, "finished",
                         {"data": {"path": path, "val_size": 5000}},
                         summary={"data": f"class-folder archive {path} (decoded cache /c/x.npz) [split=train]"})

    line = data_description([run(0, "cifar10-jpeg-train.tar.gz"), run(1, "/data/cifar10-jpeg-train.tar.gz")])
    assert line.startswith("Data: `class-folder archive cifar10-jpeg-train.tar.gz [split=train]`.")
    other = data_description([run(0, "/data/a.tar.gz"), run(1, "/data/b.tar.gz")])
    assert "`class-folder archive a.tar.gz [split=train]`; `class-folder archive b.tar.gz [split=train]`" in other
