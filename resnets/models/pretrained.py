"""Named pretrained weights: `create_model(name, weights=TAG)`.

`PRETRAINED` is a plain table, keyed by (model name, tag); importing this module reads,
downloads and registers nothing. Each entry says where the file comes from and how to
check it, which network it fits (with the shortcut option and the bottleneck stride
placement it was trained with), the normalisation and resizing its authors evaluated
with, its class names and the error its authors report.

Downloads go to `$RESNETS_CACHE/weights` (default `~/.cache/resnets/weights`) through
`resnets.data.download.fetch` (atomic, progress bar, digest checked before the file is
used; a cached file is checked and never fetched again). Tags:

* `torchvision-imagenet1k-v1`, `torchvision-imagenet1k-v2`: torchvision's ImageNet
  ResNet-18/34/50/101/152 (V2, the improved training recipe, for 50/101/152). Their
  bottlenecks put the stride in the 3x3 ("v1.5"), so those networks are built that way.
* `akamaster-cifar10`: the CIFAR-10 ResNet-20/32/44/56/110/1202 of
  akamaster/pytorch_resnet_cifar10, the widely used re-implementation of Sec. 4.2.
* `keras-imagenet`: Keras Applications' ImageNet ResNet-50/101/152
  (`keras.applications.ResNet50(weights="imagenet")`), the authors' Caffe models re-saved as
  Keras HDF5 (`resnets.models.formats.keras`): the paper's stride placement, BGR input minus
  the mean pixel. Keras publishes their md5, which is what its own loader checks.
* `cifar10-jpeg`: this project's own CIFAR-10 networks (Table 6), shipped inside the
  package as `resnets/weights/cifar10-jpeg/<model>.safetensors` once they are trained.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from ..errors import CheckpointError, ConfigError

# torchvision's ImageNet statistics, for weights trained with them (`Normalize.channel`). Kept
# here, in the registry that needs no torch, so that `resnets predict --help` lists the tags
# without importing torch.
IMAGENET_CHANNEL_MEAN = (0.485, 0.456, 0.406)
IMAGENET_CHANNEL_STD = (0.229, 0.224, 0.225)

# The CIFAR-10 label order (the official batches' label_names; also sorted class folders).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Where the weights this package ships live (package data, see pyproject.toml).
SHIPPED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
ClassNames = Literal["imagenet1k", "cifar10"]


@dataclass(frozen=True)
class Architecture:
    """The network the weights fit."""

    name: str  # a resnets model name
    shortcut: Literal["A", "B", "C"] | None  # None: a plain network
    stride_in_1x1: bool  # bottleneck stride placement: paper (True) or "v1.5" (False)


@dataclass(frozen=True)
class Preprocessing:
    """How the weights' authors fed images to the network when they evaluated it."""

    normalization: Literal["per_pixel_mean", "channel_mean_std"]
    # Channel mean/std for pixels in [0, 1] (channel_mean_std); a per-pixel mean image
    # is stored in the weights file itself.
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    resize: int  # shorter side before the center crop
    crop: int


@dataclass(frozen=True)
class ReportedError:
    """Top-1 / top-5 error (%) as the weights' authors report it, and where."""

    top1: float
    top5: float | None
    dataset: str
    source: str


@dataclass(frozen=True)
class PretrainedWeights:
    tag: str
    architecture: Architecture
    file_format: Literal["torchvision", "akamaster", "keras", "resnets"]
    url: str | None  # None: shipped inside this package
    # Full hex sha256, or the prefix in the file's name where only that is published
    # (the torch.hub convention, which is all torchvision itself checks).
    sha256: str | None
    preprocessing: Preprocessing
    classes: ClassNames
    reported: ReportedError | None
    md5: str | None = None  # where the publisher gives only an md5 (Keras), checked instead of sha256

    @property
    def digest(self) -> tuple[str, str] | None:
        """(algorithm, published hex digest or its prefix) that a downloaded file must match."""
        if self.sha256:
            return "sha256", self.sha256
        return ("md5", self.md5) if self.md5 else None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else f"{self.architecture.name}.safetensors"


_IMAGENET_V1 = Preprocessing("channel_mean_std", IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, 256, 224)
# torchvision evaluates its V2 weights on a 232 resize (ImageClassification(resize_size=232)).
_IMAGENET_V2 = Preprocessing("channel_mean_std", IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, 232, 224)
# akamaster/pytorch_resnet_cifar10 trains and tests with ImageNet's channel statistics.
_AKAMASTER = Preprocessing("channel_mean_std", IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, 32, 32)
_OURS_CIFAR = Preprocessing("per_pixel_mean", None, None, 32, 32)

