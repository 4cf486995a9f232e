"""ImageNet-style class-folder data sets, decoded with Pillow in DataLoader workers.

Layout: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (the raw ILSVRC
validation folder is flat; sort it into class folders first, e.g. with the usual
``valprep.sh``). Class indices are the sorted folder names of ``train``; ``val`` is
indexed with the *train* classes so the two always agree.

Start-up on 1.28M files: the file index is cached as JSON (one file per split
directory, in ``~/.cache/resnets/index`` or `cache_dir`), keyed by the directory's
real path and validated against the mtimes of every directory that was scanned.
Adding or removing a file or a class changes its parent directory's mtime, so the
index is rebuilt exactly when the listing changed; validating costs ~1000 ``stat``
calls instead of a 1.28M-entry scan.

Samples are held in NumPy byte-string arrays rather than Python lists so that
forked DataLoader workers do not copy them page by page through reference
counting (the classic "DataLoader memory leak" with big Python lists).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnets.data.decode import to_rgb
from resnets.data.scan import entry_kind
from resnets.data.transforms import eval_transform, to_uint8_chw
from resnets.errors import DataError
from resnets.io import atomic_write_text

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolder",
    "compute_mean_image",
    "SkipEmpty",
    "imagenet_datasets",
    "imagenet_loader",
    "load_rgb",
    "scan_image_folder",
    "skip_bad_collate",
]

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif"})
_INDEX_VERSION = 1

# Everything Pillow raises for a file it cannot decode (truncated data, unknown
# format, bad header, decompression-bomb sized images, vanished files).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, MemoryError)


# --------------------------------------------------------------------------- decoding


def load_rgb(path: str | os.PathLike, draft_shorter: int | None = None) -> Image.Image:
    """Decode `path` (any format Pillow sniffs from the content, whatever the extension) to RGB.

    `draft_shorter` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while keeping the
    shorter side >= that value: big photos then decode several times faster and are never
    shown to the network larger anyway. Raises :class:`DataError` naming the file.
    """
    try:
        with Image.open(path) as im:
            if draft_shorter and im.format == "JPEG":
                im.draft(im.mode, (draft_shorter, draft_shorter))
            im.load()
            return to_rgb(im)
    except _DECODE_ERRORS as e:
        raise DataError(f"{os.fspath(path)}: cannot decode image ({type(e).__name__}: {e})") from e


# --------------------------------------------------------------------------- file index


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _scan_class_dir(path: str, rel: str, extensions: frozenset[str], dirs: dict[str, int],
                    above: frozenset[str] = frozenset()) -> list[str]:
    """Image files under `path` (recursively), as paths relative to the class dir, sorted.
    `above`: the real paths of the folders above; a link back to one of them is not followed."""
    dirs[rel] = os.stat(path).st_mtime_ns
    above = above | {os.path.realpath(path)}
    files: list[str] = []
    subdirs: list[tuple[str, str]] = []
    with os.scandir(path) as it:
        for entry in it:
            if _is_hidden(entry.name):
                continue
            kind = entry_kind(entry)
            if kind == "dir" and os.path.realpath(entry.path) not in above:
                subdirs.append((entry.path, entry.name))
            elif kind == "file" and os.path.splitext(entry.name)[1].lower() in extensions:
                files.append(entry.name)
    for sub_path, sub_name in subdirs:
        sub_rel = f"{rel}/{sub_name}"
        files.extend(f"{sub_name}/{f}" for f in _scan_class_dir(sub_path, sub_rel, extensions, dirs, above))
    return sorted(files)


def scan_image_folder(
    root: str | os.PathLike, extensions: Iterable[str] = IMG_EXTENSIONS
) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """Scan a class-folder tree with ``os.scandir``.

    Returns ``(classes, files_per_class, dir_mtimes)``: sorted class-folder names, for each
    the sorted image paths relative to it, and ``{relative dir: st_mtime_ns}`` of every
    directory visited ("" is `root`). Hidden entries (leading ".") are ignored.
    Raises :class:`DataError` for a missing root, no class folders, or an empty class folder.
    """
    root = os.fspath(root)
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not os.path.isdir(root):
        raise DataError(f"{root}: data directory does not exist (expected class folders <root>/<class>/<image>)")
    dirs: dict[str, int] = {"": os.stat(root).st_mtime_ns}
    class_dirs: list[tuple[str, str]] = []
    loose_images = 0
    with os.scandir(root) as it:
        for entry in it:
            if _is_hidden(entry.name):
                continue
            if entry_kind(entry) == "dir":
                class_dirs.append((entry.name, entry.path))
            elif os.path.splitext(entry.name)[1].lower() in exts:
                loose_images += 1
    if not class_dirs:
        hint = (
            f" -- it holds {loose_images} images directly; sort them into one folder per class"
            " (for ILSVRC val, e.g. with valprep.sh)"
            if loose_images
            else ""
        )
        raise DataError(f"{root}: no class folders found (expected <root>/<class>/<image>){hint}")
    class_dirs.sort()
    classes, files = [], []
    for name, path in class_dirs:
        found = _scan_class_dir(path, name, exts, dirs)
        if not found:
            raise DataError(
                f"{path}: class folder has no images (extensions {', '.join(sorted(exts))}, hidden files ignored)"
            )
        classes.append(name)
        files.append(found)
    return classes, files, dirs


def _default_cache_dir() -> Path:
    base = os.environ.get("RESNETS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "resnets")
    return Path(base) / "index"


def _cache_path(cache_dir: Path, root: str, exts: frozenset[str]) -> Path:
    key = hashlib.sha1(f"{root}\0{','.join(sorted(exts))}".encode()).hexdigest()[:16]
    return cache_dir / f"{os.path.basename(root.rstrip(os.sep)) or 'root'}-{key}.json"


def _load_cached_index(path: Path, root: str) -> tuple[list[str], list[list[str]]] | None:
    """The cached (classes, files) if the cache exists and every scanned dir is unchanged."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != _INDEX_VERSION or data.get("root") != root:
            return None
        for rel, mtime in data["dirs"].items():
            if os.stat(os.path.join(root, rel) if rel else root).st_mtime_ns != mtime:
                return None
        return data["classes"], data["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:  # corrupt or unreadable cache: rebuild
        logger.warning("ignoring unreadable image index cache %s (%s)", path, e)
        return None


def _write_cached_index(path: Path, root: str, classes: list[str], files: list[list[str]], dirs: dict[str, int]) -> None:
    text = json.dumps({"version": _INDEX_VERSION, "root": root, "dirs": dirs, "classes": classes, "files": files})
    try:
        atomic_write_text(path, text)  # concurrent ranks never read half a file
    except OSError as e:
        logger.warning("could not write image index cache %s (%s); the tree will be rescanned next time", path, e)


# --------------------------------------------------------------------------- data set


class ImageFolder(torch.utils.data.Dataset):
    """``root/<class>/<image>`` as (image, target) pairs.

    ``image`` is ``transform(pil_rgb_image)`` (a uint8 CHW tensor for our transforms) or, with
    no transform, the full image as a uint8 (3, H, W) tensor.

    Args:
        root: directory holding one folder per class.
        transform: per-sample transform taking a PIL RGB image (see ``resnets.data.transforms``).
        classes: class names defining the indices (pass ``train.classes`` for ``val``, or the
            synsets a network's weights record); folders not in it are an error, classes without
            a folder are allowed. Default: sorted folders.
        classes_described: what `classes` are, for that error.
        skip_bad_images: an undecodable file is logged, counted (:attr:`num_bad_images`, shared
            with workers) and returned as ``(None, target)``; use :func:`skip_bad_collate` to drop
            it. Otherwise it raises :class:`DataError` naming the file.
        cache: read/write the file-index cache.
        cache_dir: where the index cache lives (default ``$RESNETS_CACHE/index`` or
            ``~/.cache/resnets/index``).
        draft: let the JPEG decoder downscale big images to what the transform needs
            (uses the transform's ``decode_hint``, the largest shorter side it produces).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        classes: Sequence[str] | None = None,
        classes_described: str = "training classes",
        skip_bad_images: bool = False,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        extensions: Iterable[str] = IMG_EXTENSIONS,
        draft: bool = True,
    ) -> None:
        self.root = os.path.realpath(os.fspath(root))
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.draft = draft
        exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)

        self.index_from_cache = False
        found: tuple[list[str], list[list[str]]] | None = None
        cache_file = _cache_path(Path(cache_dir) if cache_dir else _default_cache_dir(), self.root, exts)
        if cache:
            found = _load_cached_index(cache_file, self.root)
            self.index_from_cache = found is not None
        if found is None:
            folder_classes, files, dirs = scan_image_folder(self.root, exts)
            if cache:
                _write_cached_index(cache_file, self.root, folder_classes, files, dirs)
        else:
            folder_classes, files = found

        self.classes: list[str] = list(classes) if classes is not None else list(folder_classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in folder_classes if c not in self.class_to_idx]
        if unknown:
            raise DataError(
                f"{self.root}: class folders {unknown[:5]}{'...' if len(unknown) > 5 else ''} are not among the "
                f"{len(self.classes)} {classes_described}"
            )
        paths = [f"{c}/{f}" for c, fs in zip(folder_classes, files) for f in fs]
        targets = [self.class_to_idx[c] for c, fs in zip(folder_classes, files) for _ in fs]
        try:  # ASCII names (all of ImageNet): NumPy encodes 1.28M paths in ~0.2 s
            self._paths = np.array(paths, dtype=np.bytes_)
        except UnicodeEncodeError:
            self._paths = np.array([p.encode("utf-8", "surrogateescape") for p in paths], dtype=np.bytes_)
        self.targets = np.array(targets, dtype=np.int64)
        # A shared-memory counter: workers increment it, the main process reads it. Made in
        # the "spawn" context because such a lock can be handed to fork, forkserver and spawn
        # workers alike (a fork-context lock cannot be pickled into spawned workers).
        self._bad = multiprocessing.get_context("spawn").Value("q", 0)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_bad_images(self) -> int:
        """Undecodable images skipped so far, summed over all DataLoader workers."""
        return int(self._bad.value)

    @property
    def relative_paths(self) -> np.ndarray:
        """Every sample's "class/file" name (bytes), in index order."""
        return self._paths

    def path(self, index: int) -> str:
        """Absolute path of sample `index`."""
        return os.path.join(self.root, self._paths[index].decode("utf-8", "surrogateescape"))

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> ImageFolder:
        """A shallow copy sharing the index (and bad-image counter) with another transform."""
        other = copy.copy(self)
        other.transform = transform
        return other

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path = self.path(index)
        target = int(self.targets[index])
        hint = getattr(self.transform, "decode_hint", None) if self.draft else None
        try:
            img = load_rgb(path, hint)
        except DataError as e:
            if not self.skip_bad_images:
                raise
            with self._bad.get_lock():
                self._bad.value += 1
            logger.warning("skipping bad image %s", e)
            return None, target
        return (self.transform(img) if self.transform is not None else to_uint8_chw(img)), target

    def __repr__(self) -> str:
        return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.classes)} classes, transform={self.transform!r})"


