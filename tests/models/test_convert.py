"""`resnets convert`: torchvision-format and akamaster-style CIFAR weights -> resnets weights files."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets.cli import convert as convert_cli
from resnets.errors import CheckpointError, ConfigError
from resnets.models import Normalize, create_model, read_weights_config
from resnets.models.convert import convert_state_dict, convert_weights
from resnets.train.checkpoint import model_from_file


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so every tensor matters in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    convert_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["convert", *argv])
    return args.func(args)


# --------------------------------------------------------------------------- torchvision


def test_torchvision_resnet50_converts_exactly_and_warns_in_paper_stride(tmp_path):
    torch.manual_seed(0)
    reference = randomize_bn(create_model("resnet50", num_classes=7, stride_in_1x1=False))
    src = tmp_path / "resnet50-torchvision.pth"
    torch.save(reference.state_dict(), src)  # a bare torchvision-style state dict
    dst = tmp_path / "model.safetensors"
    assert cli([str(src), str(dst)]) == 0

    config = read_weights_config(dst)
    assert config["name"] == "resnet50" and config["num_classes"] == 7  # inferred from the layers
    assert config["stride_in_1x1"] is False and config["normalization"] == "channel_mean_std"
    x = torch.rand(1, 3, 32, 32)
    expected = reference(Normalize.channel()(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching placement loads silently
        loaded = create_model("resnet50", weights=str(dst), stride_in_1x1=False).eval()
    torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)

    with pytest.warns(UserWarning, match=r"stride in the 3x3 \(v1.5\).*first 1x1 \(paper\)"):
        paper = create_model("resnet50", weights=str(dst)).eval()
    assert not torch.allclose(paper(x), expected)  # same keys, different computation


def test_custom_mean_std_and_explicit_model(tmp_path):
    torch.manual_seed(1)
    reference = randomize_bn(create_model("resnet18", num_classes=5))
    net, config = convert_state_dict({"module." + k: v for k, v in reference.state_dict().items()},
                                     model="resnet18", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(1, 3, 48, 48)
    torch.testing.assert_close(net(x), reference((x - 0.5) / 0.25), rtol=1e-5, atol=1e-5)
    assert config["name"] == "resnet18" and config["converted_from"] == "torchvision"
    none, _ = convert_state_dict(reference.state_dict(), normalization="none")
    assert none.input_norm is None
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    convert_weights(tmp_path / "r18.pth", tmp_path / "r18.safetensors", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    via_eval_loader, _ = model_from_file(tmp_path / "r18.safetensors")  # what `resnets eval --checkpoint` uses
    torch.testing.assert_close(via_eval_loader.eval()(x), reference((x - 0.5) / 0.25), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- akamaster CIFAR


class LambdaLayer(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class AkamasterBlock(nn.Module):
    """The block of akamaster/pytorch_resnet_cifar10 (option A pads planes//4 on both sides)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class AkamasterResNet(nn.Module):
    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes_in, stages = 16, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(AkamasterBlock(planes_in, planes, stride if i == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out)


def save_akamaster_checkpoint(net: nn.Module, path) -> None:
    # As that repo's trainer saves it: DataParallel's `module.` prefix, inside a dict with best_prec1.
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "best_prec1": 91.25}, path)


def test_akamaster_cifar_resnet20_converts_to_the_same_function(tmp_path):
    torch.manual_seed(2)
    reference = randomize_bn(AkamasterResNet(n=3))
    src = tmp_path / "resnet20-12fca82f.th"
    save_akamaster_checkpoint(reference, src)
    dst = tmp_path / "cifar_resnet20.safetensors"
    assert cli([str(src), str(dst)]) == 0
    config = read_weights_config(dst)
    assert config == {"name": "cifar_resnet20", "num_classes": 10, "shortcut": "A", "stride_in_1x1": False,
                      "normalization": "channel_mean_std", "converted_from": "akamaster"}

    x = torch.rand(4, 3, 32, 32)
    expected = reference(Normalize.channel()(x))
    loaded = create_model("cifar_resnet20", weights=str(dst)).eval()
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    # The channel permutation is what makes it exact: renaming keys alone computes something else.
    renamed = {k.replace("linear.", "fc."): v for k, v in reference.state_dict().items()}
    naive = create_model("cifar_resnet20")
    naive.load_state_dict(renamed)
    assert not torch.allclose(naive.eval()(Normalize.channel()(x)), expected, atol=1e-3)


def test_akamaster_mean_std_override(tmp_path):
    torch.manual_seed(3)
    reference = randomize_bn(AkamasterResNet(n=1, num_classes=4))
    src = tmp_path / "resnet8.th"
    save_akamaster_checkpoint(reference, src)
    dst = tmp_path / "out.safetensors"
    cli([str(src), str(dst), "--model", "cifar_resnet8", "--mean", "0.4914,0.4822,0.4465", "--std", "0.247,0.243,0.261"])
    x = torch.rand(2, 3, 32, 32)
    norm = Normalize.channel((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    loaded = create_model("cifar_resnet8", weights=str(dst)).eval()
    torch.testing.assert_close(loaded(x), reference(norm(x)), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        convert_weights(garbage, tmp_path / "a.safetensors")

    good = create_model("resnet18").state_dict()
    truncated = tmp_path / "truncated.pth"
    torch.save(good, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        convert_weights(truncated, tmp_path / "b.safetensors")

    with pytest.raises(CheckpointError, match="cannot tell the weights' format"):
        convert_state_dict({"encoder.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="missing keys: layer1.0.conv1.weight"):
        convert_state_dict({k: v for k, v in good.items() if k != "layer1.0.conv1.weight"}, model="resnet18")
    with pytest.raises(CheckpointError, match="does not fit"):
        convert_state_dict(good, model="resnet34")
    with pytest.raises(ConfigError, match="--model"):
        convert_state_dict(good, model="resnet19")
    with pytest.raises(ConfigError, match="--mean/--std"):
        convert_state_dict(good, std=(0.1, 0.0, 0.1))
    # A resnets file needs no conversion.
    dst = tmp_path / "ok.safetensors"
    torch.save(good, tmp_path / "r18.pth")
    convert_weights(tmp_path / "r18.pth", dst)
    with pytest.raises(CheckpointError, match="already a resnets weights file"):
        convert_weights(dst, tmp_path / "again.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
