"""Parameter and multiply-add counts, as in Table 1 ("FLOPs") and Table 6 ("# params")."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .factory import list_models, model_spec
from .loading import create_model
from .resnet import ResNet, ZeroPadShortcut

Size = tuple[int, int]


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not (BN scales and shifts included, as torchvision counts)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: ResNet, input_size: int | tuple[int, int] = 224) -> int:
    """Multiply-adds of one forward pass on a single 3 x H x W image.

    The paper's "FLOPs" are multiply-adds of the convolutions and the fc layer (Table 1:
    ResNet-50 3.8 x 10^9); BN, ReLU, the shortcut additions and pooling are not counted.
    A convolution costs out_h * out_w * out_channels * in_channels / groups * kh * kw, the fc
    in_features * out_features.

    Counted from the network's structure (`_walk`): nothing runs. (torch's FlopCounterMode
    around a meta-device forward gives the same numbers, which `tests/models/test_models.py`
    checks, but it imports torch._dynamo, as the meta batch norm does: 2.5 s of the 4 s
    `resnets models` took.)
    """
    return _walk(model, input_size)[0]


def feature_map_sizes(model: ResNet, input_size: int | tuple[int, int] = 224) -> dict[str, Size]:
    """(h, w) of the maps after conv1, the stem (conv1 and its pooling) and each stage."""
    return _walk(model, input_size)[1]


def _walk(model: ResNet, input_size: int | tuple[int, int]) -> tuple[int, dict[str, Size]]:
    """Multiply-adds and map sizes, following the network's layers in the order
    `ResNet.forward` runs them, each map's size from the strides, padding, dilation and ceil
    mode as torch computes it."""
    if not isinstance(model, ResNet):
        raise TypeError(f"count_flops counts the paper's networks (ResNet), got {type(model).__name__}")
    size: Size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    macs, size = conv_multiply_adds(model.conv1, size)  # input_norm, BN, ReLU keep the size
    sizes = {"conv1": size}
    if isinstance(model.maxpool, nn.MaxPool2d):
        size = pool_output_size(model.maxpool, size)
    elif not isinstance(model.maxpool, nn.Identity):
        raise TypeError(f"count_flops: unknown stem pooling {type(model.maxpool).__name__}")
    sizes["stem"] = size
    for stage in model.stage_names:
        for block in getattr(model, stage):
            block_input = size
            # The residual branch is the block's own convolutions, one after the other (Fig. 5).
            for conv in (m for m in block.children() if isinstance(m, nn.Conv2d)):
                conv_macs, size = conv_multiply_adds(conv, size)
                macs += conv_macs
            if isinstance(block.downsample, nn.Sequential):  # options B/C: a projection of the input
                macs += conv_multiply_adds(block.downsample[0], block_input)[0]
            elif not (block.downsample is None or isinstance(block.downsample, ZeroPadShortcut)):
                raise TypeError(f"count_flops: unknown shortcut {type(block.downsample).__name__}")
        sizes[stage] = size
    # Global average pooling leaves one value per channel for the fc.
    return macs + model.fc.in_features * model.fc.out_features, sizes


def network_counts(name: str) -> tuple[int, int]:
    """Parameters and multiply-adds (at its natural input size) of a network named by
    `model_spec`, with its default options, without building it at its depth.

    A stage's blocks after its first are identical (Table 1, Sec. 4.2), so both counts are
    exactly affine in each stage's number of blocks: they follow from the first listed
    network of the same kind (resnet18, resnet50, cifar_resnet20 or a plain twin; built on
    the meta device) cut to one block per stage, and to two in each stage in turn. Building
    every listed network took 0.16 s, about half of what `resnets models` took beyond
    `import torch`; building and tracing the two 1202-layer nets once took 8 of its 11 s.
    """
    spec = model_spec(name)
    (params, flops), added = _per_stage_counts(next(n for n in list_models() if _kind(n) == _kind(name)))
    for blocks, (block_params, block_flops) in zip(spec.build.keywords["layers"], added):
        params, flops = params + (blocks - 1) * block_params, flops + (blocks - 1) * block_flops
    return params, flops


def _kind(name: str) -> tuple:
    spec = model_spec(name)
    return spec.family, spec.residual, spec.build.keywords["block"]  # model_spec's partials carry the layout


@functools.cache
def _per_stage_counts(first_of_kind: str) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """(params, multiply-adds) with one block per stage, and what one more block adds in each stage."""
    with torch.device("meta"):
        model = create_model(first_of_kind)
    stages = [getattr(model, s) for s in model.stage_names]

    def counts(grown: int | None) -> tuple[int, int]:
        for i, (s, stage) in enumerate(zip(model.stage_names, stages)):
            setattr(model, s, stage[: 2 if i == grown else 1])  # the same modules, fewer of them
        return count_params(model), count_flops(model, model_spec(first_of_kind).input_size)

    one = counts(None)
    return one, [(p - one[0], f - one[1]) for p, f in map(counts, range(len(stages)))]


def conv_multiply_adds(conv: nn.Conv2d, size: Size) -> tuple[int, Size]:
    """A convolution's multiply-adds on a map of `size` (h, w), and its output size."""
    out = output_size(size, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    kh, kw = conv.kernel_size
    return out[0] * out[1] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw, out


def pool_output_size(pool: nn.MaxPool2d, size: Size) -> Size:
    return output_size(size, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)


def output_size(size: Size, kernel, stride, padding, dilation, ceil_mode: bool = False) -> Size:
    """torch's output size of a convolution or pooling window (`pooling_output_shape` in ATen)."""
    out = []
    for n, k, s, p, d in zip(size, _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)):
        span = n + 2 * p - d * (k - 1) - 1
        m = (span + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (m - 1) * s >= n + p:  # the last window must start inside the input
            m -= 1
        out.append(m)
    return out[0], out[1]