def skip_bad_collate(batch: list[tuple[Any, int]]) -> Any:
    """``default_collate`` without the ``(None, target)`` samples of unreadable images.

    The batch can therefore be smaller than ``batch_size``; if *every* sample was bad it is
    ``None`` and the consumer skips it. (Counting happens in :attr:`ImageFolder.num_bad_images`.)
    """
    good = [s for s in batch if s[0] is not None]
    if not good:
        return None
    return torch.utils.data.default_collate(good)


class SkipEmpty:
    """Re-iterable loader batches without the ``None`` that :func:`skip_bad_collate` makes of a
    batch whose images were all unreadable."""

    def __init__(self, loader: torch.utils.data.DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return (b for b in self.loader if b is not None)


def imagenet_datasets(
    root: str | os.PathLike,
    train_transform: Callable | None,
    val_transform: Callable | None,
    **kwargs: Any,
) -> tuple[ImageFolder, ImageFolder]:
    """``(train, val)`` from ``root/train`` and ``root/val``, val indexed by the train classes.

    `kwargs` go to both :class:`ImageFolder` (skip_bad_images, cache_dir, ...).
    """
    root = os.fspath(root)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise DataError(f"{root}: expected an ImageNet tree with {split}/<class>/<image>, but {split}/ is missing")
    train = ImageFolder(os.path.join(root, "train"), train_transform, **kwargs)
    val = ImageFolder(os.path.join(root, "val"), val_transform, classes=train.classes, **kwargs)
    return train, val


def imagenet_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    num_workers: int = 8,
    drop_last: bool = False,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader with the settings that matter for JPEG decoding throughput.

    Persistent workers (no re-fork of 8+ processes per epoch), prefetching, and
    :func:`skip_bad_collate` (batches may be smaller, or ``None`` when all samples were bad).
    Augmentation randomness comes from the per-worker seeds DataLoader derives from
    `generator` (or the global torch RNG): seed it differently on each DDP rank.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=skip_bad_collate,
        pin_memory=pin_memory,  # the caller's: True when the batches go to a GPU (the run's device, not any GPU)
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=generator,
    )


