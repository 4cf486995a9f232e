"""Weights from anywhere -> a resnets network with its input normalisation and model config.

`load_network(weights, name)` (behind `create_model(name, weights=...)`) and
`convert_weights(src, dst)` (behind `resnets convert`) understand:

* tags of `resnets.models.pretrained` (downloaded and checked on first use);
* resnets' own `model.safetensors` files and training checkpoints (`checkpoints/last.pt`);
* torchvision-format ImageNet ResNets (`resnet18` ... `resnet152` state dicts, also from
  other code that kept torchvision's names). Keys match ours one to one;
* CIFAR ResNets in the layout of akamaster/pytorch_resnet_cifar10 (classifier `linear`,
  option A padding on both sides; see `resnets.models.akamaster`), usually saved from
  DataParallel inside {'state_dict': ..., 'best_prec1': ...};
* the authors' Caffe models (deploy prototxt + caffemodel), in `resnets.models.caffe`.

Checkpoints come as they are published: `module.` prefixes, `state_dict`/`model`/`net`
wrappers, extra non-tensor entries, no BatchNorm `num_batches_tracked` (PyTorch < 0.4.1),
the legacy (non-zip) serialization, or safetensors.

Stride placement (bottlenecks): the placement the weights record (resnets files, published
files recognised by their sha256, e.g. torchvision's own, which are "v1.5"); otherwise the
paper's, as `resnets train`, with a warning for torchvision-format bottleneck weights.

Normalisation: the one the weights carry (`input_norm.*` tensors, a training checkpoint's
mean image) is kept, and explicit options that would replace it are refused, so a
per-pixel mean is never swapped for ImageNet's mean/std. Otherwise: what the registry
records for a recognised file, else the format's convention (ImageNet channel mean/std,
which both torchvision and akamaster's trainer use), unless `normalization`/`mean`/`std`
say otherwise.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .akamaster import from_akamaster
from .factory import IMAGENET_LAYOUTS, model_spec
from .normalize import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, Normalize, split_normalization
from .pretrained import PretrainedWeights, class_names, find_by_sha256, is_tag, pretrained_weights, tags_for, weights_file
from .resnet import ResNet
from .weights import (
    has_bottlenecks, load_state_dict, read_state_dict, read_weights_config, read_weights_normalization, save_weights,
    state_dict_from, strip_wrapper_prefixes, torch_load, warn_if_stride_differs,
)

SourceFormat = Literal["auto", "torchvision", "akamaster"]
Normalization = Literal["per_pixel_mean", "channel_mean_std", "none"]

__all__ = ["SourceFormat", "convert_file", "convert_state_dict", "convert_weights", "detect_format",
           "infer_model_name", "load_network"]


def detect_format(state_dict: Mapping[str, Tensor]) -> Literal["torchvision", "akamaster"]:
    """'akamaster' when the classifier is `linear`, 'torchvision' when it is `fc`."""
    keys = set(strip_wrapper_prefixes(state_dict))
    if "linear.weight" in keys:
        return "akamaster"
    if "fc.weight" in keys:
        return "torchvision"
    raise CheckpointError("cannot tell the weights' format: no classifier 'fc.weight' (torchvision) or "
                          "'linear.weight' (akamaster CIFAR ResNets); sample keys: " + ", ".join(sorted(keys)[:6]))


def _blocks_per_stage(keys: set[str]) -> list[int]:
    counts = {}
    for key in keys:
        m = re.match(r"^layer(\d+)\.(\d+)\.", key)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return [counts[s] for s in sorted(counts)]


def infer_model_name(state_dict: Mapping[str, Tensor], source: Literal["torchvision", "akamaster"]) -> str:
    """The resnets model name whose layout the state dict has (blocks per stage, block type)."""
    keys = set(strip_wrapper_prefixes(state_dict))
    layers = _blocks_per_stage(keys)
    if source == "akamaster":
        if len(layers) == 3 and layers[0] == layers[1] == layers[2] and layers[0] > 0:
            return f"cifar_resnet{6 * layers[0] + 2}"
    else:
        bottleneck = any(k.endswith(".conv3.weight") for k in keys)
        for depth, (block, layout) in IMAGENET_LAYOUTS.items():
            if tuple(layers) == layout and (block.expansion == 4) == bottleneck:
                return f"resnet{depth}"
    raise CheckpointError(f"cannot infer the network from the weights (blocks per stage {layers}); pass --model NAME")


def resolve_normalization(carried: Normalize | None, normalization: Normalization | None,
                          mean: Sequence[float] | None, std: Sequence[float] | None,
                          default_mean: Sequence[float] = IMAGENET_CHANNEL_MEAN,
                          default_std: Sequence[float] = IMAGENET_CHANNEL_STD) -> Normalize | None:
    """The input normalisation of converted weights (see the module docstring)."""
    asked = normalization is not None or mean is not None or std is not None
    if carried is not None:
        if asked:
            raise ConfigError(f"--normalization/--mean/--std: the weights carry their own input normalisation "
                              f"({carried.kind}, mean {tuple(carried.mean.shape)}), which is kept; it cannot be replaced")
        return carried
    kind = normalization or "channel_mean_std"
    if kind == "none":
        if mean is not None or std is not None:
            raise ConfigError("--mean/--std: given with --normalization none")
        return None
    if kind != "channel_mean_std":
        raise ConfigError(f"--normalization: these weights carry no mean image; expected channel_mean_std or none, "
                          f"got {kind!r}")
    mean = tuple(mean) if mean is not None else tuple(default_mean)
    std = tuple(std) if std is not None else tuple(default_std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"--mean/--std: expected 3 values each (RGB, pixels in [0, 1]) and positive std, got {mean}, {std}")
    return Normalize.channel(mean, std)


def _build(name: str, num_classes: int | None, shortcut: str | None, stride_in_1x1: bool,
           input_norm: Normalize | None, stem: str | None = None) -> ResNet:
    """The network with its input normalisation given when it is built (`resnets.models.loading`)."""
    try:
        spec = model_spec(name)
        return spec.build(num_classes=num_classes or spec.default_num_classes,
                          **({"shortcut": shortcut or spec.default_shortcut} if spec.residual else {}),
                          stride_in_1x1=stride_in_1x1, input_norm=input_norm, **({"stem": stem} if stem else {}))
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None


def _registry_config(entry: PretrainedWeights) -> dict[str, Any]:
    """What a recognised published file adds to its model config."""
    pre = entry.preprocessing
    return {"weights": entry.tag, "source_url": entry.url, "class_names": list(class_names(entry.classes)),
            "eval_resize": pre.resize, "eval_crop": pre.crop}


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    source: SourceFormat = "auto",
    model: str | None = None,
    stride_in_1x1: bool | None = None,
    normalization: Normalization | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    known: PretrainedWeights | None = None,
) -> tuple[ResNet, dict[str, Any]]:
    """A resnets network holding the foreign weights (eval mode), and its model config.

    known: the registry entry the weights were recognised as (its architecture and
        preprocessing become the defaults).
    """
    if known is not None and source == "auto":
        source = known.file_format
    fmt = detect_format(state_dict) if source == "auto" else source
    if fmt not in ("torchvision", "akamaster"):
        raise ConfigError(f"--format: expected auto, torchvision or akamaster, got {source!r}")
    name = model or (known.architecture.name if known else infer_model_name(state_dict, fmt))
    classifier = "linear.weight" if fmt == "akamaster" else "fc.weight"
    stripped, carried = split_normalization(strip_wrapper_prefixes(state_dict))
    if classifier not in stripped:
        raise CheckpointError(f"{fmt} weights need a '{classifier}' entry; it is missing")
    num_classes = stripped[classifier].shape[0]
    shortcut = None
    if fmt == "akamaster":
        shortcut = "B" if any(".shortcut." in k for k in stripped) else "A"
    recorded = known.architecture.stride_in_1x1 if known else None
    placement = stride_in_1x1 if stride_in_1x1 is not None else (recorded if recorded is not None else True)
    pre = known.preprocessing if known else None
    norm = resolve_normalization(carried, normalization, mean, std, *((pre.mean, pre.std) if pre and pre.mean else ()))
    net = _build(name, num_classes, shortcut, placement, norm)
    if has_bottlenecks(net):
        if stride_in_1x1 is not None:
            warn_if_stride_differs(recorded, stride_in_1x1, f"{name} weights ({known.tag})" if known else name)
        elif recorded is None and fmt == "torchvision":
            warnings.warn(f"{name}: the weights do not record their bottleneck stride placement; built with the "
                          "paper's (stride in the first 1x1), as `resnets train` does. torchvision-trained weights "
                          "put it in the 3x3: pass --stride-in-3x3 (stride_in_1x1=False) for those", stacklevel=2)
    converted = from_akamaster(stripped, net) if fmt == "akamaster" else stripped
    load_state_dict(net, converted)
    config: dict[str, Any] = {
        "name": name, "num_classes": num_classes, "shortcut": shortcut or model_spec(name).default_shortcut,
        "stride_in_1x1": placement, "normalization": net.input_norm.kind if net.input_norm else "none",
        "converted_from": fmt}
    if known is not None:
        config.update(_registry_config(known))
    elif fmt == "akamaster" and num_classes == 10:
        config["class_names"] = list(class_names("cifar10"))  # that code trains CIFAR-10 only
    elif fmt == "torchvision" and num_classes == 1000:
        config["class_names"] = list(class_names("imagenet1k"))
    return net.eval(), config


def _is_training_checkpoint(obj: Any) -> bool:
    """A checkpoint `resnets train` wrote (any version: with or without the old "normalize" entry)."""
    return isinstance(obj, dict) and {"model", "config", "iteration"} <= set(obj)


def convert_file(path: str | os.PathLike, *, source: SourceFormat = "auto", model: str | None = None,
                 stride_in_1x1: bool | None = None, normalization: Normalization | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 known: PretrainedWeights | None = None) -> tuple[ResNet, dict[str, Any]]:
    """A network from a checkpoint that is not a resnets weights file (see the module docstring).

    A published file is recognised by its sha256 (`resnets.models.pretrained`) unless
    `known` already says what it is.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict = read_state_dict(path)
    else:
        obj = torch_load(path)
        if _is_training_checkpoint(obj):
            # The run's own normalisation (the per-pixel mean image) comes with it.
            from .loading import model_from_file

            if normalization is not None or mean is not None or std is not None:
                raise ConfigError(f"--normalization/--mean/--std: {path} is a resnets training checkpoint; its own "
                                  "input normalisation is kept and cannot be replaced")
            net, info = model_from_file(path)
            run = info["run"]["model"]
            if model and model != run["name"]:
                raise CheckpointError(f"{path} holds weights of {run['name']}, not {model}")
            if stride_in_1x1 is not None and has_bottlenecks(net) and stride_in_1x1 != run.get("stride_in_1x1", True):
                raise ConfigError(f"--stride-in-1x1/--stride-in-3x3: {path} is a training checkpoint, loaded with the "
                                  "stride placement it was trained with")
            config = {"name": run["name"], "num_classes": info["model"]["num_classes"],
                      "shortcut": run.get("shortcut") or model_spec(run["name"]).default_shortcut,
                      "stride_in_1x1": run.get("stride_in_1x1", True),
                      "normalization": net.input_norm.kind if net.input_norm else "none"}
            return net.eval(), config
        state_dict = state_dict_from(obj, path)
    split_normalization(strip_wrapper_prefixes(state_dict), str(path))  # a half-stored one is named with its file
    if known is None:
        from ..data.download import file_digest

        known = find_by_sha256(file_digest(path, "sha256"))
    return convert_state_dict(state_dict, source=source, model=model, stride_in_1x1=stride_in_1x1,
                              normalization=normalization, mean=mean, std=std, known=known)