# Keras' "caffe" preprocessing (keras.applications.imagenet_utils.preprocess_input, mode="caffe"):
# RGB 0..255 -> BGR minus the mean pixel (B 103.939, G 116.779, R 123.68), no scaling. As a
# `Normalize` on RGB pixels in [0, 1]: mean = the RGB mean / 255, std = 1 / 255; the BGR order
# goes into conv1's input channels when the weights are converted.
KERAS_CAFFE_MEAN_RGB = (123.68 / 255, 116.779 / 255, 103.939 / 255)
KERAS_CAFFE_STD = (1 / 255, 1 / 255, 1 / 255)
_KERAS = Preprocessing("channel_mean_std", KERAS_CAFFE_MEAN_RGB, KERAS_CAFFE_STD, 256, 224)

_TORCHVISION_DOCS = "torchvision.models ResNet*_Weights (acc@1/acc@5 on ImageNet-1k val, single 224 crop)"
_AKAMASTER_README = "github.com/akamaster/pytorch_resnet_cifar10 README (CIFAR-10 test set)"


def _torchvision(depth: int, version: int, file: str, acc1: float, acc5: float) -> PretrainedWeights:
    return PretrainedWeights(
        tag=f"torchvision-imagenet1k-v{version}",
        # Basic blocks have no 1x1, so the placement only matters from ResNet-50 up.
        architecture=Architecture(f"resnet{depth}", "B", stride_in_1x1=False),
        file_format="torchvision",
        url=f"https://download.pytorch.org/models/{file}",
        sha256=file.rsplit("-", 1)[1].split(".")[0],  # the hash prefix in the name; torchvision checks only this
        preprocessing=_IMAGENET_V1 if version == 1 else _IMAGENET_V2,
        classes="imagenet1k",
        reported=ReportedError(round(100 - acc1, 3), round(100 - acc5, 3), "ImageNet-1k val", _TORCHVISION_DOCS),
    )


def _akamaster(depth: int, sha256: str, test_error: float) -> PretrainedWeights:
    return PretrainedWeights(
        tag="akamaster-cifar10",
        architecture=Architecture(f"cifar_resnet{depth}", "A", stride_in_1x1=True),
        file_format="akamaster",
        url=f"https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
            f"resnet{depth}-{sha256[:8]}.th",
        sha256=sha256,
        preprocessing=_AKAMASTER,
        classes="cifar10",
        reported=ReportedError(test_error, None, "CIFAR-10 test", _AKAMASTER_README),
    )


_KERAS_DOCS = "keras.io/api/applications (top-1/top-5 accuracy on ImageNet validation)"


def _keras(depth: int, md5: str, acc1: float, acc5: float) -> PretrainedWeights:
    # keras/applications/resnet.py: BASE_WEIGHTS_PATH + f"resnet{depth}_weights_tf_dim_ordering_tf_kernels.h5"
    # with file_hash=WEIGHTS_HASHES[f"resnet{depth}"][0] (an md5; get_file checks md5 for 32 digits).
    return PretrainedWeights(
        tag="keras-imagenet",
        architecture=Architecture(f"resnet{depth}", "B", stride_in_1x1=True),
        file_format="keras",
        url=f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
            f"resnet{depth}_weights_tf_dim_ordering_tf_kernels.h5",
        sha256=None,
        preprocessing=_KERAS,
        classes="imagenet1k",
        reported=ReportedError(round(100 - acc1, 3), round(100 - acc5, 3), "ImageNet val", _KERAS_DOCS),
        md5=md5,
    )


def _ours(name: str) -> PretrainedWeights:
    # Trained by `resnets reproduce cifar10` on ../shared/data/cifar10-jpeg-train.tar.gz; the
    # file carries its config, mean image, class names and measured errors in its metadata.
    shortcut = "A" if name.startswith("cifar_resnet") else None
    return PretrainedWeights("cifar10-jpeg", Architecture(name, shortcut, stride_in_1x1=True), "resnets", None, None,
                             _OURS_CIFAR, "cifar10", None)


