"""Where and how a run executes: device, precision, processes, random streams.

Shared by training, evaluation and detection.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fused_bn_relu: bool = False  # TrainConfig.fused_bn_relu: train_step lets BN + ReLU take the fused CPU bf16 kernel

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast for convolutions and matmuls; BN, softmax and the loss stay fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def cuda_bf16_supported(device: torch.device, including_emulation: bool) -> bool:
    """Whether the run's GPU `device` runs bf16: natively (compute capability 8.0+, ROCm), or also
    through emulation. `torch.cuda.is_bf16_supported` asks the current device, which need not be
    the run's (before `setup_runtime` sets it, or with `--device cuda:N`), so it is asked there."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=including_emulation)


def fast_bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        # Native bf16 only: V100 and T4 (compute capability 7.x) emulate it, slower than fp32
        # there, and `is_bf16_supported()` counts emulation unless told not to.
        return cuda_bf16_supported(device, including_emulation=False)
    # oneDNN reports bf16 support on CPUs with AVX512-BF16 or AMX. On the project's 2-core
    # AVX512-BF16 machines bf16 autocast trains ResNet-20/56/110 1.57-1.68x and ImageNet
    # ResNet-50 2.16x faster than fp32, idle machine, same run (docs/performance.md).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda" (the process's LOCAL_RANK GPU) or "cuda:N" (GPU N)."""
    if choice in ("auto", "cuda"):
        index = local_rank
    elif choice.startswith("cuda:") and choice[5:].isdigit():
        index = int(choice[5:])
    elif choice != "cpu":
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: {choice!r} was asked for, but no CUDA device is available")
    if index >= (count := torch.cuda.device_count()):
        raise ConfigError(f"device: GPU {index} was asked for ({choice!r}, local rank {local_rank}), "
                          f"but {count} CUDA device(s) are visible")
    return torch.device("cuda", index)


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "bf16" if fast_bf16_available(device) else "fp32"
    if choice == "bf16" and device.type == "cuda" and not cuda_bf16_supported(device, including_emulation=True):
        raise ConfigError(f"precision: the GPU {device} has no bf16 support; use fp32")
    return choice


def setup_runtime(device: str, precision: str, fused_bn_relu: bool = False) -> Runtime:
    """Start torch.distributed when launched by torchrun (RANK/WORLD_SIZE set), then pick device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, resolve_precision(precision, dev), rank, world_size, local_rank, fused_bn_relu)


def shutdown_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict:
    """The global random streams of a run on `device`, as tensors and plain values (weights_only-loadable).

    Of CUDA's streams only the run's GPU's: saving every visible GPU's (`get_rng_state_all`) made
    a checkpoint unloadable with fewer GPUs visible, and a CPU run never initialises CUDA here.
    """
    np_state = np.random.get_state()
    state = {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Set the streams `rng_state` saved; the CUDA one on the run's GPU `device`, if it runs on one.

    Checkpoints written before hold every visible GPU's stream (a list, by GPU index): the run's
    GPU takes its own index's, or none when the checkpoint has fewer.
    """
    import ast

    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[device.index] if device.index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
