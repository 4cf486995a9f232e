"""The learning-rate schedules of the paper, as one small state machine.

- step (CIFAR, Sec. 4.2): lr 0.1, divided by 10 at 32k and 48k iterations.
- plateau (ImageNet, Sec. 3.4): "divided by 10 when the error plateaus".
- warm-up (ResNet-110, Sec. 4.2): "0.01 to warm up the training until the training error
  is below 80% (about 400 iterations), and then go back to 0.1". The milestones keep
  counting from iteration 0, as in the paper. The paper does this for its 110-layer CIFAR-10
  network only, so "auto" turns it on for CIFAR-10 networks of 110 layers or more and never
  for ImageNet (ResNet-152 under imagenet-paper trains at 0.1 from the start, Sec. 3.4).

`step_lr` is the step decay itself, shared with the detector's schedule.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from typing import Sequence

from ..config import OptimConfig

WARMUP_MIN_DEPTH = 110  # Sec. 4.2: the 110-layer network


def step_lr(lr: float, gamma: float, milestones: Sequence[int], step: int) -> float:
    """`lr` multiplied by `gamma` once for every milestone at or before `step` (milestones ascending)."""
    return lr * gamma ** bisect.bisect_right(milestones, step)


@dataclass
class LrSchedule:
    config: OptimConfig
    warmup_active: bool
    plateau_drops: int = 0
    best_val_error: float = float("inf")
    evals_since_best: int = 0

    @classmethod
    def for_model(cls, config: OptimConfig, depth: int, dataset: str) -> "LrSchedule":
        auto = dataset == "cifar10" and depth >= WARMUP_MIN_DEPTH
        return cls(config, warmup_active=config.warmup == "on" or (config.warmup == "auto" and auto))

    def lr_at(self, step: int) -> float:
        c = self.config
        if self.warmup_active:
            return c.warmup_lr
        if c.schedule == "step":
            return step_lr(c.lr, c.gamma, c.milestones, step)
        return max(c.lr * c.gamma ** self.plateau_drops, c.min_lr)

    def observe_train_error(self, step: int, error: float) -> bool:
        """Feed the recent training error; True when this ends the warm-up."""
        if self.warmup_active and (error < self.config.warmup_until_error or step >= self.config.warmup_max_iters):
            self.warmup_active = False
            return True
        return False

    def observe_val_error(self, error: float) -> bool:
        """Feed a validation error; True when the plateau schedule divides the lr."""
        if error < self.best_val_error - 1e-9:
            self.best_val_error, self.evals_since_best = error, 0
            return False
        self.evals_since_best += 1
        if self.config.schedule == "plateau" and self.evals_since_best >= self.config.plateau_patience:
            self.plateau_drops += 1
            self.evals_since_best = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"warmup_active": self.warmup_active, "plateau_drops": self.plateau_drops,
                "best_val_error": self.best_val_error, "evals_since_best": self.evals_since_best}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_active = bool(state["warmup_active"])
        self.plateau_drops = int(state["plateau_drops"])
        self.best_val_error = float(state["best_val_error"])
        self.evals_since_best = int(state["evals_since_best"])
