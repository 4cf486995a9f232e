"""Evaluation: top-k error (`evaluate`), the paper's test-time protocols (`tta`), `resnets eval`."""

__all__ = ["evaluate"]


def __getattr__(name: str):
    # Imported on first use (PEP 562): `resnets predict --help` must not import torch.
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'resnets.eval' has no attribute {name!r}")
