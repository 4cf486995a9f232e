"""Box utilities: area, IoU and (batched) non-maximum suppression.

Semantics follow `torchvision.ops` exactly (boxes are ``(x1, y1, x2, y2)`` in
absolute coordinates, area is ``(x2 - x1) * (y2 - y1)`` without a ``+1``), so
results can be compared one to one. torchvision itself is not a dependency.

NMS is vectorised: the pairwise "suppresses" relation is computed with tensor
ops (in row chunks, bit-packed), and only the final greedy sweep - inherently
sequential - runs as a tight loop over packed bit rows in NumPy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "nms", "batched_nms", "clip_boxes_to_image", "remove_small_boxes"]

# Rows of the pairwise IoU matrix computed at once in NMS: bounds the float
# intermediate to _NMS_CHUNK * N elements (e.g. 1024 x 12000 x 4 B = 48 MB).
_NMS_CHUNK = 1024


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


def _suppression_bits(boxes: Tensor, idxs: Tensor | None, iou_threshold: float) -> np.ndarray:
    """Bit-packed matrix S with S[i, j] = 1 iff box i (earlier in score order)
    suppresses box j > i: IoU(i, j) > threshold (and same category)."""
    n = boxes.shape[0]
    areas = box_area(boxes)
    rows = []
    col = torch.arange(n, device=boxes.device)
    for start in range(0, n, _NMS_CHUNK):
        stop = min(start + _NMS_CHUNK, n)
        inter = _pairwise_inter(boxes[start:stop], boxes)
        # Same expression order as torchvision's kernel: inter / (a_i + a_j - inter).
        iou = inter / (areas[start:stop, None] + areas[None, :] - inter)
        sup = iou > iou_threshold  # nan (two empty boxes) compares False: never suppresses
        sup &= col[None, :] > torch.arange(start, stop, device=boxes.device)[:, None]
        if idxs is not None:
            sup &= idxs[start:stop, None] == idxs[None, :]
        rows.append(np.packbits(sup.cpu().numpy(), axis=1, bitorder="little"))
    return np.concatenate(rows, axis=0)


def _greedy(bits: np.ndarray, n: int) -> np.ndarray:
    """Greedy sweep over the bit-packed suppression matrix (rows in score order)."""
    removed = np.zeros(bits.shape[1], dtype=np.uint8)
    keep = []
    for i in range(n):
        if removed[i >> 3] >> (i & 7) & 1:
            continue
        keep.append(i)
        np.bitwise_or(removed, bits[i], out=removed)
    return np.asarray(keep, dtype=np.int64)


def _nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be Tensor[N, 4], got shape {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"scores must be Tensor[{boxes.shape[0]}], got shape {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # Stable sort: among equal scores the lower index wins (deterministic ties).
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    sorted_idxs = idxs[order] if idxs is not None else None
    bits = _suppression_bits(sorted_boxes.detach(), sorted_idxs, float(iou_threshold))
    keep = torch.from_numpy(_greedy(bits, n)).to(boxes.device)
    return order[keep]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression (``torchvision.ops.nms`` semantics).

    Processes boxes by decreasing score and discards every box whose IoU with an
    already kept box is strictly greater than ``iou_threshold`` (IoU exactly at
    the threshold is kept). Returns int64 indices of kept boxes, sorted by
    decreasing score; equal scores keep the lower index first.
    """
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS independently per category ``idxs`` (``torchvision.ops.batched_nms``).

    Boxes of different categories never suppress each other. Unlike the usual
    coordinate-offset trick this masks the IoU relation by category, so results
    are bit-identical to running :func:`nms` per category.
    """
    if idxs.shape != boxes.shape[:1]:
        raise ValueError(f"idxs must be Tensor[{boxes.shape[0]}], got shape {tuple(idxs.shape)}")
    return _nms(boxes, scores, idxs, iou_threshold)


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
