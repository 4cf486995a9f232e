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


# Nothing the suite runs may touch the user's home: not the decoded-data caches, not
# matplotlib's font cache, not a subprocess. A fixture cannot promise that (module- and
# session-scoped fixtures run before function-scoped ones, and imports at collection
# before any fixture), so the environment is redirected in pytest_configure, before
# collection, for the whole session and every child process.
REAL_HOME = os.path.expanduser("~")
_ISOLATED_ENV = ("HOME", "RESNETS_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "TORCH_HOME")


def pytest_configure(config):
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="resnets-tests-home-"))
    config._resnets_saved_env = {k: os.environ.get(k) for k in _ISOLATED_ENV}
    config._resnets_home = home
    os.environ.update(HOME=str(home), RESNETS_CACHE=str(home / ".cache" / "resnets"),
                      XDG_CACHE_HOME=str(home / ".cache"), XDG_CONFIG_HOME=str(home / ".config"),
                      MPLCONFIGDIR=str(home / ".config" / "matplotlib"), TORCH_HOME=str(home / ".cache" / "torch"))


def pytest_unconfigure(config):
    import shutil

    for key, value in getattr(config, "_resnets_saved_env", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if getattr(config, "_resnets_home", None) is not None:
        shutil.rmtree(config._resnets_home, ignore_errors=True)


@pytest.fixture(scope="session")
def real_home() -> Path:
    """The user's home as it was before the suite redirected HOME (for tests asserting it is untouched)."""
    return Path(REAL_HOME)


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