def _from_resnets_file(path: Path, config: dict[str, Any], name: str | None, num_classes: int | None,
                       shortcut: str | None, stride_in_1x1: bool | None) -> tuple[ResNet, dict[str, Any]]:
    if name and config["name"] != name:
        raise CheckpointError(f"{path} holds weights of {config['name']}, not {name}")
    recorded = config.get("stride_in_1x1")
    placement = stride_in_1x1 if stride_in_1x1 is not None else (recorded if recorded is not None else True)
    net = _build(config["name"], num_classes or config.get("num_classes"), shortcut or config.get("shortcut"),
                 placement, read_weights_normalization(path), config.get("stem"))
    if stride_in_1x1 is not None and has_bottlenecks(net):
        warn_if_stride_differs(recorded, stride_in_1x1, str(path))
    load_state_dict(net, path)
    return net.eval(), {**config, "stride_in_1x1": placement}


def load_network(weights: str | os.PathLike, name: str | None = None, *, num_classes: int | None = None,
                 shortcut: str | None = None, stride_in_1x1: bool | None = None) -> tuple[ResNet, dict[str, Any]]:
    """A trained network (eval mode, with its normalisation) and its model config.

    weights: a tag of `resnets.models.pretrained` for `name`, or a file (see the module
    docstring). The config carries the class names and the evaluation resize/crop when
    they are known (`class_names` or the training data's `classes`; `eval_resize`, `eval_crop`).
    """
    entry = pretrained_weights(name, str(weights)) if name and is_tag(name, weights) else None
    if entry is not None:
        path = weights_file(entry)
    else:
        path = Path(weights)
        if not path.is_file():
            tags = f"; known tags for {name}: {', '.join(tags_for(name)) or 'none'}" if name else ""
            raise CheckpointError(f"weights {weights}: no such file, and not a pretrained weights tag{tags}")
    config = read_weights_config(path)
    if config.get("name"):
        net, config = _from_resnets_file(path, config, name, num_classes, shortcut, stride_in_1x1)
        if entry is not None:
            config = {**_registry_config(entry), **{k: v for k, v in config.items() if v is not None}}
    else:
        net, config = convert_file(path, model=name, stride_in_1x1=stride_in_1x1, known=entry)
        for option, value in (("num_classes", num_classes), ("shortcut", shortcut)):
            if value is not None and value != config[option]:
                raise CheckpointError(f"{path}: the weights have {option}={config[option]!r}, not {value!r}")
    return net, config


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Read a checkpoint from elsewhere (or a training checkpoint), convert it, write a resnets
    `model.safetensors` (network, normalisation, config). Options are those of
    :func:`convert_file`. Returns the stored model config."""
    if str(src).endswith(".safetensors") and read_weights_config(src).get("name"):
        raise CheckpointError(f"{src} is already a resnets weights file; load it with create_model(..., weights=)")
    net, config = convert_file(src, **options)
    save_weights(dst, net, config, metadata={"source_file": os.path.basename(os.fspath(src))})
    return config
