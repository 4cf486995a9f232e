"""The training engine: run directory, exact resume, kill -9, divergence, warm-up, eval."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import resnets
from resnets.cli import main
from resnets.config import resolve_config
from resnets.errors import CheckpointError, ConfigError, TrainingDiverged
from resnets.train import engine
from resnets.checkpoint import load_checkpoint
from resnets.train.metrics_log import read_metrics
from resnets.train.schedule import LrSchedule

REPO = Path(__file__).resolve().parents[2]


def tiny_config(data: Path, out: Path, **overrides):
    values = {"model.name": "cifar_resnet8", "data.path": str(data), "data.val_size": 50, "optim.batch_size": 16,
              "optim.iters": 12, "optim.milestones": "6,9", "log_every": 2, "eval_every": 6,
              "checkpoint_every": 4, "out": str(out), "device": "cpu", "precision": "fp32",
              "tensorboard": False}
    values.update(overrides)
    return resolve_config(overrides=values)


def train_rows(run_dir: Path) -> list[dict]:
    # images/s is a measurement of the machine, not of the run.
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(run_dir)
            if r["event"] in ("train", "val")]


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_run(tiny_cifar, tmp_path_factory):
    """One uninterrupted run that the resume tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "run"
    summary = engine.train(tiny_config(tiny_cifar, out))
    return out, summary


def test_run_directory_contents(reference_run):
    out, summary = reference_run
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["name"] == "cifar_resnet8" and config["optim"]["iters"] == 12
    rows = read_metrics(out)
    train = [r for r in rows if r["event"] == "train"]
    assert [r["iteration"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert {"iteration", "epoch", "lr", "train_loss", "train_error", "images_per_s"} <= train[0].keys()
    # "divide by 10 at 6 and 9 iterations": iterations 7-9 run at 0.01, 10 onwards at 0.001.
    assert [r["lr"] for r in train] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.001, 0.001])
    val = [r for r in rows if r["event"] == "val"]
    assert [r["iteration"] for r in val] == [6, 12] and all(r["val_images"] == 50 for r in val)
    assert rows[-1]["event"] == "summary" and rows[-1]["val_error"] == val[-1]["val_error"] == summary["val_error"]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")  # weights_only=True inside
    assert ckpt["iteration"] == 12
    assert (out / "checkpoints" / "previous.pt").exists()
    model = resnets.create_model("cifar_resnet8", weights=str(out / "model.safetensors"))
    assert model.input_norm is not None and model.input_norm.mean.shape == (3, 32, 32)


def test_eval_command_matches_training_validation(reference_run, tiny_cifar, capsys):
    out, summary = reference_run
    for checkpoint in (out / "model.safetensors", out / "checkpoints" / "last.pt"):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tiny_cifar), "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["split"] == "val" and result["n"] == 50
        assert result["top1_err"] == pytest.approx(summary["val_error"], abs=1e-9)
        assert 0 <= result["top5_err"] <= result["top1_err"]


def test_resume_after_crash_equals_uninterrupted(reference_run, tiny_cifar, tmp_path, monkeypatch):
    ref_out, _ = reference_run
    out = tmp_path / "run"
    saves = []
    real_save = engine.save_checkpoint

    def crash_after_second_save(run_dir, state):
        real_save(run_dir, state)
        saves.append(state["iteration"])
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies right after the checkpoint at iteration 6

    monkeypatch.setattr(engine, "save_checkpoint", crash_after_second_save)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_config(tiny_cifar, out))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    assert saves == [4, 6]
    engine.train(tiny_config(tiny_cifar, out), resume=True)
    assert train_rows(out) == train_rows(ref_out)
    assert_same_weights(final_weights(out), final_weights(ref_out))


