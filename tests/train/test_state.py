"""`TrainState`: what a checkpoint holds, saved in one call and restored in one, exactly."""

import io
import random
from pathlib import Path

import numpy as np
import torch

from resnets.config import resolve_config
from resnets.runtime import Runtime, seed_everything
from resnets.train.engine import build_run_data, train_step
from resnets.train.state import TrainState

CPU = Runtime(torch.device("cpu"), "fp32")
# The entries of every checkpoint written so far, the two long runs in progress among them:
# they resume from these names, so a rename must fail here before it fails them.
ON_DISK = {"iteration", "config", "model", "optimizer", "schedule", "window", "first_bad", "warmup_window", "rng",
           "data_fingerprint"}


def new_state(data_path: Path, tmp_path: Path):
    config = resolve_config(overrides={
        "model.name": "cifar_resnet8", "data.path": str(data_path), "data.val_size": 50, "optim.batch_size": 16,
        "optim.iters": 12, "optim.milestones": "6,9", "out": str(tmp_path / "run"), "device": "cpu",
        "precision": "fp32", "tensorboard": False})
    seed_everything(config.seed)
    data = build_run_data(config, CPU)
    return TrainState.create(config, data, CPU.device, torch.contiguous_format), data


def advance(state: TrainState, data, steps: int) -> None:
    """`steps` iterations as the engine runs them: the schedule's lr, one SGD step, the statistics."""
    batches = data.train.batches(state.iteration)
    for _ in range(steps):
        x, y = next(batches)
        for group in state.optimizer.param_groups:
            group["lr"] = state.schedule.lr_at(state.iteration)
        loss, logits = train_step(state.model, state.optimizer, x, y, CPU)
        state.stats.update(state.iteration, loss, logits, y)
        state.iteration += 1


def through_disk(state_dict: dict) -> dict:
    """As torch.save writes it and a resume reads it (weights_only): copies, not the live tensors."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def random_draws() -> tuple:
    return torch.rand(4), np.random.rand(4).tolist(), random.random()


def assert_identical(a, b, where="checkpoint"):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_checkpoint_holds_exactly_the_entries_runs_on_disk_hold(tiny_cifar, tmp_path):
    state, _ = new_state(tiny_cifar, tmp_path)
    saved = state.state_dict()
    assert saved.keys() == ON_DISK
    # The network under torchvision's names, its input normalisation beside it (not a separate entry).
    assert {"conv1.weight", "fc.weight", "input_norm.mean", "input_norm.std"} <= saved["model"].keys()
    assert saved["window"].shape == (4,) and saved["warmup_window"].shape == (2,)  # RunningStats' encoding
    assert saved["data_fingerprint"].startswith("sha256:") and saved["config"]["model"]["name"] == "cifar_resnet8"


def test_a_restored_state_continues_bit_identically(tiny_cifar, tmp_path):
    original, data = new_state(tiny_cifar, tmp_path)
    advance(original, data, 3)
    original.schedule.observe_val_error(40.0)  # something for the schedule to remember
    checkpoint = through_disk(original.state_dict())
    # The run goes on from the checkpoint: random draws, then two more steps.
    draws = random_draws()
    advance(original, data, 2)

    restored, _ = new_state(tiny_cifar, tmp_path)
    with torch.no_grad():  # other weights and other random streams: all overwritten by the load
        for p in restored.model.parameters():
            p.normal_()
    torch.manual_seed(5678)
    random.seed(5678)
    np.random.seed(5678)
    restored.load_state_dict(checkpoint)
    assert restored.iteration == 3 and restored.schedule == original.schedule
    assert_identical(through_disk(restored.state_dict()), checkpoint)
    assert_identical(random_draws(), draws)
    advance(restored, data, 2)
    # weights, BN statistics, momentum, schedule, running statistics and the streams after them
    assert_identical(through_disk(restored.state_dict()), through_disk(original.state_dict()))
