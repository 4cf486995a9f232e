"""PyTorch state dicts in torchvision's layout (and, through `resnets.models.formats.akamaster`,
in akamaster/pytorch_resnet_cifar10's) -> a resnets network with its normalisation and config.

* torchvision-format ImageNet ResNets (`resnet18` ... `resnet152` state dicts, also from
  other code that kept torchvision's names). Keys match ours one to one;
* CIFAR ResNets in the layout of akamaster/pytorch_resnet_cifar10 (classifier `linear`,
  option A padding on both sides), usually saved from DataParallel inside
  {'state_dict': ..., 'best_prec1': ...}.

Checkpoints come as they are published: `module.` prefixes, `state_dict`/`model`/`net`
wrappers, extra non-tensor entries, no BatchNorm `num_batches_tracked` (PyTorch < 0.4.1),
the legacy (non-zip) serialization, or safetensors (`resnets.models.weights.read_state_dict`).

The network is inferred from the keys (blocks per stage, block type, shortcuts); a `model`
that does not have that layout is refused, naming both, rather than half-loaded.

Stride placement (bottlenecks): the placement the weights record (published files recognised
by their digest, e.g. torchvision's own, which are "v1.5"); otherwise the paper's, as
`resnets train`, with a warning for torchvision-format bottleneck weights.

Normalisation: the one the weights carry (`input_norm.*` tensors) is kept, and explicit
options that would replace it are refused, so a per-pixel mean is never swapped for
ImageNet's mean/std. Otherwise: what the registry records for a recognised file, else the
format's convention (ImageNet channel mean/std, which both torchvision and akamaster's
trainer use), unless `normalization`/`mean`/`std` say otherwise.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Literal, Mapping, Sequence

from torch import Tensor

from ...errors import CheckpointError, ConfigError
from ..factory import IMAGENET_LAYOUTS, model_spec
from ..normalize import split_normalization
from ..pretrained import PretrainedWeights, label_config
from ..resnet import Bottleneck, ResNet
from ..weights import has_bottlenecks, load_state_dict, strip_wrapper_prefixes, warn_if_stride_differs
from .akamaster import from_akamaster
from .common import Normalization, build_network, registry_config, resolve_normalization

SourceFormat = Literal["auto", "torchvision", "akamaster"]

__all__ = ["SourceFormat", "convert_state_dict", "detect_format", "infer_model_name"]


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
        # torchvision's ImageNet ResNets project where the shape changes (option B); without any
        # projection the network is a plain one (ours, saved with torchvision's names).
        kind = "resnet" if any(".downsample." in k for k in keys) else "plain"
        for depth, (block, layout) in IMAGENET_LAYOUTS.items():
            if tuple(layers) == layout and (block.expansion == 4) == bottleneck:
                return f"{kind}{depth}"
    raise CheckpointError(f"cannot infer the network from the weights (blocks per stage {layers}); pass --model NAME")


def _misfit(state_dict: Mapping[str, Tensor], source: Literal["torchvision", "akamaster"], model: str) -> str | None:
    """Why the network `model` cannot hold these weights (None: it can). The keys give the blocks
    per stage, the block type and whether any block projects; akamaster's code has residual
    CIFAR networks only."""
    try:
        spec = model_spec(model)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    keys = set(state_dict)
    layers = tuple(_blocks_per_stage(keys))
    bottleneck = any(k.endswith(".conv3.weight") for k in keys)
    expected = spec.build.keywords["layers"]  # model_spec's partials of ResNet carry the layout
    expected_bottleneck = spec.build.keywords["block"] is Bottleneck
    if layers != tuple(expected) or bottleneck != expected_bottleneck:
        kind = "bottleneck" if bottleneck else "basic"
        return f"{kind} blocks per stage {list(layers)}, {model} has {list(expected)}"
    projects = any(".downsample." in k or ".shortcut." in k for k in keys)
    if (source == "akamaster" or projects) and not spec.residual:
        return f"a residual network ({source} layout), {model} is a plain one"
    return None








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
    origin: str = "the weights",
) -> tuple[ResNet, dict[str, Any]]:
    """A resnets network holding the foreign weights (eval mode), and its model config.

    known: the registry entry the weights were recognised as (its architecture and
        preprocessing become the defaults).
    origin: what errors call the weights (the file the user gave).
    """
    if known is not None and source == "auto":
        source = known.file_format
    fmt = detect_format(state_dict) if source == "auto" else source
    if fmt not in ("torchvision", "akamaster"):
        raise ConfigError(f"--format: expected auto, torchvision or akamaster, got {source!r}")
    classifier = "linear.weight" if fmt == "akamaster" else "fc.weight"
    stripped, carried = split_normalization(strip_wrapper_prefixes(state_dict), origin)
    if classifier not in stripped:
        raise CheckpointError(f"{origin}: {fmt} weights need a '{classifier}' entry; it is missing")
    if model is not None:
        misfit = _misfit(stripped, fmt, model)
        if misfit:
            raise CheckpointError(f"{origin}: --model {model} does not fit these weights: they hold {misfit}")
        name = model
    else:
        try:
            name = known.architecture.name if known else infer_model_name(stripped, fmt)
        except CheckpointError as e:
            raise CheckpointError(f"{origin}: {e}") from None
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
        config.update(label_config("cifar10"))  # that code trains CIFAR-10 only
    elif fmt == "torchvision" and num_classes == 1000:
        config.update(label_config("imagenet1k"))
    return net.eval(), config
