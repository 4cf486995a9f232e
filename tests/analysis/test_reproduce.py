"""`reproduce` trains what is missing: finished runs are skipped, an interrupted one resumes."""

from __future__ import annotations

import json
import re

import pytest

import resnets.train.engine as engine
from resnets.cli import main
from resnets.analysis.reproduce import execute_runs, plan_runs, reproduce_cifar10
from resnets.analysis.runs import find_runs, run_state
from resnets.errors import ConfigError, TrainingDiverged
from resnets.train.metrics_log import read_metrics


def overrides(tmp_path, iters: int = 4) -> dict:
    return {"optim.iters": iters, "optim.milestones": [2, 3], "optim.batch_size": 16, "data.val_size": 50,
            "data.cache_dir": str(tmp_path / "cache"), "eval_every": 2, "log_every": 1, "checkpoint_every": 2,
            "precision": "fp32", "device": "cpu", "tensorboard": False}


def test_skip_finished_and_resume_interrupted(tmp_path, tiny_cifar, monkeypatch):
    out = tmp_path / "exp"
    real_save = engine.save_checkpoint

    def save_then_die(run_dir, state):
        # A kill right after seed 1's first checkpoint (iteration 2 of 4).
        real_save(run_dir, state)
        if run_dir.name.endswith("-s1") and state["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        reproduce_cifar10([8], out=out, data=str(tiny_cifar), seeds=2, overrides=overrides(tmp_path),
                          response_images=0)
    s0, s1 = (out / "runs" / f"cifar_resnet8-s{s}" for s in (0, 1))
    assert run_state(s0) == "finished" and run_state(s1) == "interrupted"
    finished_at = (s0 / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(engine, "save_checkpoint", real_save)

    calls = []
    real_train = engine.train

    def recording_train(config, resume=False):
        calls.append((config.out, resume))
        return real_train(config, resume)

    monkeypatch.setattr(engine, "train", recording_train)
    # The same experiment through the command line: its flags must make the same configs.
    assert main(["reproduce", "cifar10", "--depths", "8", "--seeds", "2", "--data", str(tiny_cifar), "--out", str(out),
                 "--iters", "4", "--milestones", "2,3", "--batch-size", "16", "--val-size", "50",
                 "--cache-dir", str(tmp_path / "cache"), "--eval-every", "2", "--log-every", "1",
                 "--checkpoint-every", "2", "--precision", "fp32", "--device", "cpu", "--no-tensorboard",
                 "--response-images", "10"]) == 0
    report = out / "report.md"
    assert calls == [(str(s1), True)]  # s0 skipped, s1 resumed from its checkpoint
    assert (s0 / "model.safetensors").stat().st_mtime_ns == finished_at
    rows = read_metrics(s1)
    assert [r["iteration"] for r in rows if r["event"] == "train"] == [1, 2, 3, 4]
    assert [r["iteration"] for r in rows if r["event"] == "summary"] == [4]

    # The report's numbers are the two seeds' summaries.
    vals = [read_metrics(d)[-1]["val_error"] for d in (s0, s1)]
    text = report.read_text()
    mean = sum(vals) / 2
    std = (sum((v - mean) ** 2 for v in vals)) ** 0.5  # sample std of two values: |a - b| / sqrt(2)
    assert f"{mean:.2f} ± {std:.2f}" in text
    assert "Shortened schedule" in text and "class folders" in text
    assert {r.state for r in find_runs(out)} == {"finished"}
    assert len(json.loads((out / "responses.json").read_text())[0]["layers"]) == 7
    for fig in ("fig6.png", "fig7_responses.png"):
        assert (out / fig).stat().st_size > 0 and f"]({fig})" in text

    # A finished run trained with another schedule is not silently reused.
    with pytest.raises(ConfigError, match="optim.iters"):
        execute_runs(plan_runs([8], [], 1, out), str(tiny_cifar), overrides(tmp_path, iters=6), log=lambda s: None)


def test_plan_order_and_a_diverging_run_does_not_stop_the_rest(tmp_path):
    plan = plan_runs([20, 56], [20, 56], 2, tmp_path)
    assert [p.run_dir.name for p in plan] == [
        "cifar_resnet20-s0", "cifar_resnet56-s0", "cifar_plain20-s0", "cifar_plain56-s0",
        "cifar_resnet20-s1", "cifar_resnet56-s1", "cifar_plain20-s1", "cifar_plain56-s1"]
    trained = []

    def fake_train(config, resume=False):
        trained.append((config.model.name, config.seed, config.optim.iters, resume))
        if config.model.name == "cifar_plain56":
            raise TrainingDiverged("the training loss became non-finite")
        return {}

    messages = []
    execute_runs(plan, "/data", {"optim.iters": 10}, train=fake_train, log=messages.append)
    assert len(trained) == 8 and all(t[2] == 10 and not t[3] for t in trained)
    assert sum("non-finite" in m for m in messages) == 2
    with pytest.raises(ConfigError, match="--depths"):
        plan_runs([21], [], 1, tmp_path)


def test_plain_twins_of_chosen_depths_only(tmp_path, monkeypatch):
    # Fig. 6 left needs plain twins of some depths only (e.g. 20 and 56 for the degradation claim):
    # `--plain 20,56` plans those, bare `--plain` every depth, and nothing else is planned or reported.
    from resnets.analysis import reproduce

    plan = plan_runs([20, 32, 56], [20, 56], 1, tmp_path)
    assert [p.model for p in plan] == ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_plain20",
                                       "cifar_plain56"]
    seen = {}

    def planned_only(out, plan, *rest):
        seen["plan"] = plan
        return out / "report.md"

    monkeypatch.setattr(reproduce, "write_outputs", planned_only)
    base = ["reproduce", "cifar10", "--depths", "20,32", "--out", str(tmp_path / "exp"), "--report-only"]
    for flags, plains in (([], []), (["--plain"], ["cifar_plain20", "cifar_plain32"]),
                          (["--plain", "32"], ["cifar_plain32"])):
        seen.clear()
        assert main(base + flags) == 0
        assert [p.model for p in seen["plan"] if "plain" in p.model] == plains
    assert main(base + ["--plain", "twenty"]) == 2


