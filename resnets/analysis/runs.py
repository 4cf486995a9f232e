"""Reading finished (or half-finished) run directories back for tables and figures.

A run directory (written by `resnets.train.engine.train`) holds `config.yaml`, the
`metrics.jsonl` log ({"event": "train"|"val"|"summary", ...}), `checkpoints/last.pt`
while it runs and `model.safetensors` once it has finished.
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import yaml

from ..config import from_dict, to_dict
from ..errors import ConfigError, DataError
from ..models import count_params, create_model, model_spec
from ..train.metrics_log import expand_log, read_metrics
from ..train.schedule import LrSchedule

RunState = Literal["finished", "interrupted", "new"]

# The final training error is the mean of the logged training-error windows that cover
# the last FINAL_TRAIN_FRACTION of the iterations: a single log window (a few batches
# of augmented images, in training mode) is too noisy to rank networks by.
FINAL_TRAIN_FRACTION = 0.1


def run_state(run_dir: str | Path) -> RunState:
    """"finished": a summary line and the weights file exist; "interrupted": a checkpoint to
    resume from exists; "new": nothing to continue (a run killed before its first
    checkpoint starts over)."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if (run_dir / "model.safetensors").is_file() and any(r.get("event") == "summary" for r in rows):
        return "finished"
    checkpoints = run_dir / "checkpoints"
    if (checkpoints / "last.pt").is_file() or (checkpoints / "previous.pt").is_file():
        return "interrupted"
    return "new"


@dataclass
class RunResult:
    """One run's curves and final numbers. Errors are percentages."""

    run_dir: Path
    model: str
    seed: int
    depth: int
    residual: bool
    state: RunState
    config: dict[str, Any]
    train: list[tuple[int, float]] = field(default_factory=list)  # (iteration, training error %)
    val: list[tuple[int, float]] = field(default_factory=list)  # (iteration, validation error %)
    summary: dict[str, Any] | None = None
    images_per_s: float | None = None  # median training throughput over the logged windows
    training_seconds: float = 0.0  # the logged windows' durations summed: training only, no evaluation
    warmup_end: tuple[int, float] | None = None  # (iteration, recent training error %) where the warm-up ended

    @property
    def name(self) -> str:
        """The legend label: model name and seed."""
        return f"{self.model} (seed {self.seed})"

    @property
    def restored(self) -> bool:
        """Rebuilt by `restore_run` from its weights file: final numbers, and curves where the file has them."""
        return self.summary is not None and "restored_from" in self.summary

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def params(self) -> int | None:
        """As the finished run counted them; for a run still training, counted on the network its config builds."""
        if self.summary is not None and self.summary.get("params") is not None:
            return self.summary["params"]
        model = self.config.get("model", {})
        return network_params(self.model, model.get("shortcut"), model.get("num_classes"))

    @property
    def final_val_error(self) -> float | None:
        if self.summary is not None and self.summary.get("val_error") is not None:
            return float(self.summary["val_error"])
        return self.val[-1][1] if self.val else None

    @property
    def final_train_error(self) -> float | None:
        """Mean training error of the log windows in the last FINAL_TRAIN_FRACTION of iterations."""
        if not self.train:
            # A run restored from its weights has no log windows, only its last one, in the summary.
            return float(self.summary["train_error"]) if self.restored and "train_error" in self.summary else None
        last = self.train[-1][0]
        start = last * (1 - FINAL_TRAIN_FRACTION)
        tail = [err for it, err in self.train if it > start] or [self.train[-1][1]]
        return statistics.fmean(tail)

    @property
    def warmup(self) -> str:
        """The warm-up of Sec. 4.2 as this run did it, from its log: where it ended, or that it had none."""
        optim = from_dict(self.config).optim
        if not LrSchedule.for_model(optim, self.depth, self.config["data"]["dataset"]).warmup_active:
            return "none"
        if self.warmup_end is None:
            return f"lr {optim.warmup_lr:g}, not ended yet"
        iteration, error = self.warmup_end
        return f"lr {optim.warmup_lr:g} to iteration {iteration} (training error {error:.2f}%)"


def network_params(model: str, shortcut: str | None = None, num_classes: int | None = None) -> int | None:
    """Parameters of the network `create_model` builds, counted on shapes only (no memory, no
    initialisation); None if it cannot build it."""
    try:
        with torch.device("meta"):
            classes = {"num_classes": num_classes} if num_classes else {}
            net = create_model(model, shortcut=shortcut, **classes)
    except (TypeError, ValueError):
        return None
    return count_params(net)


