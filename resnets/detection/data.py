"""Detection data sets: PASCAL VOC (XML), COCO (JSON) and a synthetic shapes set.

Every data set yields ``(image, target)``: ``image`` a uint8 ``Tensor[3, H, W]``
and ``target`` a dict with ``boxes`` float32 ``[N, 4]`` (x1, y1, x2, y2 in pixels,
continuous coordinates), ``labels`` int64 ``[N]`` in 1..num_classes (0 is
background), ``difficult`` bool ``[N]`` (VOC "difficult" / COCO "iscrowd": ignored
by evaluation) and ``image_id`` int. ``class_names`` lists classes 1..num_classes.
"""

from __future__ import annotations

import hashlib
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torch.utils.data import Dataset

from resnets.errors import DataError

__all__ = [
    "VOC_CLASSES",
    "VOCDetection",
    "seeded_split",
    "COCODetection",
    "SyntheticShapes",
    "SHAPE_CLASSES",
    "collate",
    "hflip",
    "load_image",
    "write_voc",
    "write_coco",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

Target = dict[str, Tensor | int]


def load_image(path: str | Path) -> Tensor:
    """An RGB image file as uint8 ``[3, H, W]``; unreadable files raise DataError."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _target(boxes: list[list[float]], labels: list[int], difficult: list[bool], image_id: int) -> Target:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "image_id": image_id,
    }


def collate(batch: list[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Keep images of different sizes as a list (the model resizes and pads)."""
    return [b[0] for b in batch], [b[1] for b in batch]


def hflip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Horizontal flip of an image and its boxes (Faster R-CNN's only augmentation)."""
    w = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


# Image files an annotation may point to, tried in this order for the XML's own stem.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")
# Fraction of a folder without split files that becomes its seeded validation split.
VAL_FRACTION = 0.2


def _voc_layout(root: Path) -> tuple[str, Path, Path]:
    """(layout, annotation folder, image folder) of a folder of VOC XML files."""
    if (root / "Annotations").is_dir() or (root / "JPEGImages").is_dir():
        for sub in ("Annotations", "JPEGImages"):
            if not (root / sub).is_dir():
                raise DataError(f"VOC root {root} has no {sub}/ folder (expected Annotations/, JPEGImages/, ImageSets/Main/)")
        return "devkit", root / "Annotations", root / "JPEGImages"
    if (root / "annotations").is_dir() and (root / "images").is_dir():
        return "folder", root / "annotations", root / "images"
    if any(root.glob("*.xml")):
        return "side-by-side", root, root
    raise DataError(f"{root} holds no VOC annotations: expected Annotations/ + JPEGImages/ (VOC devkit), "
                    "annotations/ + images/, or .xml files beside their images")


def seeded_split(ids: list[str], split: str, seed: int, val_fraction: float = VAL_FRACTION) -> list[str]:
    """The ``train``/``val`` part of ``ids`` (``trainval``/``all``: every id) for a folder without
    split files. An id's side depends only on (seed, id) ranks, not on the listing order."""
    if split in ("trainval", "all"):
        return sorted(ids)
    if split not in ("train", "val"):
        raise DataError(f"split {split!r}: a folder without split files has the seeded splits train, val "
                        "and trainval (every image)")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_val = max(1, round(len(ids) * val_fraction)) if len(ids) > 1 else 0
    part = set(ranked[:n_val] if split == "val" else ranked[n_val:])
    return [i for i in sorted(ids) if i in part]


def _voc_objects(path: Path) -> list[tuple[str, bool, list[float]]]:
    """(name, difficult, [xmin, ymin, xmax, ymax] as written) of each object in a VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"cannot parse VOC annotation {path}: {e}") from None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: object {name!r} has no valid bndbox xmin/ymin/xmax/ymax") from None
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(f"{path}: object {name!r} has xmax <= xmin or ymax <= ymin "
                            f"(xmin {box[0]:g}, ymin {box[1]:g}, xmax {box[2]:g}, ymax {box[3]:g})")
        objects.append((name, (obj.findtext("difficult") or "0").strip() == "1", box))
    return objects


def _image_for(xml: Path, image_dir: Path) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        if (image_dir / (xml.stem + suffix)).is_file():
            return image_dir / (xml.stem + suffix)
    try:  # labelImg names the image in <filename>
        filename = (ET.parse(xml).getroot().findtext("filename") or "").strip()
    except ET.ParseError:
        filename = ""
    if filename and (image_dir / Path(filename).name).is_file():
        return image_dir / Path(filename).name
    raise DataError(f"{xml}: its image is missing (looked for {xml.stem}.jpg/.png/... in {image_dir})")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class VOCDetection(Dataset):
    """One PASCAL VOC XML file per image, as VOC and labelImg write them, in three layouts:

    - VOC devkit: ``root/Annotations/*.xml``, ``root/JPEGImages/*.jpg`` and
      ``root/ImageSets/Main/<image_set>.txt`` (``root`` is e.g. VOCdevkit/VOC2007);
    - ``root/annotations/*.xml`` + ``root/images/*`` (e.g. ../shared/data/raccoon);
    - the XML files beside their images in ``root``.

    Without split files the image sets are a seeded split (:func:`seeded_split`: ``train``,
    ``val``, ``trainval``). ``class_names=None`` takes the sorted names found in all the
    folder's annotations (for PASCAL VOC, its usual 20-class order, which is alphabetical).
    VOC boxes are 1-based inclusive pixel indices; they become continuous coordinates
    ``(xmin - 1, ymin - 1, xmax, ymax)``, and boxes reaching outside their image are clipped
    to it (counted in ``clipped_boxes``). An image without objects is a background image.
    """

    def __init__(self, root: str | Path, image_set: str = "trainval", class_names: tuple[str, ...] | list[str] | None = None,
                 keep_difficult: bool = True, split_seed: int = 0) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"VOC data folder {self.root} does not exist")
        self.layout, ann_dir, self.image_dir = _voc_layout(self.root)
        split = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
        every = sorted(p.stem for p in ann_dir.glob("*.xml"))
        if self.layout == "devkit" and (self.root / "ImageSets" / "Main").is_dir():
            if not split.is_file():
                raise DataError(f"VOC split file {split} does not exist (image_set={image_set!r})")
            self.ids = [line.split()[0] for line in split.read_text().splitlines() if line.strip()]
        else:
            self.ids = seeded_split(every, image_set, split_seed)
        objects = {i: _voc_objects(ann_dir / f"{i}.xml") for i in (every if class_names is None else self.ids)}
        self.class_names = list(class_names) if class_names is not None else sorted(
            {name for objs in objects.values() for name, _, _ in objs})
        self._index = {n: i + 1 for i, n in enumerate(self.class_names)}
        self.keep_difficult = keep_difficult
        self.clipped_boxes = 0
        self.images = [_image_for(ann_dir / f"{i}.xml", self.image_dir) for i in self.ids]
        self.targets = [self._target(ann_dir / f"{i}.xml", objects[i], self.images[n], n) for n, i in enumerate(self.ids)]

    def _target(self, path: Path, objects: list[tuple[str, bool, list[float]]], image: Path, n: int) -> Target:
        width, height = _image_size(image)
        boxes, labels, difficult = [], [], []
        for name, diff, (x1, y1, x2, y2) in objects:
            if name not in self._index:
                raise DataError(f"{path}: unknown class {name!r}; expected one of {self.class_names}")
            if diff and not self.keep_difficult:
                continue
            box = [min(max(x1 - 1, 0.0), width), min(max(y1 - 1, 0.0), height), min(x2, width), min(y2, height)]
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DataError(f"{path}: object {name!r} lies outside its {width}x{height} image {image}")
            self.clipped_boxes += box != [x1 - 1, y1 - 1, x2, y2]
            boxes.append(box)
            labels.append(self._index[name])
            difficult.append(diff)
        return _target(boxes, labels, difficult, n)

    def describe(self) -> str:
        """One line for the log: images, background images, objects, classes, clipped boxes."""
        objects = sum(len(t["labels"]) for t in self.targets)  # type: ignore[arg-type]
        background = sum(len(t["labels"]) == 0 for t in self.targets)  # type: ignore[arg-type]
        classes = len(self.class_names)
        names = ", ".join(self.class_names[:6]) + (", ..." if classes > 6 else "")
        return (f"{self.root} ({self.layout} layout): {len(self)} images ({background} without objects), "
                f"{objects} objects of {classes} class{'es' if classes != 1 else ''} ({names}); "
                f"{self.clipped_boxes} boxes reaching outside their image clipped to it")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        return load_image(self.images[i]), {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.targets[i].items()}


class COCODetection(Dataset):
    """COCO: an ``instances_*.json`` annotation file and its image folder.

    Category ids are mapped to contiguous labels 1..C in increasing id order
    (``label_to_cat_id`` maps back for evaluation); ``[x, y, w, h]`` boxes become
    ``(x, y, x + w, y + h)``; crowd regions are marked ``difficult`` (ignored).
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path, skip_empty: bool = False) -> None:
        from pycocotools.coco import COCO  # the `detection` extra

        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise DataError(f"COCO annotation file {self.annotation_file} does not exist")
        if not self.image_dir.is_dir():
            raise DataError(f"COCO image folder {self.image_dir} does not exist")
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(self.annotation_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
            raise DataError(f"{self.annotation_file} is not a valid COCO annotation file: {e!r}") from None
        cats = sorted(self.coco.getCatIds())
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cats)}
        self._cat_to_label = {c: i for i, c in self.label_to_cat_id.items()}
        self.class_names = [self.coco.cats[c]["name"] for c in cats]
        ids = sorted(self.coco.getImgIds())
        if skip_empty:
            ids = [i for i in ids if self.coco.getAnnIds(imgIds=i)]
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        boxes, labels, crowd = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            if w <= 0 or h <= 0:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self._cat_to_label[ann["category_id"]])
            crowd.append(bool(ann.get("iscrowd", 0)))
        return load_image(self.image_dir / info["file_name"]), _target(boxes, labels, crowd, image_id)


# ----------------------------------------------------------------- synthetic
SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
# Distinct base colours per class (RGB); each instance gets some jitter.
_SHAPE_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230))


class SyntheticShapes(Dataset):
    """Deterministic synthetic detection set for tests and smoke runs.

    Image ``i`` depends only on ``(seed, i)``: a noisy, smoothly shaded background
    with 1..``max_objects`` shapes (rectangle / ellipse / triangle, one class each,
    distinct jittered colours) whose exact bounding boxes are the targets.
    """

    def __init__(self, num_images: int, image_size: tuple[int, int] = (128, 160), num_classes: int = 3,
                 max_objects: int = 3, min_object: int = 20, max_object: int = 64, seed: int = 0) -> None:
        if not 1 <= num_classes <= len(SHAPE_CLASSES):
            raise DataError(f"SyntheticShapes supports 1..{len(SHAPE_CLASSES)} classes, got {num_classes}")
        self.num_images = num_images
        self.image_size = image_size
        self.num_classes = num_classes
        self.class_names = list(SHAPE_CLASSES[:num_classes])
        self.max_objects = max_objects
        self.min_object, self.max_object = min_object, max_object
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def sample(self, i: int) -> tuple[Image.Image, list[list[float]], list[int]]:
        rng = random.Random(self.seed * 1_000_003 + i)
        h, w = self.image_size
        nrng = np.random.default_rng(self.seed * 1_000_003 + i)
        # Background: a random colour gradient plus pixel noise (texture).
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = nrng.uniform(60, 190, size=3)
        slope = nrng.uniform(-0.4, 0.4, size=(3, 2))
        bg = base[:, None, None] + slope[:, :1, None] * yy + slope[:, 1:, None] * xx
        bg = bg + nrng.normal(0, 18, size=(3, h, w))
        img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8).transpose(1, 2, 0))
        draw = ImageDraw.Draw(img)
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(rng.randint(1, self.max_objects)):
            cls = rng.randrange(self.num_classes)
            bw = rng.randint(self.min_object, min(self.max_object, w - 2))
            bh = rng.randint(self.min_object, min(self.max_object, h - 2))
            x0, y0 = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            x1, y1 = x0 + bw - 1, y0 + bh - 1  # PIL draws inclusive coordinates
            colour = tuple(int(np.clip(c + rng.randint(-25, 25), 0, 255)) for c in _SHAPE_COLOURS[cls])
            if cls == 0:
                draw.rectangle([x0, y0, x1, y1], fill=colour)
            elif cls == 1:
                draw.ellipse([x0, y0, x1, y1], fill=colour)
            else:
                draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=colour)
            boxes.append([float(x0), float(y0), float(x1 + 1), float(y1 + 1)])
            labels.append(cls + 1)
        return img, boxes, labels

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        if not 0 <= i < self.num_images:
            raise IndexError(i)
        img, boxes, labels = self.sample(i)
        image = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
        return image, _target(boxes, labels, [False] * len(boxes), i)


def write_voc(dataset: SyntheticShapes, root: str | Path, image_set: str = "trainval") -> Path:
    """Write a synthetic set in PASCAL VOC layout (for tests and demos)."""
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(len(dataset)):
        img, boxes, labels = dataset.sample(i)
        name = f"{image_set}_{i:06d}"
        ids.append(name)
        img.save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        objs = "".join(
            f"<object><name>{dataset.class_names[l - 1]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{int(b[0]) + 1}</xmin><ymin>{int(b[1]) + 1}</ymin><xmax>{int(b[2])}</xmax><ymax>{int(b[3])}</ymax>"
            f"</bndbox></object>"
            for b, l in zip(boxes, labels)
        )
        xml = (f"<annotation><filename>{name}.jpg</filename><size><width>{img.width}</width>"
               f"<height>{img.height}</height><depth>3</depth></size>{objs}</annotation>")
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    split = root / "ImageSets" / "Main" / f"{image_set}.txt"
    split.write_text("\n".join(ids) + "\n")
    return root


def write_coco(dataset: SyntheticShapes, image_dir: str | Path, annotation_file: str | Path) -> Path:
    """Write a synthetic set as COCO JSON + images (category ids start at 1 with gaps, as COCO's do)."""
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    cat_ids = [2 * (i + 1) for i in range(dataset.num_classes)]  # non-contiguous on purpose
    images, anns = [], []
    for i in range(len(dataset)):
        img, boxes, labels = dataset.sample(i)
        name = f"{i:06d}.png"
        img.save(image_dir / name)
        images.append({"id": 100 + i, "file_name": name, "width": img.width, "height": img.height})
        for b, l in zip(boxes, labels):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat_ids[l - 1],
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(cat_ids, dataset.class_names)]
    Path(annotation_file).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return Path(annotation_file)
