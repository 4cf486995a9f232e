"""roi_align / roi_pool against loop references that transcribe torchvision's CPU kernels."""

from __future__ import annotations

import math

import pytest
import torch

from resnets.ops import roi_align, roi_pool


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


def _roi_pool_ref(x, rois, out, scale):
    k = rois.shape[0]
    h, w = x.shape[-2:]
    res = torch.zeros(k, x.shape[1], out, out, dtype=x.dtype)
    for r in range(k):
        b, x1, y1, x2, y2 = rois[r].tolist()
        sw, sh, ew, eh = (_c_round(v * scale) for v in (x1, y1, x2, y2))
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / out, rw / out
        for ph in range(out):
            for pw in range(out):
                hs = min(max(math.floor(ph * bh) + sh, 0), h)
                he = min(max(math.ceil((ph + 1) * bh) + sh, 0), h)
                ws = min(max(math.floor(pw * bw) + sw, 0), w)
                we = min(max(math.ceil((pw + 1) * bw) + sw, 0), w)
                if he <= hs or we <= ws:
                    continue
                res[r, :, ph, pw] = x[int(b), :, hs:he, ws:we].amax(dim=(-1, -2))
    return res


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


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_roi_pool_matches_reference(scale):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = _rois(gen, 2, 12, 11.0 / scale)
    torch.testing.assert_close(roi_pool(x, rois, 3, scale), _roi_pool_ref(x, rois, 3, scale))
    torch.testing.assert_close(roi_pool(x, rois, (2, 2), scale), _roi_pool_ref(x, rois, 2, scale))


def test_roi_pool_rounds_half_away_from_zero_and_empty_bins():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    # x1 * 0.5 = 1.5 rounds to 2 (torch.round would give 2 too), 2.5 -> 3 (torch.round: 2).
    out = roi_pool(x, torch.tensor([[0.0, 5.0, 5.0, 5.0, 5.0]]), 1, 0.5)
    assert out.item() == x[0, 0, 3, 3].item()
    outside = roi_pool(x, torch.tensor([[0.0, 20.0, 20.0, 30.0, 30.0]]), 2, 1.0)
    assert outside.abs().sum() == 0
    x.requires_grad_(True)
    roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]]), 1).sum().backward()
    assert x.grad[0, 0, 4, 4] == 1 and x.grad.sum() == 1


def test_roi_pool_gradient_and_large_bins():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0, 0, 8, 6], [1.0, 2, 1, 5, 6], [1.0, -4, -4, 30, 30]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 2, 1.0), (x,))
    # Bins of up to 9x12 cells (several table levels) still match the loop reference.
    big = torch.randn(1, 3, 20, 26, generator=gen, dtype=torch.float64)
    r = torch.tensor([[0.0, 0, 0, 25, 19], [0.0, 3, 2, 17, 11]], dtype=torch.float64)
    torch.testing.assert_close(roi_pool(big, r, (2, 3)), _roi_pool_ref_rect(big, r, (2, 3)))


def _roi_pool_ref_rect(x, rois, out):
    oh, ow = out
    res = torch.zeros(rois.shape[0], x.shape[1], oh, ow, dtype=x.dtype)
    h, w = x.shape[-2:]
    for k in range(rois.shape[0]):
        b, x1, y1, x2, y2 = (int(round(v)) for v in rois[k].tolist())
        bh, bw = (y2 - y1 + 1) / oh, (x2 - x1 + 1) / ow
        for ph in range(oh):
            for pw in range(ow):
                hs, he = min(max(math.floor(ph * bh) + y1, 0), h), min(max(math.ceil((ph + 1) * bh) + y1, 0), h)
                ws, we = min(max(math.floor(pw * bw) + x1, 0), w), min(max(math.ceil((pw + 1) * bw) + x1, 0), w)
                if he > hs and we > ws:
                    res[k, :, ph, pw] = x[b, :, hs:he, ws:we].amax(dim=(-1, -2))
    return res