def load_run(run_dir: str | Path) -> RunResult:
    """Read one run directory; DataError if it is not one."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run_dir}: not a resnets run directory (no config.yaml)")
    try:
        # Through the config's types: a config.yaml written before a field existed gets its default.
        config = to_dict(from_dict(yaml.safe_load(config_path.read_text()) or {}))
        model = str(config["model"]["name"])
        seed = int(config["seed"])
    except (yaml.YAMLError, ConfigError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{config_path}: unreadable run config ({type(e).__name__}: {e})") from None
    try:
        spec = model_spec(model)
    except ValueError as e:
        raise DataError(f"{config_path}: {e}") from None
    rows = read_metrics(run_dir)
    result = RunResult(run_dir, model, seed, spec.depth, spec.residual, run_state(run_dir), config)
    speeds = []
    batch = int(config.get("optim", {}).get("batch_size") or 0)
    previous = 0  # the log is contiguous: a resume drops the lines past its checkpoint
    for row in rows:
        event = row.get("event")
        if event == "train" and row.get("train_error") is not None:
            iteration = int(row["iteration"])
            result.train.append((iteration, float(row["train_error"])))
            if row.get("images_per_s"):
                speeds.append(float(row["images_per_s"]))
                # Each window's wall time, as the engine measured it (stalls of a busy machine included).
                result.training_seconds += (iteration - previous) * batch / float(row["images_per_s"])
            previous = iteration
        elif event == "val" and row.get("val_error") is not None:
            result.val.append((int(row["iteration"]), float(row["val_error"])))
        elif event == "summary":
            result.summary = row
        elif event == "warmup_end":
            result.warmup_end = (int(row["iteration"]), float(row["train_error"]))
    result.images_per_s = statistics.median(speeds) if speeds else None
    return result


def restore_run(weights: str | Path, run_dir: str | Path, data: str | None = None) -> RunResult:
    """A finished run's directory rebuilt from its `model.safetensors` when the directory itself is
    lost: the weights file carries the run's resolved config and its summary line (the final
    errors) in its metadata, so Table 6 can count the run again, and, in files written since
    2026-12-08, its log's curves, speeds and warm-up (`compact_log`); for older files those were
    only in the lost log and stay missing. `data`: where the run's data file is now (the metadata
    names it by file name only)."""
    from ..models.weights import read_weights_metadata

    run_dir, weights = Path(run_dir), Path(weights)
    metadata = read_weights_metadata(weights)
    if not isinstance(metadata.get("config"), dict) or "val_error" not in metadata:
        raise DataError(f"{weights}: no training run recorded in its metadata (config and final errors): "
                        "only weights written by `resnets train` can restore a run")
    if (run_dir / "config.yaml").exists():
        raise DataError(f"{run_dir}: already holds a run; restore into a new directory")
    config = dict(metadata["config"], out=str(run_dir))
    if data is not None:
        config["data"] = dict(config["data"], path=str(data))
    summary = {"event": "summary", **{k: v for k, v in metadata.items() if k not in ("config", "log")},
               "restored_from": weights.name}
    rows = [*expand_log(metadata.get("log") or {}), summary]
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, run_dir / "model.safetensors")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(from_dict(config)), sort_keys=False))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return load_run(run_dir)


def find_runs(out_dir: str | Path) -> list[RunResult]:
    """Every run under OUT/runs/*, in plotting order: residual before plain, then depth, seed."""
    runs_dir = Path(out_dir) / "runs"
    if not runs_dir.is_dir():
        return []
    runs = [load_run(d) for d in sorted(runs_dir.iterdir()) if (d / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: (not r.residual, r.depth, r.seed))


@dataclass
class ModelRow:
    """One line of the Table-6-style summary: all finished seeds of one model."""

    model: str
    depth: int
    residual: bool
    params: int | None
    runs: int  # finished runs counted in the statistics
    unfinished: int
    val_errors: list[float]
    train_errors: list[float]

    @property
    def val_mean_std(self) -> tuple[float | None, float | None]:
        return mean_std(self.val_errors)

    @property
    def train_mean_std(self) -> tuple[float | None, float | None]:
        return mean_std(self.train_errors)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs: Sequence[RunResult], models: Sequence[str] = ()) -> list[ModelRow]:
    """Group runs by model; statistics over finished runs only. `models`: every network the
    experiment plans, so that one with no run directory yet still has its row (no runs), and the
    table shows what is missing. Rows in plotting order: residual before plain, then depth."""
    rows: dict[str, ModelRow] = {}
    for r in runs:
        row = rows.setdefault(r.model, ModelRow(r.model, r.depth, r.residual, None, 0, 0, [], []))
        row.params = row.params or r.params
        if not r.finished:
            row.unfinished += 1
            continue
        row.runs += 1
        if r.final_val_error is not None:
            row.val_errors.append(r.final_val_error)
        if r.final_train_error is not None:
            row.train_errors.append(r.final_train_error)
    for name in models:
        if name not in rows:
            spec = model_spec(name)
            rows[name] = ModelRow(name, spec.depth, spec.residual, network_params(name), 0, 0, [], [])
    return sorted(rows.values(), key=lambda row: (not row.residual, row.depth))
