"""CIFAR-10 training augmentation on whole batches, on the batch's own device.

Sec. 4.2 (following Lee et al., "Deeply-supervised nets"): "4 pixels are padded
on each side, and a 32x32 crop is randomly sampled from the padded image or its
horizontal flip." Here one gather does pad + crop + flip for the whole batch:
output pixel (u, v) of image b is read from source pixel
(u + dy[b] - pad, v' + dx[b] - pad) with v' = 31 - v when flipped, and replaced
by the padding value when that source lies outside the image. No padded copy is
materialised and there is no per-image Python.

Padding value. The paper pads the *mean-subtracted* image with zeros, i.e.
padded pixels are 0 after normalisation. This project keeps batches as uint8 and
normalises afterwards ((x/255 - mean) / 1 with the per-pixel mean image, see
`resnets.models.Normalize`), so the uint8 value that becomes 0 at output
position (u, v) is round(255 * mean[:, u, v]): pass the per-pixel mean image (as
uint8 or [0,1] float, shape (3,H,W)) as `pad_value` to get the paper's padding;
`pad_value=0` pads black (what torchvision's RandomCrop(32, padding=4) does on
uint8 images). For float, already mean-subtracted input, `pad_value=0` is
exactly the paper. `CifarBatches` uses the per-pixel mean by default.

One remaining difference to "subtract, then pad and crop": image content moved
by (dy, dx) is normalised with the mean at its *output* position, not at its
source position. On the CIFAR-10 training images (JPEG copy, 45k split) the mean
image changes by 2.7/255 on average over the 81 shifts (4.7/255 for the worst
shift), against a pixel standard deviation of about 64/255: the usual practice of
augmenting raw pixels and normalising afterwards, and much closer to the paper
than black padding, which puts -0.47 (about -120/255) into the padded border.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


@functools.lru_cache(maxsize=16)
def _crop_tables(h: int, w: int, pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Source index and inside-mask, (K, h*w) each, for all K = 2 (2 pad + 1)^2 crops.

    Crop k = (flip * n + dy) * n + dx with n = 2 pad + 1. Precomputing the 162 maps (for
    pad 4) once turns each batch's index arithmetic into one row lookup.
    """
    n = 2 * pad + 1
    flip, dy, dx = torch.meshgrid(torch.arange(2), torch.arange(n), torch.arange(n), indexing="ij")
    flip, dy, dx = flip.reshape(-1, 1), dy.reshape(-1, 1), dx.reshape(-1, 1)
    rows = torch.arange(h).unsqueeze(0) + dy - pad  # (K, H): source row of output row u
    cols = torch.arange(w).unsqueeze(0)
    cols = torch.where(flip.bool(), (w - 1) - cols, cols) + dx - pad  # (K, W): source column of output column v
    inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)
    index = rows.clamp(0, h - 1).unsqueeze(2) * w + cols.clamp(0, w - 1).unsqueeze(1)
    return index.reshape(-1, h * w).to(device), inside.reshape(-1, h * w).to(device)


def crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = 4, pad_value: float | Tensor = 0) -> Tensor:
    """Deterministic pad + crop + horizontal flip of a batch.

    Args:
        x: (B, C, H, W) images, any dtype (finite values), any device.
        dy, dx: (B,) integer offsets in [0, 2*pad]: the crop's top-left corner in the padded image.
        flip: (B,) bool, flip the crop horizontally.
        pad: padding on each side.
        pad_value: a number, or a (C, H, W) tensor giving the value for each *output* position.

    Returns:
        (B, C, H, W) tensor of x's dtype: `flip ? hflip(crop) : crop` where
        crop = pad(x, pad, pad_value)[:, :, dy:dy+H, dx:dx+W].
    """
    b, c, h, w = x.shape
    device = x.device
    index_table, inside_table = _crop_tables(h, w, pad, device)
    n = 2 * pad + 1
    k = (flip.to(device).long() * n + dy.to(device).long()) * n + dx.to(device).long()
    index, inside = index_table[k], inside_table[k].view(b, 1, h, w)  # (B, H*W) each
    out = x.reshape(b, c, h * w).gather(2, index.unsqueeze(1).expand(b, c, h * w)).view(b, c, h, w)
    if isinstance(pad_value, Tensor):
        fill = as_pad_dtype(pad_value, x).to(device).expand(c, h, w)
    else:
        fill = torch.tensor(pad_value, dtype=x.dtype, device=device)
    # Multiply-add instead of torch.where: one term is always zero, and it is several
    # times faster for uint8 on the CPU.
    return out * inside + fill * ~inside


def as_pad_dtype(value: Tensor, like: Tensor) -> Tensor:
    """Convert a padding image to `like`'s dtype; [0,1] floats become 0..255 for uint8 batches."""
    if like.dtype == torch.uint8 and value.is_floating_point():
        return (value * 255).round().clamp(0, 255).to(torch.uint8)
    return value.to(like.dtype)


def random_crop_flip_params(
    batch_size: int, generator: torch.Generator, pad: int = 4
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw (dy, dx, flip) for `crop_flip`: offsets uniform in [0, 2*pad], flip with probability 1/2."""
    device = generator.device
    dy = torch.randint(0, 2 * pad + 1, (batch_size,), generator=generator, device=device)
    dx = torch.randint(0, 2 * pad + 1, (batch_size,), generator=generator, device=device)
    flip = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    return dy, dx, flip


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 4, pad_value: float | Tensor = 0) -> Tensor:
    """Random `pad`-pixel pad, crop back to the input size, and horizontal flip (Sec. 4.2).

    The random numbers come from `generator` (its device may differ from x's; the
    few parameters are moved). See the module docstring for the choice of `pad_value`.
    """
    dy, dx, flip = random_crop_flip_params(x.shape[0], generator, pad)
    return crop_flip(x, dy, dx, flip, pad, pad_value)
