"""`resnets predict` and `resnets eval --weights`, on real CIFAR-10 JPEGs and the real published
akamaster ResNet-20 (downloaded from a local HTTP server through the registry)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.data.transforms import ResizeCenterCrop
from resnets.models import Normalize, create_model, save_weights
from resnets.models.pretrained import CIFAR10_CLASSES

R20 = ("cifar_resnet20", "akamaster-cifar10")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_predict_top5_with_names_for_files_folders_and_globs(serve_pretrained, peer_weights, cifar_jpeg_images,
                                                             tmp_path, capsys):
    published = peer_weights / "akamaster-resnet20-12fca82f.th"
    serve_pretrained(*R20, published)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    folder = cifar_jpeg_images / "train"
    args = ["predict", str(folder / "cat"), str(folder / "ship" / "*.jpg"), str(folder / "dog" / sorted(
        p.name for p in (folder / "dog").iterdir())[0]), str(broken), str(tmp_path / "missing.jpg"),
        "--model", "cifar_resnet20", "--weights", "akamaster-cifar10", "--json"]
    assert main(args) == 1  # some images could not be read; the others were classified
    captured = capsys.readouterr()
    result = last_json(captured.out)
    assert [Path(p["image"]).parent.name for p in result["predictions"]] == ["cat"] * 4 + ["ship"] * 4 + ["dog"]
    assert {Path(e["image"]).name for e in result["errors"]} == {"broken.jpg", "missing.jpg"}
    assert "broken.jpg: cannot decode image" in captured.err and "2 of 11 images could not be read" in captured.err
    assert result["view"] == {"resize": 32, "crop": 32}

    # The same numbers as the network on the decoded 32x32 image, with the weights' own
    # normalisation (ImageNet channel mean/std for akamaster's) inside the network.
    net = create_model("cifar_resnet20", weights=str(published)).eval()
    for p in result["predictions"]:
        image = torch.from_numpy(np.array(Image.open(p["image"]).convert("RGB"))).permute(2, 0, 1)
        probs = torch.softmax(net(image[None]), 1)[0]
        top = probs.topk(5)
        assert [t["index"] for t in p["top"]] == top.indices.tolist()
        assert [t["class"] for t in p["top"]] == [CIFAR10_CLASSES[i] for i in top.indices]
        np.testing.assert_allclose([t["probability"] for t in p["top"]], top.values.detach().numpy(), rtol=1e-5)
    correct = sum(p["top"][0]["class"] == Path(p["image"]).parent.name for p in result["predictions"])
    assert correct >= 7  # 9 real images, real weights

    assert main(["predict", str(folder / "ship"), "--model", "cifar_resnet20", "--weights", "akamaster-cifar10",
                 "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * 3 and lines[1].split()[:2] == ["1.", "ship"] and lines[1].endswith("%")


def test_predict_resizes_as_the_weights_were_evaluated(tmp_path, capsys):
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=3).eval()
    net.input_norm = Normalize.channel()
    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)
    for extra, view in (({}, (256, 224)), ({"eval_resize": 232, "eval_crop": 224}, (232, 224))):
        weights = tmp_path / f"r18-{view[0]}.safetensors"
        save_weights(weights, net, {"name": "resnet18", "num_classes": 3, "stride_in_1x1": False,
                                    "class_names": ["a", "b", "c"], **extra})
        assert main(["predict", str(photo), "--checkpoint", str(weights), "--json"]) == 0
        result = last_json(capsys.readouterr().out)
        assert result["view"] == {"resize": view[0], "crop": view[1]}
        # Shorter side to `resize`, then the center `crop` (Pillow, bilinear, done the slow way).
        w, h = round(300 * view[0] / 200), view[0]
        left, top = round((w - view[1]) / 2), round((h - view[1]) / 2)
        crop = Image.open(photo).resize((w, h), Image.Resampling.BILINEAR).crop((left, top, left + view[1], top + view[1]))
        x = torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None]
        with torch.no_grad():
            expected = torch.softmax(net(x), 1)[0]
            fused = torch.softmax(net(ResizeCenterCrop(*view)(Image.open(photo).convert("RGB"))[None]), 1)[0]
        got = {t["class"]: t["probability"] for t in result["predictions"][0]["top"]}
        assert got == pytest.approx({c: float(p) for c, p in zip("abc", fused)}, rel=1e-5)
        assert got == pytest.approx({c: float(p) for c, p in zip("abc", expected)}, abs=0.02)


def test_predict_needs_weights_or_a_checkpoint(capsys, tmp_path):
    assert main(["predict", str(tmp_path), "--model", "cifar_resnet20"]) == 2
    assert "give either --weights TAG" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--weights", "akamaster-cifar10"]) == 2
    assert "--weights TAG needs --model NAME" in capsys.readouterr().err


def test_eval_takes_a_weights_tag(serve_pretrained, peer_weights, cifar_jpeg_images, capsys):
    published = peer_weights / "akamaster-resnet20-12fca82f.th"
    serve_pretrained(*R20, published)
    assert main(["eval", "--model", "cifar_resnet20", "--weights", "akamaster-cifar10", "--data",
                 str(cifar_jpeg_images), "--split", "trainval", "--json"]) == 0
    result = last_json(capsys.readouterr().out)
    files = sorted((cifar_jpeg_images / "train").glob("*/*.jpg"))
    images = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])).permute(0, 3, 1, 2)
    labels = torch.tensor([CIFAR10_CLASSES.index(f.parent.name) for f in files])
    with torch.no_grad():
        predicted = create_model("cifar_resnet20", weights=str(published)).eval()(images).argmax(1)
    assert result["n"] == len(files) == 40 and result["weights"] == "cifar_resnet20:akamaster-cifar10"
    assert result["top1_err"] == pytest.approx(100 * (predicted != labels).float().mean().item())
