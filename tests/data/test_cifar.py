"""CIFAR-10 loading, splits, per-pixel mean, augmentation and batch iteration."""

from __future__ import annotations

import json

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.data import cifar
from resnets.data.cifar import (
    CifarBatches,
    EvalBatches,
    load_cifar10,
    per_pixel_mean,
    read_cifar10,
    split_indices,
    stratified_subset,
)
from resnets.data.gpu_augment import augment_batch, crop_flip, random_crop_flip_params
from resnets.errors import ConfigError, DataError


# --------------------------------------------------------------------------------------------
# Layouts


def _layouts(cifar_files, cifar_pickle_dir: Path, cifar_targz: Path, cifar_folders: Path, tmp: Path) -> dict[str, Path]:
    folder_tar = cifar_files.make_targz(cifar_folders / "train", tmp / "tree.tar.gz", "data/train")
    return {
        "pickle dir": cifar_pickle_dir,
        "parent of pickle dir": cifar_pickle_dir.parent,
        "official tar.gz": cifar_targz,
        "folder holding tar.gz": cifar_targz.parent,
        "class folders": cifar_folders,
        "tar.gz of class folders (train only)": folder_tar,
    }


def test_every_layout_loads_identical_tensors(
    cifar_files, fake_cifar, cifar_pickle_dir: Path, cifar_targz: Path, cifar_folders: Path, tmp_path: Path
) -> None:
    for name, root in _layouts(cifar_files, cifar_pickle_dir, cifar_targz, cifar_folders, tmp_path).items():
        data = load_cifar10(root, "trainval", cache_dir=tmp_path / "cache")
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64, name
        assert data.images.shape == (60, 3, 32, 32), name
        assert torch.equal(data.images, torch.from_numpy(fake_cifar.train_images)), name
        assert torch.equal(data.labels, torch.from_numpy(fake_cifar.train_labels)), name
        assert data.classes == cifar_files.CLASSES, name
        if "train only" not in name:
            test = load_cifar10(root, "test", cache_dir=tmp_path / "cache")
            assert torch.equal(test.images, torch.from_numpy(fake_cifar.test_images)), name
            assert torch.equal(test.labels, torch.from_numpy(fake_cifar.test_labels)), name
        # The same split comes out of every layout.
        val = load_cifar10(root, "val", val_size=10, split_seed=3, cache_dir=tmp_path / "cache")
        _, val_idx = split_indices(fake_cifar.train_labels, 10, 3)
        assert torch.equal(val.images, torch.from_numpy(fake_cifar.train_images[val_idx])), name


