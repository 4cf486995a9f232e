"""BatchNorm (training) + ReLU, and BatchNorm + residual add + ReLU, fused on the CPU.

In a CIFAR ResNet training step on a 2-core CPU the convolutions run near oneDNN's peak;
BN, ReLU and the residual addition are memory-bound passes over small activations and cost
about a third of the step (docs/performance.md). The kernel in ``csrc/bn_relu.cpp`` does each
BN+ReLU layer in two passes forward and two backward.

It is compiled at first use with ``torch.utils.cpp_extension.load`` for the instruction set
ATen reports for this CPU (``torch.backends.cpu.get_cpu_capability()``, the flags ATen builds
its own kernels with), and cached by torch in ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). When it cannot be built (no compiler), every call falls back
to ATen, with one warning in the log.

:func:`batch_norm_relu` is the one entry point the models use: ``relu(bn(x) [+ residual])``.
It takes the fused path only inside :func:`fused_bn_relu_enabled` (entered by the engine's
`train_step` when `TrainConfig.fused_bn_relu` is on), for a ``BatchNorm2d`` in training mode
on a CPU bf16 channels_last activation (what CPU bf16 autocast produces); everything else
(evaluation, fp32, GPU, torch.compile, SyncBatchNorm) runs exactly the ATen modules as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["batch_norm_relu", "build_cpu_extension", "fused_bn_relu_enabled", "load_extension"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "bn_relu.cpp"

# ATen's own flags per CPU capability (cmake/Codegen.cmake): the extension is built for what
# this machine runs, and the capability is part of the cached build's name.
_CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-DCPU_CAPABILITY_AVX2"],
}

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("resnets_fused_bn_relu", default=False)
_extension: Any = None
_unavailable = False


def load_extension() -> Any:
    """The compiled kernel module, or None when it cannot be built here (logged once)."""
    global _extension, _unavailable
    if _extension is None and not _unavailable:
        try:
            _extension = _build()
        except Exception as e:  # no compiler, no headers, a failed build: train on with ATen
            _unavailable = True
            log.warning("fused BN+ReLU kernel unavailable, using ATen BatchNorm + ReLU: %s", str(e).splitlines()[0])
    return _extension


def _build() -> Any:
    return build_cpu_extension("resnets_bn_relu", _SOURCE)


def build_cpu_extension(name: str, source: Path) -> Any:
    """Compile (or take from torch's cache) one C++ source of ``csrc/`` for this CPU's
    instruction set; the capability is part of the cached build's name. The shared header
    ``csrc/vec_io.h`` is found next to the source; ninja rebuilds when it changes."""
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    flags = _CAPABILITY_FLAGS.get(capability, [])
    return cpp_extension.load(
        name=f"{name}_{capability.lower()}",
        sources=[str(source)],
        extra_cflags=["-O3", "-fopenmp", *flags, f"-DCPU_CAPABILITY={capability if flags else 'DEFAULT'}"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(source.parent)],
    )


@contextlib.contextmanager
def fused_bn_relu_enabled(enabled: bool = True) -> Iterator[None]:
    """Inside this context, :func:`batch_norm_relu` may take the fused kernel."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, running_mean, running_var, momentum, eps):  # type: ignore[override]
        y, mean, invstd = _extension.forward(x, residual, weight, bias, running_mean, running_var, momentum, eps)
        ctx.has_residual = residual is not None
        # Without a residual the backward recomputes the ReLU mask from x; with one it reads y.
        ctx.save_for_backward(x, y if ctx.has_residual else None, weight, bias, mean, invstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, y, weight, bias, mean, invstd = ctx.saved_tensors
        grad_x, grad_residual, grad_weight, grad_bias = _extension.backward(grad, x, y, weight, bias, mean, invstd)
        return grad_x, grad_residual, grad_weight, grad_bias, None, None, None, None


def _fused_applies(bn: nn.BatchNorm2d, x: Tensor, residual: Tensor | None) -> bool:
    return (
        not torch.compiler.is_compiling()  # first: inductor fuses BN itself, and dynamo never reads the flag
        and _enabled.get()
        and isinstance(bn, nn.BatchNorm2d)  # not SyncBatchNorm (statistics across processes) or frozen BN
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and x.dim() == 4
        and x.numel() > x.shape[1]  # one value per channel: ATen's BN raises the error for it
        and x.is_contiguous(memory_format=torch.channels_last)
        and bn.weight.dtype == torch.float32
        and bn.running_mean.dtype == torch.float32
        and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape))
        and load_extension() is not None
    )


def batch_norm_relu(bn: nn.BatchNorm2d, relu: nn.Module, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``relu(bn(x) + residual)`` (or ``relu(bn(x))``), through the fused kernel where it applies.

    Outside the fused path this calls the modules themselves, so evaluation, fp32 and GPU runs
    compute exactly what they did before and module hooks see the BN output.
    """
    if not _fused_applies(bn, x, residual):
        out = bn(x)
        return relu(out if residual is None else out + residual)
    # nn.BatchNorm2d.forward's bookkeeping: the counter, and momentum=None as a cumulative average.
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    return _BatchNormReLU.apply(x, residual, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum, bn.eps)
