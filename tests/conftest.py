"""Fixtures shared across the test tree."""

import http.server
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG_ENV = "RESNETS_CIFAR10_JPEG"
PEER_WEIGHTS_ENV = "RESNETS_PEER_WEIGHTS"
KERAS_TFJS_ENV = "RESNETS_KERAS_TFJS"
IMAGENET_SAMPLE_ENV = "RESNETS_IMAGENET_SAMPLE"


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


@pytest.fixture(scope="session")
def peer_weights() -> Path:
    """The folder of real published checkpoints, exactly as their authors published them
    (../shared/peer-weights, see its README; RESNETS_PEER_WEIGHTS to use another copy)."""
    path = Path(os.environ.get(PEER_WEIGHTS_ENV, REPO.parent / "shared" / "peer-weights"))
    if not (path / "akamaster-resnet20-12fca82f.th").is_file():
        pytest.fail(f"published checkpoints not found in {path}; set {PEER_WEIGHTS_ENV} to the peer-weights folder")
    return path


@pytest.fixture(scope="session")
def keras_tfjs() -> Path:
    """Keras Applications' ImageNet ResNet-50 in the TF.js layers format, as published
    (../shared/weights/keras-resnet50-tfjs, see its README; RESNETS_KERAS_TFJS for another copy)."""
    path = Path(os.environ.get(KERAS_TFJS_ENV, REPO.parent / "shared" / "weights" / "keras-resnet50-tfjs"))
    if not (path / "model.json").is_file():
        pytest.fail(f"the Keras ResNet-50 (TF.js) was not found in {path}; set {KERAS_TFJS_ENV} to its folder")
    return path


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """500 real ImageNet photos named <synset>_<name>.JPEG, with synsets.txt
    (../shared/data/imagenet-sample, see its README; RESNETS_IMAGENET_SAMPLE for another copy)."""
    path = Path(os.environ.get(IMAGENET_SAMPLE_ENV, REPO.parent / "shared" / "data" / "imagenet-sample"))
    if not (path / "synsets.txt").is_file():
        pytest.fail(f"the ImageNet sample was not found in {path}; set {IMAGENET_SAMPLE_ENV} to its folder")
    return path


@pytest.fixture(scope="session")
def cifar_jpeg_images(cifar10_jpeg: Path, tmp_path_factory) -> Path:
    """4 real CIFAR-10 JPEG training images per class, as files ROOT/train/<class>/<name>.jpg
    (a class-folder data set `--data ROOT` reads)."""
    root = tmp_path_factory.mktemp("cifar_jpeg_images")
    per_class: dict[str, int] = {}
    if cifar10_jpeg.is_dir():
        for folder in sorted((cifar10_jpeg / "train").iterdir()):
            (root / "train" / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:4]:
                shutil.copy(image, root / "train" / folder.name / image.name)
        return root
    with tarfile.open(cifar10_jpeg) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or per_class.get(parts[1], 0) >= 4:
                continue
            per_class[parts[1]] = per_class.get(parts[1], 0) + 1
            (root / "train" / parts[1]).mkdir(parents=True, exist_ok=True)
            (root / "train" / parts[1] / parts[2]).write_bytes(tar.extractfile(member).read())
    return root


class LocalServer:
    """Serves a folder over HTTP on 127.0.0.1 (an ephemeral port), recording each request path."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    """`serve(folder) -> LocalServer`; every server started is shut down after the test."""
    servers: list[LocalServer] = []

    def start(folder: Path) -> LocalServer:
        servers.append(LocalServer(folder))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def serve_pretrained(serve, monkeypatch, tmp_path):
    """`serve_pretrained(name, tag, file, sha256=None, md5=None) -> LocalServer`: the registry
    entry (name, tag) then downloads `file` from a local server (with `sha256` or `md5` as its
    published hash, if given), into a cache folder of this test's own."""
    import dataclasses

    from resnets.models.pretrained import PRETRAINED

    folder = tmp_path / "published"
    folder.mkdir()
    server = serve(folder)
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))

    def start(name: str, tag: str, file: Path, sha256: str | None = None, md5: str | None = None) -> LocalServer:
        entry = PRETRAINED[(name, tag)]
        shutil.copy(file, folder / entry.filename)
        monkeypatch.setitem(PRETRAINED, (name, tag), dataclasses.replace(
            entry, url=f"{server.url}/{entry.filename}", sha256=sha256 or entry.sha256, md5=md5 or entry.md5))
        return server

    return start


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
