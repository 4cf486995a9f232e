"""Paper (Sec. 3.4) and RandomResizedCrop augmentation geometry, PCA lighting, mean image."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data.imagenet import ImageFolder, compute_mean_image
from resnets.data.transforms import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    PaperScaleCrop,
    RandomResizedCrop,
    ResizeShorter,
    eval_transform,
    pca_lighting,
    resize_shorter_size,
    to_uint8_chw,
    train_transform,
)


def _gradient_image(w: int = 500, h: int = 375) -> Image.Image:
    """Smooth, asymmetric content, so crops and flips are identifiable and resampling is exact-ish."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_paper_scale_range_covers_256_to_480() -> None:
    t = train_transform("paper")
    rng = random.Random(0)
    shorters, lefts, tops, flips = [], [], [], []
    for _ in range(4000):
        s, left, top, flip = t.get_params(500, 375, rng)
        rw, rh = resize_shorter_size(500, 375, s)
        assert rh == s and 0 <= left <= rw - 224 and 0 <= top <= rh - 224
        shorters.append(s), lefts.append(left), tops.append(top), flips.append(flip)
    assert min(shorters) == 256 and max(shorters) == 480
    # Uniform over [256, 480]: mean ~368, both ends hit with similar frequency.
    assert abs(np.mean(shorters) - 368) < 5
    assert abs(np.mean(flips) - 0.5) < 0.05
    assert max(tops) > 200 and min(tops) == 0  # crops reach both borders


def test_paper_transform_equals_resize_crop_flip() -> None:
    img = _gradient_image()
    t = PaperScaleCrop((256, 480), 224)
    seen_flip = {False: 0, True: 0}
    for seed in range(12):
        s, left, top, flip = t.get_params(*img.size, random.Random(seed))
        out = t(img, random.Random(seed))
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
        ref = ResizeShorter(s)(img).crop((left, top, left + 224, top + 224))
        if flip:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        diff = (out.int() - to_uint8_chw(ref).int()).abs()
        assert diff.float().mean() < 1.0 and diff.max() <= 3  # fused resize == resize-then-crop
        seen_flip[flip] += 1
    assert seen_flip[True] and seen_flip[False]


def test_paper_flip_mirrors_the_crop() -> None:
    img = _gradient_image()
    t = PaperScaleCrop((256, 256), 224, flip=True)
    no_flip = PaperScaleCrop((256, 256), 224, flip=False)
    # Same rng stream for the geometry; the flip decision is drawn last.
    for seed in range(10):
        s, left, top, flip = t.get_params(*img.size, random.Random(seed))
        a, b = t(img, random.Random(seed)), no_flip(img, random.Random(seed))
        if flip:
            assert torch.equal(a, b.flip(-1))
        else:
            assert torch.equal(a, b)
    # Red grows left->right in the source; a flipped crop has it decreasing.
    flipped = next(t(img, random.Random(s)) for s in range(50) if t.get_params(500, 375, random.Random(s))[3])
    assert flipped[0, :, 0].float().mean() > flipped[0, :, -1].float().mean()


def test_seeded_transform_is_deterministic() -> None:
    img = _gradient_image(300, 260)
    for preset in ("paper", "randomresizedcrop"):
        t = train_transform(preset)
        assert torch.equal(t(img, random.Random(3)), t(img, random.Random(3)))
    with pytest.raises(ValueError, match="preset"):
        train_transform("bogus")  # type: ignore[arg-type]


