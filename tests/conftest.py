"""Fixtures shared across the test tree."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG_ENV = "RESNETS_CIFAR10_JPEG"


def write_tiny_cifar(root: Path, per_class: int = 20, classes: int = 10, seed: int = 0) -> Path:
    """A CIFAR-10-shaped class-folder tree whose classes are learnable (a class colour + noise)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(classes, 3))
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, size=(32, 32, 3))
            img = np.clip(colours[c] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """10 classes x 20 images; use val_size=50 (5 per class)."""
    return write_tiny_cifar(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """The real CIFAR-10 training images (JPEG class folders, as a .tar.gz; see ../shared/data/README.md).

    Set RESNETS_CIFAR10_JPEG to use another copy. Missing data fails the test: the learning
    tests are core tests, never silently skipped.
    """
    path = Path(os.environ.get(CIFAR10_JPEG_ENV, REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"))
    if not path.exists():
        pytest.fail(f"CIFAR-10 JPEG data not found at {path}; set {CIFAR10_JPEG_ENV} to the "
                    "cifar10-jpeg-train.tar.gz archive or its extracted folder")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Decoded-data caches go to one per-session folder, never the user's ~/.cache. Session-scoped,
    so it is in place before module-scoped fixtures (a reference training run) read data too."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETS_CACHE", str(tmp_path_factory.getbasetemp() / "resnets-cache"))
        yield


# Test folders whose models are tiny: one intra-op thread is fastest there, and on a
# loaded 2-core machine two threads make every small op wait for a descheduled OpenMP
# worker (measured: a synthetic detection training step took 5 s with 2 threads under
# load vs 0.12 s with 1).
SINGLE_THREADED_FOLDERS = {"ops", "detection"}


@pytest.fixture(autouse=True)
def _threads_for_tiny_models(request):
    if request.node.path.parent.name not in SINGLE_THREADED_FOLDERS:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
