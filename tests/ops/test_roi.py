"""roi_align / roi_pool against loop references that transcribe torchvision's CPU kernels.

roi_pool is checked on both of its implementations: the C++ kernel (fp32 / bf16 features on
the CPU) and the PyTorch version (float64 features, or ``RESNETS_DETECTION_KERNELS=0``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resnets.ops import detection_kernels, roi_align, roi_pool


def _bilinear(f: torch.Tensor, y: float, x: float) -> torch.Tensor:
    h, w = f.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(f.shape[0], dtype=f.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1 - ly, 1 - lx
    return hy * hx * f[:, yl, xl] + hy * lx * f[:, yl, xh] + ly * hx * f[:, yh, xl] + ly * lx * f[:, yh, xh]


def _roi_align_ref(x, rois, out, scale, sr, aligned):
    k = rois.shape[0]
    res = torch.zeros(k, x.shape[1], out, out, dtype=x.dtype)
    off = 0.5 if aligned else 0.0
    for r in range(k):
        b, x1, y1, x2, y2 = rois[r].tolist()
        sw, sh = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sw, y2 * scale - off - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / out, rw / out
        gh = sr if sr > 0 else math.ceil(rh / out)
        gw = sr if sr > 0 else math.ceil(rw / out)
        count = max(gh * gw, 1)
        for ph in range(out):
            for pw in range(out):
                acc = torch.zeros(x.shape[1], dtype=x.dtype)
                for iy in range(max(gh, 0)):
                    yy = sh + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(max(gw, 0)):
                        xx = sw + pw * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(x[int(b)], yy, xx)
                res[r, :, ph, pw] = acc / count
    return res


def _c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _pool_bins(rois, h, w, out, scale, t):
    """The bins of torchvision's roi_pool_kernel.cpp, its arithmetic in ``T = t`` (np.float32
    for fp32 features; the op computes bf16 features' bins in fp32 too):
    (roi, image, ph, pw, hs, he, ws, we)."""
    oh, ow = _pair(out)
    for r in range(rois.shape[0]):
        b, x1, y1, x2, y2 = rois[r].tolist()
        sw, sh, ew, eh = (_c_round(t(v) * t(scale)) for v in (x1, y1, x2, y2))
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)  # malformed RoIs are 1x1
        bh, bw = t(rh) / t(oh), t(rw) / t(ow)
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(t(ph) * bh) + sh, 0), h)
                he = min(max(math.ceil(t(ph + 1) * bh) + sh, 0), h)
                ws = min(max(math.floor(t(pw) * bw) + sw, 0), w)
                we = min(max(math.ceil(t(pw + 1) * bw) + sw, 0), w)
                yield r, int(b), ph, pw, hs, he, ws, we


def _coord_type(x):
    return np.float64 if x.dtype == torch.float64 else np.float32


def _roi_pool_ref(x, rois, out, scale=1.0):
    """Forward: each bin's max; empty bins give 0."""
    res = torch.zeros(rois.shape[0], x.shape[1], *_pair(out), dtype=x.dtype)
    for r, b, ph, pw, hs, he, ws, we in _pool_bins(rois, *x.shape[-2:], out, scale, _coord_type(x)):
        if he > hs and we > ws:
            res[r, :, ph, pw] = x[b, :, hs:he, ws:we].amax(dim=(-1, -2))
    return res


