"""Box utilities: area, IoU and (batched) non-maximum suppression.

Semantics follow `torchvision.ops` exactly (boxes are ``(x1, y1, x2, y2)`` in
absolute coordinates, area is ``(x2 - x1) * (y2 - y1)`` without a ``+1``), so
results can be compared one to one. torchvision itself is not a dependency.

On the CPU, fp32 NMS runs the C++ greedy sweep of :mod:`resnets.ops.detection_kernels`
(torchvision's algorithm, vectorised over the boxes after each kept one). Elsewhere it
runs in PyTorch: NMS is vectorised in blocks of boxes (in score order): a block is tested against
every box kept so far with one tensor op, and only the greedy sweep inside a block -
inherently sequential - runs as a short loop over NumPy boolean rows. The work is
~(#kept x #boxes) rather than #boxes^2, and can stop early at ``max_output``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from resnets.ops.detection_kernels import load_extension

__all__ = ["box_area", "box_iou", "nms", "batched_nms", "clip_boxes_to_image", "remove_small_boxes"]

# Boxes resolved per NMS block; the largest intermediate is #kept x _NMS_BLOCK floats.
_NMS_BLOCK = 256


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box in a ``Tensor[N, 4]`` of ``(x1, y1, x2, y2)`` boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_inter(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection-over-union, ``Tensor[N, M]``.

    As in torchvision, two zero-area boxes give ``0 / 0 = nan``; a zero-area box
    against a box of positive area gives 0.
    """
    inter = _pairwise_inter(boxes1, boxes2)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union


def _iou_above(a: Tensor, area_a: Tensor, b: Tensor, area_b: Tensor, thr: float) -> Tensor:
    """``iou(a_i, b_j) > thr`` as ``[len(a), len(b)]`` bools, computed like torchvision's
    kernel (``inter / (area_i + area_j - inter)``) with in-place ops to limit passes."""
    w = torch.minimum(a[:, None, 2], b[None, :, 2]).sub_(torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = torch.minimum(a[:, None, 3], b[None, :, 3]).sub_(torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)
    return inter.div_(union) > thr  # nan (two empty boxes) compares False: never suppresses


def _greedy_block(sup: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Greedy sweep inside one block: ``sup[i, j]`` (j > i) says i suppresses j."""
    removed = ~alive
    keep = []
    for i in range(sup.shape[0]):
        if removed[i]:
            continue
        keep.append(i)
        removed |= sup[i]
    return np.asarray(keep, dtype=np.int64)


def _nms_sorted(boxes: Tensor, idxs: Tensor | None, thr: float, max_output: int | None) -> Tensor:
    """Greedy NMS over boxes already sorted by decreasing score; returns kept positions.

    Blocked so that work is ~ (#kept x #boxes) instead of #boxes^2: each block of
    _NMS_BLOCK boxes is first tested against all boxes kept so far (one tensor op),
    then resolved greedily inside the block. Exactly the sequential greedy result.
    """
    n = boxes.shape[0]
    areas = box_area(boxes)
    kept: list[Tensor] = []
    kept_boxes = boxes[:0]
    kept_areas = areas[:0]
    kept_idxs = idxs[:0] if idxs is not None else None
    total = 0
    tri = torch.ones(_NMS_BLOCK, _NMS_BLOCK, dtype=torch.bool, device=boxes.device).triu_(1)
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        b, a = boxes[start:stop], areas[start:stop]
        alive = torch.ones(stop - start, dtype=torch.bool, device=boxes.device)
        if kept_boxes.shape[0]:
            sup = _iou_above(kept_boxes, kept_areas, b, a, thr)
            if idxs is not None:
                sup &= kept_idxs[:, None] == idxs[None, start:stop]
            alive = ~sup.any(dim=0)
        inner = _iou_above(b, a, b, a, thr) & tri[: stop - start, : stop - start]
        if idxs is not None:
            inner &= idxs[start:stop, None] == idxs[None, start:stop]
        local = torch.from_numpy(_greedy_block(inner.cpu().numpy(), alive.cpu().numpy())).to(boxes.device)
        if max_output is not None:
            local = local[: max_output - total]
        if local.numel():
            kept.append(local + start)
            kept_boxes = torch.cat([kept_boxes, b[local]])
            kept_areas = torch.cat([kept_areas, a[local]])
            if idxs is not None:
                kept_idxs = torch.cat([kept_idxs, idxs[start:stop][local]])
            total += local.numel()
        if max_output is not None and total >= max_output:
            break
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64, device=boxes.device)


def _nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float, max_output: int | None = None) -> Tensor:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be Tensor[{boxes.shape[0]}], got shape {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # Stable sort: among equal scores the lower index wins (deterministic ties).
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_idxs = idxs[order] if idxs is not None else None
    if boxes.device.type == "cpu" and boxes.dtype == torch.float32 and load_extension() is not None:
        # The C++ greedy sweep (resnets/ops/csrc/detection_ops.cpp): the same kept boxes.
        cats = sorted_idxs.to(torch.int64) if sorted_idxs is not None else torch.empty(0, dtype=torch.int64)
        keep = load_extension().nms_sorted(boxes.detach()[order].contiguous(), cats, float(iou_threshold),
                                           -1 if max_output is None else int(max_output))
    else:
        keep = _nms_sorted(boxes.detach()[order], sorted_idxs, float(iou_threshold), max_output)
    return order[keep]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, max_output: int | None = None) -> Tensor:
    """Greedy non-maximum suppression (``torchvision.ops.nms`` semantics).

    Processes boxes by decreasing score and discards every box whose IoU with an
    already kept box is strictly greater than ``iou_threshold`` (IoU exactly at
    the threshold is kept). Returns int64 indices of kept boxes, sorted by
    decreasing score; equal scores keep the lower index first. ``max_output``
    (an extension, not in torchvision) stops after that many kept boxes - the same
    result as slicing, only faster (RPN keeps 2000 of 12000).
    """
    return _nms(boxes, scores, None, iou_threshold, max_output)


def batched_nms(
    boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, max_output: int | None = None
) -> Tensor:
    """NMS independently per category ``idxs`` (``torchvision.ops.batched_nms``).

    Boxes of different categories never suppress each other. Unlike the usual
    coordinate-offset trick this masks the IoU relation by category, so results
    are bit-identical to running :func:`nms` per category.
    """
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(f"idxs must be Tensor[{boxes.shape[0]}], got shape {tuple(idxs.shape)}")
    return _nms(boxes, scores, idxs, iou_threshold, max_output)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip ``(x1, y1, x2, y2)`` boxes to an image of ``size = (height, width)``."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both at least ``min_size``."""
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]
