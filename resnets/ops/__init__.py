"""Detection operators in pure PyTorch, with ``torchvision.ops`` semantics.

- :func:`box_iou`, :func:`nms`, :func:`batched_nms`: boxes as ``(x1, y1, x2, y2)``.
- :func:`roi_align`, :func:`roi_pool`: RoIs as ``Tensor[K, 5]`` or list of ``Tensor[L, 4]``.
- :class:`FrozenBatchNorm2d`, :func:`freeze_batchnorm`: BN fixed as in Appendix A.

:mod:`resnets.ops.fused_bn_relu` (imported by the models, not here) fuses training-mode
BN + ReLU (+ the residual add) for CPU bf16 in a C++ kernel compiled at first use.
"""

from resnets.ops.boxes import batched_nms, box_area, box_iou, clip_boxes_to_image, nms, remove_small_boxes
from resnets.ops.frozen_bn import FrozenBatchNorm2d, freeze_batchnorm
from resnets.ops.roi import convert_boxes_to_roi_format, roi_align, roi_pool

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "convert_boxes_to_roi_format",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "FrozenBatchNorm2d",
    "freeze_batchnorm",
]
