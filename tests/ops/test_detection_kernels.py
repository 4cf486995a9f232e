"""The C++ RoI Align / NMS kernels (resnets/ops/csrc/detection_ops.cpp) give the results of the
PyTorch versions, which tests/ops/test_roi.py and test_boxes.py check against transcriptions of
torchvision's kernels (test_roi.py checks the RoI Pool kernel against them directly). The first test to need the kernels compiles them (about a minute on 2
cores, once per session)."""

from __future__ import annotations

import pytest
import torch

from resnets.ops import batched_nms, nms, roi_align, roi_pool
from resnets.ops import detection_kernels


@pytest.fixture(scope="module")
def kernels():
    ext = detection_kernels.load_extension()
    assert ext is not None, "the detection C++ kernels did not build (see the log)"
    return ext


def _pytorch(monkeypatch):
    monkeypatch.setenv("RESNETS_DETECTION_KERNELS", "0")


def _rois(gen, k, h, w, scale):
    xy = torch.rand(k, 2, generator=gen) * torch.tensor([w, h]) / scale - 8
    wh = torch.rand(k, 2, generator=gen) * torch.tensor([w, h]) / scale / 2 + 0.5
    b = torch.randint(0, 2, (k, 1), generator=gen).float()
    return torch.cat([b, xy, xy + wh], dim=1)


@pytest.mark.parametrize("sampling_ratio,aligned", [(0, True), (2, True), (-1, False), (3, False)])
def test_roi_align_kernel_matches_pytorch_forward_and_backward(kernels, monkeypatch, sampling_ratio, aligned):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 13, 17, generator=gen)  # channels not a multiple of the vector width
    rois = _rois(gen, 40, 13, 17, 1 / 4)
    g = torch.randn(40, 37, 5, 6, generator=gen)

    def run():
        xx = x.clone().requires_grad_()
        out = roi_align(xx, rois, (5, 6), 1 / 4, sampling_ratio, aligned)
        out.backward(g)
        return out.detach(), xx.grad

    out_k, grad_k = run()
    _pytorch(monkeypatch)
    out_t, grad_t = run()
    torch.testing.assert_close(out_k, out_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_k, grad_t, rtol=1e-5, atol=1e-5)
    assert out_k.is_contiguous(memory_format=torch.channels_last)  # what res5 runs on


def test_roi_align_kernel_bf16_is_fp32_rounded(kernels):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 128, 20, 30, generator=gen)  # 128: the vectorised channel blocks
    rois = _rois(gen, 25, 20, 30, 1 / 16) * torch.tensor([0.0, 1, 1, 1, 1])
    ref = roi_align(x, rois, 14, 1 / 16, 0, True)
    xb = x.bfloat16().requires_grad_()
    out = roi_align(xb, rois, 14, 1 / 16, 0, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    xf = x.clone().requires_grad_()
    roi_align(xf, rois, 14, 1 / 16, 0, True).sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad.float(), xf.grad, rtol=2e-2, atol=2e-2)


def test_nms_kernel_matches_pytorch(kernels, monkeypatch):
    gen = torch.Generator().manual_seed(2)
    n = 3000
    xy = torch.rand(n, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 60], dim=1)
    boxes[:5, 2:] = boxes[:5, :2]  # empty boxes: IoU nan / 0 never suppresses
    scores = torch.randint(0, 50, (n,), generator=gen).float()  # ties: lower index first
    cats = torch.randint(0, 4, (n,), generator=gen)
    got = [nms(boxes, scores, t) for t in (0.3, 0.7)] + [nms(boxes, scores, 0.5, max_output=100),
                                                         batched_nms(boxes, scores, cats, 0.5)]
    _pytorch(monkeypatch)
    want = [nms(boxes, scores, t) for t in (0.3, 0.7)] + [nms(boxes, scores, 0.5, max_output=100),
                                                          batched_nms(boxes, scores, cats, 0.5)]
    for g, w in zip(got, want):
        assert g.dtype == torch.int64 and torch.equal(g, w)
    assert len(got[2]) == 100


def test_without_a_compiler_the_pytorch_versions_run(monkeypatch):
    monkeypatch.setattr(detection_kernels, "_extension", None)
    monkeypatch.setattr(detection_kernels, "_unavailable", True)  # what a failed build leaves
    x = torch.randn(1, 3, 8, 8)
    out = roi_align(x, torch.tensor([[0.0, 1, 1, 6, 6]]), 2, 1.0, 2, True)
    assert out.shape == (1, 3, 2, 2)
    pooled = roi_pool(x, torch.tensor([[0.0, 0, 0, 7, 7]]), 1)
    torch.testing.assert_close(pooled.flatten(), x.amax(dim=(2, 3)).flatten())
    assert nms(torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.1]]), torch.tensor([1.0, 0.9]), 0.5).tolist() == [0]
