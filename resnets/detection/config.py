"""`DetectionConfig`: every knob of the Faster R-CNN detector of Appendix A-C.

Defaults follow the paper's Appendix A (Faster R-CNN on a ResNet conv4 "C4"
backbone, BN frozen, conv1/res2 frozen, 14x14 RoI features into res5) and the
Faster R-CNN paper it builds on (anchors, sampling, NMS thresholds). The config is
a plain dataclass; ``to_dict``/``from_dict`` round-trip it through YAML for the run
directory's ``config.yaml``, with the typed conversion and YAML loading of
:mod:`resnets.config` (the same rules and messages as the training config).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from resnets.config import load_yaml, update
from resnets.errors import ConfigError

__all__ = ["DetectionConfig", "PRESETS", "load_config"]


@dataclass
class DetectionConfig:
    # ----------------------------------------------------------------- backbone
    arch: str = "resnet50"
    """Backbone name for `resnets.models.create_model` (paper: resnet50 / resnet101)."""
    backbone_weights: str | None = None
    """ImageNet-trained weights file for the backbone (resnets safetensors or .pt); None = random init."""
    freeze_stem_and_res2: bool = True
    """Appendix A: conv1 and conv2_x (`layer1`) are not fine-tuned (requires_grad False)."""
    freeze_bn: bool = True
    """Appendix A: BN statistics and affine parameters are fixed (FrozenBatchNorm2d)."""
    num_classes: int = 20
    """Object classes, background excluded (VOC: 20, COCO: 80)."""
    class_names: list[str] | None = None
    """Names of classes 1..num_classes (index 0 is background); filled from the data set."""

    # ------------------------------------------------------------------- input
    min_size: int = 600
    """Shorter image side after resizing (Appendix A: 600)."""
    max_size: int = 1000
    """Cap on the longer side after resizing (Appendix A: 1000)."""
    hflip: bool = True
    """Training augmentation: horizontal flip with probability 0.5 (Faster R-CNN)."""

    # --------------------------------------------------------------------- RPN
    anchor_sizes: tuple[float, ...] = (128.0, 256.0, 512.0)
    """Anchor side lengths in input pixels (3 scales, Faster R-CNN)."""
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Anchor aspect ratios height/width (3 ratios)."""
    rpn_channels: int | None = None
    """Channels of the RPN's 3x3 conv; None = the conv4 feature channels."""
    rpn_batch_size_per_image: int = 256
    """Anchors sampled per image for the RPN loss."""
    rpn_positive_fraction: float = 0.5
    """Fraction of positives among sampled anchors (1:1)."""
    rpn_fg_iou: float = 0.7
    """Anchor IoU with a ground-truth box at or above which the anchor is positive."""
    rpn_bg_iou: float = 0.3
    """Anchor max IoU below which the anchor is negative."""
    rpn_nms: float = 0.7
    """NMS IoU threshold on proposals."""
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    """Proposals kept per image before/after NMS, in training and at test time (Faster R-CNN)."""
    rpn_min_box_size: float = 1e-3
    """Proposals smaller than this (input pixels) are discarded."""
    rpn_per_class: bool = False
    """Appendix C: per-class RPN (one objectness and box regressor per class and anchor)."""

    # -------------------------------------------------------------------- head
    roi_op: Literal["align", "pool"] = "align"
    """RoI feature extraction on conv4: RoI Align (bilinear) or the paper's RoI max pooling."""
    pooled_size: int = 14
    """RoI output size (Appendix A: 14x14, then res5 halves it to 7x7)."""
    sampling_ratio: int = 0
    """RoI Align samples per bin and axis; <= 0: adaptive ceil(roi/bin)."""
    roi_batch_size_per_image: int = 512
    """RoIs sampled per image for the Fast R-CNN loss (task spec: 512)."""
    roi_positive_fraction: float = 0.25
    """Fraction of foreground RoIs (25%)."""
    roi_fg_iou: float = 0.5
    """RoIs with IoU >= this to a ground-truth box are foreground."""
    roi_bg_iou_low: float = 0.1
    """Background RoIs have max IoU in [roi_bg_iou_low, roi_fg_iou) (Fast R-CNN: [0.1, 0.5))."""
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    """Scale of the (dx, dy, dw, dh) regression targets of the head (RPN uses 1s)."""
    score_threshold: float = 0.05
    """Detections scoring below this are dropped before NMS."""
    nms: float = 0.3
    """Per-class NMS IoU threshold at inference (Appendix A/B: 0.3)."""
    detections_per_image: int = 100
    """Top detections kept per image."""

    # ------------------------------------------------- Appendix B improvements
    box_refinement: bool = False
    """Re-pool the regressed boxes, union with the first pass, NMS, then box voting (Appendix B)."""
    box_voting_iou: float = 0.5
    """Box voting: score-weighted average of same-class boxes with IoU >= this."""
    global_context: bool = False
    """Concatenate a whole-image RoI feature to every RoI feature (Appendix B)."""
    test_scales: tuple[int, ...] = ()
    """Multi-scale testing: shorter sides of the image pyramid (paper: 200..1000); () = single scale.
    Each RoI is pooled at the two adjacent scales whose RoI area is nearest 224x224 and merged by maxout."""

    # ---------------------------------------------------------------- training
    batch_size: int = 2
    """Images per iteration."""
    iterations: int = 20000
    """Training iterations (the budget; progress is counted in iterations, never in seconds)."""
    lr: float = 0.001
    """Base learning rate (Appendix A: 0.001, then 0.0001)."""
    lr_steps: tuple[int, ...] = (15000,)
    """Iterations at which the learning rate is multiplied by `lr_gamma` (ascending)."""
    lr_gamma: float = 0.1
    warmup_iterations: int = 0
    """Linear warm-up from lr/10 over this many iterations (0: none)."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Convolutions (trunk, RPN, res5) in bf16 autocast with channels-last tensors ("auto": on CPUs
    with AVX512-BF16/AMX and bf16-capable GPUs, as classification training); losses, RoI
    sampling and boxes stay fp32."""
    seed: int = 0
    num_workers: int = 0
    """DataLoader worker processes."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:N"."""
    log_every: int = 20
    """Iterations between metrics.jsonl lines."""
    checkpoint_every: int = 500
    """Iterations between checkpoints/last.pt writes (always also at the end)."""

    # --------------------------------------------------------------- evaluation
    voc07_metric: bool = False
    """VOC mAP with the 11-point interpolated AP of VOC2007 instead of the area under the curve."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "DetectionConfig":
        """Build and validate a config; unknown keys or wrong types raise ConfigError naming them."""
        cfg = cls()
        try:
            update(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        cfg.validate(source)
        return cfg

    def replace(self, **changes: Any) -> "DetectionConfig":
        merged = self.to_dict()
        merged.update(changes)
        return DetectionConfig.from_dict(merged)

    def validate(self, source: str = "config") -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: {msg}")

        need(self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes}")
        need(0 < self.min_size <= self.max_size, f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")
        need(len(self.anchor_sizes) > 0 and all(s > 0 for s in self.anchor_sizes), "anchor_sizes must be positive")
        need(len(self.anchor_ratios) > 0 and all(r > 0 for r in self.anchor_ratios), "anchor_ratios must be positive")
        for name in ("rpn_positive_fraction", "roi_positive_fraction", "rpn_nms", "nms", "box_voting_iou"):
            v = getattr(self, name)
            need(0.0 <= v <= 1.0, f"{name} must lie in [0, 1], got {v}")
        need(self.rpn_bg_iou <= self.rpn_fg_iou, "rpn_bg_iou must be <= rpn_fg_iou")
        need(0.0 <= self.roi_bg_iou_low <= self.roi_fg_iou, "need 0 <= roi_bg_iou_low <= roi_fg_iou")
        need(self.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        need(self.roi_op in ("align", "pool"), f"roi_op must be 'align' or 'pool', got {self.roi_op!r}")
        need(self.pooled_size >= 1, "pooled_size must be >= 1")
        need(self.batch_size >= 1 and self.iterations >= 0, "batch_size must be >= 1 and iterations >= 0")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 < self.lr_gamma <= 1, f"lr_gamma must lie in (0, 1], got {self.lr_gamma}")
        need(list(self.lr_steps) == sorted(set(self.lr_steps)) and all(s > 0 for s in self.lr_steps),
             f"lr_steps must be increasing positive iterations, got {list(self.lr_steps)}")
        need(self.warmup_iterations >= 0, f"warmup_iterations must be >= 0, got {self.warmup_iterations}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.log_every >= 1 and self.checkpoint_every >= 1,
             f"log_every and checkpoint_every must be >= 1, got {self.log_every} and {self.checkpoint_every}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(all(s > 0 for s in self.test_scales), "test_scales must be positive")
        need(self.class_names is None or len(self.class_names) == self.num_classes,
             f"class_names has {len(self.class_names or [])} names but num_classes is {self.num_classes}")


# `resnets detect train --preset NAME`: DetectionConfig values (any of them can be overridden).
PRESETS: dict[str, dict[str, Any]] = {
    # Fine-tuning from ImageNet weights on a small set (~100-1000 images, few classes) on a CPU
    # (docs/detection.md, "Real photos"): one image per step at a shorter side of 416 (the raccoon
    # photos' median shorter side is 360 px) and 64 RoIs per image (the res5 head's cost is linear
    # in RoIs: 600 px / 512 RoIs took 2.2x the step of 480 px / 128 RoIs, same run), anchors from
    # 64 px, lr 0.004 after a 50-iteration warm-up, /10 at 500 of 700 iterations. 700 is the
    # plateau on the raccoon photos: AP@0.5 0.90 at 700, 0.89/0.89/0.87 continued to 800/900/1000.
    "finetune": {
        "batch_size": 1, "min_size": 416, "max_size": 693, "roi_batch_size_per_image": 64,
        "rpn_post_nms_top_n_train": 1000, "anchor_sizes": [64.0, 128.0, 256.0, 512.0],
        "lr": 0.004, "warmup_iterations": 50, "lr_steps": [500], "iterations": 700,
        "checkpoint_every": 25, "log_every": 5,
    },
}


def load_yaml_options(path: str | Path) -> dict[str, Any]:
    """The DetectionConfig fields in a YAML file (optionally under a top-level `detection:` key)."""
    data = load_yaml(path)
    return dict(data.get("detection", data))


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> DetectionConfig:
    """Read a YAML file of DetectionConfig fields, then apply `overrides`."""
    return DetectionConfig.from_dict({**load_yaml_options(path), **(overrides or {})}, source=str(path))
