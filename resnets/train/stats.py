"""Running training statistics, kept on the device between log points.

Reading a loss with `.item()` every step would stall a GPU (and costs a sync on CPU), so
the engine accumulates sums as device tensors and reads them once per log window. The
fields are named here; on disk they keep the engine's original encoding (`window`,
`first_bad`, `warmup_window` tensors), so checkpoints written before this class existed
resume unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


def _zero(device: torch.device) -> Tensor:
    return torch.zeros((), device=device, dtype=torch.float64)


@dataclass
class RunningStats:
    """Sums since the last log line, the first non-finite step, and the warm-up window."""

    loss_sum: Tensor
    errors: Tensor
    images: Tensor
    steps: Tensor
    first_bad: Tensor  # first step (1-based) whose loss was not finite; 0: none so far
    warmup_errors: Tensor  # training errors and images since the last warm-up check (Sec. 4.2)
    warmup_images: Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> "RunningStats":
        return cls(**{f.name: _zero(device) for f in fields(cls)})

    @torch.no_grad()
    def update(self, step: int, loss: Tensor, logits: Tensor, labels: Tensor) -> None:
        """Add one step's loss and top-1 errors, without a host sync."""
        loss = loss.double()
        errors = (logits.argmax(1) != labels).sum().double()
        self.loss_sum += loss
        self.errors += errors
        self.images += len(labels)
        self.steps += 1
        bad = (~torch.isfinite(loss)) & (self.first_bad == 0)
        self.first_bad.copy_(torch.where(bad, torch.full_like(self.first_bad, step + 1), self.first_bad))
        self.warmup_errors += errors
        self.warmup_images += len(labels)

    def window(self) -> Tensor:
        """(loss sum, errors, images, steps) as one tensor: a single all-reduce under DDP."""
        return torch.stack([self.loss_sum, self.errors, self.images, self.steps])

    def reset_window(self) -> None:
        for t in (self.loss_sum, self.errors, self.images, self.steps):
            t.zero_()

    def warmup_window(self) -> Tensor:
        return torch.stack([self.warmup_errors, self.warmup_images])

    def reset_warmup(self) -> None:
        self.warmup_errors.zero_()
        self.warmup_images.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {"window": self.window().cpu(), "first_bad": self.first_bad.cpu(),
                "warmup_window": self.warmup_window().cpu()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for t, v in zip((self.loss_sum, self.errors, self.images, self.steps), state["window"]):
            t.copy_(v)
        self.first_bad.copy_(state["first_bad"])
        self.warmup_errors.copy_(state["warmup_window"][0])
        self.warmup_images.copy_(state["warmup_window"][1])
