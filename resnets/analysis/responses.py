"""Fig. 7: standard deviations of the layer responses.

"The responses are the outputs of each 3x3 layer, after BN and before other nonlinearity
(ReLU/addition)" (Sec. 4.2, Fig. 7). For a residual net this is the strength of the
residual function F: the paper finds ResNets respond more weakly than plain nets, and
deeper ResNets more weakly still.

What "std" is: the paper does not say over which axes it is taken. We take, for each
channel, the std over all images and spatial positions (the population std, as BN
normalises per channel), then average over the channels: one number per layer, in units
of the normalised activations BN produces. The model is in evaluation mode (BN uses its
running statistics, as at test time) and runs in fp32.

The outputs are read with forward hooks on the BN modules that follow 3x3 convolutions
(the blocks apply ReLU in place right after, so each hook folds the tensor into running
sums immediately instead of keeping it).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import DataError
from ..models import BasicBlock, Bottleneck, ResNet


def response_layers(model: ResNet) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN) for every 3x3 convolution's BN, in network order.

    The CIFAR stem is a 3x3 convolution too and counts; the ImageNet 7x7 stem and the
    bottlenecks' 1x1 layers do not.
    """
    layers: list[tuple[str, nn.BatchNorm2d]] = []
    if model.conv1.kernel_size == (3, 3):
        layers.append(("bn1", model.bn1))
    for stage_name in model.stage_names:
        for i, block in enumerate(getattr(model, stage_name)):
            if not isinstance(block, (BasicBlock, Bottleneck)):
                continue
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
                conv = getattr(block, conv_name, None)
                if conv is not None and conv.kernel_size == (3, 3):
                    layers.append((f"{stage_name}.{i}.{bn_name}", getattr(block, bn_name)))
    return layers


class _ChannelMoments:
    """Running per-channel sum and sum of squares (float64) of (N, C, H, W) tensors."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        x = output.detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
        s, sq = x.sum(1), (x * x).sum(1)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.count += x.shape[1]

    def std(self) -> float:
        """Per-channel population std, averaged over channels."""
        assert self.sum is not None and self.sumsq is not None, "no batch seen"
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean * mean).clamp_min(0)
        return float(var.sqrt().mean())


@dataclass
class ResponseStats:
    """One model's per-layer response stds, in network order."""

    label: str
    layers: list[str]
    stds: list[float]
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "images": self.images,
                "layers": [{"layer": n, "std": s} for n, s in zip(self.layers, self.stds)],
                "sorted_std": sorted(self.stds, reverse=True)}


@torch.no_grad()
def layer_response_stds(model: ResNet, images: Tensor, batch_size: int = 250, label: str = "") -> ResponseStats:
    """The std of every 3x3 layer's response over `images` (uint8 or float, N x 3 x H x W)."""
    layers = response_layers(model)
    if not layers:
        raise ValueError("this network has no 3x3 convolution followed by BN")
    moments = [_ChannelMoments() for _ in layers]
    was_training = model.training
    model.eval()
    try:
        with ExitStack() as stack:
            for (_, bn), m in zip(layers, moments):
                stack.callback(bn.register_forward_hook(m).remove)
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size])
    finally:
        model.train(was_training)
    return ResponseStats(label, [n for n, _ in layers], [m.std() for m in moments], len(images))


def first_val_images(data: str, n: int, val_size: int = 5000, split_seed: int = 0,
                     cache_dir: str | None = None) -> Tensor:
    """The first n images of the held-out validation split: a fixed, deterministic set."""
    from ..data.cifar import load_cifar10

    val = load_cifar10(data, "val", val_size, split_seed, cache_dir)
    if n < 1:
        raise DataError(f"--images: expected a positive number of images, got {n}")
    if n > len(val):
        raise DataError(f"--images: {n} images asked for, but the validation split of {data} has {len(val)}")
    return val.images[:n]


def measure_checkpoints(paths: Sequence[str | Path], data: str, n_images: int, val_size: int = 5000,
                        split_seed: int = 0, cache_dir: str | None = None) -> list[ResponseStats]:
    """Fig. 7 for several trained models (checkpoints or model.safetensors) on the same images."""
    from ..models.loading import model_from_file

    images = first_val_images(data, n_images, val_size, split_seed, cache_dir)
    loaded = [(Path(p), *model_from_file(p)) for p in paths]
    names = [info["model"].get("name", path.stem) for path, _, info in loaded]
    results = []
    for (path, model, _), name in zip(loaded, names):
        # Two files of the same network (seeds, checkpoints): tell them apart by their folder.
        label = name if names.count(name) == 1 else f"{name} ({path.parent.name})"
        results.append(layer_response_stds(model.float(), images, label=label))
    return results
