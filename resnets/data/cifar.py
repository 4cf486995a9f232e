"""CIFAR-10 for the experiments of Sec. 4.2: loading, the 45k/5k split, per-pixel mean, batches.

Accepted layouts for `root` (detected in this order):

1. The official python-pickle folder `cifar-10-batches-py` (data_batch_1..5, optional
   test_batch and batches.meta), or a folder that contains it.
2. The official archive `cifar-10-python.tar.gz` (read directly, nothing is extracted),
   or a folder that contains it (what `download_cifar10` leaves behind).
3. A class-folder tree `root/train/<class>/*.jpg|png` with optional `root/test/<class>/...`,
   as a folder or as a tar(.gz) archive of that tree. Classes are the sorted folder names;
   within a class, files are in sorted name order. Names starting with '.' are ignored, as
   are files without an image extension.

Images are decoded once, in a process pool, into uint8 arrays (N, 3, 32, 32). For layouts 2
and 3 the decoded arrays are cached as an uncompressed .npz in `cache_dir` (default
`$RESNETS_CACHE` or `~/.cache/resnets`), keyed by the files' names, sizes and modification
times (or the archive's), so the second load only reads one file. Layout 1 needs no cache:
unpickling it is as fast as reading the cache.

Validation split (Sec. 4.2: "45k/5k train/val split"): stratified, `val_size / 10` images
of each class, chosen by a permutation of that class's images drawn from
`numpy.random.default_rng(split_seed)`; `split="train"` is the rest, `"trainval"` all 50k
training images, `"test"` the official test set (if the data has one).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import multiprocessing
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from resnets.data.decode import to_rgb
from resnets.data.download import ARCHIVE_NAME, BATCHES_DIR
from resnets.data.gpu_augment import as_pad_dtype, crop_flip
from resnets.data.safe_pickle import load_pickle, load_pickle_file
from resnets.data.scan import entry_kind
from resnets.errors import ConfigError, DataError
from resnets.io import atomic_write

Split = Literal["train", "val", "test", "trainval"]
SPLITS = ("train", "val", "test", "trainval")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CACHE_VERSION = 2  # 2: images decode through data.decode.to_rgb (16-bit PNGs scaled, not clipped)
_DECODE_CHUNK = 1024  # images per pool task: large enough to amortise the inter-process transfer


@dataclass
class CifarArrays:
    """Decoded images of one split: uint8 (N, 3, 32, 32), int64 labels (N,), class names, provenance."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class CifarData:
    """Everything a CIFAR-10 source holds: the training images and, if present, the test images."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    classes: list[str]
    source: str


# --------------------------------------------------------------------------------------------
# Public entry points


def load_cifar10(
    root: str | Path,
    split: Split,
    val_size: int = 5000,
    split_seed: int = 0,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> CifarArrays:
    """Load one split of CIFAR-10 from `root` (any layout in the module docstring).

    `split="train"`/`"val"` are the seeded, stratified 45k/5k split of the training images
    (for `val_size=5000`); `"trainval"` is all training images; `"test"` the official test set.
    `workers`: processes decoding image files (see `decode_images`).
    """
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    data = read_cifar10(root, cache_dir, workers)
    if split == "test":
        if data.test_images is None or data.test_labels is None:
            raise DataError(
                f"{root}: this data has no test split (expected test_batch or a test/<class>/ folder); "
                "use split 'val' (the 45k/5k hold-out of Sec. 4.2) instead"
            )
        images, labels = data.test_images, data.test_labels
    elif split == "trainval":
        images, labels = data.train_images, data.train_labels
    else:
        train_idx, val_idx = split_indices(data.train_labels, val_size, split_seed, len(data.classes))
        idx = train_idx if split == "train" else val_idx
        images, labels = data.train_images[idx], data.train_labels[idx]
    extra = f", val_size={val_size}, split_seed={split_seed}" if split in ("train", "val") else ""
    return CifarArrays(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(data.classes),
        source=f"{data.source} [split={split}{extra}]",
    )


def split_indices(
    labels: np.ndarray, val_size: int, seed: int, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: `val_size` images held out, stratified by class.

    Class c gives `val_size // C` images (plus one for the first `val_size % C` classes),
    the first ones of a permutation of its images drawn from `default_rng(seed)`.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if not 0 < val_size < len(labels):
        raise ConfigError(f"val_size: expected 1..{len(labels) - 1} (there are {len(labels)} training images), got {val_size}")
    rng = np.random.default_rng(seed)
    val = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        take = val_size // num_classes + (1 if c < val_size % num_classes else 0)
        if take > len(members):
            raise ConfigError(f"val_size: {val_size} needs {take} images of class {c}, which has only {len(members)}")
        val.append(members[rng.permutation(len(members))[:take]])
    val_idx = np.sort(np.concatenate(val))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def stratified_subset(arrays: CifarArrays, size: int, seed: int) -> CifarArrays:
    """`size` images of `arrays`, the same share of every class (`data.train_size`).

    Drawn like the validation hold-out (`split_indices`), from a seed derived from `seed`
    so the subset does not line up with the validation draw.
    """
    if size == len(arrays):
        return arrays
    if not 0 < size < len(arrays):
        raise ConfigError(f"data.train_size: expected 1..{len(arrays)} (the training split has {len(arrays)} "
                          f"images), got {size}")
    if size < len(arrays.classes):
        raise ConfigError(f"data.train_size: {size} images cannot hold all {len(arrays.classes)} classes")
    _, keep = split_indices(arrays.labels.numpy(), size, seed + 1, len(arrays.classes))
    keep_t = torch.from_numpy(keep)
    # load_cifar10's source ends in "[split=...]"; the subset adds its size inside the brackets.
    return CifarArrays(images=arrays.images[keep_t], labels=arrays.labels[keep_t], classes=arrays.classes,
                       source=f"{arrays.source.removesuffix(']')}, train_size={size}]")


def per_pixel_mean(images: np.ndarray | Tensor) -> Tensor:
    """The mean image (3, 32, 32) in [0, 1], float32, of uint8 images (N, 3, 32, 32).

    Sec. 4.2 subtracts it from every input; compute it on the training images only.
    Summed exactly in int64, chunk by chunk, so no float copy of the data set is made.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"per_pixel_mean expects non-empty uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(images.shape[1:], dtype=torch.int64, device=images.device)
    for start in range(0, len(images), 8192):
        total += images[start : start + 8192].sum(dim=0, dtype=torch.int64)
    return (total.double() / (len(images) * 255.0)).float().cpu()


