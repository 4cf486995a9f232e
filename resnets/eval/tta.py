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

The networks carry their own input normalisation (`resnets.models.Normalize`) and are
handed [0, 1] float images. The paper's per-pixel mean image has a fixed size (224x224)
while multi-scale inputs do not; `Normalize` resizes the mean image bilinearly to each
input's size. Scores are computed by `resnets.eval.evaluate.evaluate`, the loop every
evaluation in resnets runs; this module supplies the views (`protocol_predict`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnets.data.imagenet import SkipEmpty
from resnets.data.transforms import ResizeCenterCrop, ResizeShorter, to_uint8_chw
from resnets.errors import ConfigError
from resnets.eval.evaluate import CPU, Predict, class_log_probs, evaluate, mean_of_probs
from resnets.eval.progress import with_progress
from resnets.runtime import Runtime

__all__ = [
    "MULTISCALE_SCALES",
    "PROTOCOLS",
    "FullImage",
    "TenCrop",
    "evaluate_protocol",
    "multiscale_log_probs",
    "protocol_predict",
    "protocol_transform",
    "ten_crop",
    "ten_crop_boxes",
    "ten_crop_log_probs",
]

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


def multiscale_log_probs(
    model: nn.Module, x: torch.Tensor, scales: Sequence[int] = MULTISCALE_SCALES, flip: bool = True
) -> torch.Tensor:
    """Fully-convolutional multi-scale log-probabilities (1, C) of one float image (1, 3, H, W).

    For each scale the shorter side is resized to it, the network runs on the whole
    image (global average pooling makes any size valid), and the probabilities of the
    image and its mirror are averaged with those of all other scales.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ConfigError(f"multiscale expects one whole image at a time (1, 3, H, W), got {tuple(x.shape)}; "
                          "use protocol_transform('multiscale')")
    if not scales:
        raise ConfigError("multiscale needs at least one scale")
    views = []
    for s in scales:
        xs = _resize_shorter_tensor(x, s)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        views.append(class_log_probs(model, xs))
    return mean_of_probs(torch.cat(views))[None]


def ten_crop_log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, C) of 10-crop batches (B, 10, 3, h, w): the 10 views' probabilities averaged."""
    if x.ndim != 5 or x.shape[1] != 10:
        raise ConfigError(f"protocol '10crop' got images of shape {tuple(x.shape[1:])}; "
                          "build the data set with transform=protocol_transform('10crop')")
    b = x.shape[0]
    return mean_of_probs(class_log_probs(model, x.flatten(0, 1)).view(b, 10, -1), dim=1)


def protocol_predict(protocol: Protocol, scales: Sequence[int] = MULTISCALE_SCALES, flip: bool = True) -> Predict:
    """How a network scores a batch under `protocol` (for `resnets.eval.evaluate.evaluate`)."""
    if protocol == "center":
        return _center_log_probs
    if protocol == "10crop":
        return ten_crop_log_probs
    if protocol == "multiscale":
        return partial(multiscale_log_probs, scales=tuple(scales), flip=flip)
    raise ConfigError(f"unknown test protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _center_log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ConfigError(f"protocol 'center' got images of shape {tuple(x.shape[1:])}; "
                          "build the data set with transform=protocol_transform('center')")
    return class_log_probs(model, x)


# --------------------------------------------------------------------------- evaluation


def _stack(batch: list[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack a batch, dropping unreadable images (None); every image must have the same shape."""
    good = [(img, t) for img, t in batch if img is not None]
    if not good:
        return None
    if len({tuple(img.shape) for img, _ in good}) > 1:
        raise ConfigError("a protocol batch got images of different sizes; build the data set with "
                          "transform=protocol_transform(protocol)")
    return torch.stack([img for img, _ in good]), torch.tensor([t for _, t in good], dtype=torch.int64)


def evaluate_protocol(
    models: nn.Module | Sequence[nn.Module],
    dataset: torch.utils.data.Dataset,
    protocol: Protocol = "center",
    batch_size: int = 50,
    runtime: Runtime = CPU,
    *,
    num_workers: int = 0,
    scales: Sequence[int] = MULTISCALE_SCALES,
    flip: bool = True,
    sampler: torch.utils.data.Sampler | Sequence[int] | None = None,
) -> dict[str, float | int]:
    """Top-1/top-5 error (%) of a model or an ensemble on `dataset` under a test `protocol`.

    `dataset` yields ``(image, target)`` with the image already in the protocol's form --
    build it with ``transform=protocol_transform(protocol)``: ``center`` uint8 (3, 224, 224),
    ``10crop`` uint8 (10, 3, 224, 224), ``multiscale`` the whole uint8 (3, H, W) image.
    ``center`` and ``10crop`` run batched; ``multiscale`` one image at a time (every image
    has its own size). Under torch.distributed give each rank a non-overlapping, *unpadded*
    `sampler` (e.g. ``range(rank, len(dataset), world_size)``). Progress goes to stderr
    (`resnets.eval.progress`).
    """
    predict = protocol_predict(protocol, scales, flip)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1 if protocol == "multiscale" else batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_stack,
        pin_memory=runtime.device.type == "cuda",
    )
    total = len(sampler) if sampler is not None else len(dataset)
    views = {"center": "center crop", "10crop": "10-crop", "multiscale": f"{len(scales)}-scale"}[protocol]
    batches = with_progress(SkipEmpty(loader), total, f"{views} evaluation")
    return evaluate(models, batches, runtime, predict)