def test_decoding_in_a_process_pool_matches_inline(cifar_folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = [(str(p), None) for p in sorted((cifar_folders / "train").glob("*/*.png"))]
    monkeypatch.setattr(cifar, "_DECODE_CHUNK", 16)  # several chunks, so the pool really splits work
    pooled = cifar.decode_images(items, workers=2)
    inline = cifar.decode_images(items, workers=0)
    assert pooled.shape == (60, 3, 32, 32)
    assert np.array_equal(pooled, inline)


def test_decoded_cache_is_used_and_invalidated(cifar_files, fake_cifar, tmp_path: Path) -> None:
    root = cifar_files.write_class_folders(fake_cifar, tmp_path / "tree")
    cache = tmp_path / "cache"
    first = read_cifar10(root, cache)
    assert "decoded cache" not in first.source
    assert len(list(cache.glob("cifar10-*.npz"))) == 1
    second = read_cifar10(root, cache)
    assert "decoded cache" in second.source
    assert np.array_equal(second.train_images, first.train_images)
    assert np.array_equal(second.test_images, first.test_images)
    assert second.classes == first.classes
    # Changing one file changes the key: the new pixels are decoded, not the stale cache.
    target = sorted((root / "train" / "bird").glob("*.png"))[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    third = read_cifar10(root, cache)
    assert "decoded cache" not in third.source
    assert third.train_images[2 * 6].max() == 0  # first bird image


def test_jpeg_folders_and_hidden_entries(cifar_files, fake_cifar, tmp_path: Path) -> None:
    root = cifar_files.write_class_folders(fake_cifar, tmp_path / "jpeg", with_test=False, ext="jpg")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0junk")
    (root / "train" / ".hidden").mkdir()
    (root / "train" / ".hidden" / "x.jpg").write_bytes(b"junk")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_cifar10(root, "trainval", cache_dir=tmp_path / "cache")
    assert data.classes == cifar_files.CLASSES and data.images.shape == (60, 3, 32, 32)
    assert torch.equal(data.labels, torch.from_numpy(fake_cifar.train_labels))
    # JPEG is lossy; still, it must be the same pictures in the same order.
    error = (data.images.float() - torch.from_numpy(fake_cifar.train_images).float()).abs().mean()
    assert error < 40
    with pytest.raises(DataError, match="no test split") as e:
        load_cifar10(root, "test", cache_dir=tmp_path / "cache")
    assert str(root) in str(e.value)


def test_symlink_loops_in_class_folders_are_skipped_as_predict_skips_them(cifar_files, fake_cifar, tmp_path: Path,
                                                                          capsys) -> None:
    # Issue 26: `train/cat/loop -> loop` made `resnets eval` end in an OSError (ELOOP) traceback.
    root = cifar_files.write_class_folders(fake_cifar, tmp_path / "jpeg", with_test=False, ext="png")
    os.symlink("loop", root / "train" / "cat" / "loop")
    os.symlink("loop.png", root / "train" / "cat" / "loop.png")
    os.symlink("self", root / "train" / "self")  # a class folder that is a loop
    data = load_cifar10(root, "trainval", cache_dir=tmp_path / "cache")
    assert data.classes == cifar_files.CLASSES and data.images.shape == (60, 3, 32, 32)
    from resnets.cli import main

    code = main(["eval", "--model", "cifar_resnet20", "--weights", "cifar10-jpeg", "--data", str(root),
                 "--val-size", "10", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 10


# --------------------------------------------------------------------------------------------
# Bad input: each error names the offending path


def _expect_data_error(root: Path, path_in_message: Path, match: str, cache: Path) -> None:
    with pytest.raises(DataError, match=match) as e:
        read_cifar10(root, cache)
    assert str(path_in_message) in str(e.value)


def test_missing_path_and_unknown_layout(tmp_path: Path) -> None:
    _expect_data_error(tmp_path / "nope", tmp_path / "nope", "no such file", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    _expect_data_error(tmp_path / "empty", tmp_path / "empty", "unknown CIFAR-10 layout", tmp_path / "c")
    (tmp_path / "x.zip").write_bytes(b"PK\3\4 not a tar")
    _expect_data_error(tmp_path / "x.zip", tmp_path / "x.zip", "not a folder or tar", tmp_path / "c")


def test_missing_batch_files(cifar_files, fake_cifar, tmp_path: Path) -> None:
    folder = cifar_files.write_pickle_dir(fake_cifar, tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_3").unlink()
    _expect_data_error(folder, folder, "data_batch_3", tmp_path / "c")
    archive = cifar_files.make_targz(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    _expect_data_error(archive, archive, "data_batch_3", tmp_path / "c")


def test_pickle_without_test_batch_has_no_test_split(cifar_files, fake_cifar, tmp_path: Path) -> None:
    folder = cifar_files.write_pickle_dir(fake_cifar, tmp_path / "b", with_test=False)
    assert len(load_cifar10(folder, "trainval")) == 60
    with pytest.raises(DataError, match="no test split"):
        load_cifar10(folder, "test")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(cifar_files, fake_cifar, tmp_path: Path) -> None:
    folder = cifar_files.write_pickle_dir(fake_cifar, tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle global '(posix|os|nt).system'") as e:
        read_cifar10(folder)
    assert str(folder / "data_batch_2") in str(e.value)
    assert not marker.exists()
    # Also when read straight from an archive.
    archive = cifar_files.make_targz(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    with pytest.raises(DataError, match="system"):
        read_cifar10(archive, tmp_path / "c")
    assert not marker.exists()


def test_garbage_and_wrong_shape_batches(cifar_files, fake_cifar, tmp_path: Path) -> None:
    folder = cifar_files.write_pickle_dir(fake_cifar, tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_1").write_bytes(b"\x80\x04garbage")
    _expect_data_error(folder, folder / "data_batch_1", "not a readable", tmp_path / "c")
    bad = {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(bad))
    _expect_data_error(folder, folder / "data_batch_1", "uint8 of shape", tmp_path / "c")


@pytest.mark.parametrize("problem", ["truncated", "not an image", "wrong size", "empty class", "test classes differ"])
def test_bad_class_folders(cifar_files, fake_cifar, tmp_path: Path, problem: str) -> None:
    root = cifar_files.write_class_folders(fake_cifar, tmp_path / "tree", ext="png")
    victim = sorted((root / "train" / "dog").glob("*.png"))[1]
    if problem == "truncated":
        victim.write_bytes(victim.read_bytes()[:60])
        expected, match = victim, "cannot decode image"
    elif problem == "not an image":
        victim.write_text("hello")
        expected, match = victim, "cannot decode image"
    elif problem == "wrong size":
        Image.new("RGB", (32, 28)).save(victim)
        expected, match = victim, "32x28, expected 32x32"
    elif problem == "empty class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
        expected, match = root, "train/dog has no images"
    else:
        shutil.rmtree(root / "test" / "dog")
        expected, match = root, "test/ classes"
    _expect_data_error(root, expected, match, tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# Split and mean


def test_split_sizes_stratified_deterministic_disjoint() -> None:
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 5000))
    train, val = split_indices(labels, 5000, seed=0)
    assert len(train) == 45000 and len(val) == 5000
    assert np.bincount(labels[val], minlength=10).tolist() == [500] * 10
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.union1d(train, val), np.arange(50000))
    again_train, again_val = split_indices(labels, 5000, seed=0)
    assert np.array_equal(again_val, val) and np.array_equal(again_train, train)
    _, other_val = split_indices(labels, 5000, seed=1)
    assert not np.array_equal(other_val, val)
    _, odd = split_indices(labels, 13, seed=0)
    assert np.bincount(labels[odd], minlength=10).tolist() == [2, 2, 2] + [1] * 7


def test_load_split_and_bad_split_options(fake_cifar, cifar_pickle_dir: Path) -> None:
    train = load_cifar10(cifar_pickle_dir, "train", val_size=10, split_seed=0)
    val = load_cifar10(cifar_pickle_dir, "val", val_size=10, split_seed=0)
    assert len(train) == 50 and len(val) == 10
    assert torch.bincount(val.labels, minlength=10).tolist() == [1] * 10
    together = torch.cat([train.images, val.images]).reshape(60, -1)
    assert torch.unique(together, dim=0).shape[0] == 60  # disjoint and complete
    assert "split=val" in val.source and "split_seed=0" in val.source
    with pytest.raises(ConfigError, match="val_size"):
        load_cifar10(cifar_pickle_dir, "train", val_size=60)
    with pytest.raises(ConfigError, match="split"):
        load_cifar10(cifar_pickle_dir, "validation")  # type: ignore[arg-type]


def test_train_subset_is_stratified_and_inside_the_training_split(fake_cifar, cifar_pickle_dir: Path) -> None:
    train = load_cifar10(cifar_pickle_dir, "train", val_size=10, split_seed=0)
    subset = stratified_subset(train, 20, seed=0)
    assert len(subset) == 20
    assert torch.bincount(subset.labels, minlength=10).tolist() == [2] * 10
    rows = train.images.reshape(len(train), -1)
    for image, label in zip(subset.images.reshape(20, -1), subset.labels):
        match = (rows == image).all(1).nonzero().flatten()
        assert len(match) == 1 and train.labels[match[0]] == label  # images keep their own labels
    assert "train_size=20" in subset.source and "split=train" in subset.source
    assert torch.equal(stratified_subset(train, 20, seed=0).images, subset.images)
    assert not torch.equal(stratified_subset(train, 20, seed=1).images, subset.images)
    assert stratified_subset(train, len(train), seed=0) is train
    with pytest.raises(ConfigError, match="data.train_size.*50 images"):
        stratified_subset(train, 51, seed=0)
    with pytest.raises(ConfigError, match="data.train_size"):
        stratified_subset(train, 5, seed=0)


def test_per_pixel_mean() -> None:
    images = torch.randint(0, 256, (9000, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean = per_pixel_mean(images)
    expected = images.numpy().astype(np.float64).mean(axis=0) / 255
    assert mean.dtype == torch.float32 and mean.shape == (3, 32, 32)
    assert np.allclose(mean.numpy(), expected, atol=1e-6)
    assert torch.equal(per_pixel_mean(images.numpy()), mean)


# --------------------------------------------------------------------------------------------
# Augmentation


def _reference(x: torch.Tensor, dy: int, dx: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """Pad with a per-output-position fill, crop, flip: the slow, obvious way, one image."""
    padded = F.pad(x.float(), (4, 4, 4, 4), value=float("nan"))
    crop = padded[:, dy : dy + 32, dx : dx + 32]
    if flip:
        crop = crop.flip(-1)
    return torch.where(crop.isnan(), fill.float(), crop).to(x.dtype)


def test_crop_flip_matches_reference_geometry_and_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    fill = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
    dy, dx, flip = random_crop_flip_params(64, g)
    for pad_value in (0, fill):
        out = crop_flip(x, dy, dx, flip, pad=4, pad_value=pad_value)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        for i in range(64):
            f = fill if isinstance(pad_value, torch.Tensor) else torch.zeros(3, 32, 32)
            assert torch.equal(out[i], _reference(x[i], int(dy[i]), int(dx[i]), bool(flip[i]), f)), i
    # Shift down-right by 4: the top rows and left columns are padding, at the output positions.
    out = crop_flip(x[:1], torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), pad_value=fill)
    assert torch.equal(out[0, :, :4, :], fill[:, :4, :]) and torch.equal(out[0, :, :, :4], fill[:, :, :4])
    assert torch.equal(out[0, :, 4:, 4:], x[0, :, :28, :28])
    # A [0,1] float mean image is converted to uint8 pixel values.
    out = crop_flip(x[:1], torch.tensor([8]), torch.tensor([4]), torch.tensor([False]), pad_value=torch.full((3, 32, 32), 0.5))
    assert (out[0, :, 28:, :] == 128).all()


def test_augment_batch_outputs_are_shifted_crops_and_flips_are_fair() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, 32, 32)
    out = augment_batch(x, g)  # float input, pad 0: the paper's "pad the mean-subtracted image"
    flips, offsets = 0, set()
    for i in range(len(x)):
        matches = [
            (dy, dx, flip)
            for dy in range(9) for dx in range(9) for flip in (False, True)
            if torch.equal(out[i], _reference(x[i], dy, dx, flip, torch.zeros(3, 32, 32)))
        ]
        assert len(matches) == 1, i  # random Gaussian images: exactly one crop fits
        flips += matches[0][2]
        offsets.add(matches[0][:2])
    assert 70 <= flips <= 130  # ~Binomial(200, 1/2)
    assert len(offsets) > 50  # the 81 offsets are all in use
    dy, dx, flip = random_crop_flip_params(20000, torch.Generator().manual_seed(2))
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))


# --------------------------------------------------------------------------------------------
# Batches


def _data(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % 10


def test_batches_cover_each_epoch_and_match_labels() -> None:
    images, labels = _data(100)
    batches = CifarBatches(images, labels, batch_size=16, seed=0, device="cpu", augment=False)
    assert batches.steps_per_epoch == 6  # drop_last: 100 // 16
    assert [batches.epoch_of(s) for s in (0, 5, 6, 13)] == [0, 0, 1, 2]
    seen = []
    for step in range(6):
        x, y = batches.batch_at(step)
        assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        idx = [int(torch.nonzero((images == xi).flatten(1).all(1))[0]) for xi in x]
        assert torch.equal(labels[idx], y)
        seen += idx
    assert len(set(seen)) == 96  # no repeats within an epoch
    next_epoch = torch.cat([batches.batch_at(s)[1] for s in range(6, 12)])
    assert not torch.equal(next_epoch, torch.cat([batches.batch_at(s)[1] for s in range(6)]))


def test_batches_depend_only_on_seed_and_step_and_default_padding_is_the_mean() -> None:
    images, labels = _data(100)
    run = CifarBatches(images, labels, batch_size=16, seed=7, device="cpu")
    reference = [run.batch_at(step) for step in range(15)]  # two and a half epochs, in order
    resumed = CifarBatches(images, labels, batch_size=16, seed=7, device="cpu")  # a resumed run starts mid-way
    for step in (14, 9, 10, 3):
        x, y = resumed.batch_at(step)
        assert torch.equal(x, reference[step][0]) and torch.equal(y, reference[step][1]), step
    other_seed = CifarBatches(images, labels, batch_size=16, seed=8, device="cpu")
    assert not torch.equal(other_seed.batch_at(0)[0], reference[0][0])
    expected_fill = (per_pixel_mean(images) * 255).round().to(torch.uint8)
    out = crop_flip(images[:1], torch.tensor([0]), torch.tensor([0]), torch.tensor([False]), pad_value=run.pad_value)
    assert torch.equal(out[0, :, :4], expected_fill[:, :4])


def test_eval_batches_fixed_order() -> None:
    images, labels = _data(50)
    batches = EvalBatches(images, labels, batch_size=16, device="cpu")
    assert len(batches) == 4
    got = list(batches)
    assert [len(y) for _, y in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([x for x, _ in got]), images)
    assert torch.equal(torch.cat([y for _, y in got]), labels)
    assert torch.equal(torch.cat([x for x, _ in batches]), images)  # re-iterable


def test_16bit_png_in_a_class_folder_decodes_like_imagenet(tmp_path: Path, fake_cifar, cifar_files) -> None:
    """Issue 12: a 16-bit PNG was clipped to 255 (99.5% white pixels); both loaders now decode one way."""
    from resnets.data.imagenet import load_rgb

    root = cifar_files.write_class_folders(fake_cifar, tmp_path / "folders", with_test=False)
    first = sorted((root / "train" / cifar_files.CLASSES[0]).iterdir())[0]
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) % 251
    Image.fromarray(gray * 257).save(first)  # mode I;16: 0..65535
    with Image.open(first) as im:
        assert im.mode.startswith("I;16")
    data = read_cifar10(root, cache_dir=tmp_path / "cache")
    decoded = data.train_images[0]  # class 0, first file
    assert (decoded == gray.astype(np.uint8)).all()  # scaled back, not clipped to white
    assert (decoded.transpose(1, 2, 0) == np.asarray(load_rgb(first))).all()