def compute_mean_image(
    dataset: torch.utils.data.Dataset,
    size: int = 224,
    max_images: int | None = 10_000,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """The per-pixel mean image [21] of center-cropped training images, (3, size, size) in [0, 1].

    Images are viewed like the center eval crop (shorter side ``round(size * 256 / 224)``, center
    `size` crop). With `max_images`, a random subset (fixed by `seed`) spread over all classes is
    averaged -- the mean image is smooth, 10k images pin it down to ~1e-3. Datasets with a
    ``with_transform`` method (our :class:`~resnets.data.imagenet.ImageFolder`) get that view
    applied; other datasets must already yield (3, size, size) images.
    """
    if hasattr(dataset, "with_transform"):
        dataset = dataset.with_transform(eval_transform(round(size * 256 / 224), size))
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError("compute_mean_image got an empty dataset")
    if max_images is not None and max_images < n:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=g)[:max_images].tolist()
        dataset = torch.utils.data.Subset(dataset, idx)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=skip_bad_collate
    )
    total = torch.zeros(3, size, size, dtype=torch.float64)
    count = 0
    for batch in loader:
        if batch is None:
            continue
        images = batch[0]
        if images.shape[1:] != (3, size, size):
            raise ValueError(f"compute_mean_image expects (3, {size}, {size}) images, got {tuple(images.shape[1:])}")
        total += images.to(torch.float64).sum(0)
        count += images.shape[0]
    if count == 0:
        raise DataError("compute_mean_image: every image was unreadable")
    return (total / (count * 255.0)).to(torch.float32)
