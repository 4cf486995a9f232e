"""Faster R-CNN on a ResNet C4 backbone (paper, Appendix A) with Appendix B/C options.

- :class:`DetectionConfig` (config.py): every option, documented.
- :func:`build_detector` / :class:`FasterRCNN` (model.py).
- Data (data.py): :class:`VOCDetection`, :class:`COCODetection`, :class:`SyntheticShapes`.
- Metrics (evaluation.py): :func:`evaluate_voc` (mAP@0.5), :func:`evaluate_coco` (pycocotools).
- Engine (engine.py): :func:`train`, :func:`evaluate`, :func:`predict`, checkpoints.
- CLI (cli.py): ``add_parser(subparsers)`` / ``run(args)`` for ``resnets detect``.
"""

from resnets.detection.config import DetectionConfig, load_config
from resnets.detection.data import COCODetection, SyntheticShapes, VOCDetection, collate
from resnets.detection.engine import evaluate, load_detector, predict, train
from resnets.detection.evaluation import evaluate_coco, evaluate_voc, voc_ap
from resnets.detection.model import FasterRCNN, build_detector

__all__ = [
    "COCODetection", "DetectionConfig", "FasterRCNN", "SyntheticShapes", "VOCDetection", "build_detector",
    "collate", "evaluate", "evaluate_coco", "evaluate_voc", "load_config", "load_detector", "predict", "train",
    "voc_ap",
]
