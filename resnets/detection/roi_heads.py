"""The C4 box head of Appendix A: RoI features on conv4 -> res5 -> pooling -> classifier.

"RoI pooling" of a 14x14 conv4 feature per region (RoI Align by default, the
paper's RoI max pooling with ``roi_op="pool"``), then the network's own conv5_x
stage (``layer4``, stride 2 in its first block, so 7x7), global average pooling,
and two sibling layers: a (num_classes + 1)-way classifier and class-specific box
regressors. Appendix B's global context concatenates the same pipeline applied to
the whole-image box to every region feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnets.detection.box_coding import encode_boxes, match_boxes, sample_labels
from resnets.detection.config import DetectionConfig
from resnets.ops import roi_align, roi_pool

__all__ = ["C4BoxHead"]


class C4BoxHead(nn.Module):
    def __init__(self, res5: nn.Module, in_channels: int, res5_channels: int, cfg: DetectionConfig, stride: int = 16) -> None:
        super().__init__()
        self.cfg = cfg
        self.spatial_scale = 1.0 / stride
        self.in_channels = in_channels
        self.res5 = res5
        dim = res5_channels * (2 if cfg.global_context else 1)
        self.cls_score = nn.Linear(dim, cfg.num_classes + 1)
        self.bbox_pred = nn.Linear(dim, 4 * (cfg.num_classes + 1))
        # Fast R-CNN init: classifier std 0.01, box regressor std 0.001.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def _pool(self, features: Tensor, rois: Tensor) -> Tensor:
        if self.cfg.roi_op == "pool":
            return roi_pool(features, rois, self.cfg.pooled_size, self.spatial_scale)
        return roi_align(features, rois, self.cfg.pooled_size, self.spatial_scale, self.cfg.sampling_ratio, aligned=True)

    def _res5(self, pooled: Tensor) -> Tensor:
        return self.res5(pooled).mean(dim=(2, 3))

    def box_features(self, features: Tensor, rois: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """``[K, D]`` features of ``rois[K, 5]`` (batch index, box in input pixels)."""
        x = self._res5(self._pool(features, rois))
        if self.cfg.global_context:
            # Appendix B: "RoI" pooling over the entire image box = single-level global SPP.
            whole = torch.tensor(
                [[i, 0.0, 0.0, float(w), float(h)] for i, (h, w) in enumerate(image_sizes)],
                device=features.device, dtype=torch.float32,
            )
            context = self._res5(self._pool(features, whole))
            x = torch.cat([x, context[rois[:, 0].long()]], dim=1)
        return x

    def predict(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits ``[K, C+1]`` and per-class box deltas ``[K, C+1, 4]``, in fp32."""
        return (self.cls_score(box_features).float(),
                self.bbox_pred(box_features).float().view(box_features.shape[0], -1, 4))

    def sample(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Training RoIs: proposals plus ground truth, 25% foreground (IoU >= 0.5) and
        background with IoU in [0.1, 0.5). Returns rois ``[K, 5]``, labels ``[K]``
        (0 = background) and regression targets ``[K, 4]``."""
        cfg = self.cfg
        rois, labels, reg = [], [], []
        for i, (props, target) in enumerate(zip(proposals, targets)):
            gt, gt_labels = target["boxes"], target["labels"]
            cand = torch.cat([props, gt])
            idx, flag = match_boxes(gt, cand, cfg.roi_fg_iou, cfg.roi_bg_iou_low, cfg.roi_fg_iou, keep_best=False)
            keep = sample_labels(flag, cfg.roi_batch_size_per_image, cfg.roi_positive_fraction)
            cand, idx, flag = cand[keep], idx[keep], flag[keep]
            lab = torch.where(flag == 1, gt_labels[idx] if gt.numel() else torch.zeros_like(idx), torch.zeros_like(idx))
            target_boxes = gt[idx] if gt.numel() else cand
            reg.append(encode_boxes(target_boxes, cand, cfg.bbox_reg_weights))
            rois.append(torch.cat([torch.full_like(cand[:, :1], i), cand], dim=1))
            labels.append(lab)
        return torch.cat(rois), torch.cat(labels), torch.cat(reg)

    def loss(self, logits: Tensor, deltas: Tensor, labels: Tensor, reg_targets: Tensor) -> dict[str, Tensor]:
        loss_cls = F.cross_entropy(logits, labels)
        fg = torch.where(labels > 0)[0]
        if fg.numel():
            pred = deltas[fg, labels[fg]]
            loss_box = F.smooth_l1_loss(pred, reg_targets[fg], beta=1.0, reduction="sum") / max(labels.numel(), 1)
        else:
            loss_box = deltas.sum() * 0.0
        return {"loss_cls": loss_cls, "loss_box": loss_box}
