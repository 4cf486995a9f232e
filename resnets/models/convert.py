"""Weights trained elsewhere -> a resnets `model.safetensors` (network + normalisation + config).

Two sources are understood:

* torchvision-format ImageNet ResNets (`resnet18` ... `resnet152` state dicts, also from
  other code that kept torchvision's names). Keys match ours one to one. torchvision's
  bottlenecks put the stride in the 3x3 ("v1.5"), so they are converted with
  `stride_in_1x1=False`; loading them into the paper's placement warns (same keys, other
  computation). Their input normalisation is per-channel mean/std.
* CIFAR ResNets in the layout of akamaster/pytorch_resnet_cifar10 (the widely used
  re-implementation of Sec. 4.2): top-level `conv1`, `bn1`, `layerK.i.{conv,bn}{1,2}`,
  classifier `linear`, option-A shortcuts as a parameter-free `LambdaLayer`, usually saved
  from DataParallel (`module.` prefix) inside {'state_dict': ..., 'best_prec1': ...}.
  That code zero-pads the new channels of an option-A shortcut on *both* sides
  (`F.pad(x, (0, 0, 0, 0, planes // 4, planes // 4))`) where ours pads after the identity
  channels; both are option A (Sec. 3.3), and the conversion permutes each stage's channels
  so the converted network computes exactly the same function. Its training normalised
  with ImageNet's per-channel mean/std, the default here.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .factory import IMAGENET_LAYOUTS, create_model, model_spec
from .normalize import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, Normalize
from .resnet import ResNet
from .weights import load_state_dict, read_state_dict, read_weights_config, save_weights, strip_wrapper_prefixes

SourceFormat = Literal["auto", "torchvision", "akamaster"]

__all__ = ["SourceFormat", "convert_state_dict", "convert_weights", "detect_format", "infer_model_name"]


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


def _cifar_option_a_permutations(model: ResNet) -> list[Tensor]:
    """For each stage: `perm` with our channel k == the akamaster network's channel perm[k].

    akamaster's option A maps input channel i of a widening block to output channel
    i + pad (pad = planes // 4 zeros before, as many after); ours maps i -> i. Later blocks
    of a stage keep positions, so one permutation per stage tensor suffices.
    """
    perms = []
    prev = torch.arange(model.bn1.num_features)
    for name in model.stage_names:
        stage = getattr(model, name)
        c_out = stage[0].bn2.num_features
        if c_out == len(prev):
            perm = prev
        else:
            first = prev + c_out // 4
            taken = set(first.tolist())
            rest = torch.tensor([j for j in range(c_out) if j not in taken], dtype=torch.long)
            perm = torch.cat([first, rest])
        perms.append(perm)
        prev = perm
    return perms


def _from_akamaster(state_dict: Mapping[str, Tensor], model: ResNet) -> dict[str, Tensor]:
    """Rename `linear` -> `fc`, `shortcut` -> `downsample`, and undo the symmetric zero padding."""
    sd = {}
    for key, value in strip_wrapper_prefixes(state_dict).items():
        key = re.sub(r"^linear\.", "fc.", key)
        key = key.replace(".shortcut.", ".downsample.")
        sd[key] = value
    if any(".downsample." in k for k in sd):  # option B variant of that code: nothing to permute
        return sd
    prev = torch.arange(model.bn1.num_features)
    for name, perm in zip(model.stage_names, _cifar_option_a_permutations(model)):
        for i in range(len(getattr(model, name))):
            p = f"{name}.{i}."
            if p + "conv1.weight" not in sd:
                continue  # missing keys are reported by load_state_dict
            sd[p + "conv1.weight"] = sd[p + "conv1.weight"][:, prev if i == 0 else perm]
            sd[p + "conv2.weight"] = sd[p + "conv2.weight"][perm]
            for t in ("weight", "bias", "running_mean", "running_var"):
                if p + f"bn2.{t}" in sd:
                    sd[p + f"bn2.{t}"] = sd[p + f"bn2.{t}"][perm]
        prev = perm
    if "fc.weight" in sd:
        sd["fc.weight"] = sd["fc.weight"][:, prev]
    return sd


def _normalize(kind: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> Normalize | None:
    if kind == "none":
        if mean is not None or std is not None:
            raise ConfigError("--mean/--std: given with --normalization none")
        return None
    if kind != "channel_mean_std":
        raise ConfigError(f"--normalization: weights from elsewhere carry no mean image; expected channel_mean_std "
                          f"or none, got {kind!r}")
    mean = tuple(mean) if mean is not None else IMAGENET_CHANNEL_MEAN
    std = tuple(std) if std is not None else IMAGENET_CHANNEL_STD
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"--mean/--std: expected 3 values each (RGB, pixels in [0, 1]) and positive std, got {mean}, {std}")
    return Normalize.channel(mean, std)


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    *,
    source: SourceFormat = "auto",
    model: str | None = None,
    stride_in_1x1: bool | None = None,
    normalization: Literal["channel_mean_std", "none"] = "channel_mean_std",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[ResNet, dict[str, Any]]:
    """A resnets network holding the foreign weights, and its model config (for `save_weights`).

    stride_in_1x1: default False for torchvision (its placement); irrelevant for basic blocks.
    """
    fmt = detect_format(state_dict) if source == "auto" else source
    if fmt not in ("torchvision", "akamaster"):
        raise ConfigError(f"--format: expected auto, torchvision or akamaster, got {source!r}")
    name = model or infer_model_name(state_dict, fmt)
    try:
        spec = model_spec(name)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    stride_in_1x1 = False if stride_in_1x1 is None else stride_in_1x1
    classifier = "linear.weight" if fmt == "akamaster" else "fc.weight"
    stripped = strip_wrapper_prefixes(state_dict)
    if classifier not in stripped:
        raise CheckpointError(f"{fmt} weights need a '{classifier}' entry; it is missing")
    num_classes = stripped[classifier].shape[0]
    shortcut = None
    if fmt == "akamaster":
        shortcut = "B" if any(".shortcut." in k for k in stripped) else "A"
    try:
        net = create_model(name, num_classes=num_classes, shortcut=shortcut if spec.residual else None,
                           stride_in_1x1=stride_in_1x1, input_norm=_normalize(normalization, mean, std))
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    converted = _from_akamaster(stripped, net) if fmt == "akamaster" else stripped
    load_state_dict(net, converted)
    config = {"name": name, "num_classes": num_classes, "shortcut": shortcut or spec.default_shortcut,
              "stride_in_1x1": stride_in_1x1, "normalization": normalization, "converted_from": fmt}
    return net.eval(), config


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Read a foreign .pth/.pt/.safetensors file, convert it, write a resnets `model.safetensors`.

    Options are those of :func:`convert_state_dict`. Returns the stored model config.
    """
    if str(src).endswith(".safetensors") and read_weights_config(src).get("name"):
        raise CheckpointError(f"{src} is already a resnets weights file; load it with create_model(..., weights=)")
    net, config = convert_state_dict(read_state_dict(src), **options)
    save_weights(dst, net, config, metadata={"source_file": os.path.basename(os.fspath(src))})
    return config
