"""`resnets reproduce cifar10`: the CIFAR-10 experiments of Sec. 4.2 in one command.

For every depth (and every depth in `plain` also the plain twin) and every seed, one run
directory OUT/runs/<model>-s<seed> is trained in this process, one after another (with
`jobs` > 1, in that many processes at once), with the paper's recipe (`cifar-paper` preset)
and any schedule overrides. The command is resumable: finished runs are skipped, interrupted
ones continue from their last checkpoint, so re-running the same command after a kill
finishes the job. At the end it writes the figures (Fig. 6 curves, Fig. 7 responses) and
OUT/report.md.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..config import REUSE, TrainConfig, changed_settings, from_dict, load_yaml, resolve_config, validate
from ..errors import ConfigError, ResnetsError, RunDirectoryBusy, TrainingDiverged, TrainingStopped, WorkerFailed
from ..models import model_spec
from ..train.stop import StopRequest
from .plots import plot_fig6, plot_responses
from .report import responses_markdown, write_report
from .runs import RunState, find_runs, run_state


@dataclass(frozen=True)
class PlannedRun:
    model: str
    seed: int
    run_dir: Path


def plan_runs(depths: Sequence[int], plain: Sequence[int], seeds: int, out: str | Path) -> list[PlannedRun]:
    """Seed 0 of every network first (residual shallow to deep, then plain), then seed 1, ...:
    an experiment cut short still has one complete table. `plain`: the depths whose plain twins
    (Fig. 6 left) to train as well."""
    if seeds < 1:
        raise ConfigError(f"--seeds: expected a positive number of seeds, got {seeds}")
    if not depths:
        raise ConfigError("--depths: expected at least one depth, e.g. 20,32,44,56,110")
    models = [f"cifar_resnet{d}" for d in depths] + [f"cifar_plain{d}" for d in plain]
    for name in models:
        try:
            model_spec(name)
        except ValueError as e:
            raise ConfigError(f"--depths: {e}") from None
    runs_dir = Path(out) / "runs"
    return [PlannedRun(m, s, runs_dir / f"{m}-s{s}") for s in range(seeds) for m in models]


def run_config(run: PlannedRun, data: str | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """The `cifar-paper` recipe with the schedule overrides, for this model, seed and directory."""
    values = dict(overrides)
    values.update({"model.name": run.model, "seed": run.seed, "out": str(run.run_dir)})
    if data is not None:
        values["data.path"] = data
    return resolve_config(None, values, preset="cifar-paper")


def check_reusable(run_dir: Path, config: TrainConfig) -> None:
    """A finished run counts only if it is the run we would have trained now: the settings marked
    REUSE in the config (a different seed or schedule would silently mix experiments in one table)."""
    saved = from_dict(load_yaml(run_dir / "config.yaml"))
    changed = [f"{k} ({old!r} there, {new!r} asked for)" for k, old, new in changed_settings(saved, config, REUSE)]
    if changed:
        raise ConfigError(f"{run_dir} holds a finished run with other settings: {', '.join(changed)}; "
                          "use another --out (or delete that run directory) to train with these settings")


def execute_runs(plan: Sequence[PlannedRun], data: str | None, overrides: Mapping[str, Any],
                 train: Callable[..., dict] | None = None,
                 log: Callable[[str], None] = print) -> dict[Path, RunState]:
    """Train what is missing, one run after another; returns each run's state before this call."""
    if train is None:
        from ..train.engine import train
    before: dict[Path, RunState] = {}
    for i, run in enumerate(plan, 1):
        config = run_config(run, data, overrides)
        state = run_state(run.run_dir)
        before[run.run_dir] = state
        if state == "finished":
            check_reusable(run.run_dir, config)
            log(f"[{i}/{len(plan)}] {run.run_dir.name}: finished, skipped")
            continue
        log(f"[{i}/{len(plan)}] {run.run_dir.name}: " + ("resuming" if state == "interrupted" else "training"))
        try:
            train(config, resume=state == "interrupted")
        except TrainingDiverged as e:
            # One diverging network (e.g. a deep plain net at lr 0.1) must not stop the
            # others; it stays unfinished in the report.
            log(f"[{i}/{len(plan)}] {run.run_dir.name}: {e}")
        except RunDirectoryBusy:
            # Another process trains it (a parallel worker, or `resnets train` by hand): the next one.
            log(f"[{i}/{len(plan)}] {run.run_dir.name}: held by another process, skipped")
    return before


