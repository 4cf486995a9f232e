"""The paper's test-time protocols (Sec. 3.4) and model ensembles (Table 5).

* ``center``: the 224 center crop of the image resized to shorter side 256.
* ``10crop``: "the standard 10-crop testing" [21] -- four corner and the center 224
  crops of the 256-resized image, plus their horizontal flips; softmax scores averaged
  (Tables 3, 4).
* ``multiscale``: "the fully-convolutional form as in [41, 13], and average the scores
  at multiple scales (images are resized such that the shorter side is in
  {224, 256, 384, 480, 640})" (Tables 4, 5). ResNet ends in global average pooling and a
  linear layer, and averaging commutes with a linear map, so running the network on the
  whole image *is* the fully-convolutional evaluation with the class-score map averaged
  spatially. We average softmax scores over scales and horizontal flips.
* ensembles: softmax scores of several models averaged (Table 5).

``normalize`` arguments are callables taking a float batch (B, 3, H, W) in [0, 1] on
the device and returning the network input. The paper's per-pixel mean image has a
fixed size (224x224) while multi-scale inputs do not; ``resnets.models.Normalize``
resizes the mean image bilinearly to each input's size, which is what any
``normalize`` used with ``multiscale`` must do.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnets.data.transforms import ResizeCenterCrop, ResizeShorter, to_uint8_chw
from resnets.errors import ConfigError
from resnets.eval.metrics import TopKAccumulator

__all__ = [
    "MULTISCALE_SCALES",
    "PROTOCOLS",
    "FullImage",
    "TenCrop",
    "batch_probs",
    "ensemble_probs",
    "evaluate",
    "multiscale_scores",
    "protocol_transform",
    "ten_crop",
    "ten_crop_boxes",
]

Normalizer = Callable[[torch.Tensor], torch.Tensor]
Protocol = Literal["center", "10crop", "multiscale"]
PROTOCOLS: tuple[str, ...] = ("center", "10crop", "multiscale")
MULTISCALE_SCALES: tuple[int, ...] = (224, 256, 384, 480, 640)  # Sec. 3.4


# --------------------------------------------------------------------------- 10-crop


def ten_crop_boxes(h: int, w: int, crop: int) -> list[tuple[int, int, bool]]:
    """The 10 views of an (h, w) image as ``(top, left, flipped)``.

    Order: top-left, top-right, bottom-left, bottom-right, center, then the same five
    horizontally flipped. Center offsets round like torchvision's ``center_crop``.
    """
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} larger than the {h}x{w} image")
    ct, cl = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    five = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (ct, cl)]
    return [(t, l, False) for t, l in five] + [(t, l, True) for t, l in five]


def ten_crop(img: torch.Tensor, crop: int = 224) -> torch.Tensor:
    """(C, H, W) -> (10, C, crop, crop) in the order of :func:`ten_crop_boxes`."""
    _, h, w = img.shape
    views = []
    for top, left, flipped in ten_crop_boxes(h, w, crop):
        v = img[:, top : top + crop, left : left + crop]
        views.append(v.flip(-1) if flipped else v)
    return torch.stack(views)


class TenCrop:
    """Per-sample transform: shorter side -> `resize`, then :func:`ten_crop` -> uint8 (10, 3, crop, crop)."""

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        self.resize, self.crop = ResizeShorter(resize), crop

    @property
    def decode_hint(self) -> int:
        return self.resize.size

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return ten_crop(to_uint8_chw(self.resize(img)), self.crop)

    def __repr__(self) -> str:
        return f"TenCrop(resize={self.resize.size}, crop={self.crop})"


class FullImage:
    """Per-sample transform for ``multiscale``: the whole image as uint8 (3, H, W).

    `max_shorter` lets the JPEG decoder skip resolution that no scale uses.
    """

    def __init__(self, max_shorter: int = max(MULTISCALE_SCALES)) -> None:
        self.decode_hint = max_shorter

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return to_uint8_chw(img)

    def __repr__(self) -> str:
        return f"FullImage(max_shorter={self.decode_hint})"


def protocol_transform(
    protocol: Protocol, resize: int = 256, crop: int = 224, scales: Sequence[int] = MULTISCALE_SCALES
) -> ResizeCenterCrop | TenCrop | FullImage:
    """The per-sample transform a data set needs for :func:`evaluate` with `protocol`."""
    if protocol == "center":
        return ResizeCenterCrop(resize, crop)
    if protocol == "10crop":
        return TenCrop(resize, crop)
    if protocol == "multiscale":
        return FullImage(max(scales))
    raise ConfigError(f"unknown test protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------- multi-scale


def _resize_shorter_tensor(x: torch.Tensor, shorter: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a float (B, C, H, W) batch to shorter side `shorter`."""
    h, w = x.shape[-2:]
    if h <= w:
        size = (shorter, max(1, round(w * shorter / h)))
    else:
        size = (max(1, round(h * shorter / w)), shorter)
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.inference_mode()
def multiscale_scores(
    model: nn.Module,
    normalize: Normalizer,
    image_uint8: torch.Tensor,
    scales: Sequence[int] = MULTISCALE_SCALES,
    flip: bool = True,
) -> torch.Tensor:
    """Fully-convolutional multi-scale softmax scores (C,) for one uint8 (3, H, W) image.

    For each scale the shorter side is resized to it, the network runs on the whole
    image (global average pooling makes any size valid), and the softmax scores of the
    image and its mirror are averaged with those of all other scales. Runs on the
    image's device; put `model` in eval mode first.
    """
    x = image_uint8.unsqueeze(0).float().div_(255)
    total = None
    for s in scales:
        xs = _resize_shorter_tensor(x, s)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        probs = model(normalize(xs)).float().softmax(dim=1).sum(0)
        total = probs if total is None else total + probs
    assert total is not None, "scales must not be empty"
    return total / (len(scales) * (2 if flip else 1))