def test_randomresizedcrop_area_and_ratio() -> None:
    t = RandomResizedCrop(224)
    rng = random.Random(1)
    areas, ratios = [], []
    for _ in range(2000):
        left, top, cw, ch = t.get_params(500, 375, rng)
        assert 0 <= left and left + cw <= 500 and 0 <= top and top + ch <= 375
        areas.append(cw * ch / (500 * 375))
        ratios.append(cw / ch)
    assert 0.07 < min(areas) < 0.12 and max(areas) > 0.9
    assert min(ratios) > 0.74 and max(ratios) < 1.34
    assert t(_gradient_image(), rng).shape == (3, 224, 224)
    # A very elongated image falls back to a central crop clamped to the ratio range.
    left, top, cw, ch = RandomResizedCrop(224, scale=(0.99, 1.0)).get_params(1000, 10, random.Random(0))
    assert ch == 10 and cw == round(10 * 4 / 3) and left == (1000 - cw) // 2


def test_eval_transform_is_resize_then_center_crop() -> None:
    img = _gradient_image(500, 375)
    out = eval_transform(256, 224)(img)
    resized = ResizeShorter(256)(img)
    w, h = resized.size
    left, top = round((w - 224) / 2), round((h - 224) / 2)
    ref = to_uint8_chw(resized.crop((left, top, left + 224, top + 224)))
    assert out.shape == (3, 224, 224)
    assert (out.int() - ref.int()).abs().float().mean() < 1.0


def test_pca_lighting_shifts_each_image_along_eigenvectors() -> None:
    torch.manual_seed(0)
    batch = torch.rand(4000, 3, 4, 5)
    g = torch.Generator().manual_seed(123)
    out = pca_lighting(batch, g, std=0.1)
    delta = out - batch
    # One constant RGB offset per image.
    per_image = delta[:, :, :1, :1]
    assert torch.allclose(delta, per_image.expand_as(delta), atol=1e-6)
    rgb = per_image.flatten(1).double()  # (B, 3)
    vec = torch.tensor(IMAGENET_PCA_EIGVEC, dtype=torch.float64)
    val = torch.tensor(IMAGENET_PCA_EIGVAL, dtype=torch.float64)
    # Coordinates along the eigenvectors (columns), divided by the eigenvalues, are alpha ~ N(0, 0.1^2).
    alpha = torch.linalg.solve(vec, rgb.T).T / val
    assert alpha.mean(0).abs().max() < 0.01
    assert torch.allclose(alpha.std(0), torch.full((3,), 0.1, dtype=torch.float64), rtol=0.06)
    # Per-channel spread: 0.1 * sqrt(sum_j (vec_ij * val_j)^2) ~ 0.0124; the dominant first
    # eigenvector is ~equal on R, G, B, so the channel offsets are strongly correlated (brightness).
    expected_std = 0.1 * ((vec * val) ** 2).sum(1).sqrt()
    assert torch.allclose(rgb.std(0), expected_std, rtol=0.06)
    assert torch.corrcoef(rgb.T)[0, 2] > 0.9
    # Reproducible with the same generator seed; identity at std 0.
    assert torch.equal(pca_lighting(batch[:8], torch.Generator().manual_seed(5)),
                       pca_lighting(batch[:8], torch.Generator().manual_seed(5)))
    assert torch.equal(pca_lighting(batch[:8], None, std=0.0), batch[:8])
    with pytest.raises(ValueError):
        pca_lighting(torch.rand(2, 1, 4, 4))


def test_compute_mean_image(tmp_path: Path) -> None:
    colours = {"a": (200, 0, 0), "b": (0, 100, 50)}
    for name, c in colours.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + 8 * i, 30), c).save(tmp_path / name / f"{i}.png")
    ds = ImageFolder(tmp_path, cache=False)
    mean = compute_mean_image(ds, size=16, max_images=None, batch_size=4)
    assert mean.shape == (3, 16, 16) and mean.dtype == torch.float32
    expected = torch.tensor([100, 50, 25]) / 255.0
    assert torch.allclose(mean, expected[:, None, None].expand(3, 16, 16), atol=1e-6)
    # A subset of 2 images is still a proper average of whole images.
    sub = compute_mean_image(ds, size=16, max_images=2, batch_size=4)
    assert sub.shape == (3, 16, 16) and float(sub.max()) <= 200 / 255 + 1e-6
