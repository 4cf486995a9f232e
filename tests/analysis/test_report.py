"""Report tables are computed from the run directories, not typed in."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from resnets.analysis.report import PAPER_TABLE6_ERROR, render_report, table6_markdown
from resnets.analysis.runs import FINAL_TRAIN_FRACTION, find_runs, load_run, run_state, summarize
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
    report = reproduce_cifar10([20], out=out, data=None, plain=True, seeds=2, report_only=True)
    text = report.read_text()
    assert "| cifar_resnet20 | 20 |" in text and "| cifar_plain20 | 20 |" in text
    assert "cifar_resnet56" not in text and "cifar_resnet20-s2" not in text
    assert (out / "fig6.png").is_file()


def _row(model, depth, residual, train, val):
    from resnets.analysis.runs import ModelRow

    return ModelRow(model, depth, residual, 1000, len(val), 0, list(val), list(train))


def test_claims_are_computed_from_the_errors_with_a_noise_margin():
    from resnets.analysis.report import ONE_SEED_NOISE, claims_markdown

    rows = [_row("cifar_resnet20", 20, True, [2.0], [8.5]), _row("cifar_resnet56", 56, True, [0.5], [7.0]),
            _row("cifar_plain20", 20, False, [3.0], [9.0]), _row("cifar_plain56", 56, False, [6.0], [11.0])]
    text = claims_markdown(rows)
    lines = {l.split(":")[1].strip(): l for l in text.splitlines() if l.startswith("- ")}
    assert len(lines) == 4
    assert "training cifar_plain56 6.00% vs cifar_plain20 3.00% (+3.00 points; holds)" in lines["plain-56 has higher error than plain-20"]
    assert lines["plain-56 has higher error than plain-20"].endswith("**holds**.")
    assert "validation cifar_resnet20 8.50% vs cifar_resnet56 7.00% (+1.50 points; holds)" in lines["ResNet-56 has lower error than ResNet-20"]
    assert lines["ResNet-20 has lower error than plain-20"].endswith("**holds**.")
    # A claim the numbers contradict is said so, and one inside the noise is not called a result.
    rows[3] = _row("cifar_plain56", 56, False, [2.0], [9.0 + ONE_SEED_NOISE / 2])
    text = claims_markdown(rows)
    degradation = next(l for l in text.splitlines() if "plain-56 has higher" in l)
    assert "training cifar_plain56 2.00% vs cifar_plain20 3.00% (-1.00 points; does not hold)" in degradation
    assert "validation" in degradation and "within noise" in degradation and degradation.endswith("**does not hold**.")
    # Several seeds: the margin is twice the larger measured std.
    wide = [_row("cifar_resnet20", 20, True, [2.0, 2.0], [8.0, 10.0]),
            _row("cifar_plain20", 20, False, [3.0, 3.0], [9.5, 11.5])]
    assert "(+1.50 points; within noise)" in claims_markdown(wide)  # 2 x std(8, 10) = 2.83
    # Unfinished networks are named, not compared.
    unfinished = [_row("cifar_resnet56", 56, True, [], []), _row("cifar_plain56", 56, False, [1.0], [7.0])]
    assert "not checked yet" in claims_markdown(unfinished)


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
