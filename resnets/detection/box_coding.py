"""Box regression targets, IoU matching and balanced sampling (Faster R-CNN).

The parameterisation is R-CNN's: for a reference box (anchor or RoI) with centre
(x_a, y_a) and size (w_a, h_a), a target box is encoded as
``(w_x (x - x_a) / w_a, w_y (y - y_a) / h_a, w_w log(w / w_a), w_h log(h / h_a))``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from resnets.ops import box_iou

__all__ = ["encode_boxes", "decode_boxes", "match_boxes", "sample_labels", "smooth_l1"]

# Largest log-scale change a regressor may apply (detectron: log(1000 / 16)); keeps exp() finite.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(targets: Tensor, reference: Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Regression targets ``[N, 4]`` that move ``reference[N, 4]`` onto ``targets[N, 4]``."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(reference)
    tx, ty, tw, th = _centre_size(targets)
    return torch.stack(
        (wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)), dim=-1
    )


def decode_boxes(deltas: Tensor, reference: Tensor, weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> Tensor:
    """Apply ``deltas[N, ..., 4]`` to ``reference[N, 4]``; returns boxes shaped like ``deltas``."""
    wx, wy, ww, wh = weights
    rx, ry, rw, rh = _centre_size(reference)
    extra = deltas.dim() - reference.dim()
    for _ in range(extra):  # broadcast reference over per-class deltas
        rx, ry, rw, rh = rx[:, None], ry[:, None], rw[:, None], rh[:, None]
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=_MAX_LOG_SCALE)
    dh = (deltas[..., 3] / wh).clamp(max=_MAX_LOG_SCALE)
    cx, cy = dx * rw + rx, dy * rh + ry
    w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def match_boxes(
    gt: Tensor, candidates: Tensor, fg_iou: float, bg_low: float, bg_high: float, keep_best: bool
) -> tuple[Tensor, Tensor]:
    """Assign each candidate to its best ground-truth box.

    Returns ``(matched_gt_index[N], label[N])`` with label 1 = foreground (IoU >=
    fg_iou), 0 = background (``bg_low <= IoU < bg_high``), -1 = ignored. With
    ``keep_best`` (RPN) every ground-truth box also claims the candidates with its
    highest IoU, so each object has at least one positive anchor (Faster R-CNN).
    """
    n = candidates.shape[0]
    if gt.numel() == 0:
        label = torch.zeros(n, dtype=torch.int64, device=candidates.device)
        return torch.zeros(n, dtype=torch.int64, device=candidates.device), label
    iou = box_iou(gt, candidates).nan_to_num_(0.0)  # [G, N]
    best, idx = iou.max(dim=0)
    label = torch.full((n,), -1, dtype=torch.int64, device=candidates.device)
    label[(best >= bg_low) & (best < bg_high)] = 0
    label[best >= fg_iou] = 1
    if keep_best:
        gt_best = iou.max(dim=1, keepdim=True).values
        g, c = torch.where((iou == gt_best) & (gt_best > 0))
        label[c] = 1
        idx[c] = g
    return idx, label


def sample_labels(label: Tensor, batch_size: int, positive_fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Randomly subsample to at most ``batch_size`` entries with at most the given
    fraction of positives, filling with negatives; returns the indices kept."""
    pos = torch.where(label == 1)[0]
    neg = torch.where(label == 0)[0]
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    pos = pos[torch.randperm(pos.numel(), generator=generator)[:num_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator)[:num_neg].to(neg.device)]
    return torch.cat([pos, neg])


def smooth_l1(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (Huber) loss as in Fast R-CNN."""
    return torch.nn.functional.smooth_l1_loss(input, target, beta=beta, reduction="sum")
