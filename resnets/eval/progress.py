"""Progress of a long evaluation (10-crop, multi-scale: an ImageNet pass takes hours on a CPU).

On a terminal, a tqdm bar on stderr (images, images/s, time left). Otherwise (a log file, a
pipe) one line every `LINE_EVERY` seconds, so a log shows the evaluation is alive and how far
it is; an evaluation shorter than that prints nothing. Under torch.distributed only the first
process reports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO

import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

LINE_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def with_progress(batches: Iterable[tuple[Tensor, Tensor]], total: int, what: str,
                  stream: TextIO | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """`batches` as they are, counting their images (the labels' length) once each is evaluated."""
    stream = sys.stderr if stream is None else stream
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        yield from batches
        return
    if stream.isatty():
        with tqdm(total=total, unit="img", desc=what, file=stream, dynamic_ncols=True, leave=False) as bar:
            for x, y in batches:
                yield x, y
                bar.update(len(y))
        return
    start = last = time.monotonic()
    done = 0
    for x, y in batches:
        yield x, y
        done += len(y)
        now = time.monotonic()
        if now - last >= LINE_EVERY and done < total:
            rate = done / max(now - start, 1e-9)
            left = (total - done) / rate
            print(f"{what}: {done:,}/{total:,} images ({100 * done / total:.0f}%), {rate:.1f} images/s, "
                  f"about {left / 60:.0f} min left", file=stream, flush=True)
            last = now
