"""Small generated CIFAR-10 files in every supported layout (no network, no real data).

All layouts hold the same images in the same order (sorted by class, then by index),
so loaders can be compared tensor for tensor. Class-folder trees use PNG, which is
lossless, so they decode to exactly the arrays in the pickles.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_PER_CLASS = 6  # 60 training images -> 5 batches of 12
TEST_PER_CLASS = 2


@dataclass
class FakeCifar:
    train_images: np.ndarray  # uint8 (N, 3, 32, 32)
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_fake_cifar(seed: int = 0) -> FakeCifar:
    rng = np.random.default_rng(seed)

    def images(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        # Random pixels plus a class-dependent offset, so images differ between classes.
        x = rng.integers(0, 200, (len(labels), 3, 32, 32)) + 5 * labels[:, None, None, None]
        return x.astype(np.uint8), labels

    train_images, train_labels = images(TRAIN_PER_CLASS)
    test_images, test_labels = images(TEST_PER_CLASS)
    return FakeCifar(train_images, train_labels, test_images, test_labels)


def batch_bytes(images: np.ndarray, labels: np.ndarray, protocol: int = 4) -> bytes:
    """A batch in the official format: bytes keys, b'data' uint8 (N, 3072), b'labels' list of ints."""
    batch = {
        b"batch_label": b"generated batch",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=protocol)


def _op_str(b: bytes) -> bytes:
    """Python 2 str opcodes (SHORT_BINSTRING / BINSTRING), which Python 3 never writes."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _op_int(v: int) -> bytes:
    return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v) if v < 65536 else b"J" + struct.pack("<i", v)


def py2_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch byte for byte as Python 2 cPickle (protocol 2) and numpy 1.x wrote the official files:
    str objects as BINSTRING and the array rebuilt by numpy.core.multiarray._reconstruct."""
    data = images.reshape(len(images), -1)
    s, i = _op_str, _op_int
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
        + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
        + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        + b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + i(0) + b"tb"  # dtype state
        + b"\x89" + s(data.tobytes()) + b"tb"  # array state: (1, shape, dtype, fortran=False, raw bytes)
    )
    label_list = b"](" + b"".join(i(int(v)) for v in labels) + b"e"
    return (
        b"\x80\x02}(" + s(b"batch_label") + s(b"training batch, python 2 style")
        + s(b"labels") + label_list + s(b"data") + array + b"u."
    )


def write_pickle_dir(fake: FakeCifar, folder: Path, with_test: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate(zip(np.split(fake.train_images, 5), np.split(fake.train_labels, 5)), start=1):
        # Batch 1 exactly as the official (Python 2) files; the others as Python 3 and numpy 2
        # would write them with protocols 3, 4 and 5 (5 rebuilds arrays with _frombuffer).
        data = py2_batch_bytes(x, y) if i == 1 else batch_bytes(x, y, protocol=3 + i % 3)
        (folder / f"data_batch_{i}").write_bytes(data)
    if with_test:
        (folder / "test_batch").write_bytes(batch_bytes(fake.test_images, fake.test_labels))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 12, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


def write_class_folders(fake: FakeCifar, root: Path, with_test: bool = True, ext: str = "png") -> Path:
    splits = [("train", fake.train_images, fake.train_labels)]
    if with_test:
        splits.append(("test", fake.test_images, fake.test_labels))
    for split, images, labels in splits:
        for i, (x, y) in enumerate(zip(images, labels)):
            folder = root / split / CLASSES[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.transpose(1, 2, 0)).save(folder / f"{i:04d}.{ext}")
    return root


def make_targz(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return archive


@pytest.fixture(scope="session")
def fake_cifar() -> FakeCifar:
    return make_fake_cifar()


@pytest.fixture(scope="session")
def cifar_pickle_dir(fake_cifar: FakeCifar, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tmp/cifar-10-batches-py with data_batch_1..5, test_batch, batches.meta."""
    return write_pickle_dir(fake_cifar, tmp_path_factory.mktemp("pickle") / "cifar-10-batches-py")


@pytest.fixture(scope="session")
def cifar_targz(cifar_pickle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cifar-10-python.tar.gz laid out like the official archive."""
    return make_targz(cifar_pickle_dir, tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz", "cifar-10-batches-py")


@pytest.fixture(scope="session")
def cifar_folders(fake_cifar: FakeCifar, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/train/<class>/NNNN.png and ROOT/test/<class>/NNNN.png."""
    return write_class_folders(fake_cifar, tmp_path_factory.mktemp("folders"))


@pytest.fixture(scope="session")
def cifar_files():
    """The writers above, for tests that build their own (often broken) variants.

    Handed out as a fixture because test modules cannot import conftest reliably
    (tests/ folders are not packages, and every folder may have a conftest).
    """
    from types import SimpleNamespace

    return SimpleNamespace(
        CLASSES=CLASSES,
        make_fake_cifar=make_fake_cifar,
        batch_bytes=batch_bytes,
        write_pickle_dir=write_pickle_dir,
        write_class_folders=write_class_folders,
        make_targz=make_targz,
    )
