"""Runs you can trust for days: no poisoned checkpoint, one writer, no silent change, no stack trace.

Each test drives a fault a user met (issue 12) through the real engine or command line on a
tiny model and 200 generated images.
"""

import collections
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from resnets.cli import main
from resnets.config import resolve_config
from resnets.errors import CheckpointError, ConfigError, RunDirectoryBusy, TrainingDiverged
from resnets.run_dir import HISTORY_FILE, LOCK_FILE, RunLock, read_history
from resnets.train import engine
from resnets.checkpoint import load_checkpoint
from resnets.train.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[2]

TINY = {"model.name": "cifar_resnet8", "data.val_size": 50, "optim.batch_size": 16, "optim.iters": 12,
        "optim.milestones": "6,9", "log_every": 2, "eval_every": 6, "checkpoint_every": 4, "device": "cpu",
        "precision": "fp32", "tensorboard": False}
TINY_FLAGS = ["--model", "cifar_resnet8", "--val-size", "50", "--batch-size", "16", "--iters", "12",
              "--milestones", "6,9", "--log-every", "2", "--eval-every", "6", "--checkpoint-every", "4",
              "--device", "cpu", "--precision", "fp32", "--no-tensorboard"]
# What a checkpoint held before this change (commit a0f3558): no data fingerprint.
TODAYS_CHECKPOINT_KEYS = {"iteration", "config", "model", "optimizer", "schedule", "window", "first_bad",
                          "warmup_window", "rng", "normalize"}


def tiny_config(data: Path, out: Path, **overrides):
    return resolve_config(overrides={**TINY, "data.path": str(data), "out": str(out), **overrides})


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def logged(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(run_dir)
            if r["event"] in ("train", "val")]


@pytest.fixture(scope="module")
def finished_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    engine.train(tiny_config(tiny_cifar, out))
    return out


