"""What every foreign format shares: the network its weights go into, the input normalisation
they were trained with, and what a recognised published file adds to its model config."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from ...errors import ConfigError
from ..factory import model_spec
from ..normalize import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD, Normalize
from ..pretrained import PretrainedWeights, label_config
from ..resnet import ResNet

Normalization = Literal["per_pixel_mean", "channel_mean_std", "none"]


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
    return {"weights": entry.tag, "source_url": entry.url, **label_config(entry.classes),
            "eval_resize": pre.resize, "eval_crop": pre.crop}
