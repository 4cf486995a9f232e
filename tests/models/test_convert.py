"""Weights from elsewhere: torchvision-format and akamaster CIFAR checkpoints -> resnets networks.

The references are independent re-implementations of the source architectures (written
here from their authors' code, not with resnets' modules); the akamaster ones load the
real published files exactly as their authors' code does, and the logits are compared on
real CIFAR-10 JPEG images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from resnets.cli import main
from resnets.config import TrainConfig, to_dict
from resnets.errors import CheckpointError, ConfigError
from resnets.models import Normalize, create_model, load_state_dict, read_weights_config
from resnets.models.formats.torchvision import convert_state_dict
from resnets.models.loading import convert_weights, model_from_file
from resnets.models.pretrained import CIFAR10_CLASSES

from reference_nets import AkamasterResNet, TorchvisionResNet50, randomize_bn


def cli(argv: list[str]) -> int:
    return main(["convert", *argv])


def real_images(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The real CIFAR-10 JPEGs of `cifar_jpeg_images` as a uint8 batch, and their labels."""
    files = sorted(folder.glob("train/*/*.jpg"))
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([CIFAR10_CLASSES.index(f.parent.name) for f in files])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


# --------------------------------------------------------------------------- torchvision


def test_torchvision_resnet50_converts_exactly_with_its_stride_placement(tmp_path, capsys):
    torch.manual_seed(0)
    reference = randomize_bn(TorchvisionResNet50(num_classes=7))
    src = tmp_path / "resnet50-torchvision.pth"
    torch.save(reference.state_dict(), src)  # a bare torchvision state dict
    x = torch.rand(1, 3, 64, 64)
    expected = reference(Normalize.channel()(x))

    dst = tmp_path / "model.safetensors"
    assert cli([str(src), "--out", str(dst), "--stride-in-3x3"]) == 0
    config = read_weights_config(dst)
    assert config["name"] == "resnet50" and config["num_classes"] == 7  # inferred from the layers
    assert config["stride_in_1x1"] is False and config["normalization"] == "channel_mean_std"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recorded placement is built, silently
        loaded = create_model("resnet50", weights=str(dst)).eval()
    torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match=r"stride in the 3x3 \(v1.5\).*first 1x1 \(paper\)"):
        paper = create_model("resnet50", weights=str(dst), stride_in_1x1=True).eval()
    assert not torch.allclose(paper(x), expected, atol=1e-3)  # same keys, different computation

    # Without a flag: the paper's placement, as `resnets train` -- said out loud, since the
    # file does not record its placement (torchvision's own files are recognised, see
    # test_pretrained.py).
    with pytest.warns(UserWarning, match="do not record their bottleneck stride placement"):
        assert cli([str(src), "--out", str(tmp_path / "paper.safetensors")]) == 0
    assert read_weights_config(tmp_path / "paper.safetensors")["stride_in_1x1"] is True
    assert cli([str(src), "--out", str(tmp_path / "p1.safetensors"), "--stride-in-1x1"]) == 0
    assert read_weights_config(tmp_path / "p1.safetensors")["stride_in_1x1"] is True
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli([str(src), "--out", str(tmp_path / "x.safetensors"), "--stride-in-1x1", "--stride-in-3x3"])
    assert "not allowed with argument" in capsys.readouterr().err


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


def save_akamaster_checkpoint(net: nn.Module, path) -> None:
    # As that repo's trainer saves it: DataParallel's `module.` prefix, inside a dict with best_prec1.
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "best_prec1": 91.25}, path)


