"""Top-k error counting, safe for distributed evaluation.

The paper reports top-1 and top-5 *error* rates (Tables 2-5). Counts are kept as
integer tensors on the scores' device, so accumulating over a validation run costs
no host sync per batch, and summing them across ranks is one ``all_reduce``.

Distributed evaluation in resnets gives every process its own strided share of
the images, each image exactly once (no padding), so the sum over processes counts
every image once. An update can still take a validity mask, for callers whose
sampler pads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["TopKAccumulator", "topk_errors"]


def topk_errors(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Number of samples whose target is not among the top-k scores, for each k in `ks`.

    `scores` are logits or probabilities (N, C) -- the ranking is the same. With
    fewer than k classes, top-k means top-min(k, C) (so top-5 on 3 classes is 0 errors).
    `valid` (N,) bool masks out padded duplicates. Returns an int64 tensor (len(ks),).
    """
    if scores.ndim != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(f"topk_errors expects scores (N, C) and targets (N,), got {tuple(scores.shape)}, "
                         f"{tuple(targets.shape)}")
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices  # (N, kmax), best first
    hit = top == targets.to(top.device)[:, None]  # at most one True per row
    correct_within = hit.cumsum(dim=1)  # [n, j] = 1 if target in top-(j+1)
    if valid is not None:
        correct_within = correct_within * valid.to(top.device)[:, None]
        n: torch.Tensor | int = valid.sum()
    else:
        n = scores.shape[0]  # a Python int: no tensor made on the host and copied to the device
    counts = [n - correct_within[:, min(k, kmax) - 1].sum() for k in ks]
    return torch.stack(counts).to(torch.int64)


class TopKAccumulator:
    """Running top-k error counts over batches (and, after :meth:`all_reduce`, over ranks)."""

    def __init__(self, ks: Sequence[int] = (1, 5), device: torch.device | str | None = None) -> None:
        self.ks = tuple(ks)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self._errors = torch.zeros(len(self.ks), dtype=torch.int64, device=self.device)
        self._n = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, scores: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add a batch; `valid` (N,) bool excludes padded duplicates."""
        self._errors += topk_errors(scores, targets, self.ks, valid).to(self.device)
        # The batch size is a Python number: added in place, with no host tensor copied per batch
        # (a copy from pageable host memory waits for the GPU).
        self._n += valid.sum().to(self.device, torch.int64) if valid is not None else scores.shape[0]

    def all_reduce(self) -> None:
        """Sum the counts over all ranks (no-op unless torch.distributed is initialised)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            buf = torch.cat([self._errors, self._n[None]])
            torch.distributed.all_reduce(buf)
            self._errors, self._n = buf[:-1].clone(), buf[-1].clone()

    @property
    def n(self) -> int:
        return int(self._n)

    @property
    def error_counts(self) -> dict[int, int]:
        return {k: int(e) for k, e in zip(self.ks, self._errors.tolist())}

    def compute(self) -> dict[str, float | int]:
        """``{"top1_err": %, "top5_err": %, ..., "n": n}``; error rates in percent like the paper."""
        n = self.n
        out: dict[str, float | int] = {
            f"top{k}_err": (100.0 * e / n if n else float("nan")) for k, e in self.error_counts.items()
        }
        out["n"] = n
        return out
