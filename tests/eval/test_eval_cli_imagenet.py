"""`resnets eval --dataset imagenet --tta {center,10crop,multiscale}` through resnets.cli.main.

The networks are small (cifar_resnet8 with 3 outputs, random weights): what is tested is the
command's wiring - protocol, class order, ensembles, JSON output - against a direct
computation with the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.cli import main
from resnets.data.transforms import ResizeCenterCrop, ResizeShorter, to_uint8_chw
from resnets.models import Normalize, ResNet, create_model, save_weights

CLASSES = ["n01", "n02", "n03"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """ROOT/train with 3 classes; ROOT/val with images of classes n01 and n03 only (n02 absent)."""
    root = tmp_path_factory.mktemp("imagenet_eval")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 1), ("val", 1)):
        for c, name in enumerate(CLASSES):
            if split == "val" and name == "n02":
                continue
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                w, h = (90, 70) if c % 2 else (64, 80)
                img = np.clip(80 * c + rng.integers(0, 80, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def save_model(path: Path, seed: int, per_pixel: bool) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("cifar_resnet8", num_classes=3)
    for m in model.modules():  # eval-mode BN with non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
    model.input_norm = Normalize(torch.rand(3, 224, 224) * 0.5) if per_pixel else Normalize.channel()
    save_weights(path, model, {"name": "cifar_resnet8", "num_classes": 3, "shortcut": "A", "stride_in_1x1": True,
                               "normalization": "per_pixel_mean" if per_pixel else "channel_mean_std"})
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return [(folder / "a.safetensors", save_model(folder / "a.safetensors", 0, True)),
            (folder / "b.safetensors", save_model(folder / "b.safetensors", 1, False))]


def run_eval(capsys, tree: Path, checkpoints, tta: str, *extra: str) -> dict:
    argv = ["eval", "--dataset", "imagenet", "--data", str(tree), "--tta", tta, "--workers", "0",
            "--device", "cpu", "--batch-size", "3", "--json", *extra]
    for c in checkpoints:
        argv += ["--checkpoint", str(c)]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def val_images(tree: Path) -> list[tuple[Image.Image, int]]:
    # Labels follow the training classes: n03 is index 2 although val has only two folders.
    return [(Image.open(p).convert("RGB"), CLASSES.index(p.parent.name))
            for p in sorted((tree / "val").glob("*/*.png"))]


def errors_from_probs(probs: torch.Tensor, labels: list[int]) -> float:
    return 100.0 * float((probs.argmax(1) != torch.tensor(labels)).float().mean())


@torch.no_grad()
def test_center_and_ensemble_match_a_direct_computation(capsys, tree, models, monkeypatch, tmp_path):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path))
    data = val_images(tree)
    x = torch.stack([ResizeCenterCrop(256, 224)(img) for img, _ in data]).float() / 255
    labels = [t for _, t in data]
    probs = [m(x).softmax(1) for _, m in models]

    single = run_eval(capsys, tree, [models[0][0]], "center")
    assert single["n"] == 2 and single["split"] == "val" and single["protocol"] == "center"
    assert single["top1_err"] == pytest.approx(errors_from_probs(probs[0], labels))
    assert single["top5_err"] == 0.0  # 3 classes: the target is always among the top 5

    # Labels follow the training classes (ROOT/train), not val's own folder list.
    from resnets.eval.datasets import imagenet_classes

    assert imagenet_classes(str(tree), None)[0] == CLASSES
    assert imagenet_classes(str(tree), {"classes": ["x", "y"]})[0] == ["x", "y"]

    ensemble = run_eval(capsys, tree, [m for m, _ in models], "center")
    assert ensemble["n"] == 2 and ensemble["checkpoints"] == [str(m) for m, _ in models]
    assert ensemble["top1_err"] == pytest.approx(errors_from_probs((probs[0] + probs[1]) / 2, labels))


def record_forward(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, logits) of every batch the networks run on from now on: what `resnets eval` feeds them."""
    seen, real_forward = [], ResNet.forward

    def forward(self, x):
        logits = real_forward(self, x)
        seen.append((x.detach().clone(), logits.detach().float().clone()))
        return logits

    monkeypatch.setattr(ResNet, "forward", forward)
    return seen


def averaged(logits: list[torch.Tensor], label: int) -> tuple[torch.Tensor, float]:
    """The softmax scores of the views averaged, and their negative log-likelihood of `label`."""
    probs = torch.cat(logits).softmax(1).mean(0)
    return probs, -float(probs[label].log())