def _roi_pool_grad_ref(x, rois, out, scale, grad):
    """Backward: each bin's gradient goes to its argmax, the first maximum in torchvision's
    scan (h, then w, replaced only by a strictly greater value); float64 sums."""
    gx = torch.zeros(x.shape, dtype=torch.float64)
    channels = torch.arange(x.shape[1])
    for r, b, ph, pw, hs, he, ws, we in _pool_bins(rois, *x.shape[-2:], out, scale, _coord_type(x)):
        if he > hs and we > ws:
            cell = x[b, :, hs:he, ws:we].double().reshape(x.shape[1], -1).argmax(dim=1)  # first maximum
            gx[b, channels, hs + cell // (we - ws), ws + cell % (we - ws)] += grad[r, :, ph, pw].double()
    return gx


def _rois(gen: torch.Generator, n_img: int, k: int, size: float) -> torch.Tensor:
    """Random RoIs incl. ones crossing/outside the border and degenerate (x2 <= x1) ones."""
    b = torch.randint(0, n_img, (k, 1), generator=gen).double()
    xy = torch.rand(k, 2, generator=gen, dtype=torch.float64) * size * 1.4 - size * 0.3
    wh = torch.rand(k, 2, generator=gen, dtype=torch.float64) * size * 0.8
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([2.0, 3.0, 2.0, 3.0])  # zero size
    boxes[1] = torch.tensor([5.0, 6.0, 1.0, 2.0])  # inverted
    boxes[2] = torch.tensor([-size, -size, 2 * size, 2 * size])  # covers and exceeds the image
    boxes[3] = torch.tensor([3 * size, 3 * size, 4 * size, 4 * size])  # entirely outside
    return torch.cat([b, boxes], dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_roi_align_matches_reference(aligned, sampling_ratio, scale):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = _rois(gen, 2, 12, 11.0 / scale)
    got = roi_align(x, rois, 3, scale, sampling_ratio, aligned)
    ref = _roi_align_ref(x, rois, 3, scale, sampling_ratio, aligned)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_roi_align_known_values_on_a_ramp():
    # f(y, x) = x is linear, so with aligned=True every bin averages to its centre (minus 0.5).
    x = torch.arange(16.0).repeat(1, 1, 16, 1)
    out = roi_align(x, [torch.tensor([[2.0, 2.0, 10.0, 10.0]])], 4, 1.0, 2, aligned=True)
    assert out.shape == (1, 1, 4, 4)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([2.5, 4.5, 6.5, 8.5]))
    torch.testing.assert_close(out[0, 0, :, 1], torch.full((4,), 4.5))


def test_roi_align_list_format_float32_empty_and_rectangular_output():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    b0 = torch.tensor([[0.0, 0, 5, 5], [1, 1, 7, 3]])
    b1 = torch.tensor([[2.0, 2, 6, 6]])
    as_list = roi_align(x, [b0, b1], (2, 3), 1.0, -1, True)
    rois = torch.cat([torch.cat([torch.zeros(2, 1), b0], 1), torch.cat([torch.ones(1, 1), b1], 1)])
    torch.testing.assert_close(as_list, roi_align(x, rois, (2, 3), 1.0, -1, True))
    assert as_list.shape == (3, 4, 2, 3) and as_list.dtype == torch.float32
    ref = _roi_align_ref(x.double(), rois.double(), 2, 1.0, -1, True)[..., :2]
    torch.testing.assert_close(roi_align(x, rois, 2, 1.0, -1, True).double()[..., :2], ref, rtol=1e-5, atol=1e-5)
    assert roi_align(x, torch.zeros(0, 5), 7).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError):
        roi_align(x, torch.tensor([[2.0, 0, 0, 1, 1]]), 2)  # batch index out of range


def test_roi_align_gradient():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.5, 1.2, 4.7, 5.1], [0.0, -1.0, 2.0, 3.0, 9.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 2, 1.0, 2, True), (x,))


def _require_kernels():
    assert detection_kernels.load_extension() is not None, "the detection C++ kernels did not build (see the log)"


@pytest.fixture(params=["pytorch-f64", "pytorch-f32", "kernel-f32"])
def pool_dtype(request, monkeypatch):
    """Which roi_pool runs, and the feature dtype: the C++ kernel takes fp32 (and bf16) on the
    CPU; float64 or RESNETS_DETECTION_KERNELS=0 takes the PyTorch version."""
    if request.param.startswith("pytorch"):
        monkeypatch.setenv("RESNETS_DETECTION_KERNELS", "0")
    else:
        _require_kernels()
    return torch.float64 if request.param.endswith("f64") else torch.float32


def _pair(out):
    return (out, out) if isinstance(out, int) else out


def _pool_and_grad(x, rois, out, scale, grad):
    xx = x.clone().requires_grad_()
    y = roi_pool(xx, rois, out, scale)
    y.backward(grad)
    return y.detach(), xx.grad


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_pool_matches_reference(pool_dtype, scale):
    # 131 channels: the kernel's vector blocks and a scalar remainder; two images.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 131, 9, 11, generator=gen, dtype=torch.float64).to(pool_dtype)
    rois = _rois(gen, 2, 12, 11.0 / scale)
    for out in (3, (2, 4)):
        grad = torch.randn(12, 131, *_pair(out), generator=gen, dtype=torch.float64).to(pool_dtype)
        y, gx = _pool_and_grad(x, rois, out, scale, grad)
        assert y.dtype == pool_dtype and gx.dtype == pool_dtype
        torch.testing.assert_close(y, _roi_pool_ref(x, rois, out, scale), rtol=0, atol=0)  # a max is exact
        torch.testing.assert_close(gx, _roi_pool_grad_ref(x, rois, out, scale, grad).to(pool_dtype))  # sums in fp32


