"""The one evaluation loop: top-1/top-5 error and loss of a network or an ensemble over batches.

Validation during training, `resnets eval` (`resnets.eval.datasets`: CIFAR-10 and the ImageNet
protocols of Sec. 3.4) and the test-time protocols of `resnets.eval.tta` all run `evaluate`; what
differs is only how a network turns a batch into class scores (`predict`):

* `class_log_probs`: one view per image (CIFAR-10, the ImageNet "center" crop);
* `resnets.eval.tta`: 10 crops per image, or the whole image at several scales.

Scores are log-probabilities. An ensemble averages the models' probabilities (Table 5);
the loss is the mean negative log-likelihood of the (averaged) probabilities, which for
one model is exactly the cross-entropy of its logits.

The loop puts the models in eval mode on the run's device (restoring training mode after),
hands them [0, 1] float images (uint8 batches are divided by 255, as `Normalize` does),
runs them under the run's precision, and sums the counts over processes when
torch.distributed is initialised: give every process its own share of the images, each
image exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import Runtime
from .metrics import TopKAccumulator

Predict = Callable[[nn.Module, Tensor], Tensor]
"""(model, batch) -> log-probabilities (B, num_classes)."""

CPU = Runtime(torch.device("cpu"), "fp32")


def class_log_probs(model: nn.Module, x: Tensor) -> Tensor:
    """One view per image: the log-softmax of the logits."""
    return F.log_softmax(model(x).float(), dim=1)


def mean_of_probs(log_probs: Sequence[Tensor] | Tensor, dim: int = 0) -> Tensor:
    """log(mean(p)) of several log-probabilities: the average of the probabilities, in log space."""
    stacked = torch.stack(list(log_probs)) if not isinstance(log_probs, Tensor) else log_probs
    if stacked.shape[dim] == 1:
        return stacked.squeeze(dim)
    return torch.logsumexp(stacked, dim=dim) - math.log(stacked.shape[dim])


@contextmanager
def eval_mode(models: Iterable[nn.Module]) -> Iterator[None]:
    """Evaluation mode for `models` inside the block; each one's training mode is restored after."""
    models = list(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(models, was_training):
            m.train(training)


@torch.no_grad()
def evaluate(models: nn.Module | Sequence[nn.Module], batches: Iterable[tuple[Tensor, Tensor]],
             runtime: Runtime = CPU, predict: Predict = class_log_probs) -> dict[str, float | int]:
    """{"top1_err", "top5_err" (percent, like the paper), "loss" (mean NLL), "n"} over `batches`.

    `batches` yields (images, labels); images are uint8 or [0, 1] floats in whatever form
    `predict` takes. Several models form an ensemble that averages probabilities.
    """
    model_list = [models] if isinstance(models, nn.Module) else list(models)
    if not model_list:
        raise ValueError("evaluate needs at least one model")
    device = runtime.device
    for m in model_list:
        m.to(device)
    acc = TopKAccumulator((1, 5), device=device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    with eval_mode(model_list):
        for x, y in batches:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                log_probs = mean_of_probs([predict(m, x) for m in model_list])
            loss_sum += F.nll_loss(log_probs.float(), y, reduction="sum").double()
            acc.update(log_probs, y)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(loss_sum)
    acc.all_reduce()
    result = acc.compute()
    result["loss"] = float(loss_sum) / max(int(result["n"]), 1)
    return result
