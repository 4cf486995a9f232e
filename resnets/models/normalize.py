"""Input normalisation, kept with the model so a trained network is self-contained.

The paper subtracts the per-pixel mean of the training images (Sec. 3.4, Sec. 4.2) and
nothing else; torchvision-trained weights expect per-channel mean/std instead. Both are
one `Normalize`: `mean` is a (3, H, W) mean image or a (3, 1, 1) channel mean, `std` is
(3, 1, 1). Images come in as uint8 0..255 (or float in [0, 1]) and leave as
`(x / 255 - mean) / std`.

The buffers are non-persistent: `ResNet.state_dict()` stays exactly torchvision's. On disk
the normalisation has one encoding: the tensors `input_norm.mean` and `input_norm.std` beside
the network's own in the same tensor mapping (a `model.safetensors`, or the "model" entry of a
checkpoint); no such tensors means no normalisation. `normalization_state` writes it and
`split_normalization` reads it; the kind follows from the tensors (`Normalize.kind`).
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, DataError
from .pretrained import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD

NormalizationKind = Literal["per_pixel_mean", "channel_mean_std", "none"]
PREFIX = "input_norm."  # outside torchvision's key space


class Normalize(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor | float = 1.0) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.dim() == 1:
            mean = mean.view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if mean.dim() != 3 or mean.shape[0] != 3 or std.numel() not in (1, 3):
            raise ValueError(f"mean must be (3,), (3,1,1) or (3,H,W) and std 1 or 3 values; got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std.expand(3, 1, 1).clone(), persistent=False)

    @classmethod
    def channel(cls, mean=IMAGENET_CHANNEL_MEAN, std=IMAGENET_CHANNEL_STD) -> "Normalize":
        return cls(torch.tensor(mean), torch.tensor(std))

    @property
    def kind(self) -> NormalizationKind:
        if self.mean.shape[1:] != (1, 1):
            return "per_pixel_mean"
        if torch.all(self.mean == 0) and torch.all(self.std == 1):
            return "none"
        return "channel_mean_std"

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        elif self._should_check(x):
            check_unit_range(x)
        mean = self.mean
        if mean.shape[1:] != (1, 1) and mean.shape[1:] != x.shape[-2:]:
            # Fully-convolutional testing at other scales (Sec. 3.4): resize the mean image.
            mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        return (x - mean) / self.std

    def _should_check(self, x: Tensor) -> bool:
        """Whether to check that float input is in [0, 1] (`check_unit_range`), at a cost that
        never shows. Floats in 0-255 or torchvision-normalised tensors would otherwise give
        silently wrong answers (10% and 30% accuracy on CIFAR-10, issue 26.3).

        Checked: evaluation-mode calls (inference, where such input comes from a user), every
        call on the CPU (a min/max over the input, about 1% of a CIFAR ResNet-20 forward) and
        the first call on a GPU (reading the result back would otherwise stall every batch).
        Not checked: training (resnets' own pipelines feed it, and a host sync per step
        would cost throughput), tracing/export/compile (no data-dependent branches there),
        meta tensors (no values)."""
        if self.training or not x.is_floating_point() or x.device.type == "meta" or torch.compiler.is_compiling():
            return False
        if x.device.type == "cpu":
            return True
        first = not getattr(self, "_checked_on_gpu", False)
        self._checked_on_gpu = True
        return first

    def extra_repr(self) -> str:
        return f"kind={self.kind}, mean_shape={tuple(self.mean.shape)}"


def check_unit_range(x: Tensor) -> None:
    """DataError unless float images `x` are in [0, 1], saying what the network expects and how
    to give it tensors normalised already. A margin (-0.5..1.5) lets resampling overshoot pass;
    0-255 floats (max far above 1.5) and mean/std-normalised tensors (min about -2) do not."""
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if low >= -0.5 and high <= 1.5:
        return
    guess = ("they look like 0-255 pixel values: pass uint8 tensors, or divide by 255" if high > 1.5 and low >= -0.5
             else "they look normalised already (e.g. with ImageNet's mean and std)")
    raise DataError(f"input: the network normalises its input itself and takes uint8 images (0..255) or float "
                    f"images in [0, 1]; got float values in [{low:.3g}, {high:.3g}]: {guess}. To feed tensors you "
                    f"normalise yourself, build the network without its normalisation: "
                    f"create_model(..., normalize_input=False)")


def normalization_state(norm: Normalize | None) -> dict[str, Tensor]:
    """The on-disk form of `norm`: {"input_norm.mean": ..., "input_norm.std": ...}, or {} for none."""
    if norm is None:
        return {}
    return {PREFIX + "mean": norm.mean.detach().cpu().contiguous(), PREFIX + "std": norm.std.detach().cpu().contiguous()}


def split_normalization(state: Mapping[str, Tensor], source: str = "state dict"
                        ) -> tuple[dict[str, Tensor], Normalize | None]:
    """(the network's own tensors, the normalisation stored beside them or None).
    `source` names the file in the error for a half-stored or unusable normalisation."""
    network = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    stored = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not stored:
        return network, None
    if set(stored) != {"mean", "std"}:
        raise CheckpointError(f"{source}: its input normalisation needs both {PREFIX}mean and {PREFIX}std; "
                              f"found only {', '.join(PREFIX + k for k in sorted(stored))}")
    try:
        return network, Normalize(stored["mean"], stored["std"])
    except ValueError as e:
        raise CheckpointError(f"{source}: unusable input normalisation ({e})") from None
