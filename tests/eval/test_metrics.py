"""Top-k error counts, padding masks and the distributed-safe accumulator."""

from __future__ import annotations

import pytest
import torch

from resnets.eval.metrics import TopKAccumulator, topk_errors


def test_topk_errors_counts() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.01, 0.005, 0.005],  # target 0: top-1 hit
            [0.1, 0.5, 0.2, 0.1, 0.05, 0.05],  # target 2: 2nd -> top-1 miss, top-5 hit
            [0.3, 0.25, 0.2, 0.15, 0.1, 0.0],  # target 5: last -> miss both
        ]
    )
    targets = torch.tensor([0, 2, 5])
    assert topk_errors(scores, targets).tolist() == [2, 1]
    assert topk_errors(scores, targets, ks=(1, 2, 6)).tolist() == [2, 1, 0]
    # Logits rank like probabilities.
    assert topk_errors(scores.log(), targets).tolist() == [2, 1]
    with pytest.raises(ValueError):
        topk_errors(scores, targets[:2])


def test_topk_with_fewer_classes_than_k() -> None:
    scores = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    targets = torch.tensor([0, 2])
    # top-5 on 3 classes means top-3: never an error.
    assert topk_errors(scores, targets, ks=(1, 5)).tolist() == [2, 0]


def test_validity_mask_ignores_padding() -> None:
    scores = torch.eye(4)
    targets = torch.tensor([0, 1, 3, 3])  # sample 2 is wrong
    valid = torch.tensor([True, True, False, True])
    assert topk_errors(scores, targets, ks=(1,), valid=valid).tolist() == [0]
    acc = TopKAccumulator(ks=(1, 5))
    acc.update(scores, targets, valid)
    acc.update(scores[:2], torch.tensor([1, 1]))  # one more error, no mask
    assert acc.n == 5 and acc.error_counts == {1: 1, 5: 0}
    assert acc.compute() == {"top1_err": 20.0, "top5_err": 0.0, "n": 5}
    acc.reset()
    assert acc.n == 0


def test_strided_shards_sum_to_the_whole_data_set() -> None:
    # How resnets shards evaluation over processes: rank r scores images r, r + world, ... (no padding).
    n, world = 10, 4
    torch.manual_seed(0)
    scores = torch.randn(n, 7)
    targets = torch.randint(0, 7, (n,))
    total = TopKAccumulator()
    total.update(scores, targets)
    ranks = []
    for r in range(world):
        acc = TopKAccumulator()
        acc.update(scores[r::world], targets[r::world])
        ranks.append(acc)
    assert sum(a.n for a in ranks) == n
    for k in (1, 5):
        assert sum(a.error_counts[k] for a in ranks) == total.error_counts[k]

def test_all_reduce_in_a_process_group(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        acc = TopKAccumulator()
        acc.update(torch.eye(3), torch.tensor([0, 2, 2]))
        acc.all_reduce()  # sums one rank: counts unchanged, code path exercised
        assert acc.n == 3 and acc.error_counts == {1: 1, 5: 0}
    finally:
        dist.destroy_process_group()
