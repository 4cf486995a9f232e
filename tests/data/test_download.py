"""The CIFAR-10 downloader against a local HTTP server, and safe archive extraction."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnets.data.cifar import read_cifar10
from resnets.data.download import download_cifar10, safe_extract
from resnets.errors import DataError


@pytest.fixture
def server(cifar_targz: Path, serve):
    """Serves the generated cifar-10-python.tar.gz from 127.0.0.1 on an ephemeral port."""
    return serve(cifar_targz.parent)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_extract_and_reuse(server, cifar_targz: Path, fake_cifar, tmp_path: Path) -> None:
    url = f"{server.url}/cifar-10-python.tar.gz"
    cache = tmp_path / "cache"
    folder = download_cifar10(cache, url=url, md5=_md5(cifar_targz))
    assert folder == cache / "cifar-10-batches-py"
    assert _md5(cache / "cifar-10-python.tar.gz") == _md5(cifar_targz)
    data = read_cifar10(folder)
    assert np.array_equal(data.train_images, fake_cifar.train_images)
    assert np.array_equal(data.test_labels, fake_cifar.test_labels)
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no temp files
    assert len(server.requests) == 1
    # Second call: everything is there, no request.
    assert download_cifar10(cache, url=url, md5=_md5(cifar_targz)) == folder
    assert len(server.requests) == 1


def test_corrupt_cached_archive_is_fetched_again(server, cifar_targz: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cifar-10-python.tar.gz").write_bytes(b"half a download")
    download_cifar10(cache, url=f"{server.url}/cifar-10-python.tar.gz", md5=_md5(cifar_targz))
    assert _md5(cache / "cifar-10-python.tar.gz") == _md5(cifar_targz)
    assert len(server.requests) == 1


def test_checksum_mismatch_keeps_nothing(server, tmp_path: Path) -> None:
    url = f"{server.url}/cifar-10-python.tar.gz"
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5") as e:
        download_cifar10(cache, url=url, md5="0" * 32)
    assert url in str(e.value)
    assert list(cache.iterdir()) == []


def test_unreachable_or_missing_url(server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed") as e:
        download_cifar10(tmp_path / "c", url=f"{server.url}/no-such-file.tar.gz")
    assert "no-such-file.tar.gz" in str(e.value)
    assert list((tmp_path / "c").iterdir()) == []


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        good = tarfile.TarInfo("cifar-10-batches-py/readme")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return archive


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


@pytest.mark.parametrize(
    "member, match",
    [
        (tarfile.TarInfo("../evil"), "outside"),
        (tarfile.TarInfo("cifar-10-batches-py/../../evil"), "outside"),
        (tarfile.TarInfo("/evil-absolute"), "outside"),
        (_symlink("cifar-10-batches-py/link", "../../../etc/passwd"), "links to"),
        (_symlink("cifar-10-batches-py/abs", "/etc/passwd"), "links to"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-out", "symlink-absolute"],
)
def test_safe_extract_refuses_escaping_members(tmp_path: Path, member: tarfile.TarInfo, match: str) -> None:
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "out" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(DataError, match=match) as e:
        safe_extract(archive, dest)
    assert str(archive) in str(e.value)
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert list(dest.iterdir()) == []  # checked before anything was written


def test_safe_extract_allows_links_inside(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path, _symlink("cifar-10-batches-py/alias", "readme"))
    safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "cifar-10-batches-py" / "alias").read_bytes() == b"ok"


def test_downloaded_archive_with_traversal_is_refused(tmp_path: Path, serve) -> None:
    folder = tmp_path / "serve"
    folder.mkdir()
    archive = _tar_with(folder, tarfile.TarInfo("../evil"))
    s = serve(folder)
    with pytest.raises(DataError, match="outside"):
        download_cifar10(tmp_path / "cache", url=f"{s.url}/{archive.name}", md5=_md5(archive))
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "cache" / "cifar-10-batches-py").exists()


def test_cli_subcommand(server, cifar_targz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from resnets.cli import main

    assert main(["download-cifar10", "--out", str(tmp_path), "--url", f"{server.url}/cifar-10-python.tar.gz",
                 "--md5", _md5(cifar_targz)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cifar-10-batches-py")
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