def test_akamaster_cifar_resnet20_converts_to_the_same_function(tmp_path):
    torch.manual_seed(2)
    reference = randomize_bn(AkamasterResNet(n=3))
    src = tmp_path / "resnet20-12fca82f.th"  # a file name is no identity: its sha256 matches no published file
    save_akamaster_checkpoint(reference, src)
    dst = tmp_path / "cifar_resnet20.safetensors"
    assert cli([str(src), "--out", str(dst)]) == 0
    config = read_weights_config(dst)
    assert config == {"name": "cifar_resnet20", "num_classes": 10, "shortcut": "A", "stride_in_1x1": True,
                      "normalization": "channel_mean_std", "converted_from": "akamaster",
                      "class_names": list(CIFAR10_CLASSES)}

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
    cli([str(src), "--out", str(dst), "--model", "cifar_resnet8", "--mean", "0.4914,0.4822,0.4465", "--std", "0.247,0.243,0.261"])
    x = torch.rand(2, 3, 32, 32)
    norm = Normalize.channel((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    loaded = create_model("cifar_resnet8", weights=str(dst)).eval()
    torch.testing.assert_close(loaded(x), reference(norm(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("file, n", [("akamaster-resnet20-12fca82f.th", 3), ("akamaster-resnet32-d509ac18.th", 5)])
def test_published_akamaster_checkpoints_load_as_published(file, n, peer_weights, cifar_jpeg_images, tmp_path):
    """The real published files: no `num_batches_tracked`, `module.` prefixes, a
    {'state_dict', 'best_prec1'} wrapper, legacy serialization, CUDA storages."""
    published = peer_weights / file
    name = f"cifar_resnet{6 * n + 2}"
    # The authors' own loading code: their model inside DataParallel, the file as it is.
    reference = nn.DataParallel(AkamasterResNet(n))
    reference.load_state_dict(torch.load(published, map_location="cpu", weights_only=True)["state_dict"])
    images, labels = real_images(cifar_jpeg_images)
    with torch.no_grad():
        expected = reference.eval()(Normalize.channel()(images))  # their training normalisation

        direct = create_model(name, weights=str(published)).eval()
        into = load_state_dict(create_model(name), published).eval()
        into.input_norm = Normalize.channel()
        dst = tmp_path / f"{name}.safetensors"
        assert cli([str(published), "--out", str(dst)]) == 0
        converted, info = model_from_file(dst)
        for net in (direct, into, converted.eval()):
            torch.testing.assert_close(net(images), expected, rtol=1e-4, atol=1e-4)
    assert (expected.argmax(1) == labels).float().mean() >= 0.7  # real weights, real images
    config = read_weights_config(dst)
    # Recognised by its sha256 as the published file: the registry's preprocessing and names.
    assert config["weights"] == "akamaster-cifar10" and config["normalization"] == "channel_mean_std"
    assert config["class_names"] == list(CIFAR10_CLASSES) and (config["eval_resize"], config["eval_crop"]) == (32, 32)


def test_checkpoints_in_the_shapes_they_take_in_the_wild(tmp_path):
    torch.manual_seed(4)
    reference = randomize_bn(create_model("cifar_resnet8", num_classes=10))
    sd = reference.state_dict()
    no_counter = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    files = {
        "legacy.pth": ({"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, {"_use_new_zipfile_serialization": False}),
        "net.pt": ({"net": {"module." + k: v for k, v in sd.items()}, "acc": torch.tensor(91.0)}, {}),
        "old-bn.th": ({"state_dict": {"_orig_mod." + k: v for k, v in no_counter.items()}, "best_prec1": 90.0}, {}),
        "extra-entries.pth": ({**sd, "epoch": 7, "arch": "cifar_resnet8"}, {}),
    }
    for file, (obj, options) in files.items():
        torch.save(obj, tmp_path / file, **options)
    save_file({k: v.contiguous() for k, v in no_counter.items()}, tmp_path / "foreign.safetensors")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference(x.float() / 255)
        for file in [*files, "foreign.safetensors"]:
            into = load_state_dict(create_model("cifar_resnet8"), tmp_path / file).eval()
            torch.testing.assert_close(into(x.float() / 255), expected, rtol=0, atol=0, msg=file)
            # create_model converts: the format's convention, ImageNet channel mean/std, comes along.
            direct = create_model("cifar_resnet8", weights=str(tmp_path / file)).eval()
            torch.testing.assert_close(direct(x), reference(Normalize.channel()(x)), rtol=0, atol=0, msg=file)


# --------------------------------------------------------------------------- normalisation


def test_convert_keeps_the_normalisation_the_source_was_trained_with(tmp_path):
    torch.manual_seed(5)
    trained = randomize_bn(create_model("cifar_resnet8"))
    mean_image = torch.rand(3, 32, 32)
    config = TrainConfig()
    config.model.name = "cifar_resnet8"
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    # A training checkpoint in the format written since a0f3558 (per-pixel mean, the paper's).
    torch.save({"iteration": 10, "config": to_dict(config), "model": trained.state_dict(), "optimizer": {},
                "schedule": {}, "normalize": {"mean": mean_image}}, run / "last.pt")
    assert cli([str(run / "last.pt"), "--out", str(tmp_path / "r8.safetensors")]) == 0
    net = create_model("cifar_resnet8", weights=str(tmp_path / "r8.safetensors")).eval()
    assert net.input_norm.kind == "per_pixel_mean" and torch.equal(net.input_norm.mean, mean_image)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(net(x), trained(x.float() / 255 - mean_image), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="training checkpoint; its own input normalisation is kept"):
        convert_weights(run / "last.pt", tmp_path / "swapped.safetensors", normalization="channel_mean_std")

    # Weights from elsewhere that carry a mean image beside the network keep it as well.
    foreign = {**trained.state_dict(), "input_norm.mean": mean_image, "input_norm.std": torch.ones(3, 1, 1)}
    save_file({k: v.contiguous() for k, v in foreign.items()}, tmp_path / "foreign.safetensors")
    assert cli([str(tmp_path / "foreign.safetensors"), "--out", str(tmp_path / "kept.safetensors"), "--model", "cifar_resnet8"]) == 0
    kept = create_model("cifar_resnet8", weights=str(tmp_path / "kept.safetensors"))
    assert torch.equal(kept.input_norm.mean, mean_image)
    with pytest.raises(ConfigError, match="carry their own input normalisation"):
        convert_weights(tmp_path / "foreign.safetensors", tmp_path / "x.safetensors", model="cifar_resnet8",
                        mean=(0.5, 0.5, 0.5))
    assert not (tmp_path / "swapped.safetensors").exists() and not (tmp_path / "x.safetensors").exists()


def test_std_without_mean_is_a_one_line_error(tmp_path, capsys):
    sd = create_model("cifar_resnet8").state_dict()
    save_file({**sd, "input_norm.std": torch.ones(3, 1, 1)}, tmp_path / "half.safetensors")
    assert cli([str(tmp_path / "half.safetensors"), "--out", str(tmp_path / "out.safetensors"), "--model", "cifar_resnet8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "half.safetensors" in err
    assert "input_norm.mean" in err and "input_norm.std" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="needs both input_norm.mean and input_norm.std"):
        load_state_dict(create_model("cifar_resnet8"), tmp_path / "half.safetensors")


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
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="expected a state dict.*found epoch, note"):
        convert_weights(tmp_path / "empty.pth", tmp_path / "c.safetensors")

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
    with pytest.raises(ConfigError, match="carry no mean image"):
        convert_state_dict(good, normalization="per_pixel_mean")
    with pytest.raises(CheckpointError, match="weights nonsense-tag: no such file.*known tags for resnet18: "
                                              "torchvision-imagenet1k-v1"):
        create_model("resnet18", weights="nonsense-tag")
    # A resnets file needs no conversion.
    dst = tmp_path / "ok.safetensors"
    torch.save(good, tmp_path / "r18.pth")
    convert_weights(tmp_path / "r18.pth", dst)
    with pytest.raises(CheckpointError, match="already a resnets weights file"):
        convert_weights(dst, tmp_path / "again.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
