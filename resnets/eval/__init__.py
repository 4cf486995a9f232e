"""Evaluation: top-k error (`evaluate`), the paper's test-time protocols (`tta`), `resnets eval`."""

from .evaluate import evaluate

__all__ = ["evaluate"]
