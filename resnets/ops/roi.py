"""RoI Align and RoI Pool (``torchvision.ops`` semantics), vectorised in PyTorch.

Both take ``input: Tensor[N, C, H, W]`` and ``boxes`` as either ``Tensor[K, 5]``
of ``(batch_index, x1, y1, x2, y2)`` or a list of per-image ``Tensor[L, 4]``, and
return ``Tensor[K, C, out_h, out_w]``.

RoI Align is the hot path of the C4 detector head (Appendix A: a 14x14 pooled
conv4 feature per RoI feeds res5). On the CPU (fp32 or bf16 features) it runs the C++
kernel of :mod:`resnets.ops.detection_kernels`, which sums the bilinear taps of each
bin over contiguous channels. Elsewhere, or without a compiler, it runs in PyTorch:
bilinear sampling is a *linear* map of the feature map whose weights depend only on
the boxes, so every bin is a weighted bag of channels-last feature rows, summed by
one ``embedding_bag`` (whose backward scatters the gradient): no per-RoI Python loop,
and variable per-RoI sampling grids (``sampling_ratio <= 0``) are variable bag
lengths. Both return channels-last memory (what the res5 convolutions run on). RoI Pool
(the paper's choice, ``roi_op="pool"``) has a CPU kernel of the same kind.
Boxes get no gradient (as in torchvision); coordinates are computed in fp32 for bf16
features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from resnets.ops.detection_kernels import load_extension

__all__ = ["roi_align", "roi_pool", "convert_boxes_to_roi_format"]

# Largest gather (elements) RoI Pool materialises at once; bounds its memory (64 MB fp32).
_POOL_CHUNK_ELEMS = 1 << 24

def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def convert_boxes_to_roi_format(boxes: list[Tensor]) -> Tensor:
    """Turn a list of per-image ``Tensor[L, 4]`` into ``Tensor[K, 5]`` with the image index first."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    rois = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be Tensor[L, 4], got shape {tuple(b.shape)}")
        rois.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    return torch.cat(rois, dim=0)


def _check_rois(input: Tensor, boxes: Tensor | list[Tensor]) -> Tensor:
    if input.dim() != 4:
        raise ValueError(f"input must be Tensor[N, C, H, W], got shape {tuple(input.shape)}")
    rois = convert_boxes_to_roi_format(boxes) if isinstance(boxes, (list, tuple)) else boxes
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"boxes must be Tensor[K, 5] or a list of Tensor[L, 4], got shape {tuple(rois.shape)}")
    coord_dtype = input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32
    rois = rois.to(device=input.device, dtype=coord_dtype).detach()
    if rois.shape[0] and (rois[:, 0].min() < 0 or rois[:, 0].max() >= input.shape[0]):
        raise ValueError(f"RoI batch indices must lie in [0, {input.shape[0]})")
    return rois


