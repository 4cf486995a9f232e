"""The paper's architecture tables, read off the model objects.

Table 1 (ImageNet, 18-152 layers) and the CIFAR-10 table of Sec. 4.2 are built by
inspecting networks made by `create_model` on the meta device (no memory, no init):
output sizes and multiply-adds come from the layers' shapes (`feature_map_sizes`,
`count_flops`), block layouts from the blocks' convolutions. Nothing but the paper's own
FLOPs row (printed for comparison) is typed in.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models import IMAGENET_LAYOUTS, ResNet, count_flops, create_model, feature_map_sizes, model_spec, network_counts

# Table 1's last row, for comparison with what we count (multiply-adds, x 10^9).
PAPER_TABLE1_GFLOPS: dict[int, float] = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


def _meta_model(name: str) -> ResNet:
    with torch.device("meta"):
        return create_model(name)


def _conv_text(conv: nn.Conv2d) -> str:
    k = conv.kernel_size
    return f"{k[0]}x{k[1]}, {conv.out_channels}"


def block_layout(stage: nn.Sequential) -> str:
    """"[3x3, 64; 3x3, 64] x2": the first block's convolutions and the number of blocks."""
    block = stage[0]
    convs = [getattr(block, n) for n in ("conv1", "conv2", "conv3") if hasattr(block, n)]
    return f"[{'; '.join(_conv_text(c) for c in convs)}] x{len(stage)}"


def stage_output_sizes(model: ResNet, input_size: int) -> dict[str, str]:
    """Spatial size after conv1 and after each stage ("112x112"), from the network's layers."""
    sizes = feature_map_sizes(model, input_size)
    return {name: f"{h}x{w}" for name, (h, w) in sizes.items() if name in ("conv1", *model.stage_names)}


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table1(depths: Sequence[int] = tuple(IMAGENET_LAYOUTS)) -> str:
    """Table 1: ImageNet architectures, output sizes, block layouts and multiply-adds."""
    models = {d: _meta_model(f"resnet{d}") for d in depths}
    first = models[depths[0]]
    sizes = stage_output_sizes(first, 224)
    stem = first.conv1
    pool = first.maxpool
    header = ["layer name", "output size"] + [f"{d}-layer" for d in depths]
    rows = [["conv1", sizes["conv1"]] + [f"{_conv_text(m.conv1)}, stride {m.conv1.stride[0]}" for m in models.values()]]
    for i, stage in enumerate(first.stage_names):
        layouts = [block_layout(getattr(m, stage)) for m in models.values()]
        if i == 0 and isinstance(pool, nn.MaxPool2d):
            layouts = [f"{pool.kernel_size}x{pool.kernel_size} max pool, stride {pool.stride}; {t}" for t in layouts]
        rows.append([f"conv{i + 2}_x ({stage})", sizes[stage]] + layouts)
    rows.append(["", "1x1"] + [f"average pool, {m.fc.out_features}-d fc, softmax" for m in models.values()])
    flops = {d: count_flops(m, 224) for d, m in models.items()}
    rows.append(["FLOPs (counted)", ""] + [f"{flops[d] / 1e9:.2f}x10^9" for d in depths])
    rows.append(["FLOPs (paper)", ""] + [f"{PAPER_TABLE1_GFLOPS[d]}x10^9" if d in PAPER_TABLE1_GFLOPS else "–"
                                         for d in depths])
    note = (f"Stem: {_conv_text(stem)}, stride {stem.stride[0]}. Downsampling is performed by conv3_1, conv4_1 and "
            "conv5_1 with a stride of 2. FLOPs: multiply-adds of one 224x224 image (convolutions and fc), "
            "bottleneck stride in the first 1x1 as in the paper.")
    return "Table 1. Architectures for ImageNet.\n\n" + _markdown(header, rows) + "\n\n" + note


def _per_stage_3x3_layers(model: ResNet) -> list[int]:
    """Weighted layers per CIFAR stage: the stem's 3x3 conv counts with the first stage."""
    counts = [sum(1 for m in getattr(model, s).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
              for s in model.stage_names]
    counts[0] += 1
    return counts


def _linear_in_n(c1: int, c2: int) -> str:
    """Express a count that is c1 at n=1 and c2 at n=2 as "a+bn" (it is linear in n)."""
    b, a = c2 - c1, 2 * c1 - c2
    term = f"{b}n" if b != 1 else "n"
    return term if a == 0 else f"{a}+{term}"


def cifar_table(depths: Sequence[int] = (20, 32, 44, 56, 110, 1202)) -> str:
    """Sec. 4.2's CIFAR-10 table (map sizes, layers, filters per stage) and the 6n+2 depths."""
    one, two = _meta_model("cifar_resnet8"), _meta_model("cifar_resnet14")  # n = 1 and n = 2
    sizes = stage_output_sizes(one, 32)
    layers = [_linear_in_n(a, b) for a, b in zip(_per_stage_3x3_layers(one), _per_stage_3x3_layers(two))]
    filters = [str(getattr(one, s)[0].conv2.out_channels) for s in one.stage_names]
    header = ["output map size"] + [sizes[s] for s in one.stage_names]
    rows = [["# layers"] + layers, ["# filters"] + filters]
    table = _markdown(header, rows)
    depth_rows = []
    for d in depths:
        n = model_spec(f"cifar_resnet{d}").build.keywords["layers"][0]
        params, flops = network_counts(f"cifar_resnet{d}")
        depth_rows.append([str(d), str(n), f"{params / 1e6:.2f}M", f"{flops / 1e6:.0f}M"])
    depth_table = _markdown(["depth 6n+2", "n", "# params", "multiply-adds (32x32)"], depth_rows)
    return ("CIFAR-10 architecture (Sec. 4.2): a 3x3 convolution, then 3 stages of 2n 3x3 layers, global average "
            f"pooling, a {one.fc.out_features}-way fc and softmax.\n\n" + table + "\n\n" + depth_table)


def architecture_tables() -> str:
    """What `resnets models --table1` prints: Table 1 and the CIFAR-10 table."""
    return table1() + "\n\n" + cifar_table()
