"""The training engine: one loop for CIFAR-10 and ImageNet, one process or many.

Recipe (Sec. 3.4, 4.2): SGD, momentum 0.9, weight decay 1e-4, BN after every conv, He
init, no dropout, cross-entropy on the softmax. The loop is written out in full, with no
hooks or callbacks, so what happens at each iteration reads top to bottom:

    lr for this step -> forward under autocast -> loss -> backward -> SGD step
    every log_every:   one host sync, non-finite check, a metrics line
    every eval_every:  validation, the plateau schedule
    every checkpoint_every (and at eval and at the end): checkpoints/last.pt
    on SIGTERM or Ctrl-C: checkpoints/last.pt at the step it arrived in, then stop (stop.py)

Statistics accumulate on the device between log points so the GPU is never stalled by
a per-step `.item()`. What a checkpoint holds - the model, optimizer, schedule, statistics,
iteration and random streams - is one `TrainState` (state.py): saved with one call, restored
with one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import (LAST, check_data_fingerprint, check_resume_compatible, checkpoint_dir,
                          load_resume_checkpoint, save_checkpoint)
from ..config import TrainConfig, save_yaml, to_dict, validate
from ..errors import CheckpointError, ConfigError, TrainingDiverged, TrainingStopped
from ..eval.evaluate import evaluate
from ..models import model_spec, save_weights
from ..models.loading import weights_config
from ..ops.fused_bn_relu import fused_bn_relu_enabled
from ..run_dir import (RunLock, append_history, code_version, config_changes, describe_changes, file_sha256,
                       prepare_run_dir)
from ..runtime import Runtime, seed_everything, setup_runtime, shutdown_runtime
from .data import BatchShard, RunData, build_cifar
from .imagenet_data import MEAN_FILE, build_imagenet
from .metrics_log import MetricsLog, compact_log, read_metrics
from .progress import ProgressBar
from .state import TrainState
from .stats import RunningStats
from .stop import StopRequest

WARMUP_CHECK_EVERY = 10  # iterations between warm-up checks (Sec. 4.2: warm-up lasts ~400)


def build_run_data(config: TrainConfig, rt: Runtime) -> RunData:
    """The run's data; each builder gets the data settings, this process's share of the batch and the seed."""
    shard = BatchShard.of(config.optim.batch_size, rt)
    if config.data.dataset == "imagenet":
        return build_imagenet(config.data, shard, config.seed, rt, mean_cache=Path(config.out) / MEAN_FILE)
    return build_cifar(config.data, shard, config.seed, rt)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               runtime: Runtime) -> tuple[Tensor, Tensor]:
    """One SGD step on the batch (x, y); returns the detached loss and logits (no host sync).

    The whole of what an iteration computes: forward under the run's autocast, cross-entropy
    on the softmax, backward, SGD with momentum and weight decay (Sec. 3.4). The benchmarks
    time this function, so what they measure is what trains.
    """
    with runtime.autocast(), fused_bn_relu_enabled(runtime.fused_bn_relu):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) the training run `config` describes; returns the final summary."""
    validate(config)
    try:  # fail on a bad model name before spending time decoding data
        model_spec(config.model.name)
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    if resume and not Path(config.out).is_dir():
        raise CheckpointError(f"cannot resume: {config.out} does not exist")
    runtime = setup_runtime(config.device, config.precision, config.fused_bn_relu)
    lock = None
    try:
        if runtime.is_main:  # the one process that writes the run directory
            lock = RunLock(prepare_run_dir(config.out)).acquire()
        with StopRequest() as stop:
            return _train(config, runtime, resume, stop)
    finally:
        if lock is not None:
            lock.release()
        shutdown_runtime(runtime)


@dataclass
class ResumePoint:
    """Where a resumed run continues: its checkpoint, and the settings that change there."""

    checkpoint: dict[str, Any]
    path: Path
    iteration: int
    changes: dict[str, list[Any]]  # {key: [checkpoint's value, new value]}


def resume_point(run_dir: Path, config: TrainConfig) -> ResumePoint:
    checkpoint, path = load_resume_checkpoint(run_dir)
    check_resume_compatible(checkpoint["config"], config)
    # `out` names where the directory is now, which is not a setting of the run.
    changes = config_changes(checkpoint["config"], to_dict(config), ignore=("out",))
    return ResumePoint(checkpoint, path, int(checkpoint["iteration"]), changes)


def finished_summary(run_dir: Path, iteration: int) -> dict[str, Any] | None:
    """The summary of a run that finished at `iteration` (its summary line and weights exist)."""
    summaries = [r for r in read_metrics(run_dir) if r.get("event") == "summary"]
    if summaries and summaries[-1].get("iteration") == iteration and (run_dir / "model.safetensors").is_file():
        return summaries[-1]
    return None


