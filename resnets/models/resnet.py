"""The networks of He et al. 2015, "Deep Residual Learning for Image Recognition".

One `ResNet` class covers every network of the paper: the ImageNet models of Table 1
(18/34 with basic blocks, 50/101/152 with bottlenecks), the CIFAR-10 models of Sec. 4.2
(6n+2 layers, 16/32/64 filters) and the plain twins of both (no shortcuts, Sec. 3.3).
A stage is a plain loop over blocks (`make_stage`). The Faster R-CNN detector (Appendix A)
takes a network apart at its stages: `forward_features` up to conv4_x is its shared trunk,
and the conv5_x stage is its box head.

State-dict keys follow torchvision (conv1, bn1, layer1.0.conv1, layer1.0.downsample.0/1,
fc), so weights load both ways with strict=True.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.fused_bn_relu import batch_norm_relu

Shortcut = Literal["A", "B", "C"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias anywhere: every convolution is followed by BN (Sec. 3.4), which has its own shift.
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (Sec. 3.3): identity with stride-s subsampling and zero-padded extra channels.

    Parameter-free, so it adds no state-dict keys.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


def make_shortcut(option: Shortcut, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut's transform, or None for the identity.

    Table 3's options: A zero-pads where the shape changes, B projects (1x1 conv + BN)
    where it changes, C projects everywhere.
    """
    if option not in ("A", "B", "C"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {option!r}")
    changes_shape = stride != 1 or in_channels != out_channels
    if option == "C" or (option == "B" and changes_shape):
        return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    if option == "A" and changes_shape:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 5 left): ResNet-18/34 and the CIFAR networks.

    `plain=True` makes the block plain: y = F(x) without the shortcut and addition (Sec. 3.3).
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = True,  # no 1x1 here; accepted so every block builds alike
        plain: bool = False,
    ) -> None:
        super().__init__()
        self.residual = not plain
        self.conv1 = conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if plain else make_shortcut(shortcut, in_channels, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        # relu(bn(.)) and relu(bn(.) + shortcut) as one call: the fused kernel on CPU bf16
        # training (resnets.ops.fused_bn_relu), these very modules everywhere else.
        out = batch_norm_relu(self.bn1, self.relu, self.conv1(x))
        # "The operation F + x is performed by a shortcut connection and element-wise
        # addition"; the second nonlinearity comes after the addition (Sec. 3.2).
        return batch_norm_relu(self.bn2, self.relu, self.conv2(out), self.shortcut(x))

    def shortcut(self, x: Tensor) -> Tensor | None:
        """What the block adds to its residual branch: x, its transform, or nothing (plain)."""
        if not self.residual:
            return None
        return x if self.downsample is None else self.downsample(x)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 restore (x4), Fig. 5 right: ResNet-50/101/152.

    Stride placement: the paper (and the original Caffe models) put the stride-2 of
    conv3_1, conv4_1 and conv5_1 in the first 1x1 convolution (`stride_in_1x1=True`,
    the default). The common "ResNet v1.5" (torchvision, most PyTorch code) puts it in the
    3x3 instead (`stride_in_1x1=False`): same parameters, more multiply-adds (ResNet-50:
    4.1 G instead of Table 1's 3.8 G) and slightly better accuracy.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = True,
        plain: bool = False,
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.residual = not plain
        self.conv1 = conv1x1(in_channels, width, stride_1x1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride_3x3)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if plain else make_shortcut(shortcut, in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = batch_norm_relu(self.bn1, self.relu, self.conv1(x))
        out = batch_norm_relu(self.bn2, self.relu, self.conv2(out))
        return batch_norm_relu(self.bn3, self.relu, self.conv3(out), self.shortcut(x))

    shortcut = BasicBlock.shortcut


Block = type[BasicBlock] | type[Bottleneck]


def make_stage(
    block: Block,
    in_channels: int,
    width: int,
    num_blocks: int,
    stride: int,
    shortcut: Shortcut = "B",
    stride_in_1x1: bool = True,
    plain: bool = False,
) -> nn.Sequential:
    """`num_blocks` blocks; the first one downsamples by `stride` (conv3_1, conv4_1, conv5_1)."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(block(in_channels, width, stride if i == 0 else 1, shortcut, stride_in_1x1, plain))
        in_channels = width * block.expansion
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """A stem, stages of blocks, global average pooling and a fully-connected classifier.

    `stem="imagenet"`: 7x7/2 conv with 64 filters and 3x3/2 max pooling (Table 1), the
    pooling padded by 1 as in torchvision. `stem="imagenet_caffe"`: the same with the pooling
    of the authors' released Caffe models (no padding, output size rounded up): at 224x224
    both give 56x56 maps, but the pooling windows are shifted by one pixel, so weights from
    those models need this stem to compute what they computed.
    `stem="cifar"`: one 3x3 conv with `widths[0]` filters and no pooling (Sec. 4.2).
    The first stage keeps the resolution, every later one halves it.

    `plain=True` builds the plain twin (no shortcuts, Sec. 3.3); `shortcut` is then unused.
    `input_norm` (optional, see `Normalize`) is applied first; it holds non-persistent
    buffers so the state dict stays exactly torchvision's.
    """

    def __init__(
        self,
        block: Block,
        layers: Iterable[int],
        widths: Iterable[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        shortcut: Shortcut = "B",
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        stem: Literal["imagenet", "imagenet_caffe", "cifar"] = "imagenet",
        plain: bool = False,
        input_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        layers, widths = tuple(layers), tuple(widths)
        self.input_norm = input_norm
        if stem in ("imagenet", "imagenet_caffe"):
            stem_channels = 64
            self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = (nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet"
                                       else nn.MaxPool2d(3, stride=2, ceil_mode=True))
        elif stem == "cifar":
            stem_channels = widths[0]
            self.conv1 = conv3x3(3, stem_channels)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet', 'imagenet_caffe' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        self.stage_names: list[str] = []
        in_channels = stem_channels
        for i, (width, num_blocks) in enumerate(zip(widths, layers)):
            stage = make_stage(
                block, in_channels, width, num_blocks, 1 if i == 0 else 2, shortcut, stride_in_1x1, plain
            )
            self.add_module(f"layer{i + 1}", stage)
            self.stage_names.append(f"layer{i + 1}")
            in_channels = width * block.expansion
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        if self.fc.weight.is_meta:
            # A network on the meta device (shapes only, e.g. `resnets models`) has no values to
            # initialise, and torch's meta normal_ imports torch._dynamo on first use (2-4 s).
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. 2015b ("Delving deep into rectifiers"), cited in Sec. 3.4.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The classifier keeps PyTorch's default Linear init, as torchvision does.
        if zero_init_residual:
            # Not in the paper (Goyal et al. 2017): each residual branch starts as zero,
            # so every block starts as the identity. Plain nets have no branch to zero.
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.residual:
                    last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2
                    nn.init.zeros_(last_bn.weight)

    def stem(self, x: Tensor) -> Tensor:
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.maxpool(batch_norm_relu(self.bn1, self.relu, self.conv1(x)))

    def forward_features(self, x: Tensor, stages: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Outputs of the named stages ("stem", "layer1", ...), computing no further than needed.

        Default: every stage. The detector's trunk is `stages=["layer3"]` (C4, Appendix A).
        """
        wanted = set(self.stage_names if stages is None else stages)
        unknown = wanted - {"stem", *self.stage_names}
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; this network has stem, {self.stage_names}")
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)
        if "stem" in wanted:
            outputs["stem"] = x
        for name in self.stage_names:
            if len(outputs) == len(wanted):
                break
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