def default_cache_dir() -> Path:
    """`$RESNETS_CACHE`, else `~/.cache/resnets`."""
    return Path(os.environ.get("RESNETS_CACHE") or Path.home() / ".cache" / "resnets")


def read_cifar10(root: str | Path, cache_dir: str | Path | None = None, workers: int | None = None) -> CifarData:
    """Read all of a CIFAR-10 source (train and optional test) from any supported layout."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder (expected a CIFAR-10 folder or archive)")
    if root.is_dir():
        for candidate in (root, root / BATCHES_DIR):
            if _is_pickle_dir(candidate):
                return _read_pickle_dir(candidate)
        if (root / ARCHIVE_NAME).is_file():
            root = root / ARCHIVE_NAME
        elif (root / "train").is_dir():
            return _cached(root, _folder_fingerprint(root), cache_dir, lambda: _read_class_folders(root, workers))
        else:
            raise DataError(
                f"{root}: unknown CIFAR-10 layout; expected {BATCHES_DIR}/ (data_batch_1..5, test_batch), "
                f"{ARCHIVE_NAME}, or class folders train/<class>/*.jpg|png"
            )
    if not tarfile.is_tarfile(root):
        raise DataError(f"{root}: not a folder or tar archive; expected {ARCHIVE_NAME} or a tar.gz of train/<class>/ folders")
    stat = root.stat()
    fingerprint = f"archive\0{root.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return _cached(root, fingerprint, cache_dir, lambda: _read_archive(root, workers))


# --------------------------------------------------------------------------------------------
# Layout 1: python pickle batches


def _is_pickle_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in (*TRAIN_BATCHES, "test_batch", "batches.meta"))


def _read_pickle_dir(path: Path) -> CifarData:
    missing = [name for name in TRAIN_BATCHES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path}: missing CIFAR-10 batch files {', '.join(missing)} (expected data_batch_1..5)")
    train = [_parse_batch(load_pickle_file(path / name), str(path / name)) for name in TRAIN_BATCHES]
    test = _parse_batch(load_pickle_file(path / "test_batch"), str(path / "test_batch")) if (path / "test_batch").is_file() else None
    meta = load_pickle_file(path / "batches.meta") if (path / "batches.meta").is_file() else None
    return _assemble(train, test, meta, f"python batches {path}", str(path / "batches.meta"))


def _get(d: dict, key: str):
    """CIFAR dicts have bytes keys (pickled by Python 2); accept str keys too."""
    return d[key.encode()] if key.encode() in d else d[key]


def _parse_batch(obj: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data, labels = np.asarray(_get(obj, "data")), np.asarray(_get(obj, "labels"))  # type: ignore[arg-type]
    except (KeyError, TypeError):
        raise DataError(f"{name}: expected a dict with keys b'data' and b'labels'") from None
    n = IMAGE_SIZE * IMAGE_SIZE * 3
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n:
        raise DataError(f"{name}: b'data' must be uint8 of shape (N, {n}), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 plane.
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels.astype(np.int64)


def _assemble(
    train: list[tuple[np.ndarray, np.ndarray]],
    test: tuple[np.ndarray, np.ndarray] | None,
    meta: object,
    source: str,
    meta_name: str,
) -> CifarData:
    classes = list(CIFAR10_CLASSES)
    if meta is not None:
        try:
            classes = [c.decode() if isinstance(c, bytes) else str(c) for c in _get(meta, "label_names")]  # type: ignore[arg-type]
        except (KeyError, TypeError, UnicodeDecodeError):
            raise DataError(f"{meta_name}: expected a dict with key b'label_names' (a list of class names)") from None
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    for labels, what in ((train_labels, "training"), (None if test is None else test[1], "test")):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{source}: {what} labels must lie in 0..{len(classes) - 1}")
    return CifarData(
        train_images, train_labels, None if test is None else test[0], None if test is None else test[1], classes, source
    )


# --------------------------------------------------------------------------------------------
# Layouts 2 and 3: archives and class folders


def _read_archive(path: Path, workers: int | None) -> CifarData:
    """Read the official python archive, or a tar of train/<class>/ (and test/<class>/) images."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and not _hidden(PurePosixPath(m.name).parts)]
            by_base = {PurePosixPath(m.name).name: m for m in members if PurePosixPath(m.name).parent.name == BATCHES_DIR}
            if by_base:
                return _read_pickle_members(path, tar, by_base)
            # Class-folder tree: .../<split>/<class>/<file>, streamed in archive order.
            files: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
            for m in members:
                parts = PurePosixPath(m.name).parts
                if len(parts) >= 3 and parts[-3] in files and parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                    f = tar.extractfile(m)
                    assert f is not None
                    files[parts[-3]].setdefault(parts[-2], []).append((f"{path}:{m.name}", f.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: not a readable tar archive ({e})") from None
    if not files["train"]:
        raise DataError(
            f"{path}: unknown CIFAR-10 archive layout; expected {BATCHES_DIR}/data_batch_1..5 "
            "or train/<class>/*.jpg|png members"
        )
    listing = {split: {c: sorted(items) for c, items in classes.items()} for split, classes in files.items()}
    return _decode_class_tree(str(path), listing, f"class-folder archive {path}", workers)


def _read_pickle_members(path: Path, tar: tarfile.TarFile, by_base: dict[str, tarfile.TarInfo]) -> CifarData:
    def load(name: str) -> object:
        f = tar.extractfile(by_base[name])
        assert f is not None
        return load_pickle(io.BytesIO(f.read()), f"{path}:{by_base[name].name}")

    missing = [name for name in TRAIN_BATCHES if name not in by_base]
    if missing:
        raise DataError(f"{path}: archive lacks CIFAR-10 batch files {', '.join(missing)}")
    train = [_parse_batch(load(name), f"{path}:{name}") for name in TRAIN_BATCHES]
    test = _parse_batch(load("test_batch"), f"{path}:test_batch") if "test_batch" in by_base else None
    meta = load("batches.meta") if "batches.meta" in by_base else None
    return _assemble(train, test, meta, f"python archive {path}", f"{path}:batches.meta")


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") and p not in (".", "..") for p in parts)


def _list_class_folders(split_dir: Path) -> dict[str, list[tuple[str, None]]]:
    """{class: [(file path, None), ...]} for the non-hidden class folders of `split_dir`."""
    out: dict[str, list[tuple[str, None]]] = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith(".") or entry_kind(entry) != "dir":
            continue
        files = sorted(
            f.path for f in os.scandir(entry.path)
            if not f.name.startswith(".") and f.name.lower().endswith(IMAGE_EXTENSIONS) and entry_kind(f) == "file"
        )
        out[entry.name] = [(f, None) for f in files]
    return out


def _read_class_folders(root: Path, workers: int | None) -> CifarData:
    listing = {"train": _list_class_folders(root / "train")}
    if (root / "test").is_dir():
        listing["test"] = _list_class_folders(root / "test")
    return _decode_class_tree(str(root), listing, f"class folders {root}", workers)


def _folder_fingerprint(root: Path) -> str:
    """Names, sizes and mtimes of every file under root/train and root/test (cache key)."""
    lines = [f"folder\0{root.resolve()}"]
    for split in ("train", "test"):
        if (root / split).is_dir():
            for cls, files in _list_class_folders(root / split).items():
                for path, _ in files:
                    st = os.stat(path)
                    lines.append(f"{split}/{cls}/{os.path.basename(path)}\0{st.st_size}\0{st.st_mtime_ns}")
    return "\n".join(lines)


def _decode_class_tree(
    root: str, listing: dict[str, dict[str, list[tuple[str, bytes | None]]]], source: str, workers: int | None
) -> CifarData:
    train = listing["train"]
    if not train:
        raise DataError(f"{root}: no class folders in train/ (expected train/<class>/*.jpg|png)")
    classes = sorted(train)
    test = listing.get("test") or None
    if test is not None and sorted(test) != classes:
        raise DataError(f"{root}: test/ classes {sorted(test)} differ from train/ classes {classes}")
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, tree in (("train", train), ("test", test)):
        if tree is None:
            continue
        items, labels = [], []
        for label, cls in enumerate(classes):
            if not tree[cls]:
                raise DataError(f"{root}: class folder {split}/{cls} has no images (expected *.jpg|png files)")
            items += tree[cls]
            labels += [label] * len(tree[cls])
        splits[split] = (decode_images(items, workers), np.asarray(labels, dtype=np.int64))
    t = splits.get("test")
    return CifarData(*splits["train"], None if t is None else t[0], None if t is None else t[1], classes, source)


def _decode_chunk(items: list[tuple[str, bytes | None]]) -> tuple[np.ndarray | None, str | None]:
    """Decode (name, bytes-or-None-to-read-the-file) items to uint8 (n, 32, 32, 3); or an error message."""
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, (name, data) in enumerate(items):
        try:
            with Image.open(io.BytesIO(data) if data is not None else name) as im:
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    return None, f"{name}: image is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
                out[i] = np.asarray(to_rgb(im))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            return None, f"{name}: cannot decode image, truncated or not an image ({type(e).__name__}: {e})"
    return out, None


def decode_images(items: list[tuple[str, bytes | None]], workers: int | None = None) -> np.ndarray:
    """Decode images to uint8 (N, 3, 32, 32), in a process pool when there are many.

    `workers=None` picks min(cpu count, 8) processes when there are more than 4096 images
    and decodes inline otherwise (starting processes costs more than it saves there).
    """
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(items) > 4096 else 0
    chunks = [items[i : i + _DECODE_CHUNK] for i in range(0, len(items), _DECODE_CHUNK)]
    if workers <= 0 or len(chunks) <= 1:
        results = [_decode_chunk(chunk) for chunk in chunks]
    else:
        # fork where available: the workers need only PIL and numpy, and spawned workers
        # would each re-import torch (seconds) before decoding anything.
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(pool.map(_decode_chunk, chunks))
    for _, error in results:
        if error is not None:
            raise DataError(error)
    arrays = [array for array, _ in results if array is not None]
    if not arrays:
        return np.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate(arrays).transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------
# Decoded-array cache


def _cached(root: Path, fingerprint: str, cache_dir: str | Path | None, read) -> CifarData:
    """Return the cached decode of `root` if its fingerprint matches, else `read()` and cache it."""
    key = hashlib.sha256(f"v{_CACHE_VERSION}\n{fingerprint}".encode()).hexdigest()[:24]
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"cifar10-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                has_test = bool(z["has_test"])
                return CifarData(
                    z["train_images"], z["train_labels"],
                    z["test_images"] if has_test else None, z["test_labels"] if has_test else None,
                    [str(c) for c in z["classes"]], f"{z['source']} (decoded cache {path})",
                )
        except Exception as e:  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"{path}: ignoring unreadable CIFAR-10 cache ({e})", stacklevel=2)
    data = read()
    empty = np.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(
                f, train_images=data.train_images, train_labels=data.train_labels,
                test_images=data.test_images if data.test_images is not None else empty,
                test_labels=data.test_labels if data.test_labels is not None else np.empty(0, np.int64),
                has_test=np.array(data.test_images is not None), classes=np.array(data.classes),
                source=np.array(data.source),
            )

    try:
        atomic_write(path, write)  # concurrent loaders never see a half-written cache
    except OSError as e:
        warnings.warn(f"{path}: could not write the decoded CIFAR-10 cache ({e}); the next load decodes again", stacklevel=2)
    return data


# --------------------------------------------------------------------------------------------
# Batches


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


class CifarBatches:
    """Training batches on `device`: shuffled each epoch, augmented (Sec. 4.2), exactly resumable.

    The whole uint8 data set is moved to `device` once. An epoch is `len(images) // batch_size`
    steps (drop_last: every step sees exactly `batch_size` images, which keeps the BN batch
    statistics and the "mini-batch size of 128" of Sec. 4.2 constant; the dropped remainder
    differs per epoch since the order does). Step s belongs to epoch `s // steps_per_epoch`.
    The order and the crop/flip parameters of epoch e are drawn on the CPU from
    `numpy.random.default_rng([seed, e])`, so batch s depends only on (seed, s): it is the
    same after resuming at any step, and the same on every device.

    Default padding is the per-pixel mean of `images` (zeros after mean subtraction, as in
    the paper; see `resnets.data.gpu_augment`); pass `pad_value=0` for black padding.
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray,
        batch_size: int,
        seed: int,
        device: str | torch.device,
        augment: bool = True,
        pad_value: float | Tensor | None = None,
    ) -> None:
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        if batch_size < 1 or batch_size > len(images):
            raise ConfigError(f"batch_size: expected 1..{len(images)} (the number of training images), got {batch_size}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        pad_value = per_pixel_mean(images) if pad_value is None else pad_value
        # Converted and moved once, not on every step.
        self.pad_value = as_pad_dtype(pad_value, self.images).to(self.device) if isinstance(pad_value, Tensor) else pad_value
        self.steps_per_epoch = len(images) // batch_size
        self._epoch = -1
        self._plan: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def epoch_of(self, step: int) -> int:
        """The epoch that step `step` (0-based) belongs to."""
        return step // self.steps_per_epoch

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(order, dy, dx, flip) for one epoch, on the device; cached for the current epoch."""
        if epoch != self._epoch:
            rng = _epoch_rng(self.seed, epoch)
            n = len(self.labels)
            order = rng.permutation(n)
            dy, dx = rng.integers(0, 9, n), rng.integers(0, 9, n)
            flip = rng.integers(0, 2, n).astype(bool)
            self._plan = tuple(torch.from_numpy(a).to(self.device) for a in (order, dy, dx, flip))  # type: ignore[assignment]
            self._epoch = epoch
        assert self._plan is not None
        return self._plan

    def batch_at(self, step: int) -> tuple[Tensor, Tensor]:
        """The (uint8 images (B,3,32,32), int64 labels (B,)) of global step `step`, on the device."""
        order, dy, dx, flip = self._epoch_plan(self.epoch_of(step))
        sl = slice((step % self.steps_per_epoch) * self.batch_size, (step % self.steps_per_epoch + 1) * self.batch_size)
        idx = order[sl]
        x = self.images[idx]
        if self.augment:
            x = crop_flip(x, dy[sl], dx[sl], flip[sl], pad=4, pad_value=self.pad_value)
        return x, self.labels[idx]


class EvalBatches:
    """Fixed-order, unaugmented batches on `device` (the last one may be smaller); re-iterable."""

    def __init__(self, images: Tensor | np.ndarray, labels: Tensor | np.ndarray, batch_size: int, device: str | torch.device) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size: expected a positive integer, got {batch_size}")
        self.images = torch.as_tensor(images).to(device)
        self.labels = torch.as_tensor(labels).to(device, torch.int64)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield self.images[start : start + self.batch_size], self.labels[start : start + self.batch_size]