@torch.no_grad()
def test_ten_crop_is_the_corners_centre_and_their_flips_of_the_256_image(capsys, tree, models, monkeypatch, tmp_path):
    """Sec. 3.4's "standard 10-crop testing": the 4 corner and the centre 224 crops of the image
    resized to shorter side 256, and their mirrors (written out here with Pillow and slicing),
    their softmax scores averaged."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path))
    seen = record_forward(monkeypatch)
    result = run_eval(capsys, tree, [models[1][0]], "10crop")
    assert result["n"] == 2 and result["protocol"] == "10crop"

    fed, logits = torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen])
    assert fed.shape == (20, 3, 224, 224)  # 2 images x 10 views
    data = val_images(tree)
    probs, losses = [], []
    for i, (img, label) in enumerate(data):
        assert img.size == (64, 80)  # -> 256 x 320: no rounding to argue about
        resized = torch.from_numpy(np.array(img.resize((256, 320), Image.Resampling.BILINEAR))).permute(2, 0, 1)
        corners = [(0, 0), (0, 256 - 224), (320 - 224, 0), (320 - 224, 256 - 224), ((320 - 224) // 2, (256 - 224) // 2)]
        crops = [resized[:, t:t + 224, left:left + 224] for t, left in corners]
        views = [c.float() / 255 for c in crops + [c.flip(-1) for c in crops]]
        got = fed[10 * i:10 * (i + 1)]
        # The ten views, each fed exactly once, and nothing else.
        assert sorted(next(j for j, g in enumerate(got) if torch.equal(v, g)) for v in views) == list(range(10))
        p, loss = averaged([logits[10 * i:10 * (i + 1)]], label)
        probs.append(p)
        losses.append(loss)
    assert result["top1_err"] == pytest.approx(errors_from_probs(torch.stack(probs), [t for _, t in data]))
    assert result["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


@torch.no_grad()
def test_multiscale_averages_the_five_scales_and_their_flips(capsys, tree, models, monkeypatch, tmp_path):
    """Sec. 3.4: the whole image with its shorter side at each of {224, 256, 384, 480, 640}, and its
    mirror; the ten softmax scores averaged. (The per-pixel-mean model gets its 224x224 mean
    resized to every scale.)"""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path))
    seen = record_forward(monkeypatch)
    result = run_eval(capsys, tree, [models[0][0]], "multiscale")
    assert result["n"] == 2 and result["protocol"] == "multiscale" and result["dataset"] == "imagenet"

    data = val_images(tree)
    assert len(seen) == 2 * 5  # per image, one batch per scale: the view and its mirror
    probs, losses = [], []
    for i, (img, label) in enumerate(data):
        assert img.size == (64, 80)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        batches = seen[5 * i:5 * (i + 1)]
        for s, (fed, _) in zip((224, 256, 384, 480, 640), sorted(batches, key=lambda b: b[0].shape[-1])):
            view = F.interpolate(x, size=(round(80 * s / 64), s), mode="bilinear", align_corners=False, antialias=True)
            assert fed.shape == (2, 3, round(80 * s / 64), s), f"scale {s}"
            torch.testing.assert_close(fed, torch.cat([view, view.flip(-1)]), rtol=0, atol=1e-6)
        p, loss = averaged([y for _, y in batches], label)
        probs.append(p)
        losses.append(loss)
    assert result["top1_err"] == pytest.approx(errors_from_probs(torch.stack(probs), [t for _, t in data]))
    assert result["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_models_go_to_the_device_and_run_at_the_precision_asked_for(capsys, tree, models, monkeypatch, tmp_path):
    """Regression: the ImageNet path never moved the networks to --device (a CUDA run failed) and ignored
    --precision. Without a GPU, what is checked is that each network is sent to the requested device
    and runs under bf16 autocast."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path))
    moved, autocast = [], []
    real_to, real_forward = torch.nn.Module.to, ResNet.forward

    def to(self, *args, **kwargs):
        if isinstance(self, ResNet):
            moved.append((id(self), args[0] if args else kwargs.get("device")))
        return real_to(self, *args, **kwargs)

    def forward(self, x):
        autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real_forward(self, x)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(ResNet, "forward", forward)
    result = run_eval(capsys, tree, [m for m, _ in models], "center", "--precision", "bf16")
    assert result["n"] == 2
    sent = {(model, torch.device(device)) for model, device in moved if device is not None}
    assert len({model for model, device in sent if device == torch.device("cpu")}) == 2  # both networks
    assert autocast and all(autocast_on and dtype == torch.bfloat16 for autocast_on, dtype in autocast)


def test_cache_dir_holds_the_imagenet_file_index(capsys, tree, models, monkeypatch, tmp_path):
    """Regression: --cache-dir was ignored for ImageNet (the file index went to ~/.cache/resnets)."""
    default = tmp_path / "default"
    monkeypatch.setenv("RESNETS_CACHE", str(default))
    run_eval(capsys, tree, [models[0][0]], "center", "--cache-dir", str(tmp_path / "asked"))
    assert list((tmp_path / "asked").glob("*.json")) and not default.exists()