def _align_axis(
    start: Tensor, end: Tensor, pooled: int, size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis for every RoI, bin and sample.

    Returns ``index[K, pooled, 2G]``, ``weight[K, pooled, 2G]`` (zero for padding
    samples and samples outside ``[-1, size]``) and the per-RoI grid size ``[K]``.
    Mirrors torchvision's ``roi_align`` CPU kernel step by step.
    """
    offset = 0.5 if aligned else 0.0
    start = start * spatial_scale - offset
    length = end * spatial_scale - offset - start
    if not aligned:  # legacy behaviour: force malformed RoIs to be at least 1x1
        length = length.clamp(min=1.0)
    bin_size = length / pooled
    k = start.shape[0]
    if sampling_ratio > 0:
        grid = torch.full((k,), sampling_ratio, dtype=torch.int64, device=start.device)
    else:  # adaptive: ceil(roi_size / pooled_size) samples per bin
        grid = torch.ceil(length / pooled).clamp(min=0).to(torch.int64)
    g = max(int(grid.max()), 1)
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)
    i = torch.arange(g, device=start.device, dtype=start.dtype)
    bs = bin_size[:, None, None]
    coord = start[:, None, None] + p[None, :, None] * bs + (i[None, None, :] + 0.5) * bs / grid.clamp(min=1)[:, None, None]
    valid = (i[None, None, :] < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1).to(torch.int64)
    at_edge = low >= size - 1
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    index = torch.stack((low, high), dim=-1).reshape(k, pooled, 2 * g)
    weight = (torch.stack((1.0 - frac, frac), dim=-1) * valid[..., None]).reshape(k, pooled, 2 * g)
    return index, weight, grid


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align (He et al., Mask R-CNN) with ``torchvision.ops.roi_align`` semantics.

    Each output bin averages ``grid_h x grid_w`` bilinear samples, where the grid is
    ``sampling_ratio`` per axis or, if ``sampling_ratio <= 0``, ``ceil(roi_size /
    output_size)`` per RoI. ``aligned=True`` shifts boxes by -0.5 pixel so that box
    corners map onto pixel centres correctly; ``aligned=False`` (legacy) instead
    forces every RoI to be at least 1x1. Samples more than one pixel outside the
    feature map contribute 0, nearer ones are clamped to the border.
    """
    rois = _check_rois(input, boxes)
    n, c, h, w = input.shape
    oh, ow = _pair(output_size)
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros((0, c, oh, ow))
    if _kernel_applies(input):
        return _RoIAlignKernel.apply(input, rois.float().contiguous(), oh, ow, float(spatial_scale),
                                     int(sampling_ratio), bool(aligned))
    iy, wy, gh = _align_axis(rois[:, 2], rois[:, 4], oh, h, spatial_scale, sampling_ratio, aligned)
    ix, wx, gw = _align_axis(rois[:, 1], rois[:, 3], ow, w, spatial_scale, sampling_ratio, aligned)
    count = (gh * gw).clamp(min=1).to(rois.dtype)
    batch = rois[:, 0].to(torch.int64)
    # Dense tap layout [K, oh, ow, taps_y, taps_x]; separable weights multiply.
    col = (batch * (h * w))[:, None, None, None, None] + iy[:, :, None, :, None] * w + ix[:, None, :, None, :]
    val = wy[:, :, None, :, None] * wx[:, None, :, None, :] / count[:, None, None, None, None]
    col = col.reshape(k * oh * ow, -1)
    val = val.reshape(k * oh * ow, -1)
    keep = val != 0  # drop padding / out-of-range taps: bags get their true length
    offsets = torch.zeros(k * oh * ow, dtype=torch.int64, device=input.device)
    offsets[1:] = keep.sum(dim=1).cumsum(0)[:-1]
    features = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # channels-last rows
    # Each bin is a weighted bag of feature rows: embedding_bag sums them (and its backward
    # scatters the gradient), with no [bins, taps, C] intermediate.
    out = F.embedding_bag(col[keep], features, offsets, mode="sum", per_sample_weights=val[keep].to(input.dtype))
    return out.view(k, oh, ow, c).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


class _RoIAlignKernel(torch.autograd.Function):
    """RoI Align through the C++ CPU kernel (resnets/ops/csrc/detection_ops.cpp)."""

    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, oh: int, ow: int, spatial_scale: float,  # type: ignore[override]
                sampling_ratio: int, aligned: bool) -> Tensor:
        ext = load_extension()
        rows = input.permute(0, 2, 3, 1).contiguous()  # a view when input is channels-last already
        out, *taps = ext.roi_align_forward(rows, rois, oh, ow, spatial_scale, sampling_ratio, aligned)
        ctx.save_for_backward(*taps)  # (pixel, weight) of every bin: the backward reuses them
        ctx.args = (input.shape, input.dtype)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory: what res5 runs on

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (n, _, h, w), dtype = ctx.args
        g = ctx.needs_input_grad[0] and load_extension().roi_align_backward(
            grad.permute(0, 2, 3, 1).contiguous(), *ctx.saved_tensors, n, h, w)
        return (g.permute(0, 3, 1, 2).to(dtype) if ctx.needs_input_grad[0] else None), None, None, None, None, None, None


