"""What a run writes as it goes: metrics.jsonl, its lines on the terminal, TensorBoard."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Callable

from ..io import atomic_write

METRICS = "metrics.jsonl"


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """One line at the end of RUN_DIR/metrics.jsonl."""
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything before it is good
    return rows


# What a weights file keeps of its run's log (`compact_log`), so that the curves, the speed and
# the warm-up survive the run directory: on these machines a run directory can be lost with the
# machine, and the shipped weights are all that remains (issue 25). About 20 bytes per logged
# window: ~15 KB for a 64k-iteration run logged every 100 iterations.
# In the order training writes the events of one iteration.
_COMPACT = {"warmup_end": ("iteration", "train_error"), "train": ("iteration", "train_error", "images_per_s"),
            "val": ("iteration", "val_error")}


def compact_log(rows: list[dict[str, Any]]) -> dict[str, list[list[Any]]]:
    """A run's metrics.jsonl rows as lists of values per event: training windows (iteration, training
    error, images/s), validation points (iteration, error), the warm-up's end (iteration, error)."""
    compact: dict[str, list[list[Any]]] = {event: [] for event in _COMPACT}
    for row in rows:
        fields = _COMPACT.get(row.get("event", ""))
        if fields is not None and all(row.get(f) is not None for f in fields[:2]):
            compact[row["event"]].append([row.get(f) for f in fields])
    return compact


def expand_log(compact: dict[str, list[list[Any]]]) -> list[dict[str, Any]]:
    """`compact_log`'s rows back as metrics.jsonl rows, in iteration order."""
    order = {event: i for i, event in enumerate(_COMPACT)}
    rows = [{"event": event, **dict(zip(_COMPACT[event], values))}
            for event in _COMPACT for values in compact.get(event, [])]
    return sorted(rows, key=lambda r: (r["iteration"], order[r["event"]]))


class MetricsLog:
    """Appends one JSON object per line; only the main process writes. Training and detection
    runs both log through it.

    On resume at iteration s, lines past s are dropped first, so the file reads exactly as
    an uninterrupted run's would.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_iteration: int | None, tensorboard: bool,
                 echo: Callable[[str], None] = functools.partial(print, flush=True)) -> None:
        self.run_dir = run_dir
        self.path = run_dir / METRICS
        self.enabled = enabled
        self.echo = echo  # a progress bar's write() keeps the lines above the bar
        self.tb = None
        if not enabled:
            return
        if resume_iteration is None:
            self.path.write_text("")
        else:
            kept = [r for r in read_metrics(run_dir)
                    if r.get("event") != "summary" and r.get("iteration", 0) <= resume_iteration]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_metrics(self.run_dir, row)
        if self.tb is not None and "iteration" in row:
            for key, value in row.items():
                if key not in ("iteration", "event") and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(f"{row['event']}/{key}", value, row["iteration"])
        self.show(row)

    def show(self, row: dict[str, Any]) -> None:
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "event")
        self.echo(f"[{row.get('event')}] {text}")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