def _train(config: TrainConfig, rt: Runtime, resume: bool, stop: StopRequest) -> dict[str, Any]:
    run_dir = Path(config.out)
    start: ResumePoint | None = None
    if resume:
        start = resume_point(run_dir, config)
        if (finished := _already_finished(start, run_dir, config, rt)) is not None:
            return finished  # nothing to do, and nothing of the finished run is rewritten
    elif (checkpoint_dir(run_dir) / LAST).exists():
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or choose another --out")

    seed_everything(config.seed)
    data: RunData = build_run_data(config, rt)
    _check_data(data, config, start)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    # Built as an uninterrupted run builds it (seed, data, He init), then overwritten by the
    # checkpoint, random streams included: a resumed run continues bit-exactly.
    state = TrainState.create(config, data, rt.device, memory_format)
    if start is not None:
        state.load_state_dict(start.checkpoint)
    train_model = _training_module(state, config, rt)

    progress = _announce_start(config, rt, data, start) if rt.is_main else None
    log = MetricsLog(run_dir, rt.is_main, state.iteration if start is not None else None, config.tensorboard,
                     **({"echo": progress.write} if progress else {}))
    last_good = (start.iteration, start.path) if start is not None else None  # (iteration, path)
    last_val: dict[str, float] | None = None
    last_train: dict[str, float] = {}
    lr = None
    throughput = _Throughput()
    state.model.train()
    stream = data.train.batches(state.iteration)
    while state.iteration < config.optim.iters:
        x, y = next(stream)
        x = x.contiguous(memory_format=memory_format)
        new_lr = state.schedule.lr_at(state.iteration)
        if new_lr != lr:
            for group in state.optimizer.param_groups:
                group["lr"] = new_lr
            lr = new_lr
        loss, logits = train_step(train_model, state.optimizer, x, y, rt)
        state.stats.update(state.iteration, loss, logits, y)
        state.iteration += 1
        step = state.iteration
        throughput.images += len(y) * rt.world_size
        if progress is not None:
            progress.tick(loss, lr)
        if state.schedule.warmup_active and step % WARMUP_CHECK_EVERY == 0:
            _check_warmup(state, rt, log)

        is_last = step == config.optim.iters
        log_now = step % config.log_every == 0 or is_last
        eval_now = data.val is not None and (step % config.eval_every == 0 or is_last)
        stop_now = stop.requested(step, rt)  # SIGTERM / Ctrl-C: a checkpoint here, then stop
        save_now = step % config.checkpoint_every == 0 or eval_now or is_last or stop_now
        # The one host sync of a window: stop before anything diverged is saved or evaluated.
        if (log_now or eval_now or save_now) and (bad_step := _first_non_finite_step(state.stats, rt)):
            raise _diverged(f"the training loss became non-finite at iteration {bad_step} (lr {lr:g})",
                            last_good, log, progress)
        if log_now:
            last_train = _close_window(state.stats, rt)
            log.write({"event": "train", "iteration": step, "epoch": round(step / data.train.steps_per_epoch, 3),
                       "lr": lr, **last_train, "images_per_s": throughput.images_per_s(), **_bad_images(data, rt)})
            throughput = _Throughput()
        if eval_now:
            last_val = _validate(state, data, rt, log)
            throughput.since = time.perf_counter()  # validation time is not training throughput
        if save_now:
            # Every process checks (they hold the same weights), so all stop together.
            if bad := state.non_finite_tensors():
                raise _diverged(f"the weights became non-finite by iteration {step} (lr {lr:g}): {len(bad)} weight, "
                                f"buffer or momentum tensors hold NaN or inf (e.g. {', '.join(bad[:3])}), "
                                "so they were not saved", last_good, log, progress)
            last_good = _save(state, run_dir, rt) or last_good
        if stop_now and not is_last:
            raise _stopped(stop, step, run_dir, log, progress)

    if progress is not None:
        progress.close()
    if last_val is None and data.val is not None:
        # Resumed from the final checkpoint of a run stopped before it wrote its weights.
        last_val = evaluate(state.model, data.val, rt)
    summary = _summary(state, data, rt, last_val, last_train)
    if rt.is_main:
        _save_final_weights(state, data, summary)
        log.write(summary)
    log.close()
    return summary


# --- the pieces of `_train`, in the order it uses them ----------------------------------------