def execute_in_parallel(plan: Sequence[PlannedRun], data: str | None, overrides: Mapping[str, Any], jobs: int,
                        out: Path, log: Callable[[str], None] = print) -> None:
    """`jobs` worker processes share the plan, each with its share of the CPU threads: each trains,
    in plan order, the next run that is neither finished nor held by another (its run.lock), so
    no core idles while runs remain. Each worker writes its output to OUT/worker-K.log.

    SIGTERM or Ctrl-C reaches every worker (forwarded once), each writes a checkpoint where it
    stops, and re-running the same command continues them all.
    """
    for run in plan:  # a setting wrong for every run is said once, here, not by each worker
        validate(run_config(run, data, overrides))
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no OpenMP pool or lock inherited
    workers = [context.Process(target=_worker, args=(plan, data, dict(overrides), threads, k, out / f"worker-{k}.log"),
                               name=f"resnets-reproduce-{k}") for k in range(jobs)]
    with StopRequest() as stop:
        for k, worker in enumerate(workers):
            worker.start()
            log(f"worker {k}: pid {worker.pid}, {threads} thread(s), log {out / f'worker-{k}.log'}")
        forwarded = False
        while any(w.is_alive() for w in workers):
            for worker in workers:
                worker.join(timeout=0.2)
            if stop.signal is not None and not forwarded:
                for worker in workers:
                    if worker.is_alive():
                        os.kill(worker.pid, signal.SIGTERM)  # a repeated SIGTERM stays graceful (stop.py)
                forwarded = True
    if stop.signal is not None:
        raise TrainingStopped(f"stopped by {stop.name}: each worker wrote a checkpoint where it stopped; "
                              "the same command continues them", stop.signal)
    failed = [f"worker {k} (exit status {w.exitcode}, see {out / f'worker-{k}.log'})"
              for k, w in enumerate(workers) if w.exitcode != 0]
    if failed:
        raise WorkerFailed(f"{', '.join(failed)} failed; the runs it held keep their checkpoints, and the same "
                           "command continues them")


def worker_device(device: str, index: int, gpus: int) -> str:
    """Worker `index`'s device: with several GPUs, "auto" and "cuda" give each worker its own in turn."""
    return f"cuda:{index % gpus}" if device in ("auto", "cuda") and gpus > 1 else device


def _worker(plan: Sequence[PlannedRun], data: str | None, overrides: Mapping[str, Any], threads: int, index: int,
            log_file: Path) -> None:
    """One process of `execute_in_parallel`."""
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)  # a file, not the terminal: no progress bars drawn over each other
    os.dup2(fd, 2)
    torch.set_num_threads(threads)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    overrides = {**overrides, "device": worker_device(overrides.get("device", "auto"), index, gpus)}
    try:
        execute_runs(plan, data, overrides, log=lambda line: print(line, flush=True))
    except TrainingStopped as e:
        print(f"resnets reproduce: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_status)
    except ResnetsError as e:
        print(f"resnets reproduce: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def reproduce_cifar10(depths: Sequence[int], *, out: str | Path, data: str | None, plain: Sequence[int] = (),
                      seeds: int = 1, overrides: Mapping[str, Any] | None = None, response_images: int = 500,
                      command: str | None = None, report_only: bool = False, jobs: int = 1,
                      log: Callable[[str], None] = print) -> Path:
    """Train (or finish) every run, then write figures and OUT/report.md; returns the report's path.

    `report_only`: train nothing, report on the runs as they are (e.g. while they train elsewhere).
    `jobs`: runs trained at once, in as many processes, each with its share of the threads.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs: expected a positive number of processes, got {jobs}")
    out = Path(out)
    overrides = dict(overrides or {})
    plan = plan_runs(depths, plain, seeds, out)
    out.mkdir(parents=True, exist_ok=True)
    if not report_only and jobs == 1:
        execute_runs(plan, data, overrides, log=log)
    elif not report_only:
        execute_in_parallel(plan, data, overrides, jobs, out, log=log)
    return write_outputs(out, plan, data, response_images, command)


def write_outputs(out: Path, plan: Sequence[PlannedRun], data: str | None, response_images: int,
                  command: str | None) -> Path:
    """Figures and report from the planned runs' directories (whatever state they are in)."""
    wanted = {p.run_dir.resolve() for p in plan}
    runs = [r for r in find_runs(out) if r.run_dir.resolve() in wanted]
    figures: dict[str, str] = {}
    # One curve and one Fig. 7 model per network, as the paper draws them: its lowest seed with a curve.
    drawn = [r for r in runs if r.train or r.val]
    first_seed = [r for r in drawn if r.seed == min(x.seed for x in drawn if x.model == r.model)]
    if first_seed:
        plot_fig6([r for r in first_seed if not r.residual], [r for r in first_seed if r.residual], out / "fig6.png")
        figures["Fig. 6: plain networks (left) and ResNets (right), one seed each"] = "fig6.png"
    responses_note = None
    fig7 = [r for r in runs if r.finished and r.seed == min(x.seed for x in runs if x.model == r.model and x.finished)]
    if fig7 and response_images > 0 and data is not None:
        from .responses import measure_checkpoints

        first = fig7[0].config.get("data", {})
        results = measure_checkpoints([r.run_dir / "model.safetensors" for r in fig7], data, response_images,
                                      val_size=int(first.get("val_size", 5000)),
                                      split_seed=int(first.get("split_seed", 0)),
                                      cache_dir=first.get("cache_dir"))
        (out / "responses.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
        plot_responses(results, out / "fig7_responses.png")
        figures["Fig. 7: std of 3x3 layer responses"] = "fig7_responses.png"
        responses_note = responses_markdown(list(zip(fig7, results)), response_images)
    return write_report(out, runs, figures, responses_note, command, models=list(dict.fromkeys(p.model for p in plan)))
