"""A training run's state: everything a checkpoint holds, named in one place.

`TrainState` is what the engine saves and what a resume restores, each in one call:
`state_dict()` is the checkpoint, `load_state_dict()` reads one back. The entries on disk
are the ones the engine wrote before this class existed ("iteration", "config", "model",
"optimizer", "schedule", "window", "first_bad", "warmup_window", "rng", "data_fingerprint"),
so the checkpoints of runs started earlier resume unchanged and bit-exactly; renaming one
would break every run in progress.

Two entries describe the run rather than how far it got: "config" (the settings in force
when the checkpoint was written) and "data_fingerprint" (the content of the training data).
A resume checks them before it builds anything (`resnets.checkpoint.check_resume_compatible`,
`check_data_fingerprint`) and does not load them: the settings given now stay in force, as
a resume may change some of them.

The random streams are the process's global ones (Python, NumPy, torch, and CUDA's for the
run's GPU only): the checkpoint holds them as they were at the save, and loading it sets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..config import TrainConfig, to_dict
from ..models import load_state_dict, model_spec
from ..models.loading import build_model
from ..models.normalize import normalization_state
from ..run_dir import non_finite, optimizer_tensors
from ..runtime import rng_state, set_rng_state
from .data import RunData
from .schedule import LrSchedule
from .stats import RunningStats

@dataclass
class TrainState:
    iteration: int  # iterations done: the next step trains on the stream's batch `iteration`
    model: nn.Module  # the network itself, never its DDP or torch.compile wrapper
    optimizer: torch.optim.SGD
    schedule: LrSchedule
    stats: RunningStats  # sums since the last log line, the first non-finite step, the warm-up window
    config: TrainConfig
    data_fingerprint: str

    @classmethod
    def create(cls, config: TrainConfig, data: RunData, device: torch.device,
               memory_format: torch.memory_format) -> "TrainState":
        """The run at iteration 0: a freshly initialised network (He init, Sec. 3.4), SGD, the schedule."""
        model = build_model(config.model, data.num_classes, data.mean_image)
        model = model.to(device, memory_format=memory_format)
        # Weight decay on every parameter, BN's included, as in the paper's Caffe solver.
        optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                    weight_decay=config.optim.weight_decay)
        schedule = LrSchedule.for_model(config.optim, model_spec(config.model.name).depth, config.data.dataset)
        return cls(0, model, optimizer, schedule, RunningStats.zeros(device), config, data.fingerprint)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: tensors, numbers, strings, lists and dicts only (weights_only-loadable)."""
        return {
            "iteration": self.iteration, "config": to_dict(self.config),
            # The network's tensors and its input normalisation in one mapping (resnets.models.normalize).
            "model": {**self.model.state_dict(), **normalization_state(self.model.input_norm)},
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            **self.stats.state_dict(),  # "window", "first_bad", "warmup_window"
            "rng": rng_state(self.device), "data_fingerprint": self.data_fingerprint,
        }

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue from `checkpoint` (this format, or commit a0f3558's, which kept the mean image
        under "normalize": never read, as the normalisation is rebuilt from the data)."""
        load_state_dict(self.model, checkpoint["model"])  # the network; its normalisation came from the data
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        self.iteration = int(checkpoint["iteration"])
        self.stats.load_state_dict(checkpoint)
        set_rng_state(checkpoint["rng"], self.device)

    @property
    def device(self) -> torch.device:
        """The run's device (where the network is)."""
        return next(self.model.parameters()).device

    def non_finite_tensors(self) -> list[str]:
        """The weights, buffers and momentum tensors that hold NaN or inf, by name (none: [])."""
        return non_finite([*self.model.state_dict().items(), *optimizer_tensors(self.optimizer.state_dict())])
