"""Detection runs share the classification engine's promises (issue 12's faults, found here too):
no poisoned checkpoint, one writer, no silent change on resume, finished runs left alone,
bad values and bad files refused in one line."""

import json
import os

import pytest
import torch
import yaml

from resnets.cli import main
from resnets.detection import engine
from resnets.detection.config import DetectionConfig
from resnets.detection.data import SyntheticShapes
from resnets.detection.model import FasterRCNN
from resnets.errors import CheckpointError, ConfigError, RunDirectoryBusy, TrainingDiverged
from resnets.models import BasicBlock, ResNet
from resnets.run_dir import RunLock, read_history

CFG = DetectionConfig(num_classes=3, min_size=64, max_size=96, anchor_sizes=(16.0, 32.0, 64.0), pooled_size=4,
                      rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=40, rpn_batch_size_per_image=32,
                      roi_batch_size_per_image=16, batch_size=1, iterations=4, lr=0.01, device="cpu",
                      freeze_bn=False, checkpoint_every=2, log_every=1)
DATA = SyntheticShapes(4, image_size=(64, 80), min_object=12, max_object=40, seed=21)


def tiny_detector() -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(CFG, ResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64)))


def test_no_checkpoint_from_non_finite_weights_and_the_message_names_a_good_one(tmp_path, monkeypatch):
    real_step = torch.optim.SGD.step
    steps = []

    def step_then_poison(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 4:  # the loss of iteration 4 was finite; its update is not
            self.param_groups[0]["params"][0].data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_poison)
    with pytest.raises(TrainingDiverged) as e:
        engine.train(CFG, DATA, tmp_path / "run", model=tiny_detector(), log=None)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is {last} (iteration 2)" in str(e.value)
    state = engine.load_checkpoint(last)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values()
                                           if v.is_floating_point())

    steps.clear()
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        engine.train(CFG.replace(checkpoint_every=100), DATA, tmp_path / "early", model=tiny_detector(), log=None)


def test_resume_finished_changed_and_locked(tmp_path):
    run = tmp_path / "run"
    engine.train(CFG, DATA, run, model=tiny_detector(), log=None)
    files = {p: p.read_bytes() for p in (run / "config.yaml", run / "metrics.jsonl", run / "checkpoints" / "last.pt")}
    said = []
    engine.train(CFG, DATA, run, model=tiny_detector(), resume=True, log=said.append)
    assert "is finished (iteration 4 of 4); its results are unchanged" in said[0]
    assert {p: p.read_bytes() for p in files} == files

    with pytest.raises(ConfigError, match=r"settings differ from the checkpoint's: batch_size 1 -> 2"):
        engine.train(CFG.replace(batch_size=2, iterations=6), DATA, run, model=tiny_detector(), resume=True, log=None)
    engine.train(CFG.replace(iterations=5, lr=0.005), DATA, run, model=tiny_detector(), resume=True,
                 log=said.append)
    assert "settings changed from here on: iterations 4 -> 5, lr 0.01 -> 0.005" in said[-2]
    start, resumed = read_history(run)
    assert start["iteration"] == 0 and resumed["iteration"] == 4
    assert resumed["changes"] == {"iterations": [4, 5], "lr": [0.01, 0.005]}

    with RunLock(run):
        with pytest.raises(RunDirectoryBusy, match=f"in use by pid {os.getpid()}"):
            engine.train(CFG.replace(iterations=6), DATA, run, model=tiny_detector(), resume=True, log=None)
    with pytest.raises(CheckpointError, match="cannot resume: .*never-trained does not exist"):
        engine.train(CFG, DATA, tmp_path / "never-trained", model=tiny_detector(), resume=True, log=None)
    (tmp_path / "never-trained").mkdir()  # used to start afresh, silently
    with pytest.raises(CheckpointError, match="cannot resume: .*holds no checkpoint"):
        engine.train(CFG, DATA, tmp_path / "never-trained", model=tiny_detector(), resume=True, log=None)


def test_cli_resume_takes_the_runs_own_config(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["--set", "arch=resnet18", "--set", "min_size=64", "--set", "max_size=96", "--set", "pooled_size=4",
            "--set", "anchor_sizes=[16,32,64]", "--set", "rpn_pre_nms_top_n_train=100",
            "--set", "rpn_post_nms_top_n_train=20", "--set", "rpn_batch_size_per_image=16",
            "--set", "roi_batch_size_per_image=8", "--set", "batch_size=1", "--set", "freeze_bn=false"]
    common = ["detect", "train", "--format", "synthetic", "--synthetic-images", "2", "--out", str(run)]
    assert main([*common, "--iters", "1", *sets, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"run": str(run), "iterations": 1}
    # Nothing but the run directory and a longer schedule: the run's own settings and data are kept.
    assert main(["detect", "train", "--out", str(run), "--iters", "2", "--resume"]) == 0
    assert engine.load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["detection"]["min_size"] == 64
    assert read_history(run)[-1]["changes"] == {"iterations": [1, 2]}
    assert main([*common, "--iters", "3", "--resume", "--set", "min_size=80"]) == 2
    assert "min_size 64 -> 80" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ("lr=-1", "lr must be positive"), ("momentum=1", "momentum must lie in [0, 1)"),
    ("weight_decay=-1", "weight_decay must be >= 0"), ("lr_steps=[6,3]", "lr_steps must be increasing"),
    ("log_every=0", "log_every and checkpoint_every must be >= 1"), ("seed=-1", "seed must be >= 0"),
])
def test_bad_values_are_refused_in_one_line(setting, message, tmp_path, capsys):
    assert main(["detect", "train", "--format", "synthetic", "--out", str(tmp_path / "r"), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_malicious_checkpoint_is_refused_in_one_safe_line(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "resnets-detection", "model": Evil()}, evil)
    assert main(["detect", "eval", "--checkpoint", str(evil), "--format", "synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "posix.system" in err and "weights_only" not in err
