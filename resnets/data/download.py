"""Download and safely extract the official CIFAR-10 python archive.

`download_cifar10(cache_dir)` fetches https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
into `cache_dir`, checks its md5 against the published value, and extracts
`cifar-10-batches-py/` next to it. Every step is atomic (temporary name, then
`os.replace`), so an interrupted download or extraction never leaves a
half-written file under the final name, and a second call reuses what is there.
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

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
BATCH_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

_CHUNK = 1 << 20


def md5sum(path: str | Path) -> str:
    """Hex md5 of the file at `path`."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Stream `url` to a temporary file in dest's folder, check md5, rename to `dest`."""
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=dest.name + ".", suffix=".part", delete=False)
    try:
        digest = hashlib.md5()
        with tmp, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                tmp.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(
                f"{url}: downloaded file has md5 {digest.hexdigest()}, expected {md5} "
                "(corrupt or different file); nothing was kept"
            )
        os.replace(tmp.name, dest)
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{url}: download failed ({getattr(e, 'reason', None) or e})") from None
    finally:
        if os.path.exists(tmp.name):
            os.unlink(tmp.name)


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
    if not archive.is_file() or md5sum(archive) != md5:
        _fetch(url, archive, md5)

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
