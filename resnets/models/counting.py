"""Parameter and multiply-add counts, as in Table 1 ("FLOPs") and Table 6 ("# params")."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not (BN scales and shifts included, as torchvision counts)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int | tuple[int, int] = 224) -> int:
    """Multiply-adds of one forward pass on a single 3 x H x W image.

    The paper's "FLOPs" are multiply-adds of the convolutions and the fc layer (Table 1:
    ResNet-50 3.8 x 10^9). torch's flop counter reports 2 FLOPs per multiply-add for those
    ops and ignores BN, ReLU, additions and pooling, so halving it gives the paper's measure.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    param = next(model.parameters())
    x = torch.zeros(1, 3, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
