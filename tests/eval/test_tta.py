"""Test-time protocols: 10-crop geometry, multi-scale fully-convolutional scores, ensembles, evaluate_protocol()."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnets.data.imagenet import ImageFolder
from resnets.errors import ConfigError
from resnets.eval.evaluate import mean_of_probs
from resnets.eval.tta import (
    TenCrop,
    evaluate_protocol,
    multiscale_log_probs,
    protocol_transform,
    ten_crop,
    ten_crop_boxes,
    ten_crop_log_probs,
)


class TinyNet(nn.Module):
    """Conv -> global average pool -> fc: like ResNet's head, valid at any input size."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class ColourNet(nn.Module):
    """Predicts the dominant colour channel (class 0 = red, 1 = green, 2 = blue)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * self.pool(x).flatten(1)


class Normalised(nn.Module):
    """A network with its input normalisation inside, as resnets' networks carry it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.25)


def test_ten_crop_boxes_coordinates() -> None:
    boxes = ten_crop_boxes(256, 341, 224)
    five = [(0, 0), (0, 117), (32, 0), (32, 117), (16, 58)]  # round(117 / 2) = 58 (half to even)
    assert boxes == [(t, l, False) for t, l in five] + [(t, l, True) for t, l in five]
    assert ten_crop_boxes(224, 224, 224) == [(0, 0, False)] * 5 + [(0, 0, True)] * 5
    with pytest.raises(ValueError):
        ten_crop_boxes(200, 300, 224)


def test_ten_crop_views_match_boxes_and_flips() -> None:
    img = torch.arange(3 * 7 * 9).reshape(3, 7, 9)
    views = ten_crop(img, 5)
    assert views.shape == (10, 3, 5, 5)
    for v, (t, l, flipped) in zip(views, ten_crop_boxes(7, 9, 5)):
        ref = img[:, t : t + 5, l : l + 5]
        assert torch.equal(v, ref.flip(-1) if flipped else ref)
    # The transform resizes the shorter side first.
    out = TenCrop(resize=20, crop=16)(Image.new("RGB", (40, 30), (1, 2, 3)))
    assert out.shape == (10, 3, 16, 16) and out.dtype == torch.uint8 and int(out[:, 2].max()) == 3


def test_multiscale_equals_manual_average() -> None:
    model = Normalised(TinyNet()).eval()
    torch.manual_seed(1)
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    x = img[None].float() / 255
    with torch.no_grad():
        got = multiscale_log_probs(model, x, scales=(10, 15, 30), flip=True).exp()

    sizes = [(10, 13), (15, 20), (30, 40)]  # shorter side -> scale, aspect kept (40 * 10 / 30 = 13.3)
    probs = []
    with torch.no_grad():
        for size in sizes:
            xs = x if size == (30, 40) else F.interpolate(x, size=size, mode="bilinear", antialias=True)
            for view in (xs, xs.flip(-1)):
                probs.append(model(view).softmax(1)[0])
    expected = torch.stack(probs).mean(0)
    assert got.shape == (1, 4)
    torch.testing.assert_close(got[0], expected, rtol=1e-5, atol=1e-6)
    assert abs(float(got.sum()) - 1) < 1e-5
    # Without flips only the three unflipped views count.
    with torch.no_grad():
        no_flip = multiscale_log_probs(model, x, scales=(10, 15, 30), flip=False).exp()[0]
    torch.testing.assert_close(no_flip, torch.stack(probs[::2]).mean(0), rtol=1e-5, atol=1e-6)


def test_multiscale_subtracts_the_mean_image_resized_to_each_scale() -> None:
    """The per-pixel mean (Sec. 3.4) is an image of one size; at every scale it is resized to the
    input (bilinear), and the mirrored view has the same mean subtracted at each position."""
    from resnets.models.normalize import Normalize

    torch.manual_seed(0)
    mean = torch.rand(3, 8, 8)
    net = TinyNet().eval()
    model = nn.Sequential(Normalize(mean), net).eval()
    x = torch.randint(0, 256, (1, 3, 16, 24), dtype=torch.uint8).float() / 255
    with torch.no_grad():
        got = multiscale_log_probs(model, x, scales=(8, 12, 16)).exp()[0]
        probs = []
        for size in ((8, 12), (12, 18), (16, 24)):
            xs = x if size == (16, 24) else F.interpolate(x, size=size, mode="bilinear", antialias=True)
            mean_s = F.interpolate(mean[None], size=size, mode="bilinear", align_corners=False)
            probs += [net(xs - mean_s).softmax(1)[0], net(xs.flip(-1) - mean_s).softmax(1)[0]]
        # Leaving the mean out (or mirroring it with the image) gives other scores: the check can tell.
        unnormalised = torch.stack([net(v).softmax(1)[0] for v in (x, x.flip(-1))]).mean(0)
    torch.testing.assert_close(got, torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, unnormalised, atol=1e-3)


