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
