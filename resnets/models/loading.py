"""A network from a config or from a file, with the input normalisation it was trained with.

The normalisation is part of the network (`ResNet.input_norm`, applied first) and is given
to it once, when it is built (`create_model(..., input_norm=...)`):

* for training, from the config's kind (`input_normalization`): the paper's per-pixel mean
  image of the training set (Sec. 3.4, 4.2), torchvision's channel mean/std, or none;
* from a file, as stored there (`model_from_file`). The one on-disk encoding is the
  `input_norm.*` tensors beside the network's (`resnets.models.normalize`); checkpoints
  written before it (a "normalize" entry, with the kind in the run's config) are read too.

Loading a state dict never changes a network's normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import Tensor

from ..checkpoint import load_checkpoint
from ..config import ModelConfig, from_dict
from ..errors import CheckpointError, ConfigError
from .factory import create_model, model_spec
from .normalize import Normalize, NormalizationKind, split_normalization
from .resnet import ResNet
from .weights import load_state_dict, read_weights_config, read_weights_metadata


def input_normalization(kind: NormalizationKind, mean_image: Tensor | None = None) -> Normalize | None:
    """The normalisation a config names: "per_pixel_mean" needs the (3, H, W) mean image in [0, 1]."""
    if kind == "per_pixel_mean":
        if mean_image is None:
            raise ValueError("the per-pixel mean normalisation needs the mean image of the training set")
        return Normalize(mean_image)
    if kind == "channel_mean_std":
        return Normalize.channel()
    if kind == "none":
        return None
    raise ValueError(f"normalization: expected per_pixel_mean, channel_mean_std or none, got {kind!r}")


def build_model(config: ModelConfig, num_classes: int, mean_image: Callable[[], Tensor]) -> ResNet:
    """The network a training config describes. `mean_image()` is called only for the per-pixel
    mean (for ImageNet it reads thousands of images)."""
    mean = mean_image() if config.normalization == "per_pixel_mean" else None
    try:
        return create_model(config.name, num_classes=config.num_classes or num_classes, shortcut=config.shortcut,
                            stride_in_1x1=config.stride_in_1x1, zero_init_residual=config.zero_init_residual,
                            input_norm=input_normalization(config.normalization, mean))
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def weights_config(config: ModelConfig, num_classes: int, classes: list[str]) -> dict[str, Any]:
    """What a weights file needs to rebuild the network (stored in its metadata, read by `model_from_file`)."""
    spec = model_spec(config.name)
    return {"name": config.name, "num_classes": config.num_classes or num_classes,
            "shortcut": config.shortcut or spec.default_shortcut, "stride_in_1x1": config.stride_in_1x1,
            "normalization": config.normalization, "classes": classes}


def checkpoint_network(state: Mapping[str, Any], kind: NormalizationKind | None = None
                       ) -> tuple[dict[str, Tensor], Normalize | None]:
    """A checkpoint's network tensors and its input normalisation, in any encoding resnets wrote:

    * `input_norm.*` tensors inside state["model"] (now);
    * training checkpoints before: state["normalize"]["mean"], of the `kind` the run's config names;
    * detection checkpoints before: state["normalize"] = {"mean", "std"}.
    """
    network, norm = split_normalization(state["model"])
    old = state.get("normalize")
    if norm is None and isinstance(old, Mapping):
        if "std" in old:
            norm = Normalize(old["mean"], old["std"])
        elif kind is not None:
            norm = input_normalization(kind, old.get("mean"))
    return network, norm


def model_from_file(path: str | os.PathLike) -> tuple[ResNet, dict[str, Any]]:
    """A trained network, ready for inference, from a training checkpoint (.pt) or a
    `model.safetensors` written by a run. Returns (model, info) where info holds the model
    config and the run's config."""
    path = Path(path)
    if path.suffix == ".safetensors":
        model_config = read_weights_config(path)
        if "name" not in model_config:
            raise CheckpointError(f"{path}: not a resnets weights file (no model config in its metadata); "
                                  "use `resnets convert` for weights from elsewhere")
        model = create_model(model_config["name"], num_classes=model_config.get("num_classes"),
                             shortcut=model_config.get("shortcut"),
                             stride_in_1x1=model_config.get("stride_in_1x1", True), weights=str(path))
        return model, {"model": model_config, "run": read_weights_metadata(path).get("config")}
    state = load_checkpoint(path)
    try:
        config = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an unreadable config: {e}") from None
    m = config.model
    try:
        network, norm = checkpoint_network(state, m.normalization)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    num_classes = network["fc.weight"].shape[0]
    model = create_model(m.name, num_classes=num_classes, shortcut=m.shortcut, stride_in_1x1=m.stride_in_1x1,
                         input_norm=norm)
    load_state_dict(model, network)
    return model, {"model": {"name": m.name, "num_classes": num_classes}, "run": state["config"],
                   "iteration": state["iteration"]}
