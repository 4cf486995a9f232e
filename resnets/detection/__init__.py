"""Faster R-CNN on a ResNet C4 backbone (paper, Appendix A) with Appendix B/C options.

- :class:`DetectionConfig` (config.py): every option, documented.
- :func:`build_detector` / :class:`FasterRCNN` (model.py).
- Data (data.py): :class:`VOCDetection`, :class:`COCODetection`, :class:`SyntheticShapes`.
- Metrics (evaluation.py): :func:`evaluate_voc` (mAP@0.5), :func:`evaluate_coco` (pycocotools).
- Engine (engine.py): :func:`train`, :func:`evaluate`, :func:`predict`, checkpoints.
- CLI (cli.py): ``add_parser(subparsers)`` / ``run(args)`` for ``resnets detect``.
"""

_FROM = {
    "config": ("DetectionConfig", "load_config"),
    "data": ("COCODetection", "SyntheticShapes", "VOCDetection", "collate"),
    "engine": ("evaluate", "load_detector", "predict", "train"),
    "evaluation": ("evaluate_coco", "evaluate_voc", "voc_ap"),
    "model": ("FasterRCNN", "build_detector"),
}

__all__ = [
    "COCODetection", "DetectionConfig", "FasterRCNN", "SyntheticShapes", "VOCDetection", "build_detector",
    "collate", "evaluate", "evaluate_coco", "evaluate_voc", "load_config", "load_detector", "predict", "train",
    "voc_ap",
]


def __getattr__(name: str):
    # Imported on first use (PEP 562): `resnets detect --help` reads only `config`, and must not
    # import torch through the model and engine.
    if name not in __all__:  # before importing: `from . import x` asks this module for x first
        raise AttributeError(f"module 'resnets.detection' has no attribute {name!r}")
    from resnets.detection import config, data, engine, evaluation, model

    modules = {"config": config, "data": data, "engine": engine, "evaluation": evaluation, "model": model}
    for module, names in _FROM.items():
        if name in names:
            return getattr(modules[module], name)
