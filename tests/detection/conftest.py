"""Run detection tests single-threaded.

The test machine has 2 cores shared with other jobs; with 2 intra-op threads every small
op waits for a descheduled OpenMP worker (measured: a training step of the synthetic test
took 5 s with 2 threads under load vs 0.12 s with 1 thread). The models here are tiny, so
one thread is also the fastest choice on an idle machine.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