def test_kill_9_then_resume_equals_uninterrupted(reference_run, tiny_cifar, tmp_path):
    ref_out, _ = reference_run
    out = tmp_path / "run"
    args = [sys.executable, "-m", "resnets", "train", "--model", "cifar_resnet8", "--data", str(tiny_cifar),
            "--val-size", "50", "--batch-size", "16", "--iters", "12", "--milestones", "6,9", "--log-every", "2",
            "--eval-every", "6", "--checkpoint-every", "1", "--out", str(out), "--device", "cpu",
            "--precision", "fp32", "--no-tensorboard"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                if load_checkpoint(last)["iteration"] >= 3:
                    break
            except CheckpointError:
                pass
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last)["iteration"]
    assert killed_at < 12 and not (out / "model.safetensors").exists()
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert train_rows(out) == train_rows(ref_out)
    assert_same_weights(final_weights(out), final_weights(ref_out))


def test_resume_refuses_changed_critical_settings(reference_run, tiny_cifar):
    out, _ = reference_run
    with pytest.raises(ConfigError, match=r"optim.batch_size \(16 -> 32\)"):
        engine.train(tiny_config(tiny_cifar, out, **{"optim.batch_size": 32}), resume=True)


def test_new_run_refuses_to_overwrite(reference_run, tiny_cifar):
    out, _ = reference_run
    with pytest.raises(ConfigError, match="already holds a run"):
        engine.train(tiny_config(tiny_cifar, out))


