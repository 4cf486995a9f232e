"""FrozenBatchNorm2d / freeze_batchnorm (Appendix A: BN statistics and affine fixed)."""

from __future__ import annotations

import torch
from torch import nn

from resnets.ops import FrozenBatchNorm2d, freeze_batchnorm


def _trained_bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1, 1)
    bn.train()
    for _ in range(3):
        bn(torch.randn(8, c, 4, 4) * 3 + 1)
    return bn.eval()


def test_frozen_bn_equals_eval_batchnorm_and_is_constant():
    torch.manual_seed(0)
    bn = _trained_bn(5)
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(2, 5, 3, 3)
    torch.testing.assert_close(frozen(x), bn(x))
    frozen.train()
    before = frozen.running_mean.clone()
    torch.testing.assert_close(frozen(x * 10), bn(x * 10))  # train mode: still the stored statistics
    assert torch.equal(frozen.running_mean, before)
    assert list(frozen.parameters()) == []


def test_frozen_bn_loads_batchnorm_state_dict():
    torch.manual_seed(1)
    bn = _trained_bn(3)
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())  # includes num_batches_tracked
    x = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(frozen(x), bn(x))


def test_freeze_batchnorm_replaces_nested_modules():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), _trained_bn(4), nn.Sequential(nn.ReLU(), _trained_bn(4)))
    net.eval()
    x = torch.randn(2, 3, 6, 6)
    expected = net(x)
    out = freeze_batchnorm(net)
    assert out is net
    assert isinstance(net[1], FrozenBatchNorm2d) and isinstance(net[2][1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    net.train()
    torch.testing.assert_close(net(x), expected)
    assert isinstance(freeze_batchnorm(nn.BatchNorm2d(2)), FrozenBatchNorm2d)
