"""Detection metrics: PASCAL VOC mAP@0.5 and COCO mAP@[.5:.95] (through pycocotools).

VOC follows the official devkit: per class, detections are sorted by score; a
detection is a true positive if its best-overlapping ground truth in the same image
has IoU > 0.5 and was not matched before; matches to "difficult" objects count as
neither. AP is the area under the monotone precision envelope (VOC2010+) or, with
``use_07_metric``, the 11-point interpolated AP of VOC2007. Boxes use continuous
coordinates (no "+1" in widths), consistent with the rest of the package.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
from torch import Tensor

from resnets.ops import box_iou

__all__ = ["voc_ap", "evaluate_voc", "evaluate_coco"]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision/recall curve (VOC devkit semantics)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = precision[recall >= t].max() if np.any(recall >= t) else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_voc(
    detections: list[dict[str, Tensor]],
    ground_truths: list[dict[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict[str, float | list[float]]:
    """mAP over classes 1..num_classes. ``detections[i]`` has boxes/scores/labels of
    image i; ``ground_truths[i]`` has boxes/labels and optionally difficult. Classes
    without (non-difficult) ground truth get AP nan and are left out of the mean."""
    if len(detections) != len(ground_truths):
        raise ValueError(f"{len(detections)} detection lists for {len(ground_truths)} images")
    aps: list[float] = []
    for c in range(1, num_classes + 1):
        gts, npos = {}, 0
        for i, gt in enumerate(ground_truths):
            sel = gt["labels"] == c
            diff = gt.get("difficult", torch.zeros_like(gt["labels"], dtype=torch.bool))[sel]
            gts[i] = (gt["boxes"][sel].double(), diff.bool().numpy(), np.zeros(int(sel.sum()), dtype=bool))
            npos += int((~diff.bool()).sum())
        img_ids, scores, boxes = [], [], []
        for i, det in enumerate(detections):
            sel = det["labels"] == c
            img_ids += [i] * int(sel.sum())
            scores.append(det["scores"][sel].double())
            boxes.append(det["boxes"][sel].double())
        if npos == 0:
            aps.append(math.nan)
            continue
        scores_t = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
        boxes_t = torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.float64)
        order = torch.sort(scores_t, descending=True, stable=True).indices.tolist()
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for d, j in enumerate(order):
            gt_boxes, difficult, matched = gts[img_ids[j]]
            if gt_boxes.shape[0] == 0:
                fp[d] = 1
                continue
            iou = box_iou(boxes_t[j : j + 1], gt_boxes)[0].nan_to_num(0.0)
            best = int(iou.argmax())
            if float(iou[best]) > iou_threshold:
                if difficult[best]:
                    continue
                if not matched[best]:
                    tp[d], matched[best] = 1, True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        recall = tp_c / npos
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        aps.append(voc_ap(recall, precision, use_07_metric))
    valid = [a for a in aps if not math.isnan(a)]
    return {"mAP": float(np.mean(valid)) if valid else math.nan, "AP": aps}


def evaluate_coco(detections: list[dict[str, Tensor]], dataset) -> dict[str, float]:
    """COCO box metrics with pycocotools' COCOeval on a :class:`COCODetection`
    (``detections[i]`` belongs to ``dataset.ids[i]``). Returns AP (mAP@[.5:.95]),
    AP50, AP75, APs, APm, APl."""
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, det in zip(dataset.ids, detections):
        b = det["boxes"].double()
        for box, score, label in zip(b.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            results.append({
                "image_id": image_id, "category_id": dataset.label_to_cat_id[int(label)],
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": float(score),
            })
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    if not results:
        return {n: 0.0 for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = dataset.coco.loadRes(results)
        ev = COCOeval(dataset.coco, coco_dt, "bbox")
        ev.params.imgIds = list(dataset.ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: float(v) for n, v in zip(names, ev.stats[:6])}