def _kernel_applies(input: Tensor) -> bool:
    return (input.device.type == "cpu" and input.dtype in (torch.float32, torch.bfloat16)
            and not torch.compiler.is_compiling() and load_extension() is not None)


def _round_half_away(x: Tensor) -> Tensor:
    """C ``round()``: halves go away from zero (``torch.round`` rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Fast R-CNN) with ``torchvision.ops.roi_pool`` semantics.

    Box corners are scaled and rounded to feature cells (inclusive), each RoI is
    split into ``output_size`` bins of ``floor``/``ceil`` cell ranges clipped to
    the map, and each bin takes the max; empty bins give 0. On the CPU (fp32 or bf16
    features) it runs the C++ kernel of :mod:`resnets.ops.detection_kernels` (max over
    contiguous channels per bin; the gradient goes to torchvision's argmax, the first
    maximum in row-major order). Elsewhere, or without a compiler, it is vectorised in
    PyTorch with a range-max table: each bin is the max of 4 overlapping power-of-two
    windows, so the cost does not grow with the bin size; there the gradient of a tied
    maximum may be shared between the tied cells.
    """
    rois = _check_rois(input, boxes)
    n, c, h, w = input.shape
    oh, ow = _pair(output_size)
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros((0, c, oh, ow))
    if _kernel_applies(input):
        return _RoIPoolKernel.apply(input, rois.float().contiguous(), oh, ow, float(spatial_scale))
    corners = _round_half_away(rois[:, 1:] * spatial_scale).to(torch.int64)
    batch = rois[:, 0].to(torch.int64)

    def axis(lo: Tensor, hi: Tensor, pooled: int, size: int) -> tuple[Tensor, Tensor]:
        # Bin edges in the coordinate dtype (fp32 for bf16 features), as the kernel computes them.
        length = (hi - lo + 1).clamp(min=1).to(rois.dtype)
        bin_size = length / pooled
        p = torch.arange(pooled, device=input.device, dtype=rois.dtype)
        s = torch.floor(p[None] * bin_size[:, None]).to(torch.int64) + lo[:, None]
        e = torch.ceil((p[None] + 1) * bin_size[:, None]).to(torch.int64) + lo[:, None]
        return s.clamp(0, size), e.clamp(0, size)

    hs, he = axis(corners[:, 1], corners[:, 3], oh, h)
    ws, we = axis(corners[:, 0], corners[:, 2], ow, w)
    len_h = (he - hs)[:, :, None]  # [K, oh, 1]
    len_w = (we - ws)[:, None, :]  # [K, 1, ow]
    empty = (len_h <= 0) | (len_w <= 0)  # [K, oh, ow]
    # Range-max "sparse table": level (a, b) holds the max over 2^a rows x 2^b columns
    # starting at each cell, so every bin is the max of 4 (overlapping) table entries.
    la = max(int(len_h.max()), 1).bit_length() - 1
    lb = max(int(len_w.max()), 1).bit_length() - 1
    table = _range_max_table(input.permute(0, 2, 3, 1), la, lb)  # [(la+1)*(lb+1)*N*H*W, C]
    a = len_h.clamp(min=1).log2().floor().to(torch.int64)  # level per bin row
    b = len_w.clamp(min=1).log2().floor().to(torch.int64)
    r0, r1 = hs[:, :, None], (he[:, :, None] - (1 << a)).clamp(min=0)
    c0, c1 = ws[:, None, :], (we[:, None, :] - (1 << b)).clamp(min=0)
    r0, r1, c0, c1 = r0.clamp(max=h - 1), r1.clamp(max=h - 1), c0.clamp(max=w - 1), c1.clamp(max=w - 1)
    base = ((a * (lb + 1) + b) * n + batch[:, None, None]) * (h * w)  # [K, oh, ow]
    corners_idx = torch.stack([base + r * w + col for r in (r0, r1) for col in (c0, c1)])  # [4, K, oh, ow]
    chunk = max(1, _POOL_CHUNK_ELEMS // (oh * ow * c))
    # Chunks of RoIs only bound memory.
    out = torch.cat([
        _MaxOfRows.apply(table, corners_idx[:, s : s + chunk].reshape(4, -1)).view(-1, oh, ow, c)
        for s in range(0, k, chunk)
    ])
    out = out.masked_fill(empty[..., None], 0.0)
    return out.permute(0, 3, 1, 2).contiguous()


class _RoIPoolKernel(torch.autograd.Function):
    """RoI max pooling through the C++ CPU kernel (resnets/ops/csrc/detection_ops.cpp). The
    backward finds the argmax again from the saved input rows (a view of a channels-last input)."""

    @staticmethod
    def forward(ctx, input: Tensor, rois: Tensor, oh: int, ow: int, spatial_scale: float) -> Tensor:  # type: ignore[override]
        rows = input.permute(0, 2, 3, 1).contiguous()
        out = load_extension().roi_pool_forward(rows, rois, oh, ow, spatial_scale)
        ctx.save_for_backward(rows, rois)
        ctx.spatial_scale = spatial_scale
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory: what res5 runs on

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        rows, rois = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            g = load_extension().roi_pool_backward(grad.permute(0, 2, 3, 1).to(rows.dtype).contiguous(), rows, rois,
                                                   ctx.spatial_scale)
            g = g.permute(0, 3, 1, 2).to(rows.dtype)
        return g, None, None, None, None


class _MaxOfRows(torch.autograd.Function):
    """``out[j] = max_i table[index[i, j]]`` for a few lookups ``i``; the backward sends
    each gradient to the row that won (a uint8 winner map is all that is saved), which is
    much cheaper than autograd through ``max(dim)`` / ``maximum``."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        out = table[index[0]]
        winner = torch.zeros(out.shape, dtype=torch.uint8, device=out.device)
        for i in range(1, index.shape[0]):
            v = table[index[i]]
            better = v > out
            out = torch.maximum(out, v)
            winner.masked_fill_(better, i)
        ctx.save_for_backward(index, winner)
        ctx.num_rows = table.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        index, winner = ctx.saved_tensors
        grad_table = grad.new_zeros((ctx.num_rows, grad.shape[1]))
        for i in range(index.shape[0]):
            grad_table.index_add_(0, index[i], grad * (winner == i))
        return grad_table, None


def _range_max_table(x: Tensor, la: int, lb: int) -> Tensor:
    """Stack of 2D range-max tables of channels-last ``x[N, H, W, C]`` for window sizes
    ``2^a x 2^b`` (a <= la, b <= lb), windows clipped at the border; rows = cells."""
    n, h, w, c = x.shape
    neg = torch.finfo(x.dtype).min if x.dtype.is_floating_point else torch.iinfo(x.dtype).min

    def shifted_max(t: Tensor, dim: int, step: int) -> Tensor:
        pad = t.narrow(dim, 0, min(step, t.shape[dim])).clone().fill_(neg)
        later = torch.cat([t.narrow(dim, min(step, t.shape[dim]), t.shape[dim] - min(step, t.shape[dim])), pad], dim=dim)
        return torch.maximum(t, later)

    rows = [x]
    for i in range(1, la + 1):
        rows.append(shifted_max(rows[-1], 1, 1 << (i - 1)))
    levels = []
    for t in rows:
        levels.append(t)
        for j in range(1, lb + 1):
            t = shifted_max(t, 2, 1 << (j - 1))
            levels.append(t)
    return torch.stack(levels).reshape(-1, c)