def _already_finished(start: ResumePoint, run_dir: Path, config: TrainConfig, rt: Runtime) -> dict[str, Any] | None:
    """The summary of a run resumed at or past --iters that has written its results; None when
    there is still work (iterations, or the weights of a run stopped right before writing them)."""
    if start.iteration < config.optim.iters:
        return None
    summary = finished_summary(run_dir, start.iteration)
    if summary is not None:
        if rt.is_main:
            print(f"resnets train: {run_dir} is finished (iteration {start.iteration} of "
                  f"{config.optim.iters}); its results are unchanged. Pass a larger --iters to extend it.", flush=True)
        return summary
    if start.iteration > config.optim.iters:
        raise ConfigError(f"optim.iters: the checkpoint {start.path} is at iteration {start.iteration}, "
                          f"beyond --iters {config.optim.iters}")
    return None


def _check_data(data: RunData, config: TrainConfig, start: ResumePoint | None) -> None:
    """Refuse data the network cannot score, and on resume data other than the run's (before the
    network is built: ImageNet's per-pixel mean takes thousands of images)."""
    if config.model.num_classes is not None and config.model.num_classes < data.num_classes:
        raise ConfigError(f"model.num_classes: {config.model.num_classes} outputs cannot score the "
                          f"{data.num_classes} classes of {data.description}")
    if start is not None:
        # A checkpoint written before fingerprints existed has none: accepted, recorded from now on.
        check_data_fingerprint(start.checkpoint.get("data_fingerprint"), data.fingerprint, config.data.path)


def _training_module(state: TrainState, config: TrainConfig, rt: Runtime) -> nn.Module:
    """The module `train_step` runs: the state's model, under DDP and torch.compile as configured.

    --sync-bn swaps the model's BN layers for SyncBatchNorm ones that share their tensors, so the
    optimizer, the checkpoints (same keys) and evaluation all see the one model.
    """
    if config.sync_bn and rt.distributed:
        if rt.device.type == "cpu":
            # PyTorch's SyncBatchNorm runs on GPUs only; fail here rather than inside the first forward.
            raise ConfigError("sync_bn: synchronised BN needs CUDA devices; run without --sync-bn on CPU")
        state.model = nn.SyncBatchNorm.convert_sync_batchnorm(state.model)
    train_model: nn.Module = state.model
    if rt.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            state.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)
    return train_model


def _announce_start(config: TrainConfig, rt: Runtime, data: RunData, start: ResumePoint | None) -> ProgressBar | None:
    """The main process's record of a start or resume: a line saying what runs, the history entry,
    config.yaml; then the progress bar (None off a terminal)."""
    run_dir, iteration = Path(config.out), start.iteration if start is not None else 0
    if start is None:
        print(f"resnets train: {config.model.name} on {data.description}; {rt.device.type} {rt.precision}, "
              f"{rt.world_size} process(es), {config.optim.iters} iterations -> {run_dir}", flush=True)
    else:
        print(f"resnets train: resuming {run_dir} at iteration {iteration} of {config.optim.iters} "
              f"(from {start.path})", flush=True)
        if start.changes:
            print(f"resnets train: settings changed from iteration {iteration} on: {describe_changes(start.changes)}",
                  flush=True)
    # What ran is never overwritten: each start and resume appends the config in effect from then on.
    append_history(run_dir, "resume" if start else "start", iteration, to_dict(config),
                   start.changes if start else None, data_fingerprint=data.fingerprint)
    save_yaml(config, run_dir / "config.yaml")
    # Drawn after the lines above, so it never overwrites them.
    return ProgressBar.on_terminal(config.optim.iters, iteration, config.optim.batch_size)


@dataclass
class _Throughput:
    """Images trained on since the last train line, and since when (validation time left out)."""

    since: float = field(default_factory=time.perf_counter)
    images: int = 0

    def images_per_s(self) -> float:
        return round(self.images / max(time.perf_counter() - self.since, 1e-9), 1)


def _all_reduced(t: Tensor, rt: Runtime) -> Tensor:
    """`t` summed over the processes (`t` itself in a single process)."""
    if rt.distributed:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _check_warmup(state: TrainState, rt: Runtime, log: MetricsLog) -> None:
    """Sec. 4.2's warm-up lasts "until the training error is below 80%": the error since the last
    check, over all processes, may end it."""
    w = _all_reduced(state.stats.warmup_window(), rt)
    recent_error = 100.0 * float(w[0] / w[1])
    state.stats.reset_warmup()
    if state.schedule.observe_train_error(state.iteration, recent_error):
        log.write({"event": "warmup_end", "iteration": state.iteration, "train_error": recent_error})


def _first_non_finite_step(stats: RunningStats, rt: Runtime) -> int:
    """The first iteration whose loss was NaN or inf on any process; 0: none."""
    bad_step = stats.first_bad.clone()
    if rt.distributed:
        dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
    return int(bad_step)


