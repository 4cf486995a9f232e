"""Reading and writing network weights.

`model.safetensors` files written by resnets carry their own description in the
safetensors metadata (torchvision-style "weights carrying their metadata"): the model
config (name, num_classes, shortcut, stride placement), the input normalisation tensors
(`input_norm.*`, see `resnets.models.normalize`) and whatever the run measured.
`load_state_dict` loads the network's own weights only; the normalisation is read with
`read_weights_normalization` and given to the network when it is built (`create_model`).
Nothing is ever unpickled: .pt files are read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from ..io import atomic_write, load_torch_file
from .formats.akamaster import from_akamaster, is_akamaster_layout
from .normalize import Normalize, normalization_state, split_normalization
from .resnet import Bottleneck, ResNet

# Prefixes left by wrappers: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# An absolute path inside a text: POSIX (/a/b), home (~/a) or Windows (X:\\a\\b), not a URL's
# "//host/..." nor a relative "a/b"; group 1 is its last component.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\\[\]()'\",;]+[/\\])*([^\s/\\\[\]()'\",;]*)")


def without_machine_paths(value: Any) -> Any:
    """`value` (a JSON-like metadata tree) with every absolute path in its strings cut to the
    path's last component: a weights file leaves the machine that wrote it, and must not carry
    its directory layout, home or working directory (issue 28). The data set stays identified
    by content (`data_sha256`, `data_fingerprint`) and by its file name."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda m: m.group(1), value)
    if isinstance(value, Mapping):
        return {k: without_machine_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_machine_paths(v) for v in value]
    return value


def save_weights(path: str | os.PathLike, model: nn.Module, model_config: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Write the network, its normalisation and its config as one safetensors file; no absolute
    path of this machine goes into it (`without_machine_paths`)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(normalization_state(getattr(model, "input_norm", None)))
    header = {"format": "resnets", "model": json.dumps(without_machine_paths(dict(model_config))),
              "metadata": json.dumps(without_machine_paths(dict(metadata or {})))}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _safetensors_header(path: str | os.PathLike) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_weights_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config stored in a resnets weights file ({} for foreign files)."""
    _require_file(path)
    if str(path).endswith(".safetensors"):
        header = _safetensors_header(path)
        return json.loads(header.get("model", "{}"))
    return {}


def read_weights_normalization(path: str | os.PathLike) -> Normalize | None:
    """The input normalisation stored in a weights file (None when it holds none)."""
    return split_normalization(read_state_dict(path), str(path))[1]


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What the run that wrote a resnets weights file recorded (metrics, data set, ...)."""
    header = _safetensors_header(path)
    return json.loads(header.get("metadata", "{}"))


def _require_file(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"weights file {path} does not exist")


# Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from .safetensors or a .pt/.pth/.th file, as checkpoints come in the wild.

    Accepts a bare state dict or one nested under 'state_dict' / 'model' / 'net' /
    'model_state_dict', next to other entries (epoch, best accuracy, optimizer, ...);
    non-tensor entries of the state dict itself are dropped. Both of torch's formats load
    (zip, and the legacy pickle one of PyTorch < 1.6), always with `weights_only=True`.
    """
    _require_file(path)
    if str(path).endswith(".safetensors"):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return state_dict_from(load_torch_file(path, "weights file"), path)


def state_dict_from(obj: Any, path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object (see `read_state_dict`)."""
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):  # a bare state dict maps every name to a tensor
                obj = obj[key]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        found = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a state dict (names to tensors), bare or under one of "
                              f"{', '.join(_WRAPPER_KEYS)}; found {found}")
    return tensors


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_state_dict(model: nn.Module, path_or_dict: str | os.PathLike | Mapping[str, Tensor]) -> nn.Module:
    """Load weights strictly, accepting `module.` / `_orig_mod.` prefixes and the layout of
    akamaster/pytorch_resnet_cifar10 checkpoints (see `resnets.models.formats.akamaster`).

    BatchNorm's `num_batches_tracked` (added in PyTorch 0.4.1, used only in training with
    momentum=None) may be missing, as in checkpoints saved by older PyTorch: it starts at 0,
    as PyTorch itself does when it loads such files. Every other mismatch raises a
    CheckpointError naming the missing keys, the unexpected keys and the shape mismatches,
    instead of PyTorch's wall of text.
    """
    source = "state dict"
    if isinstance(path_or_dict, Mapping):
        state_dict = dict(path_or_dict)
    else:
        source = str(path_or_dict)
        state_dict = read_state_dict(path_or_dict)
    # The network's own tensors; a stored normalisation is not the network's to load (it is
    # given when the network is built, `resnets.models.loading`), but a half-stored one is refused.
    state_dict, _ = split_normalization(strip_wrapper_prefixes(state_dict), source)
    if is_akamaster_layout(state_dict) and isinstance(model, ResNet):
        state_dict = from_akamaster(state_dict, model)

    expected = model.state_dict()
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(expected[key])
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") or "none"
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}; shape mismatches: {show(shapes)}")
    model.load_state_dict(state_dict, strict=True)
    return model


def has_bottlenecks(model: nn.Module) -> bool:
    return any(isinstance(m, Bottleneck) for m in model.modules())


def warn_if_stride_differs(file_stride_in_1x1: bool | None, model_stride_in_1x1: bool, source: str) -> None:
    """v1.5 weights (stride in the 3x3) in a paper-stride network: keys match, maths differs."""
    if file_stride_in_1x1 is not None and file_stride_in_1x1 != model_stride_in_1x1:
        placement = {True: "the first 1x1 (paper)", False: "the 3x3 (v1.5)"}
        warnings.warn(f"{source} was trained with the stride in {placement[file_stride_in_1x1]}, "
                      f"but the network puts it in {placement[model_stride_in_1x1]}: the keys match, "
                      f"the computation differs", stacklevel=3)
