"""The progress bar: a tick per iteration with images/s, ETA, lr and loss on a terminal;
nothing at all when stderr is not a terminal; never drawn over the start-up line."""

import io
import re

import pytest

from resnets.config import resolve_config
from resnets.train import engine, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tiny(data, out, **overrides):
    return resolve_config(overrides={
        "model.name": "cifar_resnet8", "data.path": str(data), "data.val_size": 50, "optim.batch_size": 16,
        "optim.iters": 12, "optim.milestones": "6,9", "log_every": 6, "eval_every": 12, "checkpoint_every": 12,
        "out": str(out), "device": "cpu", "precision": "fp32", "tensorboard": False, **overrides})


def test_bar_ticks_every_iteration_on_a_terminal(tiny_cifar, tmp_path, monkeypatch):
    terminal = Terminal()
    # One terminal for both streams, as a user sees them; redraw on every tick.
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "MININTERVAL", 0)
    engine.train(tiny(tiny_cifar, tmp_path / "run"))
    text = terminal.getvalue()
    drawn = [int(n) for n in re.findall(r"\| (\d+)/12 \[", text)]
    assert sorted(set(drawn)) == list(range(13))  # 0 at the start, then every iteration
    last_bar = text.split("\r")[-2] if text.endswith("\n") else text.split("\r")[-1]
    assert re.search(r"12/12 \[\d\d:\d\d<00:00, [\d,]+ img/s, lr 0\.001, loss \d", text), last_bar
    # The start-up line is complete on its own line, before any bar.
    first_line = text.split("\n", 1)[0]
    assert first_line.startswith("resnets train: cifar_resnet8 on ") and "\r" not in first_line
    # Metrics lines are written above the bar, each on a line of its own.
    assert re.search(r"(^|\n)\[train\] iteration=6 ", text.replace("\r", "\n"))


def test_no_bar_when_stderr_is_not_a_terminal(tiny_cifar, tmp_path, capsys):
    engine.train(tiny(tiny_cifar, tmp_path / "run"))
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "img/s" not in captured.out and "\r" not in captured.out


def test_loss_is_read_from_the_device_only_when_the_bar_redraws():
    class Loss:
        reads = 0

        def __float__(self):  # what a host sync costs: counted
            Loss.reads += 1
            return 1.0

    bar = progress.ProgressBar(1000, 0, 128, Terminal())
    for _ in range(1000):  # far less than MININTERVAL (0.5 s) in all
        bar.tick(Loss(), 0.1)
    bar.close()
    assert bar.bar.n == 1000 and Loss.reads <= 10  # one per redraw, not one per step
