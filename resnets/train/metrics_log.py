"""What a run writes as it goes: metrics.jsonl, progress on the terminal, TensorBoard."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

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


class MetricsLog:
    """Appends one JSON object per line; only the main process writes. Training and detection
    runs both log through it.

    On resume at iteration s, lines past s are dropped first, so the file reads exactly as
    an uninterrupted run's would.
    """

    def __init__(self, run_dir: Path, enabled: bool, total_iters: int, resume_iteration: int | None,
                 tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.path = run_dir / METRICS
        self.enabled = enabled
        self.bar = None
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
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_iters, initial=resume_iteration or 0, unit="it", dynamic_ncols=True)
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
        if self.bar is not None:
            if row.get("event") == "train":
                self.bar.n = row["iteration"]
                shown = (("loss", row.get("train_loss", row.get("loss")), "{:.3f}"), ("err", row.get("train_error"), "{:.2f}%"),
                         ("lr", row.get("lr"), "{:g}"))  # detection rows have no training error
                self.bar.set_postfix_str(" ".join(f"{k}={f.format(v)}" for k, v, f in shown if v is not None))
            else:
                self.bar.write(f"[{row.get('event')}] {text}")
        else:
            print(f"[{row.get('event')}] {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
