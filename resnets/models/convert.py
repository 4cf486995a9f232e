"""Weights from anywhere -> a resnets network with its input normalisation and model config.

`convert_state_dict` turns a foreign state dict into our network; `resnets.models.loading`
(`load_network`, behind `create_model(name, weights=...)`, and `convert_weights`, behind
`resnets convert`) reads the files. Together they understand:

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

import re
import warnings
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .akamaster import from_akamaster
from .factory import IMAGENET_LAYOUTS, model_spec
from .normalize import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, Normalize, split_normalization
from .pretrained import PretrainedWeights, class_names
from .resnet import ResNet
from .weights import has_bottlenecks, load_state_dict, strip_wrapper_prefixes, warn_if_stride_differs

SourceFormat = Literal["auto", "torchvision", "akamaster"]
Normalization = Literal["per_pixel_mean", "channel_mean_std", "none"]

__all__ = ["Normalization", "SourceFormat", "convert_state_dict", "detect_format", "infer_model_name",
           "resolve_normalization"]


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


def build_network(name: str, num_classes: int | None, shortcut: str | None, stride_in_1x1: bool,
           input_norm: Normalize | None, stem: str | None = None) -> ResNet:
    """The network with its input normalisation given when it is built (`resnets.models.loading`)."""
    try:
        spec = model_spec(name)
        return spec.build(num_classes=num_classes or spec.default_num_classes,
                          **({"shortcut": shortcut or spec.default_shortcut} if spec.residual else {}),
                          stride_in_1x1=stride_in_1x1, input_norm=input_norm, **({"stem": stem} if stem else {}))
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None


def registry_config(entry: PretrainedWeights) -> dict[str, Any]:
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
    net = build_network(name, num_classes, shortcut, placement, norm)
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
        config.update(registry_config(known))
    elif fmt == "akamaster" and num_classes == 10:
        config["class_names"] = list(class_names("cifar10"))  # that code trains CIFAR-10 only
    elif fmt == "torchvision" and num_classes == 1000:
        config["class_names"] = list(class_names("imagenet1k"))
    return net.eval(), config
