"""The training engine: one loop for CIFAR-10 and ImageNet, one process or many.

Recipe (Sec. 3.4, 4.2): SGD, momentum 0.9, weight decay 1e-4, BN after every conv, He
init, no dropout, cross-entropy on the softmax. The loop is written out in full, with no
hooks or callbacks, so what happens at each iteration reads top to bottom:

    lr for this step -> forward under autocast -> loss -> backward -> SGD step
    every log_every:   one host sync, non-finite check, a metrics line
    every eval_every:  validation, the plateau schedule
    every checkpoint_every (and at eval and at the end): checkpoints/last.pt

Statistics accumulate on the device between log points so the GPU is never stalled by
a per-step `.item()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import (LAST, check_data_fingerprint, check_resume_compatible, checkpoint_dir,
                          load_resume_checkpoint, save_checkpoint)
from ..config import TrainConfig, save_yaml, to_dict, validate
from ..errors import CheckpointError, ConfigError, TrainingDiverged
from ..eval.evaluate import evaluate
from ..models import load_state_dict, model_spec, save_weights
from ..models.loading import build_model, weights_config
from ..models.normalize import normalization_state
from ..ops.fused_bn_relu import fused_bn_relu_enabled
from ..run_dir import (RunLock, append_history, code_version, config_changes, describe_changes, file_sha256,
                       non_finite, optimizer_tensors, prepare_run_dir)
from ..runtime import Runtime, rng_state, seed_everything, set_rng_state, setup_runtime, shutdown_runtime
from .data import BatchShard, RunData, build_cifar
from .imagenet_data import MEAN_FILE, build_imagenet
from .metrics_log import MetricsLog, read_metrics
from .progress import ProgressBar
from .schedule import LrSchedule
from .stats import RunningStats

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
        return _train(config, runtime, resume)
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


def _train(config: TrainConfig, rt: Runtime, resume: bool) -> dict[str, Any]:
    run_dir = Path(config.out)
    start: ResumePoint | None = None
    if resume:
        start = resume_point(run_dir, config)
        if start.iteration >= config.optim.iters:
            summary = finished_summary(run_dir, start.iteration)
            if summary is not None:
                # Nothing to do, and nothing of the finished run is rewritten.
                if rt.is_main:
                    print(f"resnets train: {run_dir} is finished (iteration {start.iteration} of "
                          f"{config.optim.iters}); its results are unchanged. Pass a larger --iters to extend it.",
                          flush=True)
                return summary
            if start.iteration > config.optim.iters:
                raise ConfigError(f"optim.iters: the checkpoint {start.path} is at iteration {start.iteration}, "
                                  f"beyond --iters {config.optim.iters}")
    elif (checkpoint_dir(run_dir) / LAST).exists():
        raise ConfigError(f"out: {run_dir} already holds a run; pass --resume to continue it or choose another --out")

    seed_everything(config.seed)
    data: RunData = build_run_data(config, rt)
    if config.model.num_classes is not None and config.model.num_classes < data.num_classes:
        raise ConfigError(f"model.num_classes: {config.model.num_classes} outputs cannot score the "
                          f"{data.num_classes} classes of {data.description}")
    checkpoint = None
    if start is not None:
        checkpoint = start.checkpoint
        # A checkpoint written before fingerprints existed has none: accepted, recorded from now on.
        check_data_fingerprint(checkpoint.get("data_fingerprint"), data.fingerprint, config.data.path)
    model = build_model(config.model, data.num_classes, data.mean_image)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(rt.device, memory_format=memory_format)
    # Weight decay on every parameter, BN's included, as in the paper's Caffe solver.
    optimizer = torch.optim.SGD(model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum,
                                weight_decay=config.optim.weight_decay)
    schedule = LrSchedule.for_model(config.optim, model_spec(config.model.name).depth, config.data.dataset)
    step = 0
    stats = RunningStats.zeros(rt.device)
    if checkpoint is not None:
        load_state_dict(model, checkpoint["model"])  # the network; its normalisation came from the data
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        step = int(checkpoint["iteration"])
        stats.load_state_dict(checkpoint)
        set_rng_state(checkpoint["rng"])

    if config.sync_bn and rt.distributed:
        if rt.device.type == "cpu":
            # PyTorch's SyncBatchNorm runs on GPUs only; fail here rather than inside the first forward.
            raise ConfigError("sync_bn: synchronised BN needs CUDA devices; run without --sync-bn on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model: nn.Module = model
    if rt.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)

    progress = None
    if rt.is_main:
        if start is None:
            print(f"resnets train: {config.model.name} on {data.description}; {rt.device.type} {rt.precision}, "
                  f"{rt.world_size} process(es), {config.optim.iters} iterations -> {run_dir}", flush=True)
        else:
            print(f"resnets train: resuming {run_dir} at iteration {step} of {config.optim.iters} "
                  f"(from {start.path})", flush=True)
            if start.changes:
                print(f"resnets train: settings changed from iteration {step} on: {describe_changes(start.changes)}",
                      flush=True)
        # What ran is never overwritten: each start and resume appends the config in effect from then on.
        append_history(run_dir, "resume" if start else "start", step, to_dict(config),
                       start.changes if start else None, data_fingerprint=data.fingerprint)
        save_yaml(config, run_dir / "config.yaml")
        # Drawn after the lines above, so it never overwrites them.
        progress = ProgressBar.on_terminal(config.optim.iters, step, config.optim.batch_size)
    log = MetricsLog(run_dir, rt.is_main, step if start is not None else None, config.tensorboard,
                     **({"echo": progress.write} if progress else {}))
    last_good = (start.iteration, start.path) if start is not None else None  # (iteration, path)

    def stop(what: str) -> TrainingDiverged:
        log.close()
        if progress is not None:
            progress.close()
        if last_good is None:
            kept = "No checkpoint had been written yet; start again with a lower --lr"
        else:
            kept = (f"The last good checkpoint is {last_good[1]} (iteration {last_good[0]}); "
                    f"--resume continues from it, e.g. with a lower --lr")
        return TrainingDiverged(f"{what}; stopping. {kept}")

    def save(iteration: int) -> None:
        nonlocal last_good
        # Every process checks (they hold the same weights), so all stop together.
        bad = non_finite([*model.state_dict().items(), *optimizer_tensors(optimizer.state_dict())])
        if bad:
            raise stop(f"the weights became non-finite by iteration {iteration} (lr {lr:g}): {len(bad)} weight, "
                       f"buffer or momentum tensors hold NaN or inf (e.g. {', '.join(bad[:3])}), so they were not saved")
        if rt.is_main:
            path = save_checkpoint(run_dir, {
                "iteration": iteration, "config": to_dict(config),
                "model": {**model.state_dict(), **normalization_state(model.input_norm)},
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                **stats.state_dict(), "rng": rng_state(), "data_fingerprint": data.fingerprint,
            })
            last_good = (iteration, path)
        if rt.distributed:
            dist.barrier()

    def reduced(t: Tensor) -> Tensor:
        if rt.distributed:
            t = t.clone()
            dist.all_reduce(t)
        return t

    def bad_images() -> dict[str, int]:
        # Unreadable images skipped so far (--skip-bad-images, ImageNet), summed over processes.
        count = getattr(data.train, "num_bad_images", None)
        if count is None:
            return {}
        return {"bad_images": int(reduced(torch.tensor(float(count), device=rt.device, dtype=torch.float64)))}

    model.train()
    last_val: dict[str, float] | None = None
    last_train: dict[str, float] = {}
    lr = None
    t_window, images_window = time.perf_counter(), 0
    stream = data.train.batches(step)
    while step < config.optim.iters:
        x, y = next(stream)
        x = x.contiguous(memory_format=memory_format)
        new_lr = schedule.lr_at(step)
        if new_lr != lr:
            for group in optimizer.param_groups:
                group["lr"] = new_lr
            lr = new_lr
        loss, logits = train_step(train_model, optimizer, x, y, rt)
        stats.update(step, loss, logits, y)
        step += 1
        images_window += len(y) * rt.world_size
        if progress is not None:
            progress.tick(loss, lr)

        if schedule.warmup_active and step % WARMUP_CHECK_EVERY == 0:
            w = reduced(stats.warmup_window())
            recent_error = 100.0 * float(w[0] / w[1])
            stats.reset_warmup()
            if schedule.observe_train_error(step, recent_error):
                log.write({"event": "warmup_end", "iteration": step, "train_error": recent_error})

        is_last = step == config.optim.iters
        log_now = step % config.log_every == 0 or is_last
        eval_now = data.val is not None and (step % config.eval_every == 0 or is_last)
        save_now = step % config.checkpoint_every == 0 or eval_now or is_last
        if log_now or eval_now or save_now:
            # The one host sync of a window: stop before anything diverged is saved or evaluated.
            bad_step = stats.first_bad.clone()
            if rt.distributed:
                dist.all_reduce(bad_step, op=dist.ReduceOp.MAX)
            if bad_step > 0:
                raise stop(f"the training loss became non-finite at iteration {int(bad_step)} (lr {lr:g})")
        if log_now:
            w = reduced(stats.window())
            elapsed = time.perf_counter() - t_window
            last_train = {"train_loss": float(w[0] / w[3]), "train_error": 100.0 * float(w[1] / max(w[2], 1))}
            log.write({"event": "train", "iteration": step, "epoch": round(step / data.train.steps_per_epoch, 3),
                       "lr": lr, **last_train, "images_per_s": round(images_window / max(elapsed, 1e-9), 1),
                       **bad_images()})
            stats.reset_window()
            t_window, images_window = time.perf_counter(), 0

        if eval_now:
            last_val = evaluate(model, data.val, rt)
            log.write({"event": "val", "iteration": step, "epoch": round(step / data.train.steps_per_epoch, 3),
                       "val_error": last_val["top1_err"], "val_top5_error": last_val["top5_err"],
                       "val_loss": last_val["loss"], "val_images": last_val["n"]})
            if schedule.observe_val_error(last_val["top1_err"]):
                log.write({"event": "lr_drop", "iteration": step, "lr": schedule.lr_at(step)})
            t_window = time.perf_counter()
        if save_now:
            save(step)

    if progress is not None:
        progress.close()
    if last_val is None and data.val is not None:
        # Resumed from the final checkpoint of a run stopped before it wrote its weights.
        last_val = evaluate(model, data.val, rt)
    summary = {"event": "summary", "iteration": step, "model": config.model.name, "dataset": config.data.dataset,
               "data": data.description, "val_error": last_val["top1_err"] if last_val else None,
               "val_top5_error": last_val["top5_err"] if last_val else None,
               **last_train,  # over the last log window; absent when resumed at the very end
               "params": sum(p.numel() for p in model.parameters()), "device": str(rt.device),
               "precision": rt.precision, "processes": rt.world_size, **bad_images()}
    if rt.is_main:
        # Provenance travels with the weights: the config, the data (the file's sha256, and the
        # decoded content's fingerprint the run checked on every resume) and the code.
        provenance = {"config": to_dict(config), "data_sha256": file_sha256(config.data.path) if config.data.path else None,
                      "data_fingerprint": data.fingerprint, "code": code_version()}
        save_weights(run_dir / "model.safetensors", model, weights_config(config.model, data.num_classes, data.classes),
                     metadata={**{k: v for k, v in summary.items() if k != "event"}, **provenance})
        log.write(summary)
    log.close()
    return summary

