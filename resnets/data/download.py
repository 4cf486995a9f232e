"""Checked, atomic downloads; the official CIFAR-10 python archive, safely extracted.

`fetch(url, dest, algorithm, expected)` is the one download routine (CIFAR-10 here,
pretrained weights in `resnets.models.pretrained`). `download_cifar10(cache_dir)` fetches
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into `cache_dir`, checks its md5
against the published value, and extracts `cifar-10-batches-py/` next to it. Every step is
atomic (temporary name, then `os.replace`), so an interrupted download or extraction never
leaves a half-written file under the final name, and a second call reuses what is there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from resnets.errors import DataError
from resnets.io import atomic_write

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest (`hashlib` algorithm name) of the file at `path`."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: str | Path, algorithm: str, expected: str, progress: bool | None = None) -> None:
    """Stream `url` to a temporary file in dest's folder, check its digest, rename it to `dest`.

    `expected` is the full hex digest or a prefix of it (torch.hub's convention: the first
    8+ hex digits of the sha256 in the file name). `progress`: a tqdm bar on stderr; None
    shows it only on a terminal. Nothing is left under `dest` unless the digest matched
    (`resnets.io.atomic_write`); a failed download names the URL and where the file can be
    placed by hand.
    """
    from tqdm import tqdm

    if len(expected) < 8:
        raise ValueError(f"expected digest {expected!r}: give the full hex digest or at least its first 8 digits")
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest.parent}: cannot create the download folder ({e.strerror or e})") from None

    def download(tmp: str) -> None:
        digest = hashlib.new(algorithm)
        with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=None if progress is None else not progress, leave=False) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
        got = digest.hexdigest()
        if not got.startswith(expected.lower()):
            raise DataError(
                f"{url}: downloaded file has {algorithm} {got}, expected {expected} "
                "(corrupt or different file); nothing was kept"
            )

    try:
        atomic_write(dest, download)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed ({getattr(e, 'reason', None) or e}); to install it by hand, "
                        f"download it elsewhere and place it at {dest} (its {algorithm} starts with {expected[:8]})") from None


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse members that would land outside the destination folder or are not files/folders."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise DataError(f"{archive}: member {member.name!r} would be written outside the extraction folder")
    if member.issym() or member.islnk():
        # A link target is relative to the link's folder (symlink) or to the archive root (hard link).
        base = name.parent if member.issym() else PurePosixPath()
        target = PurePosixPath(member.linkname)
        depth = 0
        for part in (base / target).parts if not target.is_absolute() else ("..",):
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                raise DataError(
                    f"{archive}: member {member.name!r} links to {member.linkname!r}, outside the extraction folder"
                )
    elif not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: member {member.name!r} is a device or pipe, not a file or folder")


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract the tar archive `archive` into `dest`, refusing path traversal and outside links.

    Members are checked before anything is written; the standard library's
    'data' extraction filter (Python >= 3.10.12 / 3.11.4) is applied as well.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - old Python without extraction filters; checked above
                tar.extractall(dest, members=members)
    except DataError:
        raise
    except tarfile.FilterError as e:
        raise DataError(f"{archive}: unsafe archive member refused ({e})") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: not a readable tar archive ({e})") from None


def download_cifar10(cache_dir: str | Path, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Download (if needed) and extract CIFAR-10; return the `cifar-10-batches-py` folder.

    The archive is kept as `cache_dir/cifar-10-python.tar.gz` (re-downloaded if its
    md5 is wrong) and extracted to `cache_dir/cifar-10-batches-py`. Calling this again
    with both present only checks that the batch files exist.
    """
    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cache_dir}: cannot create the download folder ({e.strerror or e})") from None
    extracted = cache_dir / BATCHES_DIR
    if all((extracted / name).is_file() for name in BATCH_FILES):
        return extracted

    archive = cache_dir / ARCHIVE_NAME
    if not archive.is_file() or file_digest(archive, "md5") != md5:
        fetch(url, archive, "md5", md5)

    # Extract into a fresh temporary folder and move the result into place, so a
    # crash mid-extraction leaves no partial cifar-10-batches-py behind.
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".extract-"))
    try:
        safe_extract(archive, tmp)
        missing = [name for name in BATCH_FILES if not (tmp / BATCHES_DIR / name).is_file()]
        if missing:
            raise DataError(f"{archive}: archive lacks {BATCHES_DIR}/{', '.join(missing)}")
        if extracted.exists():
            shutil.rmtree(extracted)
        os.replace(tmp / BATCHES_DIR, extracted)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return extracted
