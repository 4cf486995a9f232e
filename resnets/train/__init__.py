"""Training: the paper's recipes in one engine (`train`)."""

from .engine import evaluate, train

__all__ = ["evaluate", "train"]
