"""A network from a config, a file or a pretrained-weights tag, with the input normalisation it
was trained with: `create_model(name, weights=...)`, `model_from_file`, `load_network` (the one
loader every command uses), and `convert_weights` (behind `resnets convert`; files from elsewhere
are read by `resnets.models.formats`).

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

from torch import Tensor, nn

from ..checkpoint import load_checkpoint
from ..config import ModelConfig, from_dict
from ..errors import CheckpointError, ConfigError
from ..io import load_torch_file
from .factory import model_spec
from .formats import convert_file, file_format
from .formats.common import build_network, registry_config
from .normalize import Normalize, NormalizationKind, split_normalization
from .pretrained import is_tag, pretrained_weights, tags_for, weights_file
from .resnet import ResNet, Shortcut
from .weights import (
    has_bottlenecks, load_state_dict, read_weights_config, read_weights_metadata, read_weights_normalization,
    save_weights, state_dict_from, warn_if_stride_differs,
)


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


def model_from_file(path: str | os.PathLike, name: str | None = None) -> tuple[ResNet, dict[str, Any]]:
    """A trained network, ready for inference, from any weights file `load_network` reads (a
    run's `model.safetensors` or training checkpoint, or a file from elsewhere, converted).
    Returns (model, info): info["model"] is the model config, info["run"] the training run's
    config (None for weights from elsewhere). `name`: the network expected; another is refused."""
    net, config, about_run = _load(path, name, None, None, None, {})
    return net, {"model": config, **about_run}


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    shortcut: Shortcut | None = None,
    stride_in_1x1: bool | None = None,
    zero_init_residual: bool = False,
    input_norm: nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    normalize_input: bool = True,
) -> ResNet:
    """Build a network of the paper by name, optionally with trained weights.

    shortcut: "A", "B" or "C" (Table 3); default B for ImageNet nets, A for CIFAR nets
        (Sec. 4.2). Plain networks have none and refuse one.
    stride_in_1x1: the paper's stride placement in bottlenecks (True, the default) or
        "v1.5" (False). With `weights`, the default is the placement they were trained with.
    input_norm: what the network applies to its input first (`Normalize`; see
        `resnets.models.loading.input_normalization` for the kinds a config names).
    weights: a tag of `resnets.models.pretrained` (e.g. "torchvision-imagenet1k-v1",
        "akamaster-cifar10", "cifar10-jpeg"; downloaded and checked on first use), a
        `model.safetensors` or training checkpoint written by resnets, or a checkpoint from
        elsewhere (torchvision, akamaster, Caffe, Keras; see `resnets.models.formats`).
        The network then also gets the input normalisation the weights were trained with.
    normalize_input: False builds the network without its input normalisation, for callers
        who normalise their tensors themselves (e.g. with torchvision's transforms). It then
        takes what it is given, unchecked; the normalisation the weights expect is
        `resnets.models.weights.read_weights_normalization(path)` (a `Normalize` module: apply
        it to images in [0, 1]). With True (the default) the network takes uint8 images or
        floats in [0, 1], and in evaluation refuses floats outside (`normalize.check_unit_range`).
    """
    spec = model_spec(name)
    if not spec.residual and shortcut is not None:
        raise ValueError(f"{name} is a plain network (no shortcuts); shortcut={shortcut!r} does not apply")
    if shortcut is not None and shortcut not in ("A", "B", "C"):
        raise ValueError(f"shortcut must be 'A', 'B' or 'C', got {shortcut!r}")
    if weights is not None:
        if input_norm is not None:
            raise ValueError("weights= brings the input normalisation stored with them; do not pass input_norm too")
        model, _ = load_network(weights, name, num_classes=num_classes, shortcut=shortcut,
                                stride_in_1x1=stride_in_1x1)
        if not normalize_input:
            model.input_norm = None
        return model.train()
    if not normalize_input and input_norm is not None:
        raise ValueError("normalize_input=False builds the network without input normalisation; "
                         "do not pass input_norm too")
    return spec.build(
        num_classes=num_classes or spec.default_num_classes,
        **({"shortcut": shortcut or spec.default_shortcut} if spec.residual else {}),
        stride_in_1x1=True if stride_in_1x1 is None else stride_in_1x1,
        zero_init_residual=zero_init_residual,
        input_norm=input_norm,
    )


def _is_training_checkpoint(obj: Any) -> bool:
    """A checkpoint `resnets train` wrote (any version: with or without the old "normalize" entry)."""
    return isinstance(obj, dict) and {"model", "config", "iteration"} <= set(obj)


def _from_training_checkpoint(path: Path, name: str | None, stride_in_1x1: bool | None,
                              ) -> tuple[ResNet, dict[str, Any], dict[str, Any]]:
    """A run's checkpoint: the network with the run's own normalisation (the per-pixel mean image),
    its model config, and {"run": the run's config, "iteration": where it stopped}."""
    state = load_checkpoint(path)
    try:
        run = from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} holds an unreadable config: {e}") from None
    m = run.model
    if name and name != m.name:
        raise CheckpointError(f"{path} holds weights of {m.name}, not {name}")
    try:
        network, norm = checkpoint_network(state, m.normalization)
    except (CheckpointError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    num_classes = network["fc.weight"].shape[0]
    model = create_model(m.name, num_classes=num_classes, shortcut=m.shortcut, stride_in_1x1=m.stride_in_1x1,
                         input_norm=norm)
    if stride_in_1x1 is not None and has_bottlenecks(model) and stride_in_1x1 != m.stride_in_1x1:
        raise ConfigError(f"--stride-in-1x1/--stride-in-3x3: {path} is a training checkpoint, loaded with the "
                          "stride placement it was trained with")
    load_state_dict(model, network)
    config = {"name": m.name, "num_classes": num_classes, "shortcut": m.shortcut or model_spec(m.name).default_shortcut,
              "stride_in_1x1": m.stride_in_1x1, "normalization": model.input_norm.kind if model.input_norm else "none"}
    return model.eval(), config, {"run": state["config"], "iteration": state["iteration"]}


def _from_resnets_file(path: Path, config: dict[str, Any], name: str | None, num_classes: int | None,
                       shortcut: str | None, stride_in_1x1: bool | None) -> tuple[ResNet, dict[str, Any]]:
    if name and config["name"] != name:
        raise CheckpointError(f"{path} holds weights of {config['name']}, not {name}")
    recorded = config.get("stride_in_1x1")
    placement = stride_in_1x1 if stride_in_1x1 is not None else (recorded if recorded is not None else True)
    net = build_network(config["name"], num_classes or config.get("num_classes"), shortcut or config.get("shortcut"),
                        placement, read_weights_normalization(path), config.get("stem"))
    if stride_in_1x1 is not None and has_bottlenecks(net):
        warn_if_stride_differs(recorded, stride_in_1x1, str(path))
    load_state_dict(net, path)
    return net.eval(), {**config, "stride_in_1x1": placement}


def _load(weights: str | os.PathLike, name: str | None, num_classes: int | None, shortcut: str | None,
          stride_in_1x1: bool | None, options: dict[str, Any]) -> tuple[ResNet, dict[str, Any], dict[str, Any]]:
    """(network, model config, {"run": the training run's config or None, "iteration" for a
    training checkpoint}): the one loader behind `load_network` and `model_from_file`."""
    entry = pretrained_weights(name, str(weights)) if name and is_tag(name, weights) else None
    if entry is not None:
        path = weights_file(entry)
    else:
        path = Path(weights)
        if not path.exists():
            tags = f"; known tags for {name}: {', '.join(tags_for(name)) or 'none'}" if name else ""
            raise CheckpointError(f"weights {weights}: no such file, and not a pretrained weights tag{tags}")
    state_dict = None
    if path.is_file() and path.suffix == ".safetensors" and read_weights_config(path).get("name"):
        if options:
            raise CheckpointError(f"{path} is already a resnets weights file; load it with create_model(..., weights=)")
        net, config = _from_resnets_file(path, read_weights_config(path), name, num_classes, shortcut, stride_in_1x1)
        if entry is not None:
            config = {**registry_config(entry), **{k: v for k, v in config.items() if v is not None}}
        return net, config, {"run": read_weights_metadata(path).get("config")}
    if path.is_file() and file_format(path) == "torch" and options.get("source", "auto") in ("auto", "torchvision",
                                                                                              "akamaster"):
        if path.suffix != ".safetensors":
            obj = load_torch_file(path, "weights file")
            if _is_training_checkpoint(obj):
                if any(options.get(k) is not None for k in ("normalization", "mean", "std")):
                    raise ConfigError(f"--normalization/--mean/--std: {path} is a resnets training checkpoint; its "
                                      "own input normalisation is kept and cannot be replaced")
                net, config, run = _from_training_checkpoint(path, name, stride_in_1x1)
                _check_fits(path, config, num_classes, shortcut)
                return net, config, run
            state_dict = state_dict_from(obj, path)
    net, config = convert_file(path, model=name, stride_in_1x1=stride_in_1x1, known=entry, state_dict=state_dict,
                               **options)
    _check_fits(path, config, num_classes, shortcut)
    return net, config, {"run": None}


def _check_fits(path: Path, config: dict[str, Any], num_classes: int | None, shortcut: str | None) -> None:
    for option, value in (("num_classes", num_classes), ("shortcut", shortcut)):
        if value is not None and value != config[option]:
            raise CheckpointError(f"{path}: the weights have {option}={config[option]!r}, not {value!r}")


def load_network(weights: str | os.PathLike, name: str | None = None, *, num_classes: int | None = None,
                 shortcut: str | None = None, stride_in_1x1: bool | None = None,
                 **convert_options: Any) -> tuple[ResNet, dict[str, Any]]:
    """The one loader: a trained network (eval mode, with its normalisation) and its model config.

    weights: a tag of `resnets.models.pretrained` for `name`, a resnets `model.safetensors` or
    training checkpoint, or a file from elsewhere (`resnets.models.formats`: torchvision,
    akamaster, Caffe, Keras), converted on the fly. `name`: the network expected; a file
    holding another is refused. The config carries the class names (and ImageNet synsets) and
    the evaluation resize/crop when they are known (`class_names`/`synsets` or the training
    data's `classes`; `eval_resize`, `eval_crop`).
    convert_options: those of `resnets.models.formats.convert_file` (source, normalization,
    mean, std, prototxt, mean_file).
    """
    net, config, _ = _load(weights, name, num_classes, shortcut, stride_in_1x1, convert_options)
    return net, config


def _source_digest(src: Path) -> tuple[str, str]:
    """(file name, sha256) of what was converted (a TF.js folder: its model.json); never a path."""
    from ..data.download import file_digest

    main = src / "model.json" if src.is_dir() else src
    return (f"{src.name}/{main.name}" if src.is_dir() else src.name), file_digest(main, "sha256")


def convert_weights(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Read weights from elsewhere (or a training checkpoint), convert them, write a resnets
    `model.safetensors` (network, normalisation, config). Options are those of
    :func:`load_network` (`model` for `name`). Returns the stored model config."""
    src = Path(src)
    if src.is_file() and src.suffix == ".safetensors" and read_weights_config(src).get("name"):
        raise CheckpointError(f"{src} is already a resnets weights file; load it with create_model(..., weights=)")
    name = options.pop("model", None)
    stride_in_1x1 = options.pop("stride_in_1x1", None)
    net, config, _ = _load(src, name, None, None, stride_in_1x1, {k: v for k, v in options.items() if v is not None})
    source_file, sha256 = _source_digest(src)
    save_weights(dst, net, config, metadata={"source_file": source_file, "source_sha256": sha256})
    return config