def test_ensemble_and_ten_crop_probs() -> None:
    a, b = torch.tensor([[0.7, 0.3], [0.2, 0.8]]), torch.tensor([[0.1, 0.9], [0.6, 0.4]])
    torch.testing.assert_close(mean_of_probs([a.log(), b.log()]).exp(), torch.tensor([[0.4, 0.6], [0.4, 0.6]]))

    m1, m2 = TinyNet(seed=1).eval(), TinyNet(seed=2).eval()
    x = torch.randint(0, 256, (2, 10, 3, 8, 8), dtype=torch.uint8).float() / 255
    with torch.no_grad():
        got = mean_of_probs([ten_crop_log_probs(m, x) for m in (m1, m2)]).exp()
        flat = x.reshape(20, 3, 8, 8)
        per_model = [m(flat).softmax(1).reshape(2, 10, 4).mean(1) for m in (m1, m2)]
    torch.testing.assert_close(got, (per_model[0] + per_model[1]) / 2)
    with pytest.raises(ConfigError, match="protocol_transform"):
        ten_crop_log_probs(m1, x[:, 0])


def _colour_tree(root: Path) -> Path:
    """3 classes (red/green/blue images); 2 of the 9 'blue' files are mislabelled as red."""
    colours = {"0_red": (220, 10, 10), "1_green": (10, 220, 10), "2_blue": (10, 10, 220)}
    for name, c in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24 + 4 * i, 20), c).save(root / name / f"{i}.png")
    for i in range(2):
        Image.new("RGB", (22, 20), colours["2_blue"]).save(root / "0_red" / f"wrong{i}.png")
    return root


@pytest.mark.parametrize("protocol", ["center", "10crop", "multiscale"])
def test_evaluate_protocols_on_image_folder(tmp_path: Path, protocol: str) -> None:
    root = _colour_tree(tmp_path / "val")
    ds = ImageFolder(root, protocol_transform(protocol, resize=20, crop=16, scales=(16, 24)), cache=False)
    result = evaluate_protocol(ColourNet(), ds, protocol, batch_size=4, scales=(16, 24))
    assert result["n"] == 11
    assert result["top1_err"] == pytest.approx(100 * 2 / 11)
    assert result["top5_err"] == 0.0  # top-min(5, 3) = top-3 always contains the target

    ens = evaluate_protocol([ColourNet(), ColourNet()], ds, protocol, batch_size=4, scales=(16, 24))
    assert ens["n"] == result["n"] and ens["top1_err"] == result["top1_err"] and ens["top5_err"] == 0.0
    assert ens["loss"] == pytest.approx(result["loss"])  # an ensemble of one network twice is that network


def test_evaluate_rejects_mismatched_protocol(tmp_path: Path) -> None:
    root = _colour_tree(tmp_path / "val")
    ds = ImageFolder(root, protocol_transform("center", resize=20, crop=16), cache=False)
    with pytest.raises(ConfigError, match="10crop"):
        evaluate_protocol(ColourNet(), ds, "10crop", batch_size=4)
    with pytest.raises(ConfigError, match="unknown test protocol"):
        evaluate_protocol(ColourNet(), ds, "5crop", batch_size=4)  # type: ignore[arg-type]


class _Stderr(io.StringIO):
    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.mark.parametrize("protocol", ["10crop", "multiscale"])
def test_long_protocols_show_progress(tmp_path: Path, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26.6: on a terminal a bar with images; in a log, periodic lines (every LINE_EVERY s,
    0 here) with the count, the rate and the time left."""
    from resnets.eval import progress

    ds = ImageFolder(_colour_tree(tmp_path / "val"), protocol_transform(protocol, resize=20, crop=16, scales=(16, 24)),
                     cache=False)
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    for terminal in (False, True):
        stream = _Stderr(terminal)
        monkeypatch.setattr(sys, "stderr", stream)
        result = evaluate_protocol(ColourNet(), ds, protocol, batch_size=4, scales=(16, 24))
        monkeypatch.undo()
        monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
        out = stream.getvalue()
        assert result["n"] == 11
        views = "10-crop" if protocol == "10crop" else "2-scale"
        if terminal:
            assert f"{views} evaluation" in out and "/11 [" in out and "img/s" in out
        else:
            lines = out.strip().splitlines()
            assert lines and all(line.startswith(f"{views} evaluation: ") for line in lines)
            assert "/11 images (" in lines[0] and "images/s, about" in lines[0]
