"""Faster R-CNN on a ResNet C4 backbone (paper, Appendix A), with Appendix B's extras.

    image -> resize (shorter side 600, longer <= 1000) -> normalise -> pad to /16
          -> conv1..conv4_x  (the ResNet's forward_features up to layer3: shared, stride 16;
                              conv1 + conv2_x frozen; BN frozen)
          -> RPN -> proposals
          -> RoI features 14x14 on conv4 -> conv5_x (the ResNet's own layer4) -> avg pool
          -> (num_classes + 1)-way softmax, class-specific boxes
          -> per-class NMS 0.3, top 100

Training is end-to-end "approximate joint training": the RPN and head losses are
summed and back-propagated through the shared conv4 features; proposals are
treated as constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnets.detection.box_coding import decode_boxes
from resnets.detection.config import DetectionConfig
from resnets.detection.roi_heads import C4BoxHead
from resnets.detection.rpn import RPN
from resnets.models import Normalize, ResNet, create_model
from resnets.ops import batched_nms, box_iou, clip_boxes_to_image, freeze_batchnorm, remove_small_boxes
from resnets.runtime import fast_bf16_available

__all__ = ["FasterRCNN", "build_detector", "resize_and_batch"]

# conv4 stride of every ImageNet ResNet: conv1 /2, max pool /2, conv3_1 /2, conv4_1 /2.
STRIDE = 16
# Multi-scale testing picks, per RoI, the scales whose scaled RoI area is nearest 224^2 (SPPnet).
_CANONICAL_AREA = 224.0 * 224.0


def resize_and_batch(
    images: list[Tensor], min_size: int, max_size: int, normalize: nn.Module, divisor: int = STRIDE
) -> tuple[Tensor, list[tuple[int, int]], Tensor]:
    """Resize each uint8 ``[3, H, W]`` image so its shorter side is ``min_size`` (longer
    side at most ``max_size``), normalise, and zero-pad into one batch whose sides are
    multiples of ``divisor``. Returns the batch, the resized ``(h, w)`` sizes and the
    per-image ``(sx, sy)`` scale factors ``[B, 2]``."""
    resized, sizes, scales = [], [], []
    for img in images:
        h, w = img.shape[-2:]
        s = min(min_size / min(h, w), max_size / max(h, w))
        nh, nw = max(int(round(h * s)), 1), max(int(round(w * s)), 1)
        x = img.float().div(255.0) if img.dtype == torch.uint8 else img.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=s < 1)[0]
        resized.append(normalize(x))
        sizes.append((nh, nw))
        scales.append((nw / w, nh / h))
    bh = -(-max(s[0] for s in sizes) // divisor) * divisor
    bw = -(-max(s[1] for s in sizes) // divisor) * divisor
    batch = resized[0].new_zeros((len(images), 3, bh, bw))  # zero = the mean after normalisation
    for i, x in enumerate(resized):
        batch[i, :, : x.shape[1], : x.shape[2]] = x
    return batch, sizes, torch.tensor(scales, dtype=torch.float32, device=batch.device)


class FasterRCNN(nn.Module):
    """Faster R-CNN, ResNet-C4. ``forward(images, targets)`` returns the loss dict in
    training mode and, in eval mode, one dict per image with ``boxes [D, 4]`` (original
    image pixels), ``scores [D]`` and ``labels [D]`` (1..num_classes)."""

    def __init__(self, cfg: DetectionConfig, resnet: ResNet) -> None:
        super().__init__()
        self.cfg = cfg
        if resnet.stage_names != ["layer1", "layer2", "layer3", "layer4"] or not isinstance(resnet.maxpool, nn.MaxPool2d):
            raise ValueError("the C4 detector needs an ImageNet-style ResNet with layer1..layer4")
        # The images are normalised before they are zero-padded into a batch, so padding is the
        # mean (`resize_and_batch`); the trunk gets them normalised already.
        self.normalize = resnet.input_norm if resnet.input_norm is not None else Normalize.channel()
        resnet.input_norm = None
        if cfg.freeze_bn:
            freeze_batchnorm(resnet)  # Appendix A: BN statistics and affine fixed
        # Appendix A: conv1..conv4_x are the trunk the RPN and the box head share (C4, stride 16);
        # the network's own conv5_x stage becomes the box head's res5, and its classifier goes.
        res5, res5_channels = resnet.layer4, resnet.num_features
        del resnet.layer4, resnet.avgpool, resnet.fc
        resnet.stage_names = ["layer1", "layer2", "layer3"]
        self.backbone = resnet
        if cfg.freeze_stem_and_res2:  # Appendix A: conv1 and conv2_x are not fine-tuned
            for module in (resnet.conv1, resnet.bn1, resnet.layer1):
                for p in module.parameters():
                    p.requires_grad_(False)
        c4 = res5[0].conv1.in_channels
        self.rpn = RPN(c4, cfg, STRIDE)
        self.head = C4BoxHead(res5, c4, res5_channels, cfg, STRIDE)
        # Channels-last weights: oneDNN's fast layout for the bf16 convolutions (and fine in fp32).
        self.to(memory_format=torch.channels_last)

    def features(self, batch: Tensor) -> Tensor:
        """The conv4_x ("C4") feature map, stride 16, of a normalised batch (bf16 and
        channels-last inside :meth:`precision`'s context on a CPU fast at bf16)."""
        if torch.is_autocast_enabled(batch.device.type):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.backbone.forward_features(batch, ["layer3"])["layer3"]

    def uses_bf16(self, device: torch.device) -> bool:
        """Whether the convolutions run in bf16 autocast (``cfg.precision``; "auto": where
        the device is fast at bf16, e.g. AVX512-BF16/AMX CPUs, as classification training)."""
        if self.cfg.precision == "auto":
            return fast_bf16_available(device)
        return self.cfg.precision == "bf16"

    def precision(self, device: torch.device):
        """The autocast context of the convolutions: trunk, RPN conv, res5 (fp32 losses, boxes)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.uses_bf16(device))

    # ------------------------------------------------------------------ training
    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets")
            return self.losses(images, targets)
        return self.detect(images)

    def losses(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Summable RPN + Fast R-CNN losses for one batch (approximate joint training)."""
        cfg = self.cfg
        batch, sizes, scales = resize_and_batch(images, cfg.min_size, cfg.max_size, self.normalize)
        scaled = []
        for t, (sx, sy) in zip(targets, scales.tolist()):
            boxes = t["boxes"].to(batch) * torch.tensor([sx, sy, sx, sy], device=batch.device)
            scaled.append({"boxes": boxes, "labels": t["labels"].to(batch.device)})
        with self.precision(batch.device):
            features = self.features(batch)
            proposals, _, rpn_losses = self.rpn(features, sizes, scaled)
            rois, labels, reg = self.head.sample(proposals, scaled)
            logits, deltas = self.head.predict(self.head.box_features(features, rois, sizes))
        return {**rpn_losses, **self.head.loss(logits, deltas, labels, reg)}

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        with self.precision(images[0].device if images else torch.device("cpu")):
            return self._detect(images)

    def _detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        cfg = self.cfg
        batch, sizes, scales = resize_and_batch(images, cfg.min_size, cfg.max_size, self.normalize)
        features = self.features(batch)
        proposals, _, _ = self.rpn(features, sizes)  # per-class RPN labels are not needed here
        # Work in original-image pixels from here on, so several scales can be combined.
        rois = []
        for i, (p, (sx, sy)) in enumerate(zip(proposals, scales.tolist())):
            box = p / torch.tensor([sx, sy, sx, sy], device=p.device)
            rois.append(torch.cat([torch.full_like(box[:, :1], i), box], dim=1))
        rois = torch.cat(rois) if rois else batch.new_zeros((0, 5))
        levels = self._pyramid(images, batch, features, sizes, scales)
        orig_sizes = [tuple(img.shape[-2:]) for img in images]

        probs, boxes = self._score(levels, rois)
        if cfg.box_refinement:
            # Appendix B: re-pool each RoI's regressed box (of its top class) and score it again;
            # the union of both passes goes to NMS and box voting.
            top = probs[:, 1:].argmax(dim=1) + 1
            refined = torch.cat([rois[:, :1], boxes[torch.arange(rois.shape[0]), top]], dim=1)
            probs2, boxes2 = self._score(levels, refined)
            rois = torch.cat([rois, refined])
            probs, boxes = torch.cat([probs, probs2]), torch.cat([boxes, boxes2])
        results = []
        for i, size in enumerate(orig_sizes):
            sel = rois[:, 0] == i
            results.append(self._postprocess(probs[sel], boxes[sel], size))
        return results

    def _pyramid(
        self, images: list[Tensor], batch: Tensor, features: Tensor, sizes: list[tuple[int, int]], scales: Tensor
    ) -> list[tuple[Tensor, list[tuple[int, int]], Tensor]]:
        """Feature maps per test scale, ascending: (conv4, resized sizes, per-image scales)."""
        cfg = self.cfg
        if not cfg.test_scales:
            return [(features, sizes, scales)]
        levels = []
        for s in sorted(cfg.test_scales):
            cap = int(round(cfg.max_size * s / cfg.min_size))  # keep the aspect cap of the base scale
            if s == cfg.min_size:
                levels.append((features, sizes, scales))
                continue
            b, sz, sc = resize_and_batch(images, s, cap, self.normalize)
            levels.append((self.features(b), sz, sc))
        return levels

    def _score(
        self, levels: list[tuple[Tensor, list[tuple[int, int]], Tensor]], rois: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Class probabilities ``[K, C+1]`` and per-class boxes ``[K, C+1, 4]`` (original pixels)."""
        k = rois.shape[0]
        if k == 0:
            c = self.cfg.num_classes + 1
            return rois.new_zeros((0, c)), rois.new_zeros((0, c, 4))
        img = rois[:, 0].long()

        def feats_at(level: int, sel: Tensor) -> Tensor:
            features, sizes, scales = levels[level]
            sc = scales[img[sel]]
            boxes = rois[sel, 1:] * torch.cat([sc, sc], dim=1)
            return self.head.box_features(features, torch.cat([rois[sel, :1], boxes], dim=1), sizes)

        if len(levels) == 1:
            feats = feats_at(0, torch.arange(k, device=rois.device))
        else:
            # Appendix B multi-scale testing: pool at the two adjacent scales whose scaled RoI
            # area is nearest 224^2 and merge the two region features by maxout.
            area = ((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).clamp(min=1.0)
            factor = torch.stack([lv[2][img].mean(dim=1) for lv in levels], dim=1)  # [K, L]
            best = (area[:, None] * factor**2 - _CANONICAL_AREA).abs().argmin(dim=1)
            lo = best.clamp(max=len(levels) - 2)
            pair = torch.stack([lo, lo + 1], dim=1)
            feats = None
            for level in range(len(levels)):
                for slot in range(2):
                    sel = torch.where(pair[:, slot] == level)[0]
                    if sel.numel() == 0:
                        continue
                    f = feats_at(level, sel)
                    if feats is None:
                        feats = f.new_full((k, f.shape[1]), float("-inf"))
                    feats[sel] = torch.maximum(feats[sel], f)
        logits, deltas = self.head.predict(feats)
        boxes = decode_boxes(deltas, rois[:, 1:].float(), self.cfg.bbox_reg_weights)
        return logits.softmax(dim=1), boxes

    def _postprocess(self, probs: Tensor, boxes: Tensor, size: tuple[int, int]) -> dict[str, Tensor]:
        cfg = self.cfg
        c = probs.shape[1]
        boxes = clip_boxes_to_image(boxes[:, 1:], size).reshape(-1, 4)
        scores = probs[:, 1:].reshape(-1)
        labels = torch.arange(1, c, device=probs.device).repeat(probs.shape[0])
        keep = torch.where(scores > cfg.score_threshold)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, cfg.nms)[: cfg.detections_per_image]
        out_boxes = boxes[keep]
        if cfg.box_refinement and keep.numel():
            # Box voting (Gidaris & Komodakis): each kept box becomes the score-weighted mean
            # of the same-class candidates overlapping it by IoU >= box_voting_iou.
            iou = box_iou(out_boxes, boxes).nan_to_num(0.0)
            w = ((iou >= cfg.box_voting_iou) & (labels[keep][:, None] == labels[None, :])) * scores[None, :]
            out_boxes = clip_boxes_to_image((w @ boxes) / w.sum(dim=1, keepdim=True), size)  # re-clip rounding
        return {"boxes": out_boxes, "scores": scores[keep], "labels": labels[keep]}


def build_detector(cfg: DetectionConfig, input_norm: nn.Module | None = None) -> FasterRCNN:
    """A FasterRCNN on ``cfg.arch``, initialised from ``cfg.backbone_weights`` (with the input
    normalisation stored there; ImageNet channel mean/std without), or - to load a detector
    checkpoint into - with random weights and that checkpoint's ``input_norm``."""
    if input_norm is not None:
        return FasterRCNN(cfg, create_model(cfg.arch, input_norm=input_norm))
    return FasterRCNN(cfg, create_model(cfg.arch, weights=cfg.backbone_weights))
