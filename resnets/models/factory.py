"""Model names -> what they mean (`model_spec`). Every variant is one `ResNet` with different
arguments; `resnets.models.loading.create_model` builds one, with or without trained weights.

ImageNet (Table 1):  resnet18/34/50/101/152, plain18/34/50/101/152.
CIFAR-10 (Sec. 4.2): cifar_resnet{6n+2}, cifar_plain{6n+2} for any n >= 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

from .resnet import BasicBlock, Block, Bottleneck, ResNet, Shortcut

# Table 1: block type and blocks per stage (conv2_x .. conv5_x).
IMAGENET_LAYOUTS: dict[int, tuple[Block, tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
# Sec. 4.2 / Table 6: the depths the paper trains; any 6n+2 is accepted by name.
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)

imagenet_resnet = partial(ResNet, widths=(64, 128, 256, 512), stem="imagenet")
# "The numbers of filters are {16, 32, 64} respectively" on maps of 32, 16, 8 (Sec. 4.2).
cifar_resnet = partial(ResNet, block=BasicBlock, widths=(16, 32, 64), stem="cifar")


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means."""

    name: str
    family: str  # "imagenet" or "cifar"
    depth: int
    residual: bool
    default_shortcut: Shortcut | None  # None: plain network
    default_num_classes: int
    input_size: int  # the natural input resolution (for FLOP counts)
    build: Callable[..., ResNet]


_NAME = re.compile(r"^(resnet|plain|cifar_resnet|cifar_plain)(\d+)$")


def model_spec(name: str) -> ModelSpec:
    """Parse a model name; a clear ValueError lists what is valid."""
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(list_models())} (any cifar_*{{6n+2}})")
    kind, depth = match.group(1), int(match.group(2))
    residual = kind in ("resnet", "cifar_resnet")
    if kind.startswith("cifar"):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"unknown model {name!r}: CIFAR networks have 6n+2 layers (n >= 1), e.g. 20, 32, 44, 56, 110")
        n = (depth - 2) // 6
        return ModelSpec(name, "cifar", depth, residual, "A" if residual else None, 10, 32,
                         partial(cifar_resnet, layers=(n, n, n), plain=not residual))
    if depth not in IMAGENET_LAYOUTS:
        raise ValueError(f"unknown model {name!r}: ImageNet depths are {sorted(IMAGENET_LAYOUTS)}")
    block, layers = IMAGENET_LAYOUTS[depth]
    return ModelSpec(name, "imagenet", depth, residual, "B" if residual else None, 1000, 224,
                     partial(imagenet_resnet, block=block, layers=layers, plain=not residual))


def list_models() -> list[str]:
    names = [f"{kind}{d}" for kind in ("resnet", "plain") for d in IMAGENET_LAYOUTS]
    names += [f"{kind}{d}" for kind in ("cifar_resnet", "cifar_plain") for d in CIFAR_DEPTHS]
    return names
