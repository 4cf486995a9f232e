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


def fast_bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN reports bf16 support on CPUs with AVX512-BF16 or AMX. On the project's 2-core
    # AVX512-BF16 machines bf16 autocast trains ResNet-20/56/110 1.57-1.68x and ImageNet
    # ResNet-50 2.16x faster than fp32, idle machine, same run (docs/performance.md).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """"auto" (CUDA when available), "cpu", "cuda" (the process's LOCAL_RANK GPU) or "cuda:N"."""
    index = local_rank
    if choice.startswith("cuda:"):
        if not choice[5:].isdigit():
            raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {choice!r}")
        choice, index = "cuda", int(choice[5:])
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for, but no CUDA device is available")
        return torch.device("cuda", index)
    if choice not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {choice!r}")
    return torch.device("cpu")


def resolve_precision(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "bf16" if fast_bf16_available(device) else "fp32"
    if choice == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision: this GPU has no bf16 support; use fp32")
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


def rng_state() -> dict:
    """The global random streams, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import ast

    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
