"""ImageNet class-folder data set: decoding edge cases, bad files, hidden entries, index cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import imagenet
from resnets.data.imagenet import ImageFolder, imagenet_datasets, load_rgb, skip_bad_collate
from resnets.data.transforms import eval_transform
from resnets.errors import DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never write index caches into the real home directory.
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))


def _rgb(h: int = 20, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tree(root: Path, classes: dict[str, int], ext: str = "png") -> Path:
    for ci, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_rgb(seed=10 * ci + i)).save(root / name / f"{name}_{i}.{ext}")
    return root


# ------------------------------------------------------------------- modes -> RGB


def test_grayscale_cmyk_rgba_palette_16bit_become_rgb(tmp_path: Path) -> None:
    rgb = _rgb()
    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.jpg")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    Image.fromarray((gray.astype(np.uint16) * 257)).save(tmp_path / "g16.png")  # mode I;16
    Image.fromarray(rgb).convert("1").save(tmp_path / "bw.bmp")

    for name in ["gray.jpg", "cmyk.jpg", "rgba.png", "pal.png", "g16.png", "bw.bmp"]:
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == (24, 20), name

    # Grayscale replicates into three equal channels.
    g = np.asarray(load_rgb(tmp_path / "gray.jpg")).astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    assert np.abs(g[..., 0] - gray).mean() < 12  # JPEG loss on noise only
    # RGBA drops alpha, keeps colour exactly (PNG is lossless).
    assert (np.asarray(load_rgb(tmp_path / "rgba.png")) == rgb).all()
    # 16-bit is scaled down, not clipped at 255 (Pillow's plain convert would clip).
    assert (np.asarray(load_rgb(tmp_path / "g16.png"))[..., 0] == gray).all()
    # CMYK JPEG round-trips to roughly the original colours.
    assert np.abs(np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int) - rgb).mean() < 12
    # Palette: colours come from the palette.
    expected = np.asarray(pal.convert("RGB"))
    assert (np.asarray(load_rgb(tmp_path / "pal.png")) == expected).all()


def test_png_named_jpeg_decodes_by_content(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "x.JPEG", format="PNG")
    assert (np.asarray(load_rgb(tmp_path / "x.JPEG")) == rgb).all()


def test_jpeg_draft_keeps_shorter_side_at_least_hint(tmp_path: Path) -> None:
    Image.fromarray(_rgb(300, 400)).resize((1600, 1200)).save(tmp_path / "big.jpg")
    im = load_rgb(tmp_path / "big.jpg", draft_shorter=256)
    assert min(im.size) >= 256 and im.size == (400, 300)  # 1/4 scale is the smallest >= 256
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1200)


# ------------------------------------------------------------------- bad files


def _truncated_jpeg(path: Path) -> None:
    full = path.with_suffix(".full")
    Image.fromarray(_rgb(64, 64)).save(full, format="JPEG")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_file_raises_data_error_naming_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "train", {"a": 2, "b": 2})
    bad = root / "b" / "broken.jpg"
    _truncated_jpeg(bad)
    (root / "a" / "notanimage.png").write_bytes(b"hello")
    ds = ImageFolder(root, eval_transform(16, 12))
    paths = [ds.path(i) for i in range(len(ds))]
    for name in (bad, root / "a" / "notanimage.png"):
        with pytest.raises(DataError, match=str(name.name)):
            ds[paths.index(os.path.realpath(name))]


def test_skip_bad_images_logs_counts_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _tree(tmp_path / "train", {"a": 3, "b": 3})
    _truncated_jpeg(root / "a" / "z_broken.jpg")
    (root / "b" / "z_empty.jpg").write_bytes(b"")
    ds = ImageFolder(root, eval_transform(16, 12), skip_bad_images=True)
    assert len(ds) == 8
    with caplog.at_level(logging.WARNING, logger="resnets.data.imagenet"):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=skip_bad_collate)
        batches = [b for b in loader if b is not None]
    assert sum(len(b[1]) for b in batches) == 6
    assert all(b[0].shape[1:] == (3, 12, 12) and b[0].dtype == torch.uint8 for b in batches)
    assert ds.num_bad_images == 2
    assert "z_broken.jpg" in caplog.text and "z_empty.jpg" in caplog.text


def test_skip_bad_images_counted_across_worker_processes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "train", {"a": 2, "b": 2})
    _truncated_jpeg(root / "a" / "z_broken.jpg")
    _truncated_jpeg(root / "b" / "z_broken.jpg")
    ds = ImageFolder(root, eval_transform(16, 12), skip_bad_images=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=skip_bad_collate)
    n = sum(len(b[1]) for b in loader if b is not None)
    assert n == 4 and ds.num_bad_images == 2


def test_all_bad_batch_collates_to_none() -> None:
    assert skip_bad_collate([(None, 0), (None, 1)]) is None
    x, y = skip_bad_collate([(None, 0), (torch.zeros(3, 2, 2, dtype=torch.uint8), 1)])
    assert x.shape == (1, 3, 2, 2) and y.tolist() == [1]


# ------------------------------------------------------------------- layout


def test_layout_targets_hidden_and_extensions(tmp_path: Path) -> None:
    root = _tree(tmp_path / "train", {"n02": 2, "n01": 3})
    Image.fromarray(_rgb()).save(root / "n01" / "upper.JPEG", format="JPEG")
    Image.fromarray(_rgb()).save(root / "n01" / "x.WebP", format="WEBP")
    (root / "n01" / "labels.txt").write_text("not an image")
    _tree(root / ".hidden_class", {"x": 1})
    Image.fromarray(_rgb()).save(root / "n01" / ".hidden.png")
    (root / ".DS_Store").write_bytes(b"junk")
    ds = ImageFolder(root)
    assert ds.classes == ["n01", "n02"]
    assert len(ds) == 7
    assert ds.targets.tolist() == [0] * 5 + [1] * 2
    names = [os.path.basename(ds.path(i)) for i in range(len(ds))]
    assert "upper.JPEG" in names and "x.WebP" in names and not any(n.startswith(".") for n in names)
    img, target = ds[len(ds) - 1]
    assert img.dtype == torch.uint8 and img.shape == (3, 20, 24) and target == 1


def test_empty_class_and_empty_root_raise(tmp_path: Path) -> None:
    root = _tree(tmp_path / "train", {"a": 1})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"b: class folder has no images"):
        ImageFolder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(_rgb()).save(flat / "ILSVRC2012_val_00000001.JPEG", format="JPEG")
    with pytest.raises(DataError, match="sort them into one folder per class"):
        ImageFolder(flat)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_imagenet_val_uses_train_class_indices(tmp_path: Path) -> None:
    _tree(tmp_path / "train", {"n1": 1, "n2": 1, "n3": 1})
    _tree(tmp_path / "val", {"n3": 2})  # a subset of classes
    train, val = imagenet_datasets(tmp_path, None, None)
    assert val.classes == train.classes and val.targets.tolist() == [2, 2]
    _tree(tmp_path / "val", {"n9": 1})
    with pytest.raises(DataError, match="n9"):
        imagenet_datasets(tmp_path, None, None, cache=False)
    with pytest.raises(DataError, match="train/ is missing"):
        imagenet_datasets(tmp_path / "train", None, None)


# ------------------------------------------------------------------- index cache


def test_index_cache_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "train", {"a": 2, "b": 2})
    cache = tmp_path / "idx"
    first = ImageFolder(root, cache_dir=cache)
    assert not first.index_from_cache and len(list(cache.glob("*.json"))) == 1

    # Second start-up: no directory scan at all.
    def no_scan(*a, **k):
        raise AssertionError("rescanned although the cache is valid")

    monkeypatch.setattr(imagenet, "scan_image_folder", no_scan)
    second = ImageFolder(root, cache_dir=cache)
    assert second.index_from_cache and len(second) == 4
    assert [second.path(i) for i in range(4)] == [first.path(i) for i in range(4)]
    monkeypatch.undo()
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))

    def bump(d: Path) -> None:
        # Guard against coarse filesystem timestamps: make sure the mtime moved.
        st = os.stat(d)
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    # A new image in a class folder changes that folder's mtime -> rescan.
    Image.fromarray(_rgb()).save(root / "b" / "new.png")
    bump(root / "b")
    third = ImageFolder(root, cache_dir=cache)
    assert not third.index_from_cache and len(third) == 5
    assert ImageFolder(root, cache_dir=cache).index_from_cache

    # A new class folder changes the root's mtime -> rescan.
    _tree(root, {"c": 1})
    bump(root)
    fourth = ImageFolder(root, cache_dir=cache)
    assert not fourth.index_from_cache and fourth.classes == ["a", "b", "c"]

    # A corrupt cache is ignored, not fatal.
    next(cache.glob("*.json")).write_text("{not json")
    assert len(ImageFolder(root, cache_dir=cache)) == 6


def test_dataloader_workers_decode_and_augment(tmp_path: Path) -> None:
    from resnets.data.transforms import train_transform

    root = _tree(tmp_path / "train", {"a": 4, "b": 4}, ext="jpg")
    ds = ImageFolder(root, train_transform("paper", crop=16, scale_range=(20, 30)))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=skip_bad_collate)
    xs = torch.cat([b[0] for b in loader])
    assert xs.shape == (8, 3, 16, 16) and xs.dtype == torch.uint8


def test_non_ascii_file_names(tmp_path: Path) -> None:
    root = tmp_path / "train"
    (root / "café").mkdir(parents=True)
    Image.fromarray(_rgb()).save(root / "café" / "naïve.png")
    ds = ImageFolder(root, cache_dir=tmp_path / "idx")
    assert ds.path(0).endswith("café/naïve.png") and ds[0][0].shape == (3, 20, 24)
    assert ImageFolder(root, cache_dir=tmp_path / "idx").index_from_cache


def test_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    # Issue 26: a link to itself, to a folder above, or a class folder that is a loop.
    for cls in ("a", "b"):
        (tmp_path / cls / "sub").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "sub" / "x.png")
    os.symlink("loop", tmp_path / "a" / "loop")
    os.symlink("loop.png", tmp_path / "a" / "loop.png")
    os.symlink("..", tmp_path / "b" / "sub" / "up")
    os.symlink("self", tmp_path / "self")
    classes, files, _ = imagenet.scan_image_folder(tmp_path)
    assert classes == ["a", "b"] and files == [["sub/x.png"], ["sub/x.png"]]
