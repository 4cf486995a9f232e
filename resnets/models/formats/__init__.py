"""Weights from elsewhere, one module per format, behind one entry point: `convert_file`.

`resnets.models.loading.load_network` (behind `create_model(name, weights=...)`, `resnets
eval/predict/export/convert/analyze` and the detector's backbone) reads resnets' own files and
hands every other file to `convert_file`, which returns our network (eval mode, with the
input normalisation its weights were trained with) and its model config:

* `torchvision`: PyTorch state dicts with torchvision's names (.pth/.pt/.safetensors);
* `akamaster`: the CIFAR ResNets of akamaster/pytorch_resnet_cifar10 (.th), the same reader
  with that code's layout (`resnets.models.formats.akamaster`);
* `caffe`: the authors' own models (a .caffemodel with its deploy prototxt and mean image);
* `keras`: Keras Applications' ResNets (a TF.js folder or model.json, or a Keras .h5).

A published file is recognised by its digest (`resnets.models.pretrained`) unless `known`
already says what it is, and gets the registry's class names, view and reported error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

from ...errors import CheckpointError, ConfigError
from ..pretrained import PretrainedWeights, find_by_digest
from ..resnet import ResNet
from .common import Normalization

Format = Literal["auto", "torchvision", "akamaster", "caffe", "keras"]
FORMATS = ("auto", "torchvision", "akamaster", "caffe", "keras")

__all__ = ["FORMATS", "Format", "Normalization", "convert_file", "file_format"]


def file_format(path: str | os.PathLike) -> Literal["torch", "caffe", "keras"]:
    """Which reader a file needs, from its name: a .caffemodel, a Keras file (TF.js folder or
    model.json, .h5), else a PyTorch state dict (torchvision or akamaster layout)."""
    from .keras import is_keras_path

    if str(path).endswith(".caffemodel"):
        return "caffe"
    return "keras" if is_keras_path(path) else "torch"


def _recognise(path: Path) -> PretrainedWeights | None:
    from ...data.download import file_digest

    digests: dict[str, str] = {}
    return find_by_digest(lambda algorithm: digests.setdefault(algorithm, file_digest(path, algorithm)))


def _refuse(given: dict[str, Any], why: str) -> None:
    flags = [flag for flag, value in given.items() if value is not None]
    if flags:
        raise ConfigError(f"{', '.join(flags)}: {why}")


def convert_file(path: str | os.PathLike, *, source: Format = "auto", model: str | None = None,
                 stride_in_1x1: bool | None = None, normalization: Normalization | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 prototxt: str | os.PathLike | None = None, mean_file: str | os.PathLike | None = None,
                 known: PretrainedWeights | None = None, state_dict: dict | None = None,
                 ) -> tuple[ResNet, dict[str, Any]]:
    """A foreign weights file as our network (eval mode) and its model config.

    source: the format, or "auto" (from the file's name, then for state dicts from the keys).
    model: the network the user expects; a file holding another is refused, naming both.
    stride_in_1x1, normalization, mean, std: for state dicts, which do not record them.
    prototxt, mean_file: the rest of a Caffe model.
    state_dict: the file's tensors, when the caller has already read them.
    """
    if source not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {source!r}")
    path = Path(path)
    kind = file_format(path) if source == "auto" else {"caffe": "caffe", "keras": "keras"}.get(source, "torch")
    if kind != "caffe":
        _refuse({"--prototxt": prototxt, "--mean-file": mean_file}, "only for Caffe models (SRC a .caffemodel)")
    if kind in ("caffe", "keras"):
        _refuse({"--stride-in-1x1/--stride-in-3x3": stride_in_1x1, "--normalization": normalization, "--mean": mean,
                 "--std": std}, f"not used with {kind.capitalize()} models, whose files say how they compute")
    if kind == "caffe":
        from .caffe import convert_caffe

        if not prototxt or not mean_file:
            raise ConfigError("Caffe models need --prototxt (the deploy prototxt) and --mean-file (the mean image "
                              "the authors subtract, ResNet_mean.binaryproto)")
        net, config = convert_caffe(prototxt, path, mean_file)
    elif kind == "keras":
        from .keras import convert_keras, read_keras

        if not path.exists():
            raise CheckpointError(f"weights {path}: no such file or folder")
        net, config = convert_keras(read_keras(path))
        if known is None and path.is_file():
            known = _recognise(path)
    else:
        from ..normalize import split_normalization
        from ..weights import read_state_dict, strip_wrapper_prefixes
        from .torchvision import convert_state_dict

        if state_dict is None:
            state_dict = read_state_dict(path)
        split_normalization(strip_wrapper_prefixes(state_dict), str(path))  # a half-stored one is named with its file
        return convert_state_dict(state_dict, source=source, model=model,
                                  stride_in_1x1=stride_in_1x1, normalization=normalization, mean=mean, std=std,
                                  known=known if known is not None else _recognise(path), origin=str(path))
    if model is not None and model != config["name"]:
        raise CheckpointError(f"{path} holds a {config['name']} ({kind} format); --model {model} does not fit it")
    if known is not None:
        from .common import registry_config

        config.update(registry_config(known))
    return net, config
