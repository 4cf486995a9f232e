"""ImageNet training and evaluation transforms (Pillow + torch, no torchvision).

The paper's recipe (Sec. 3.4, following AlexNet [21] and VGG [41]):

* scale augmentation: the shorter side is resized to a random value in [256, 480];
* a random 224x224 crop of that image, or its horizontal flip;
* per-pixel mean subtraction -- done later by the model's ``Normalize`` with a
  mean image from :func:`resnets.data.imagenet.compute_mean_image`;
* AlexNet's PCA colour ("lighting") augmentation -- done batched on the float
  batch by :func:`pca_lighting`, on the device, after the loader.

Per-sample transforms take a ``PIL.Image`` in RGB and return a uint8 CHW tensor.
Each accepts an optional ``rng: random.Random``; without one they draw from the
process-global :mod:`random`, which ``torch.utils.data.DataLoader`` seeds
differently in every worker (base seed + worker id), so workers never repeat
each other's augmentations. Tests pass an explicit ``random.Random(seed)``.

Resize-then-crop is fused into one ``Image.resize(size, box=...)`` call: Pillow
resamples only the crop window of the source, so the paper preset costs one
224x224 resample instead of resizing the whole image up to 480 px and
throwing most of it away. The result equals resize-then-crop up to rounding of
the resized size (< 1 px).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_PCA_EIGVAL",
    "IMAGENET_PCA_EIGVEC",
    "PaperScaleCrop",
    "RandomResizedCrop",
    "ResizeShorter",
    "eval_transform",
    "pca_lighting",
    "resize_shorter_size",
    "to_uint8_chw",
    "train_transform",
]

# AlexNet's PCA of ImageNet RGB pixels in [0, 1] (the values every ImageNet
# codebase uses, e.g. fb.resnet.torch). Eigenvectors are the *columns*.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

def _rng(rng: random.Random | None) -> random.Random:
    # The module `random` exposes the global Random's methods; DataLoader seeds it per worker.
    return rng if rng is not None else random  # type: ignore[return-value]


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous uint8 tensor (3, H, W)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resize_shorter_size(w: int, h: int, shorter: int) -> tuple[int, int]:
    """(w, h) with the shorter side scaled to `shorter`, aspect ratio kept."""
    if w <= h:
        return shorter, max(1, round(h * shorter / w))
    return max(1, round(w * shorter / h)), shorter


def _flip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


class ResizeShorter:
    """Resize so the shorter side is `size` (bilinear, antialiased by Pillow)."""

    def __init__(self, size: int) -> None:
        self.size = size

    @property
    def decode_hint(self) -> int:
        return self.size

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> Image.Image:
        new = resize_shorter_size(img.width, img.height, self.size)
        if new == img.size:
            return img
        return img.resize(new, Image.Resampling.BILINEAR)

    def __repr__(self) -> str:
        return f"ResizeShorter({self.size})"


class ResizeCenterCrop:
    """Shorter side -> `resize`, then the center `crop` (the standard "center" eval view).

    Fused: the crop window is mapped back to source coordinates and resampled
    directly, which is what resize-then-crop computes (up to < 1 px rounding).
    """

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        if crop > resize:
            raise ValueError(f"crop {crop} larger than resize {resize}")
        self.resize, self.crop = resize, crop

    @property
    def decode_hint(self) -> int:
        return self.resize

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        w, h = img.size
        rw, rh = resize_shorter_size(w, h, self.resize)
        sx, sy = w / rw, h / rh
        left = int(round((rw - self.crop) / 2.0))
        top = int(round((rh - self.crop) / 2.0))
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        out = img.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box)
        return to_uint8_chw(out)

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, crop={self.crop})"


class PaperScaleCrop:
    """Sec. 3.4 scale augmentation: shorter side ~ U{[lo, hi]}, random `crop` square, random flip.

    :meth:`get_params` exposes the sampled geometry so tests can check it.
    """

    def __init__(self, scale_range: tuple[int, int] = (256, 480), crop: int = 224, flip: bool = True) -> None:
        lo, hi = scale_range
        if not crop <= lo <= hi:
            raise ValueError(f"need crop <= lo <= hi, got crop={crop}, scale_range={scale_range}")
        self.lo, self.hi, self.crop, self.flip = lo, hi, crop, flip

    @property
    def decode_hint(self) -> int:
        # The image is never shown to the network larger than `hi` on its shorter side.
        return self.hi

    def get_params(self, w: int, h: int, rng: random.Random | None = None) -> tuple[int, int, int, bool]:
        """Sample (shorter_side, left, top, flip) in the coordinates of the resized image."""
        r = _rng(rng)
        shorter = r.randint(self.lo, self.hi)  # inclusive both ends, as in [41]
        rw, rh = resize_shorter_size(w, h, shorter)
        left = r.randint(0, rw - self.crop)
        top = r.randint(0, rh - self.crop)
        flip = self.flip and r.random() < 0.5
        return shorter, left, top, flip

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        w, h = img.size
        shorter, left, top, flip = self.get_params(w, h, rng)
        rw, rh = resize_shorter_size(w, h, shorter)
        sx, sy = w / rw, h / rh
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        out = img.resize((self.crop, self.crop), Image.Resampling.BILINEAR, box=box)
        if flip:
            out = _flip(out)
        return to_uint8_chw(out)

    def __repr__(self) -> str:
        return f"PaperScaleCrop(scale_range=({self.lo}, {self.hi}), crop={self.crop}, flip={self.flip})"


class RandomResizedCrop:
    """The common "Inception-style" recipe (not the paper's): random area in `scale`, aspect
    ratio log-uniform in `ratio`, resized to `size`, random flip. Same sampling as torchvision."""

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ) -> None:
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def get_params(self, w: int, h: int, rng: random.Random | None = None) -> tuple[int, int, int, int]:
        """Sample a crop (left, top, cw, ch) of the source image."""
        r = _rng(rng)
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * r.uniform(*self.scale)
            aspect = math.exp(r.uniform(*log_ratio))
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return r.randint(0, w - cw), r.randint(0, h - ch), cw, ch
        # Fallback: the largest central crop with the aspect ratio clamped into `ratio`.
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (w - cw) // 2, (h - ch) // 2, cw, ch

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        left, top, cw, ch = self.get_params(img.width, img.height, rng)
        out = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
        if self.flip and _rng(rng).random() < 0.5:
            out = _flip(out)
        return to_uint8_chw(out)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip})"


def train_transform(
    preset: Literal["paper", "randomresizedcrop"] = "paper",
    *,
    crop: int = 224,
    scale_range: tuple[int, int] = (256, 480),
) -> PaperScaleCrop | RandomResizedCrop:
    """Training augmentation preset.

    ``"paper"``: Sec. 3.4 -- shorter side in `scale_range`, random `crop`, flip.
    ``"randomresizedcrop"``: the later common recipe (area 8%-100%, ratio 3/4-4/3, flip).
    Both return uint8 CHW tensors; add :func:`pca_lighting` on the batch for the paper's
    colour augmentation.
    """
    if preset == "paper":
        return PaperScaleCrop(scale_range, crop)
    if preset == "randomresizedcrop":
        return RandomResizedCrop(crop)
    raise ValueError(f"unknown train transform preset {preset!r}; expected 'paper' or 'randomresizedcrop'")


def eval_transform(resize: int = 256, crop: int = 224) -> ResizeCenterCrop:
    """Single center view: shorter side -> `resize`, center `crop` (uint8 CHW)."""
    return ResizeCenterCrop(resize, crop)


def pca_lighting(
    batch_float01: torch.Tensor,
    generator: torch.Generator | None = None,
    std: float = 0.1,
    eigval: Sequence[float] = IMAGENET_PCA_EIGVAL,
    eigvec: Sequence[Sequence[float]] = IMAGENET_PCA_EIGVEC,
) -> torch.Tensor:
    """AlexNet PCA colour augmentation [21] on a float batch (B, 3, H, W) in [0, 1].

    Each image gets one RGB offset ``eigvec @ (alpha * eigval)`` with ``alpha ~ N(0, std^2)``
    per eigen-direction, added to every pixel. The eigenvalues are for [0, 1] pixels, so
    this runs after ``/255`` and before mean subtraction. Not clamped (as in [21]).
    `generator` must live on the batch's device. Returns a new tensor.
    """
    if batch_float01.ndim != 4 or batch_float01.shape[1] != 3:
        raise ValueError(f"pca_lighting expects (B, 3, H, W), got {tuple(batch_float01.shape)}")
    if std == 0:
        return batch_float01.clone()
    dev, dt = batch_float01.device, batch_float01.dtype
    alpha = torch.randn(batch_float01.shape[0], 3, generator=generator, device=dev, dtype=torch.float32) * std
    val = torch.tensor(eigval, device=dev, dtype=torch.float32)
    vec = torch.tensor(eigvec, device=dev, dtype=torch.float32)
    rgb = (alpha * val) @ vec.T  # (B, 3): rgb_i = sum_j vec[i, j] * alpha_j * val_j
    return batch_float01 + rgb.to(dt)[:, :, None, None]