_ENTRIES = (
    _torchvision(18, 1, "resnet18-f37072fd.pth", 69.758, 89.078),
    _torchvision(34, 1, "resnet34-b627a593.pth", 73.314, 91.420),
    _torchvision(50, 1, "resnet50-0676ba61.pth", 76.130, 92.862),
    _torchvision(50, 2, "resnet50-11ad3fa6.pth", 80.858, 95.434),
    _torchvision(101, 1, "resnet101-63fe2227.pth", 77.374, 93.546),
    _torchvision(101, 2, "resnet101-cd907fc2.pth", 81.886, 95.780),
    _torchvision(152, 1, "resnet152-394f9c45.pth", 78.312, 94.046),
    _torchvision(152, 2, "resnet152-f82ba261.pth", 82.284, 96.002),
    # Full sha256 for the two files checked here (../shared/peer-weights); for the others
    # only the 8-digit prefix in their published names is known.
    _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 8.27),
    _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 7.37),
    _akamaster(44, "014dd654", 6.90),
    _akamaster(56, "4bfd9763", 6.61),
    _akamaster(110, "1d1ed7c2", 6.32),
    _akamaster(1202, "f3b1deed", 6.18),
    _keras(50, "2cb95161c43110f7111970584f804107", 74.9, 92.1),
    _keras(101, "f1aeb4b969a6efcfb50fad2f0c20cfc5", 76.4, 92.8),
    _keras(152, "100835be76be38e30d865e96f2aaae62", 76.6, 93.1),
    *(_ours(f"cifar_resnet{d}") for d in (20, 32, 44, 56, 110)),
    *(_ours(f"cifar_plain{d}") for d in (20, 32, 44, 56)),
)
PRETRAINED: dict[tuple[str, str], PretrainedWeights] = {(e.architecture.name, e.tag): e for e in _ENTRIES}


def tags_for(name: str) -> list[str]:
    return [tag for (model, tag) in PRETRAINED if model == name]


def is_tag(name: str, weights: object) -> bool:
    return isinstance(weights, str) and (name, weights) in PRETRAINED


def pretrained_weights(name: str, tag: str) -> PretrainedWeights:
    try:
        return PRETRAINED[(name, tag)]
    except KeyError:
        known = ", ".join(tags_for(name)) or "none"
        raise ConfigError(f"no pretrained weights {tag!r} for {name}; known tags for {name}: {known}") from None


def find_by_digest(digests: Callable[[str], str]) -> PretrainedWeights | None:
    """The downloadable entry whose published hash (full or prefix) the file matches;
    `digests(algorithm)` gives the file's hex digest (asked only for algorithms in use)."""
    for entry in PRETRAINED.values():
        if entry.digest and digests(entry.digest[0]).startswith(entry.digest[1]):
            return entry
    return None


@functools.cache
def class_names(classes: ClassNames) -> tuple[str, ...]:
    if classes == "cifar10":
        return CIFAR10_CLASSES
    # The 1000 ILSVRC-2012 classes in the standard index order (synsets sorted by WordNet
    # id, as in torchvision and the authors' Caffe models), with Keras' short names
    # (imagenet_class_index.json, as distributed in pytorch/hub's imagenet_classes.txt).
    text = (Path(__file__).parent / "imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(text.splitlines())


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (sorted, as Caffe, Keras and
    torchvision number them): ImageNet's folder names, so labels follow the weights, not the
    folders a data set happens to hold."""
    return tuple((Path(__file__).parent / "imagenet_synsets.txt").read_text(encoding="ascii").split())


def label_config(classes: ClassNames) -> dict[str, list[str]]:
    """What a weights file's model config records about its classes: their names and, for
    ImageNet, the synsets (`resnets eval` numbers a data set's class folders by them)."""
    if classes == "cifar10":
        return {"class_names": list(class_names("cifar10"))}
    return {"class_names": list(class_names("imagenet1k")), "synsets": list(imagenet_synsets())}


def weights_file(entry: PretrainedWeights, progress: bool | None = None) -> Path:
    """The local file of `entry`: shipped with the package, or downloaded into the cache.

    A cached file is used only once its sha256 matches; a missing or mismatching one is
    (re-)downloaded. Offline, the error names the URL and the path to place the file at.
    """
    if entry.url is None:
        path = SHIPPED_WEIGHTS_DIR / entry.tag / entry.filename
        if not path.is_file():
            raise CheckpointError(f"weights {entry.tag!r} for {entry.architecture.name} are not shipped with this "
                                  f"version of resnets (expected {path}); train them with `resnets train` or "
                                  f"choose another tag ({', '.join(tags_for(entry.architecture.name))})")
        return path
    from ..data.cifar import default_cache_dir
    from ..data.download import fetch, file_digest

    algorithm, digest = entry.digest
    path = default_cache_dir() / "weights" / entry.filename
    if path.is_file() and file_digest(path, algorithm).startswith(digest):
        return path
    fetch(entry.url, path, algorithm, digest, progress=progress)
    return path