def test_roi_pool_rounds_half_away_from_zero_and_empty_bins(pool_dtype):
    x = torch.arange(25.0, dtype=pool_dtype).reshape(1, 1, 5, 5)
    # x1 * 0.5 = 1.5 rounds to 2 (torch.round would give 2 too), 2.5 -> 3 (torch.round: 2).
    out = roi_pool(x, torch.tensor([[0.0, 5.0, 5.0, 5.0, 5.0]]), 1, 0.5)
    assert out.item() == x[0, 0, 3, 3].item()
    outside = roi_pool(x, torch.tensor([[0.0, 20.0, 20.0, 30.0, 30.0]]), 2, 1.0)
    assert outside.abs().sum() == 0
    x.requires_grad_(True)
    roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]), 1).sum().backward()
    assert x.grad[0, 0, 4, 4] == 1 and x.grad.sum() == 1


def test_roi_pool_gradcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0, 0, 8, 6], [1.0, 2, 1, 5, 6], [1.0, -4, -4, 30, 30]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 2, 1.0), (x,))


def test_roi_pool_large_bins(pool_dtype):
    # Bins of up to 9x12 cells (several levels of the PyTorch version's range-max table).
    gen = torch.Generator().manual_seed(4)
    big = torch.randn(1, 3, 20, 26, generator=gen, dtype=torch.float64).to(pool_dtype)
    r = torch.tensor([[0.0, 0, 0, 25, 19], [0.0, 3, 2, 17, 11]], dtype=torch.float64)
    grad = torch.randn(2, 3, 2, 3, generator=gen, dtype=torch.float64).to(pool_dtype)
    y, gx = _pool_and_grad(big, r, (2, 3), 1.0, grad)
    torch.testing.assert_close(y, _roi_pool_ref(big, r, (2, 3)), rtol=0, atol=0)
    torch.testing.assert_close(gx, _roi_pool_grad_ref(big, r, (2, 3), 1.0, grad).to(pool_dtype))


@pytest.fixture
def pool_kernel():
    _require_kernels()


def test_roi_pool_kernel_ties_go_to_the_first_maximum(pool_kernel):
    # Values in {0, 1, 2}: most bins hold tied maxima, and constant bins tie everywhere; the
    # gradient must go to the first in row-major order, as in torchvision, never be shared.
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (3, 70, 10, 13), generator=gen).float()
    x[1, :, :5, :6] = 1.0
    rois = _rois(gen, 3, 16, 13.0)
    rois[4] = torch.tensor([1.0, 0, 0, 5, 4])  # the constant corner
    grad = torch.randint(1, 5, (16, 70, 4, 3), generator=gen).float()
    y, gx = _pool_and_grad(x, rois, (4, 3), 1.0, grad)
    torch.testing.assert_close(y, _roi_pool_ref(x, rois, (4, 3)), rtol=0, atol=0)
    torch.testing.assert_close(gx.double(), _roi_pool_grad_ref(x, rois, (4, 3), 1.0, grad), rtol=0, atol=0)
    assert gx[1, :, 0, 0].min() > 0  # the constant corner's first cell took its bin's gradient


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "pytorch"])
def test_roi_pool_bf16(monkeypatch, kernel):
    # CPU bf16 autocast hands bf16 features over: bins computed in fp32 as for fp32 features,
    # the max exact, the gradient (small integers here: exact sums) returned in bf16.
    if kernel:
        _require_kernels()
    else:
        monkeypatch.setenv("RESNETS_DETECTION_KERNELS", "0")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 131, 30, 17, generator=gen).bfloat16()
    rois = _rois(gen, 2, 40, 17 / 0.25)
    rois[4] = torch.tensor([1.0, 0, 0, 40, 112])  # 29 rows in 7 bins: bf16 bin edges would be off by one
    grad = torch.randint(-4, 5, (40, 131, 7, 7), generator=gen).bfloat16()
    y, gx = _pool_and_grad(x, rois, 7, 0.25, grad)
    assert y.dtype == gx.dtype == torch.bfloat16
    torch.testing.assert_close(y, _roi_pool_ref(x, rois, 7, 0.25), rtol=0, atol=0)
    if kernel:  # (the PyTorch version may share a tied maximum's gradient, and bf16 ties often)
        assert y.is_contiguous(memory_format=torch.channels_last)  # what res5 runs on
        torch.testing.assert_close(gx.double(), _roi_pool_grad_ref(x, rois, 7, 0.25, grad), rtol=0, atol=0)


def test_roi_pool_kernel_does_not_depend_on_the_thread_count(pool_kernel):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 200, 12, 15, generator=gen)
    rois = _rois(gen, 2, 30, 15.0 * 16)
    grad = torch.randn(30, 200, 7, 7, generator=gen)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            runs.append(_pool_and_grad(x, rois, 7, 1 / 16, grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
