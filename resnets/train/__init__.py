"""Training: the paper's recipes in one engine (`train`)."""

from .engine import train

__all__ = ["train"]
