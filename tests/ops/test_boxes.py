"""box_iou / nms / batched_nms against brute-force loop references."""

from __future__ import annotations

import math

import pytest
import torch

from resnets.ops import batched_nms, box_iou, clip_boxes_to_image, nms, remove_small_boxes


def _iou_ref(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union != 0 else math.nan


def _nms_ref(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Textbook greedy NMS: highest score first (lower index on ties)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    b = boxes.tolist()
    keep: list[int] = []
    for i in order:
        if all(not (_iou_ref(b[j], b[i]) > thr) for j in keep):
            keep.append(i)
    return keep


def _random_boxes(n: int, gen: torch.Generator, size: float = 50.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def test_box_iou_matches_loop_and_degenerate_cases():
    gen = torch.Generator().manual_seed(0)
    a, b = _random_boxes(7, gen), _random_boxes(5, gen)
    iou = box_iou(a, b)
    ref = torch.tensor([[_iou_ref(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(iou, ref)
    # Known values: identical -> 1, disjoint -> 0, half overlap -> 1/3.
    boxes = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 6, 6], [1, 0, 3, 2]])
    m = box_iou(boxes, boxes)
    assert m[0, 1] == 1 and m[0, 2] == 0 and torch.isclose(m[0, 3], torch.tensor(1 / 3))
    # Zero-area box: 0 against a real box, nan against another zero-area box (torchvision).
    deg = torch.tensor([[1.0, 1, 1, 1]])
    assert box_iou(deg, boxes[:1]).item() == 0
    assert math.isnan(box_iou(deg, deg).item())
    assert box_iou(torch.zeros(0, 4), boxes).shape == (0, 4)


@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_greedy_reference(thr):
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        n = int(torch.randint(1, 60, (1,), generator=gen))
        boxes = _random_boxes(n, gen, size=30.0)
        # Quantised scores produce many exact ties.
        scores = torch.randint(0, 5, (n,), generator=gen).double()
        keep = nms(boxes, scores, thr)
        assert keep.dtype == torch.int64
        assert keep.tolist() == _nms_ref(boxes, scores, thr), f"trial {trial}"


def test_nms_iou_exactly_at_threshold_is_kept():
    # IoU of these two boxes is exactly 0.5 in floating point.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    assert box_iou(boxes[:1], boxes[1:]).item() == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.4999).tolist() == [0]


def test_nms_ties_empty_degenerate_and_order():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]])
    # Equal scores: the lower index wins, output sorted by score.
    assert nms(boxes, torch.tensor([1.0, 1.0, 2.0]), 0.5).tolist() == [2, 0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    # Degenerate (zero-area) duplicates never suppress each other (IoU is nan).
    deg = torch.tensor([[3.0, 3, 3, 3], [3.0, 3, 3, 3]])
    assert nms(deg, torch.tensor([0.5, 0.4]), 0.1).tolist() == [0, 1]
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_nms_large_input_crosses_chunks():
    gen = torch.Generator().manual_seed(2)
    boxes = _random_boxes(1500, gen, size=200.0).float()
    scores = torch.rand(1500, generator=gen)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == _nms_ref(boxes, scores, 0.5)


def test_nms_max_output_equals_slicing():
    gen = torch.Generator().manual_seed(4)
    boxes = _random_boxes(900, gen, size=100.0).float()
    scores = torch.rand(900, generator=gen)
    full = nms(boxes, scores, 0.3)
    for k in (1, 255, 256, 257, 600, 5000):
        assert torch.equal(nms(boxes, scores, 0.3, max_output=k), full[:k])
    idxs = torch.randint(0, 3, (900,), generator=gen)
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.3, max_output=300), batched_nms(boxes, scores, idxs, 0.3)[:300])


def test_batched_nms_equals_per_class_nms():
    gen = torch.Generator().manual_seed(3)
    n = 80
    boxes = _random_boxes(n, gen, size=30.0)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    idxs = torch.randint(0, 4, (n,), generator=gen)
    keep = batched_nms(boxes, scores, idxs, 0.4)
    ref = []
    for c in range(4):
        sel = torch.where(idxs == c)[0]
        ref += sel[nms(boxes[sel], scores[sel], 0.4)].tolist()
    ref.sort(key=lambda i: -float(scores[i]))
    assert keep.tolist() == ref
    # Identical boxes in different classes survive.
    same = torch.tensor([[0.0, 0, 5, 5]] * 2)
    assert batched_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).numel() == 0


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -1, 20, 8], [2, 2, 2.5, 9]])
    clipped = clip_boxes_to_image(boxes, (6, 10))
    assert clipped.tolist() == [[0, 0, 10, 6], [2, 2, 2.5, 6]]
    assert remove_small_boxes(clipped, 1.0).tolist() == [0]
