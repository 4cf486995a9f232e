"""The progress bar of a run on a terminal: one tick per iteration, images/s, ETA, lr and loss.

Drawn on stderr only when stderr is a terminal; a run whose output goes to a file or a
pipe prints its metrics lines and nothing else.
"""

from __future__ import annotations

import sys
from typing import TextIO

from torch import Tensor
from tqdm import tqdm

# Seconds between redraws. The loss shown is read from the device only at a redraw, so a
# GPU run pays one host sync per MININTERVAL, never one per step.
MININTERVAL = 0.5


class ProgressBar:
    def __init__(self, total_iters: int, start_iter: int, images_per_step: int, stream: TextIO) -> None:
        self.images_per_step = images_per_step
        self.bar = tqdm(total=total_iters, initial=start_iter, unit="it", file=stream, mininterval=MININTERVAL,
                        dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    @classmethod
    def on_terminal(cls, total_iters: int, start_iter: int, images_per_step: int,
                    stream: TextIO | None = None) -> "ProgressBar | None":
        stream = sys.stderr if stream is None else stream
        return cls(total_iters, start_iter, images_per_step, stream) if stream.isatty() else None

    def tick(self, loss: Tensor, lr: float) -> None:
        """One iteration done; `loss` is that iteration's loss, still on the device."""
        # update() returns True exactly when tqdm redraws (at most every MININTERVAL s):
        # only then is the loss copied to the host and the postfix rebuilt.
        if self.bar.update(1):
            rate = self.bar.format_dict.get("rate") or 0.0
            self.bar.set_postfix_str(f"{rate * self.images_per_step:,.0f} img/s, lr {lr:g}, loss {float(loss):.4g}")

    def write(self, text: str) -> None:
        """A line above the bar (the bar is redrawn below it, not overwritten)."""
        self.bar.write(text, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()