def ensemble_probs(probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Average of several models' softmax scores (the Table 5 ensemble)."""
    if len(probs) == 0:
        raise ValueError("ensemble_probs needs at least one tensor")
    return torch.stack(list(probs)).mean(0)


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def batch_probs(
    models: Sequence[nn.Module],
    normalizers: Sequence[Normalizer],
    x: torch.Tensor,
    protocol: Literal["center", "10crop"],
) -> torch.Tensor:
    """Softmax scores (B, C) for a uint8 batch: ``center`` (B, 3, h, w) or ``10crop`` (B, 10, 3, h, w).

    10-crop scores are the mean over the views; several models are averaged (ensemble).
    """
    views = 10 if protocol == "10crop" else 1
    if (x.ndim, x.shape[1:2]) != ((5, (10,)) if views == 10 else (4, (3,))):
        raise ConfigError(f"protocol {protocol!r} got images of shape {tuple(x.shape[1:])}; "
                          f"build the data set with transform=protocol_transform({protocol!r})")
    b = x.shape[0]
    x = x.reshape(-1, *x.shape[-3:]).float().div_(255)
    return ensemble_probs(
        [m(n(x)).float().softmax(dim=1).reshape(b, views, -1).mean(1) for m, n in zip(models, normalizers)]
    )


def _collate(batch: list[tuple[Any, int]]) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """Keep images as a list (multi-scale inputs differ in size); drop unreadable ones."""
    good = [(img, t) for img, t in batch if img is not None]
    if not good:
        return None
    return [img for img, _ in good], torch.tensor([t for _, t in good], dtype=torch.int64)


@torch.inference_mode()
def evaluate(
    models: nn.Module | Sequence[nn.Module],
    normalizers: Normalizer | Sequence[Normalizer],
    dataset: torch.utils.data.Dataset,
    protocol: Protocol = "center",
    batch_size: int = 50,
    device: torch.device | str = "cpu",
    *,
    num_workers: int = 0,
    scales: Sequence[int] = MULTISCALE_SCALES,
    flip: bool = True,
    sampler: torch.utils.data.Sampler | None = None,
) -> dict[str, float | int]:
    """Top-1/top-5 error (%) of a model or an ensemble on `dataset` under a test `protocol`.

    `dataset` yields ``(image, target)`` with the image already in the protocol's form --
    build it with ``transform=protocol_transform(protocol)``: ``center`` uint8 (3, 224, 224),
    ``10crop`` uint8 (10, 3, 224, 224), ``multiscale`` the whole uint8 (3, H, W) image.
    ``center`` and ``10crop`` run batched; ``multiscale`` one image at a time (every image
    has its own sizes). With several models, their softmax scores are averaged. Models are
    put in eval mode. Returns ``{"top1_err", "top5_err", "n"}``; errors summed over ranks when
    torch.distributed is initialised: give each rank a non-overlapping, *unpadded* `sampler`
    (e.g. ``range(rank, len(dataset), world_size)``; uneven shards are fine because the only
    collective is the final sum).
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown test protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    model_list = [models] if isinstance(models, nn.Module) else list(models)
    norm_list = list(normalizers) if isinstance(normalizers, Sequence) else [normalizers] * len(model_list)
    if len(norm_list) != len(model_list):
        raise ConfigError(f"got {len(model_list)} models but {len(norm_list)} normalizers")
    device = torch.device(device)
    for m in model_list:
        m.eval()

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1 if protocol == "multiscale" else batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    acc = TopKAccumulator((1, 5), device=device)
    for batch in loader:
        if batch is None:
            continue
        images, targets = batch
        targets = targets.to(device, non_blocking=True)
        if protocol == "multiscale":
            img = images[0].to(device, non_blocking=True)
            if img.ndim != 3:
                raise ConfigError(f"multiscale expects whole images (3, H, W), got {tuple(img.shape)}; "
                                  "use protocol_transform('multiscale')")
            probs = ensemble_probs([multiscale_scores(m, n, img, scales, flip) for m, n in zip(model_list, norm_list)])
            acc.update(probs[None], targets)
            continue
        if len({tuple(i.shape) for i in images}) > 1:
            raise ConfigError(f"protocol {protocol!r} got images of different sizes; "
                              f"build the data set with transform=protocol_transform({protocol!r})")
        x = torch.stack(images).to(device, non_blocking=True)
        acc.update(batch_probs(model_list, norm_list, x, protocol), targets)
    acc.all_reduce()
    return acc.compute()
