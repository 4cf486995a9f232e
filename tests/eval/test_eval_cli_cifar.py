"""`resnets eval` on CIFAR-10: the options that control how the images are read and batched."""

from __future__ import annotations

import json

import pytest
import torch

import resnets.data.cifar as cifar
from resnets.cli import main
from resnets.models import Normalize, ResNet, create_model, save_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    torch.manual_seed(0)
    model = create_model("cifar_resnet8", input_norm=Normalize(torch.rand(3, 32, 32) * 0.5))
    save_weights(path, model, {"name": "cifar_resnet8", "num_classes": 10, "shortcut": "A", "stride_in_1x1": True,
                               "normalization": "per_pixel_mean"})
    return path


def test_batch_size_and_workers_are_used(tiny_cifar, weights, tmp_path, monkeypatch, capsys):
    """Regression: CIFAR-10 evaluation ran in batches of 500 and decoded with its own choice of processes,
    whatever --batch-size and --workers said."""
    batch_sizes, decode_workers = [], []
    real_forward, real_decode = ResNet.forward, cifar.decode_images

    def forward(self, x):
        batch_sizes.append(len(x))
        return real_forward(self, x)

    def decode(items, workers=None):
        decode_workers.append(workers)
        return real_decode(items, 0)  # inline: the test checks the wiring, not a process pool

    monkeypatch.setattr(ResNet, "forward", forward)
    monkeypatch.setattr(cifar, "decode_images", decode)
    argv = ["eval", "--checkpoint", str(weights), "--data", str(tiny_cifar), "--val-size", "50", "--batch-size", "7",
            "--workers", "2", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 50 and result["dataset"] == "cifar10"
    assert batch_sizes == [7] * 7 + [1]
    assert decode_workers == [2]


def test_eval_repeats_training_s_validation_error_at_training_s_precision(tiny_cifar, tmp_path, capsys, monkeypatch):
    """Issue 26.4: `resnets eval` of a run uses the precision the run trained (and validated) with,
    unless --precision says otherwise, so its error is the one training printed; it says which."""
    import resnets.runtime as runtime

    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50",
                 "--batch-size", "16", "--iters", "2", "--milestones", "1", "--device", "cpu", "--precision", "fp32",
                 "--no-tensorboard", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    argv = ["eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(tiny_cifar),
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--json"]
    monkeypatch.setattr(runtime, "fast_bf16_available", lambda device: True)  # "auto" would be bf16 here
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["precision"] == "fp32" and result["n"] == 50
    assert result["top1_err"] == pytest.approx(trained["val_error"])
    assert main(argv + ["--precision", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["precision"] == "bf16"
