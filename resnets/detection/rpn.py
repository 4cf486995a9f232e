"""Region Proposal Network on the conv4 feature map (Faster R-CNN, Appendix A).

A 3x3 conv slides over conv4 (stride 16); at every position two sibling 1x1 convs
score ``A = scales x ratios`` anchors for objectness and regress them. Training
samples 256 anchors per image at 1:1 positives:negatives (positive: IoU >= 0.7 or
the best anchor of a ground-truth box; negative: IoU < 0.3) with a binary
cross-entropy loss and a smooth-L1 box loss. Proposals are the decoded top-scoring
anchors after NMS at 0.7; they are detached (approximate joint training: no
gradient flows through proposal coordinates).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnets.detection.box_coding import decode_boxes, encode_boxes, match_boxes, sample_labels
from resnets.detection.config import DetectionConfig
from resnets.ops import batched_nms, clip_boxes_to_image, nms, remove_small_boxes

__all__ = ["RPN", "make_cell_anchors", "grid_anchors"]

# Fast R-CNN's smooth-L1 for the RPN uses sigma = 3, i.e. beta = 1 / sigma^2.
_RPN_SMOOTH_L1_BETA = 1.0 / 9.0


def make_cell_anchors(sizes: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """``[A, 4]`` anchors centred at (0, 0): side ``size`` and aspect ``ratio = h / w``
    at constant area ``size**2``; ordered size-major."""
    rows = []
    for s in sizes:
        for r in ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(cell_anchors: Tensor, height: int, width: int, stride: int) -> Tensor:
    """All anchors of a ``height x width`` feature map, ``[height * width * A, 4]``,
    ordered (y, x, anchor). Anchors sit at feature-cell centres ``(i + 0.5) * stride``."""
    device = cell_anchors.device
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell_anchors[None]).reshape(-1, 4)


class RPN(nn.Module):
    """Region proposal network. With ``cfg.rpn_per_class`` (Appendix C) every anchor has
    one objectness score and one box per class; proposals then carry a class label."""

    def __init__(self, in_channels: int, cfg: DetectionConfig, stride: int = 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.stride = stride
        hidden = cfg.rpn_channels or in_channels
        self.num_anchors = len(cfg.anchor_sizes) * len(cfg.anchor_ratios)
        self.num_outputs = cfg.num_classes if cfg.rpn_per_class else 1
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.cls_logits = nn.Conv2d(hidden, self.num_anchors * self.num_outputs, 1)
        self.bbox_pred = nn.Conv2d(hidden, self.num_anchors * self.num_outputs * 4, 1)
        for conv in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)  # Faster R-CNN: zero-mean Gaussian, std 0.01
            nn.init.zeros_(conv.bias)
        self.register_buffer("cell_anchors", make_cell_anchors(cfg.anchor_sizes, cfg.anchor_ratios), persistent=False)

    def forward(
        self, features: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], list[Tensor | None], dict[str, Tensor]]:
        """Returns per-image proposals ``[P, 4]`` (input pixels), their class labels
        (per-class RPN; else None) and, when ``targets`` are given, the RPN losses."""
        b, _, fh, fw = features.shape
        t = F.relu(self.conv(features))
        c, a = self.num_outputs, self.num_anchors
        # [B, A*C, H, W] -> [B, H*W*A, C] and [B, H*W*A, C, 4], matching grid_anchors' order.
        # The losses and box decoding run in fp32 (the convolutions may be bf16 under autocast).
        logits = self.cls_logits(t).float().view(b, a, c, fh, fw).permute(0, 3, 4, 1, 2).reshape(b, -1, c)
        deltas = self.bbox_pred(t).float().view(b, a, c, 4, fh, fw).permute(0, 4, 5, 1, 2, 3).reshape(b, -1, c, 4)
        anchors = grid_anchors(self.cell_anchors, fh, fw, self.stride)
        proposals, labels = self._proposals(logits.detach(), deltas.detach(), anchors, image_sizes)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self._loss(logits, deltas, anchors, targets)
        return proposals, labels, losses

    def _proposals(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        cfg = self.cfg
        pre_n = cfg.rpn_pre_nms_top_n_train if self.training else cfg.rpn_pre_nms_top_n_test
        post_n = cfg.rpn_post_nms_top_n_train if self.training else cfg.rpn_post_nms_top_n_test
        b, n, c = logits.shape
        flat = logits.reshape(b, n * c)
        k = min(pre_n, n * c)
        scores, idx = flat.topk(k, dim=1)
        anchor_idx, cls_idx = idx // c, idx % c
        proposals, labels = [], []
        for i, size in enumerate(image_sizes):  # per image: NMS is image-local
            boxes = decode_boxes(deltas[i, anchor_idx[i], cls_idx[i]], anchors[anchor_idx[i]])
            boxes = clip_boxes_to_image(boxes, size)
            keep = remove_small_boxes(boxes, cfg.rpn_min_box_size)
            boxes, s, lab = boxes[keep], scores[i, keep], cls_idx[i, keep]
            if cfg.rpn_per_class:
                keep = batched_nms(boxes, s, lab, cfg.rpn_nms, max_output=post_n)
            else:
                keep = nms(boxes, s, cfg.rpn_nms, max_output=post_n)
            proposals.append(boxes[keep])
            labels.append(lab[keep] + 1 if cfg.rpn_per_class else None)
        return proposals, labels

    def _loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cfg = self.cfg
        obj_logits, obj_labels, box_pred, box_target = [], [], [], []
        for i, target in enumerate(targets):
            gt = target["boxes"]
            idx, label = match_boxes(gt, anchors, cfg.rpn_fg_iou, 0.0, cfg.rpn_bg_iou, keep_best=True)
            keep = sample_labels(label, cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction)
            label = label[keep]
            anchor_cls = torch.zeros_like(keep)
            if cfg.rpn_per_class and gt.numel():
                anchor_cls = target["labels"][idx[keep]] - 1  # which class's output is trained
            if cfg.rpn_per_class:
                # Per-class objectness: positives are positive for their class only; sampled
                # negatives are negative for every class (Appendix C's class-specific RPN).
                cls_target = torch.zeros(keep.numel(), self.num_outputs, device=logits.device)
                pos_rows = torch.where(label == 1)[0]
                cls_target[pos_rows, anchor_cls[pos_rows]] = 1.0
                obj_logits.append(logits[i, keep])
                obj_labels.append(cls_target)
            else:
                obj_logits.append(logits[i, keep, 0])
                obj_labels.append(label.to(logits.dtype))
            pos = keep[label == 1]
            if pos.numel():
                box_pred.append(deltas[i, pos, anchor_cls[label == 1]])
                box_target.append(encode_boxes(gt[idx[pos]], anchors[pos]))
        num = max(sum(t.shape[0] for t in obj_labels), 1)
        loss_obj = F.binary_cross_entropy_with_logits(torch.cat(obj_logits), torch.cat(obj_labels), reduction="sum") / num
        if box_pred:
            loss_box = F.smooth_l1_loss(torch.cat(box_pred), torch.cat(box_target), beta=_RPN_SMOOTH_L1_BETA, reduction="sum") / num
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_rpn_objectness": loss_obj, "loss_rpn_box": loss_box}