@pytest.fixture(scope="module")
def crashed_once(tiny_cifar, tmp_path_factory):
    """A run killed right after its checkpoint at iteration 6 (of 12)."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    real_save = engine.save_checkpoint

    def crash_at_six(run_dir, state):
        path = real_save(run_dir, state)
        if state["iteration"] == 6:
            raise KeyboardInterrupt
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "save_checkpoint", crash_at_six)
        with pytest.raises(KeyboardInterrupt):
            engine.train(tiny_config(tiny_cifar, out))
    return out


@pytest.fixture
def crashed_run(crashed_once, tmp_path):
    """A copy of `crashed_once` for one test to resume (its config.yaml still names the original
    directory as `out`: `--out` says where the run is now)."""
    out = tmp_path / "run"
    shutil.copytree(crashed_once, out)
    return out


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, inf backward: the loss stays finite, the weights do not (like --lr 1e6)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def poison_step(monkeypatch, step: int) -> None:
    """From training step `step` (1-based) on, backward sends inf into every weight."""
    real_ce = engine.F.cross_entropy
    calls = []

    def cross_entropy(logits, target, **kw):
        if logits.requires_grad:
            calls.append(1)
            if len(calls) == step:
                logits = _InfiniteGradient.apply(logits)
        return real_ce(logits, target, **kw)

    monkeypatch.setattr(engine.F, "cross_entropy", cross_entropy)


# --- 1. NaN-poisoned checkpoints -------------------------------------------------------------

def test_a_checkpoint_is_never_written_from_non_finite_weights(tiny_cifar, tmp_path, monkeypatch):
    # Step 8's loss is finite but its update makes the weights inf, right before the
    # checkpoint at iteration 8: that checkpoint used to be written, poisoned.
    poison_step(monkeypatch, 8)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        engine.train(tiny_config(tiny_cifar, out, log_every=100))
    last = out / "checkpoints" / "last.pt"
    assert "the weights became non-finite by iteration 8" in str(e.value)
    assert f"The last good checkpoint is {last} (iteration 6)" in str(e.value)  # saved at 4 and 6 (eval)
    state = load_checkpoint(last)
    assert state["iteration"] == 6
    tensors = [*state["model"].values(),
               *(v for s in state["optimizer"]["state"].values() for v in s.values())]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    # ...and that checkpoint really is good: a resume at a sane lr continues from it.
    monkeypatch.undo()
    engine.train(tiny_config(tiny_cifar, out, **{"optim.lr": 0.05}), resume=True)
    assert read_metrics(out)[-1]["event"] == "summary"


def test_divergence_before_the_first_checkpoint_claims_none(tiny_cifar, tmp_path, monkeypatch, capsys):
    poison_step(monkeypatch, 2)
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint had been written yet" in err and "last good checkpoint" not in err
    assert not (out / "checkpoints" / "last.pt").exists()


def test_resume_passes_over_a_poisoned_checkpoint(finished_run, tiny_cifar, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    last, previous = out / "checkpoints" / "last.pt", out / "checkpoints" / "previous.pt"
    poisoned = load_checkpoint(last)  # as the engine before this change could write it
    poisoned["model"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(poisoned, last)
    with pytest.warns(UserWarning, match="NaN or inf.*resuming from .*previous.pt"):
        engine.train(tiny_config(tiny_cifar, out, **{"optim.iters": 14}), resume=True)
    assert read_metrics(out)[-1]["iteration"] == 14
    shutil.copy(last, previous)
    torch.save(poisoned, last)
    previous_state = load_checkpoint(previous)
    previous_state["optimizer"]["state"][0]["momentum_buffer"].fill_(float("inf"))
    torch.save(previous_state, previous)
    with pytest.raises(CheckpointError, match="last.pt holds NaN or inf.*previous.pt holds NaN or inf"):
        engine.train(tiny_config(tiny_cifar, out, **{"optim.iters": 16}), resume=True)


# --- 2. --resume on a finished run -----------------------------------------------------------

def test_resuming_a_finished_run_leaves_its_results_untouched(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    files = ("model.safetensors", "metrics.jsonl", "config.yaml", HISTORY_FILE, "checkpoints/last.pt")
    before = {name: (out / name).read_bytes() for name in files}
    assert main(["train", "--resume", "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "is finished (iteration 12 of 12); its results are unchanged" in printed[0]
    summary = json.loads(printed[-1])
    assert summary["val_error"] is not None and summary["val_error"] == read_metrics(out)[-1]["val_error"]
    assert {name: (out / name).read_bytes() for name in files} == before


# --- 3. one writer per run directory ---------------------------------------------------------

def test_a_second_process_on_a_run_directory_is_refused(tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from resnets.run_dir import RunLock; RunLock(sys.argv[1]).acquire(); "
                               "print('locked', flush=True); sys.stdin.read()", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is in use by pid {holder.pid}" in err
        assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()  # kill -9: the OS releases the lock, no stale marker stays behind
        holder.wait()
    RunLock(out).acquire().release()


def test_the_engine_holds_the_lock_while_it_runs_and_releases_it(tiny_cifar, tmp_path, monkeypatch):
    out = tmp_path / "run"
    refusals = []
    real_save = engine.save_checkpoint

    def save_and_try_a_second_writer(run_dir, state):
        with pytest.raises(RunDirectoryBusy, match=f"in use by pid {os.getpid()} "):
            RunLock(run_dir).acquire()
        refusals.append(state["iteration"])
        return real_save(run_dir, state)

    monkeypatch.setattr(engine, "save_checkpoint", save_and_try_a_second_writer)
    engine.train(tiny_config(tiny_cifar, out))
    assert refusals == [4, 6, 8, 12]  # every checkpoint: the lock is held throughout
    RunLock(out).acquire().release()  # and released at the end
    assert (out / LOCK_FILE).is_file()


# --- 4. settings changed on resume -----------------------------------------------------------

def test_resume_needs_only_the_run_directory(crashed_run, finished_run, capsys):
    assert main(["train", "--resume", "--out", str(crashed_run)]) == 0
    out = capsys.readouterr().out
    assert f"resuming {crashed_run} at iteration 6 of 12" in out
    assert "settings changed" not in out
    assert logged(crashed_run) == logged(finished_run)
    a, b = weights(crashed_run), weights(finished_run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_changed_settings_are_printed_and_recorded_never_overwritten(crashed_run, capsys):
    first = (crashed_run / HISTORY_FILE).read_text()
    assert main(["train", "--resume", "--out", str(crashed_run), "--iters", "16", "--milestones", "6,14",
                 "--lr", "0.05"]) == 0
    out = capsys.readouterr().out
    assert ("settings changed from iteration 6 on: optim.iters 12 -> 16, optim.lr 0.1 -> 0.05, "
            "optim.milestones [6, 9] -> [6, 14]") in out
    assert (crashed_run / HISTORY_FILE).read_text().startswith(first)  # what ran before is kept as it was
    start, resumed = read_history(crashed_run)
    assert start["event"] == "start" and start["iteration"] == 0 and start["config"]["optim"]["lr"] == 0.1
    assert resumed["event"] == "resume" and resumed["iteration"] == 6
    assert resumed["changes"] == {"optim.iters": [12, 16], "optim.lr": [0.1, 0.05],
                                  "optim.milestones": [[6, 9], [6, 14]]}
    assert yaml.safe_load((crashed_run / "config.yaml").read_text())["optim"]["lr"] == 0.05
    lrs = {r["iteration"]: r["lr"] for r in read_metrics(crashed_run) if r["event"] == "train"}
    assert lrs[6] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.005) and lrs[16] == pytest.approx(0.0005)


def test_critical_settings_still_refused_on_resume(crashed_run, capsys):
    assert main(["train", "--resume", "--out", str(crashed_run), "--batch-size", "32"]) == 2
    assert "optim.batch_size (16 -> 32)" in capsys.readouterr().err


def test_another_data_set_is_refused_the_same_data_elsewhere_is_not(crashed_run, tiny_cifar, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_cifar, other)
    image = next((other / "train" / "class3").iterdir())
    from PIL import Image

    with Image.open(image) as im:
        pixels = bytearray(im.tobytes())
    pixels[0] ^= 0xFF  # one channel of one pixel of one image
    Image.frombytes("RGB", (32, 32), bytes(pixels)).save(image)
    assert main(["train", "--resume", "--out", str(crashed_run), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the data this run trained on" in err and "Traceback" not in err

    moved = tmp_path / "moved"
    shutil.copytree(tiny_cifar, moved)
    assert main(["train", "--resume", "--out", str(crashed_run), "--data", str(moved)]) == 0
    assert read_history(crashed_run)[-1]["changes"] == {"data.path": [str(tiny_cifar), str(moved)]}


def test_a_checkpoint_in_todays_format_still_resumes_exactly(crashed_run, finished_run):
    # The engine of commit a0f3558 wrote no data fingerprint, no history and no lock file, and
    # kept the per-pixel mean image in a "normalize" entry instead of `input_norm.*` tensors.
    for name in ("last.pt", "previous.pt"):
        path = crashed_run / "checkpoints" / name
        state = load_checkpoint(path)
        del state["data_fingerprint"]
        state["normalize"] = {"mean": state["model"].pop("input_norm.mean")}
        del state["model"]["input_norm.std"]
        assert state.keys() == TODAYS_CHECKPOINT_KEYS
        torch.save(state, path)
    (crashed_run / HISTORY_FILE).unlink()
    (crashed_run / LOCK_FILE).unlink()
    engine.train(resolve_config(base=yaml.safe_load((crashed_run / "config.yaml").read_text()),
                                overrides={"out": str(crashed_run)}), resume=True)
    assert logged(crashed_run) == logged(finished_run)
    a, b = weights(crashed_run), weights(finished_run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # accepted, and recorded from then on
    assert load_checkpoint(crashed_run / "checkpoints" / "last.pt")["data_fingerprint"].startswith("sha256:")
    assert read_history(crashed_run)[0]["data_fingerprint"].startswith("sha256:")


# --- 5 and errors a user can act on: bad values -----------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--milestones", "6,3"], "optim.milestones: expected increasing iterations, got [6, 3]"),
    (["--milestones", "6,20"], "optim.milestones: [20] not within 1..11"),
    (["--momentum", "1"], "optim.momentum: expected a momentum in [0, 1), got 1.0"),
    (["--momentum", "-0.5"], "optim.momentum: expected a momentum in [0, 1)"),
    (["--log-every", "-1"], "log_every: expected a positive integer, got -1"),
    (["--log-every", "0"], "log_every: expected a positive integer, got 0"),
    (["--eval-every", "0"], "eval_every: expected a positive integer, got 0"),
    (["--checkpoint-every", "0"], "checkpoint_every: expected a positive integer, got 0"),
    (["--lr", "-1"], "optim.lr: expected a positive learning rate, got -1.0"),
    (["--weight-decay", "-1"], "optim.weight_decay: expected a weight decay of 0 or more, got -1.0"),
    (["--seed", "-1"], "seed: expected a seed of 0 or more, got -1"),
    (["--num-classes", "5"], "model.num_classes: 5 outputs cannot score the 10 classes"),
])
def test_bad_values_are_refused_in_one_line(flags, message, tiny_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "checkpoints").exists()


def test_out_that_cannot_be_a_run_directory_is_one_line(tiny_cifar, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for out, message in ((a_file, "is a file; expected a run directory"),
                         (a_file / "sub", f"cannot hold {a_file / 'sub'}: {a_file} is a file")):
        assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro-run":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(tmp_path / "ro-run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and "cannot write the run directory (Read-only file system)" in err
    assert len(err.splitlines()) == 1


def test_a_full_disk_says_so_and_keeps_the_last_checkpoint(tiny_cifar, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    saves = []

    def disk_fills_up(obj, f, *args, **kwargs):
        saves.append(obj.get("iteration"))
        if len(saves) == 2:  # the second checkpoint: what torch says on a short write
            Path(f).write_bytes(b"PK\x03\x04" + bytes(1000))
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing "
                               "file data/40: file write failed\nunexpected pos 366784 vs 366672")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--data", str(tiny_cifar), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    last = out / "checkpoints" / "last.pt"
    assert len(err.splitlines()) == 1 and "unexpected pos" not in err
    assert f"cannot write {last}: the disk is full (1 MB free" in err and f"{last} is intact" in err
    monkeypatch.undo()
    assert load_checkpoint(last)["iteration"] == 4
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]


def test_malicious_and_corrupt_checkpoints_are_refused_in_one_safe_line(tmp_path, tiny_cifar, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(), "config": {}}, evil)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(evil.read_bytes()[:200])
    for path, reason in ((evil, "asks to import the Python object posix.system"),
                         (truncated, "is corrupt or truncated")):
        assert main(["eval", "--checkpoint", str(path), "--data", str(tiny_cifar)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and reason in err
        assert "weights_only" not in err and "trusted source" not in err
        assert main(["convert", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and reason in err and "weights_only" not in err
