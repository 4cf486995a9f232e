"""VOC XML files the way people label them (labelImg): images/ + annotations/, or side by side,
with class names from the annotations, a seeded validation split, one-line errors, clipping."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnets.detection.data import VOCDetection, seeded_split
from resnets.errors import DataError

REPO = Path(__file__).resolve().parents[2]
RACCOON_ENV = "RESNETS_RACCOON"


def _xml(name: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects)
    return (f'<annotation verified="yes"><folder>images</folder><filename>{name}.jpg</filename>'
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>")


def _labelimg_folder(root: Path, n: int = 10, side_by_side: bool = False) -> Path:
    """``n`` 40x30 photos with a 'zebra' and/or an 'ant' box (labelImg's XML, 1-based corners)."""
    images = root if side_by_side else root / "images"
    annotations = root if side_by_side else root / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 30), (10 * i, 100, 50)).save(images / f"photo-{i}.jpg")
        objects = [("zebra", (3, 4, 20, 25))] + ([("ant", (10, 5, 40, 30))] if i % 2 else [])
        (annotations / f"photo-{i}.xml").write_text(_xml(f"photo-{i}", 40, 30, objects))
    return root


@pytest.mark.parametrize("side_by_side", [False, True])
def test_labelimg_folders_names_from_annotations_and_a_seeded_split(tmp_path, side_by_side):
    root = _labelimg_folder(tmp_path / "set", side_by_side=side_by_side)
    train, val = VOCDetection(root, "train"), VOCDetection(root, "val")
    assert train.layout == ("side-by-side" if side_by_side else "folder")
    assert train.class_names == val.class_names == ["ant", "zebra"]  # sorted, from every annotation
    assert len(val) == 2 and len(train) == 8  # 20% held out
    assert not set(train.ids) & set(val.ids) and len(VOCDetection(root, "trainval")) == 10
    assert VOCDetection(root, "val").ids == val.ids  # deterministic
    assert VOCDetection(root, "val", split_seed=1).ids != val.ids or VOCDetection(root, "val", split_seed=2).ids != val.ids
    img, t = train[0]
    assert img.shape == (3, 30, 40) and img.dtype == torch.uint8
    # 1-based inclusive corners -> continuous; (10, 5, 40, 30) reaches the border, stays inside.
    assert t["boxes"][0].tolist() == [2.0, 3.0, 20.0, 25.0] and t["labels"][0] == 2
    assert train.clipped_boxes == 0
    # The split depends on (seed, id) only, not on which other files are listed.
    ids = [f"photo-{i}" for i in range(10)]
    assert seeded_split(ids[::-1], "val", 0) == seeded_split(ids, "val", 0) == val.ids


def test_given_names_fix_the_labels_and_unknown_classes_are_refused(tmp_path):
    root = _labelimg_folder(tmp_path / "set")
    ds = VOCDetection(root, "trainval", ["zebra", "ant", "okapi"])
    assert ds.class_names == ["zebra", "ant", "okapi"] and ds[1][1]["labels"].tolist() == [1, 2]
    with pytest.raises(DataError, match=r"photo-1\.xml: unknown class 'ant'"):
        VOCDetection(root, "trainval", ["zebra"])


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    root = _labelimg_folder(tmp_path / "set", n=3)
    xml = root / "annotations" / "photo-0.xml"
    good = xml.read_text()
    xml.write_text(good[:-20])
    with pytest.raises(DataError, match=r"cannot parse VOC annotation .*photo-0\.xml"):
        VOCDetection(root, "trainval")
    xml.write_text(good.replace("<xmax>20</xmax>", "<xmax>3</xmax>"))
    with pytest.raises(DataError, match=r"photo-0\.xml: object 'zebra' has xmax <= xmin"):
        VOCDetection(root, "trainval")
    xml.write_text(good.replace("<ymax>25</ymax>", "<ymax>two</ymax>"))
    with pytest.raises(DataError, match=r"photo-0\.xml: object 'zebra' has no valid bndbox"):
        VOCDetection(root, "trainval")
    xml.write_text(good)
    (root / "images" / "photo-2.jpg").unlink()
    with pytest.raises(DataError, match=r"photo-2\.xml: its image is missing"):
        VOCDetection(root, "trainval")
    (root / "images" / "photo-2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*photo-2\.jpg"):
        VOCDetection(root, "trainval")
    with pytest.raises(DataError, match="split 'test'"):
        VOCDetection(root, "test")
    with pytest.raises(DataError, match="holds no VOC annotations"):
        VOCDetection(root / "images", "train")


def test_boxes_outside_are_clipped_and_counted_and_empty_images_are_background(tmp_path):
    root = _labelimg_folder(tmp_path / "set", n=3)
    xml = root / "annotations" / "photo-0.xml"
    xml.write_text(_xml("photo-0", 40, 30, [("zebra", (0, -2, 43, 25))]))  # 1-based 0: one pixel out
    (root / "annotations" / "photo-1.xml").write_text(_xml("photo-1", 40, 30, []))
    ds = VOCDetection(root, "trainval")
    assert ds.clipped_boxes == 1 and "1 boxes reaching outside their image clipped" in ds.describe()
    assert ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 40.0, 25.0]]
    assert ds[1][1]["boxes"].shape == (0, 4) and ds[1][1]["labels"].numel() == 0
    assert "(1 without objects)" in ds.describe()
    xml.write_text(_xml("photo-0", 40, 30, [("zebra", (50, 3, 60, 9))]))
    with pytest.raises(DataError, match=r"photo-0\.xml: object 'zebra' lies outside its 40x30 image"):
        VOCDetection(root, "trainval")


def test_devkit_layout_without_split_files_gets_the_seeded_split(tmp_path):
    root = _labelimg_folder(tmp_path / "set", n=5)
    (root / "images").rename(root / "JPEGImages")
    (root / "annotations").rename(root / "Annotations")
    assert VOCDetection(root, "val").layout == "devkit" and len(VOCDetection(root, "val")) == 1


def test_real_raccoon_photos(tmp_path):
    """A few of the real labelImg photos of ../shared/data/raccoon (RESNETS_RACCOON elsewhere)."""
    src = Path(os.environ.get(RACCOON_ENV, REPO.parent / "shared" / "data" / "raccoon"))
    if not (src / "annotations" / "raccoon-1.xml").is_file():
        pytest.fail(f"raccoon photos not found in {src}; set {RACCOON_ENV} to the raccoon folder")
    for sub in ("images", "annotations"):
        (tmp_path / sub).mkdir()
    for i in (1, 2, 3, 4, 6):
        shutil.copy(src / "images" / f"raccoon-{i}.jpg", tmp_path / "images")
        shutil.copy(src / "annotations" / f"raccoon-{i}.xml", tmp_path / "annotations")
    ds = VOCDetection(tmp_path, "trainval")
    assert ds.class_names == ["raccoon"] and len(ds) == 5
    img, t = ds[0]  # raccoon-1: 650x417, one raccoon at 1-based (81, 88)-(522, 408)
    assert img.shape == (3, 417, 650) and t["boxes"].tolist() == [[80.0, 87.0, 522.0, 408.0]]
    for i in range(5):
        img, t = ds[i]
        b = t["boxes"]
        assert len(b) >= 1 and (b[:, 2] <= img.shape[2]).all() and (b[:, 3] <= img.shape[1]).all()