def _diverged(what: str, last_good: tuple[int, Path] | None, log: MetricsLog,
              progress: ProgressBar | None) -> TrainingDiverged:
    """The error a diverged run stops with, once its outputs are closed: what happened, and where to resume."""
    log.close()
    if progress is not None:
        progress.close()
    if last_good is None:
        kept = "No checkpoint had been written yet; start again with a lower --lr"
    else:
        kept = (f"The last good checkpoint is {last_good[1]} (iteration {last_good[0]}); "
                f"--resume continues from it, e.g. with a lower --lr")
    return TrainingDiverged(f"{what}; stopping. {kept}")


def _stopped(stop: StopRequest, step: int, run_dir: Path, log: MetricsLog,
             progress: ProgressBar | None) -> TrainingStopped:
    log.write({"event": "stopped", "iteration": step, "signal": stop.name})
    log.close()
    if progress is not None:
        progress.close()
    return TrainingStopped(f"stopped by {stop.name} at iteration {step}, its checkpoint written; "
                           f"`resnets train --resume --out {run_dir}` continues from there", stop.signal)


def _close_window(stats: RunningStats, rt: Runtime) -> dict[str, float]:
    """The training loss and error over the log window that ends now, over all processes; starts the next."""
    w = _all_reduced(stats.window(), rt)
    stats.reset_window()
    return {"train_loss": float(w[0] / w[3]), "train_error": 100.0 * float(w[1] / max(w[2], 1))}


def _bad_images(data: RunData, rt: Runtime) -> dict[str, int]:
    # Unreadable images skipped so far (--skip-bad-images, ImageNet), summed over processes.
    count = getattr(data.train, "num_bad_images", None)
    if count is None:
        return {}
    return {"bad_images": int(_all_reduced(torch.tensor(float(count), device=rt.device, dtype=torch.float64), rt))}


def _validate(state: TrainState, data: RunData, rt: Runtime, log: MetricsLog) -> dict[str, float]:
    """Validation at this iteration, its metrics line, and the plateau schedule's turn (Sec. 3.4)."""
    step = state.iteration
    val = evaluate(state.model, data.val, rt)
    log.write({"event": "val", "iteration": step, "epoch": round(step / data.train.steps_per_epoch, 3),
               "val_error": val["top1_err"], "val_top5_error": val["top5_err"],
               "val_loss": val["loss"], "val_images": val["n"]})
    if state.schedule.observe_val_error(val["top1_err"]):
        log.write({"event": "lr_drop", "iteration": step, "lr": state.schedule.lr_at(step)})
    return val


def _save(state: TrainState, run_dir: Path, rt: Runtime) -> tuple[int, Path] | None:
    """checkpoints/last.pt from the main process, all processes waiting for it; (iteration, path) on the main one."""
    saved = (state.iteration, save_checkpoint(run_dir, state.state_dict())) if rt.is_main else None
    if rt.distributed:
        dist.barrier()
    return saved


def _summary(state: TrainState, data: RunData, rt: Runtime, last_val: dict[str, float] | None,
             last_train: dict[str, float]) -> dict[str, Any]:
    config = state.config
    return {"event": "summary", "iteration": state.iteration, "model": config.model.name,
            "dataset": config.data.dataset, "data": data.description,
            "val_error": last_val["top1_err"] if last_val else None,
            "val_top5_error": last_val["top5_err"] if last_val else None,
            **last_train,  # over the last log window; absent when resumed at the very end
            "params": sum(p.numel() for p in state.model.parameters()), "device": str(rt.device),
            "precision": rt.precision, "processes": rt.world_size, **_bad_images(data, rt)}


def _save_final_weights(state: TrainState, data: RunData, summary: dict[str, Any]) -> None:
    # Provenance travels with the weights: the config, the data (the file's sha256, and the
    # decoded content's fingerprint the run checked on every resume) and the code.
    config = state.config
    # The run directory keeps the paths (config.yaml, checkpoints: --resume needs them); the
    # weights leave it, and name the data by file name and content only, the run by its name.
    portable = to_dict(config)
    portable["data"].update(path=Path(config.data.path).name if config.data.path else None, cache_dir=None)
    portable["out"] = Path(config.out).name
    provenance = {"config": portable, "data_sha256": file_sha256(config.data.path) if config.data.path else None,
                  "data_fingerprint": data.fingerprint, "code": code_version(),
                  "log": compact_log(read_metrics(config.out))}
    save_weights(Path(config.out) / "model.safetensors", state.model,
                 weights_config(config.model, data.num_classes, data.classes),
                 metadata={**{k: v for k, v in summary.items() if k != "event"}, **provenance})