def test_a_run_held_by_another_process_is_skipped(tmp_path, tiny_cifar):
    from resnets.run_dir import RunLock

    plan = plan_runs([8], [8], 1, tmp_path / "exp")  # cifar_resnet8-s0, cifar_plain8-s0
    plan[0].run_dir.mkdir(parents=True)
    lines = []
    with RunLock(plan[0].run_dir):  # e.g. a parallel worker training it
        execute_runs(plan, str(tiny_cifar), overrides(tmp_path), log=lines.append)
    assert lines[-1] == "[2/2] cifar_plain8-s0: training"
    assert "[1/2] cifar_resnet8-s0: held by another process, skipped" in lines
    assert [run_state(p.run_dir) for p in plan] == ["new", "finished"]


def test_jobs_train_runs_side_by_side_and_a_sigterm_stops_them_all_resumably(tmp_path, tiny_cifar):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from resnets.checkpoint import load_checkpoint

    out = tmp_path / "exp"
    args = [sys.executable, "-m", "resnets", "reproduce", "cifar10", "--depths", "8", "--plain", "--jobs", "2",
            "--data", str(tiny_cifar), "--out", str(out), "--iters", "600", "--milestones", "400,500",
            "--batch-size", "8", "--val-size", "50", "--cache-dir", str(tmp_path / "cache"), "--eval-every", "5000",
            "--log-every", "10", "--checkpoint-every", "5000", "--precision", "fp32", "--device", "cpu",
            "--no-tensorboard", "--response-images", "0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [out / "runs" / name for name in ("cifar_resnet8-s0", "cifar_plain8-s0")]
    deadline = time.time() + 120
    # Both runs train at the same time, one in each worker.
    while time.time() < deadline and not all(any(r["event"] == "train" for r in read_metrics(d)) for d in runs):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # to the parent only: it forwards the stop to its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    stopped = []
    for d in runs:
        last = read_metrics(d)[-1]
        assert last["event"] == "stopped" and 0 < last["iteration"] < 600
        assert load_checkpoint(d / "checkpoints" / "last.pt")["iteration"] == last["iteration"]
        stopped.append(last["iteration"])
    # One run each: the second worker skipped the run the first one held.
    trained = [re.findall(r"^resnets train: (\S+) on ", (out / f"worker-{k}.log").read_text(), re.M) for k in range(2)]
    assert sorted(trained) == [["cifar_plain8"], ["cifar_resnet8"]]
    # The same command resumes both from where they stopped and finishes them.
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for d, at in zip(runs, stopped):
        assert run_state(d) == "finished"
        assert [r["iteration"] for r in read_metrics(d) if r["event"] == "train"][-1] == 600
        assert f"resuming {d} at iteration {at}" in (out / "worker-0.log").read_text() + (out / "worker-1.log").read_text()
    assert (out / "report.md").is_file()


def test_a_failing_worker_fails_the_command_and_names_its_log(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["reproduce", "cifar10", "--depths", "8", "--plain", "--jobs", "2", "--data", str(tmp_path / "missing"),
            "--out", str(out), "--iters", "4", "--device", "cpu", "--response-images", "0"]
    # A setting wrong for every run is refused before any worker starts.
    assert main(args) == 2
    assert "--milestones" in capsys.readouterr().err and not list(out.glob("worker-*.log"))
    assert main(args + ["--milestones", "2,3"]) == 2
    err = capsys.readouterr().err
    assert "worker 0 (exit status 2, see" in err and "worker-0.log" in err and not (out / "report.md").exists()
    assert str(tmp_path / "missing") in (out / "worker-0.log").read_text()  # the worker's own error names the path


def test_workers_spread_over_the_gpus():
    from resnets.analysis.reproduce import worker_device

    assert [worker_device("auto", k, 2) for k in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_device("cuda", 1, 4) == "cuda:1"
    # One GPU or none: all share what "auto" resolves to; an explicit device is kept.
    assert worker_device("auto", 1, 1) == "auto" and worker_device("auto", 1, 0) == "auto"
    assert worker_device("cuda:3", 0, 4) == "cuda:3" and worker_device("cpu", 1, 4) == "cpu"