def test_corrupt_checkpoint_is_a_clear_error(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="last.pt is corrupt or truncated"):
        engine.train(tiny_config(tiny_cifar, out), resume=True)
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--data", str(tiny_cifar)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="empty does not exist"):
        engine.train(tiny_config(tiny_cifar, tmp_path / "empty"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        engine.train(tiny_config(tiny_cifar, tmp_path / "empty"), resume=True)


def test_damaged_last_checkpoint_falls_back_to_previous(reference_run, tiny_cifar, tmp_path):
    import shutil

    ref_out, _ = reference_run
    out = tmp_path / "run"
    shutil.copytree(ref_out, out)
    (out / "checkpoints" / "last.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="resuming from .*previous.pt"):
        engine.train(tiny_config(tiny_cifar, out, **{"optim.iters": 14}), resume=True)
    assert read_metrics(out)[-1]["iteration"] == 14


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_cifar, tmp_path, monkeypatch, capsys):
    real_ce = engine.F.cross_entropy
    calls = []

    def poisoned(logits, target, **kw):
        loss = real_ce(logits, target, **kw)
        if logits.requires_grad:
            calls.append(1)
            if len(calls) >= 10:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(engine.F, "cross_entropy", poisoned)
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50", "--batch-size", "16",
            "--iters", "12", "--milestones", "6,9", "--log-every", "3", "--eval-every", "100", "--checkpoint-every", "4", "--out", str(out),
            "--device", "cpu", "--precision", "fp32", "--no-tensorboard"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "non-finite at iteration 10" in err
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["iteration"] == 8
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_train_size_trains_on_a_stratified_subset(tiny_cifar):
    from resnets.data.cifar import per_pixel_mean
    from resnets.runtime import Runtime
    from resnets.train.engine import build_run_data

    config = tiny_config(tiny_cifar, Path("unused"), **{"data.train_size": 30})
    data = build_run_data(config, Runtime(torch.device("cpu"), "fp32"))
    images, labels = data.train.source.images, data.train.source.labels
    assert len(images) == 30 and torch.bincount(labels, minlength=10).tolist() == [3] * 10
    # the per-pixel mean is the mean of the images trained on (Sec. 4.2), not of the whole split
    assert torch.allclose(data.mean_image(), per_pixel_mean(images))
    assert "train_size=30" in data.description
    assert len(data.val.images) == 50  # validation unchanged
    with pytest.raises(ConfigError, match="data.train_size"):
        build_run_data(tiny_config(tiny_cifar, Path("unused"), **{"data.train_size": 500}),
                       Runtime(torch.device("cpu"), "fp32"))


# The warm-up through `resnets train` (ends on the recent training error dropping below 80%,
# not before): tests/train/test_recipe.py.


def test_schedule_warmup_auto_for_cifar_depth_110_and_milestones():
    config = resolve_config().optim
    s110, s56 = LrSchedule.for_model(config, 110, "cifar10"), LrSchedule.for_model(config, 56, "cifar10")
    assert s110.warmup_active and not s56.warmup_active
    # Sec. 4.2's warm-up is for the 110-layer CIFAR network: ImageNet ResNet-152 (Sec. 3.4) starts at 0.1.
    imagenet = resolve_config(overrides={"data.dataset": "imagenet", "model.name": "resnet152"})
    assert not LrSchedule.for_model(imagenet.optim, 152, "imagenet").warmup_active
    assert LrSchedule.for_model(resolve_config(overrides={"optim.warmup": "on"}).optim, 152, "imagenet").warmup_active
    assert s110.lr_at(0) == 0.01
    assert not s110.observe_train_error(100, 85.0) and s110.observe_train_error(400, 79.0)
    assert [s110.lr_at(i) for i in (401, 31999, 32000, 47999, 48000)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])


def test_plateau_schedule_divides_after_patience():
    config = resolve_config(overrides={"optim.schedule": "plateau", "optim.plateau_patience": 2}).optim
    s = LrSchedule.for_model(config, 50, "imagenet")
    drops = [s.observe_val_error(e) for e in (50, 40, 41, 40.5, 39, 39.5, 39.2)]
    assert drops == [False, False, False, True, False, False, True]
    assert s.lr_at(0) == pytest.approx(0.001)


# TrainConfig's fields as of commit a0f3558: what the config.yaml and checkpoints of runs started
# then hold (a long cifar_resnet20 run among them). Fields added since must default sensibly.
A0F3558_FIELDS = {
    "model": ["name", "num_classes", "shortcut", "stride_in_1x1", "zero_init_residual", "normalization"],
    "data": ["dataset", "path", "download", "cache_dir", "val_size", "split_seed", "train_size", "augment", "workers",
             "skip_bad_images"],
    "optim": ["lr", "momentum", "weight_decay", "batch_size", "iters", "schedule", "milestones", "gamma",
              "plateau_patience", "min_lr", "warmup", "warmup_lr", "warmup_until_error", "warmup_max_iters"],
    None: ["preset", "out", "seed", "device", "precision", "channels_last", "compile", "eval_every", "log_every",
           "checkpoint_every", "sync_bn", "tensorboard"],
}


def a0f3558_config(config: dict) -> dict:
    old = {key: config[key] for key in A0F3558_FIELDS[None]}
    for section in ("model", "data", "optim"):
        old[section] = {key: config[section][key] for key in A0F3558_FIELDS[section]}
    return old


def a0f3558_checkpoint(state: dict) -> dict:
    """The checkpoint the engine of commit a0f3558 wrote at the same point of the same run: the network's
    state dict under "model" and the per-pixel mean under "normalize" (its kind in the config)."""
    return {
        "iteration": state["iteration"], "config": a0f3558_config(state["config"]),
        "model": {k: v for k, v in state["model"].items() if not k.startswith("input_norm.")},
        "optimizer": state["optimizer"], "schedule": state["schedule"], "window": state["window"],
        "first_bad": state["first_bad"], "warmup_window": state["warmup_window"], "rng": state["rng"],
        "normalize": {"mean": state["model"]["input_norm.mean"]},
    }


def test_a_run_checkpointed_by_commit_a0f3558_resumes_exactly(reference_run, tiny_cifar, tmp_path, monkeypatch):
    from resnets.models.loading import model_from_file

    ref_out, _ = reference_run
    out = tmp_path / "run"
    real_save = engine.save_checkpoint

    def stop_after_iteration_6(run_dir, state):
        real_save(run_dir, state)
        if state["iteration"] == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", stop_after_iteration_6)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_config(tiny_cifar, out))
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    checkpoints = out / "checkpoints"
    new = load_checkpoint(checkpoints / "last.pt")
    (checkpoints / "previous.pt").unlink()
    torch.save(a0f3558_checkpoint(new), checkpoints / "last.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(a0f3558_config(new["config"]), sort_keys=False))

    # Read for inference, the old checkpoint is the same network with the same normalisation.
    old_model, info = model_from_file(checkpoints / "last.pt")
    assert info["iteration"] == 6 and old_model.input_norm.kind == "per_pixel_mean"
    assert torch.equal(old_model.input_norm.mean, new["model"]["input_norm.mean"])
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    torch.save(new, tmp_path / "new.pt")
    with torch.no_grad():
        assert torch.equal(old_model.eval()(x), model_from_file(tmp_path / "new.pt")[0].eval()(x))

    engine.train(tiny_config(tiny_cifar, out), resume=True)
    assert train_rows(out) == train_rows(ref_out)
    assert_same_weights(final_weights(out), final_weights(ref_out))


def test_final_weights_carry_their_provenance(tiny_cifar, tmp_path):
    # Shipped weights (issue 10) must say which data file and which code made them, and how
    # they ended: the archive's sha256 (what `sha256sum` prints), the git commit, the errors.
    import hashlib
    import tarfile

    from resnets.models.weights import read_weights_metadata
    from resnets.run_dir import read_history

    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar / "train", arcname="train")
    out = tmp_path / "run"
    summary = engine.train(tiny_config(archive, out, **{"optim.iters": 6, "optim.milestones": "3,5"}))
    meta = read_weights_metadata(out / "model.safetensors")
    assert meta["data_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert meta["data_fingerprint"].startswith("sha256:")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert meta["code"].removesuffix("+dirty") == f"git:{head}"
    assert read_history(out)[0]["code"] == meta["code"]  # every start and resume records its code too
    last = [r for r in read_metrics(out) if r["event"] == "train"][-1]
    assert meta["train_error"] == summary["train_error"] == last["train_error"]
    assert meta["iteration"] == 6 and meta["val_error"] == summary["val_error"]
    assert meta["config"]["optim"]["iters"] == 6


def test_sigterm_writes_a_checkpoint_where_it_arrived_and_resume_equals_uninterrupted(
        reference_run, tiny_cifar, tmp_path, monkeypatch, capsys):
    # A scheduler's SIGTERM (or Ctrl-C) mid-window, between two checkpoints (every 4): the run
    # finishes that step, writes its checkpoint there, says how to resume, and exits 128 + 15.
    ref_out, _ = reference_run
    out = tmp_path / "run"
    real_step = engine.train_step
    steps = []

    def signalled_at_step_5(*args):
        result = real_step(*args)
        steps.append(1)
        if len(steps) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(engine, "train_step", signalled_at_step_5)
    before = signal.getsignal(signal.SIGTERM)
    args = ["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50", "--batch-size", "16",
            "--iters", "12", "--milestones", "6,9", "--log-every", "2", "--eval-every", "6", "--checkpoint-every", "4",
            "--out", str(out), "--device", "cpu", "--precision", "fp32", "--no-tensorboard"]
    assert main(args) == 128 + signal.SIGTERM
    assert len(steps) == 5 and signal.getsignal(signal.SIGTERM) == before  # stopped at once; handler given back
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 5
    assert read_metrics(out)[-1] == {"event": "stopped", "iteration": 5, "signal": "SIGTERM"}
    err = capsys.readouterr().err
    assert "stopped by SIGTERM at iteration 5" in err and f"--resume --out {out}" in err and "error" not in err
    monkeypatch.setattr(engine, "train_step", real_step)
    assert main(args + ["--resume"]) == 0
    assert train_rows(out) == train_rows(ref_out)
    assert_same_weights(final_weights(out), final_weights(ref_out))
