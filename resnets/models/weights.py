"""Reading and writing network weights.

`model.safetensors` files written by resnets carry their own description in the
safetensors metadata (torchvision-style "weights carrying their metadata"): the model
config (name, num_classes, shortcut, stride placement), the input normalisation tensors
(stored under `input_norm.*`, outside the torchvision key space) and whatever the run
measured. Nothing is ever unpickled: .pt files are read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from .normalize import Normalize

_NORM_PREFIX = "input_norm."
# Prefixes left by wrappers: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Write via `write(tmp_path)` to a temp file in the same directory, fsync, then rename.

    A crash (or kill -9) at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)`, with one line saying why a file is refused.

    torch's own messages run over several lines and advise `weights_only=False`, which
    would execute whatever the file holds; a file that needs it is never loaded here.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, refused globals
        raise CheckpointError(f"{what} {path} {_refusal_reason(e)}") from None


def _refusal_reason(error: Exception) -> str:
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"is refused: it asks to import the Python object {found.group(1)}, and only tensors and plain "
                "values are ever loaded (nothing in it was run)")
    found = re.search(r"reading zip archive: ([^.]+)", text)
    if found:
        return f"is corrupt or truncated (its zip container: {found.group(1)})"
    if "Unsupported operand" in text or isinstance(error, (EOFError, ValueError)) or "pickle" in type(error).__name__.lower():
        return "is corrupt or truncated, or not a PyTorch file of tensors and plain values"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"cannot be read ({type(error).__name__}: {first[:160]})"


def save_weights(path: str | os.PathLike, model: nn.Module, model_config: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None = None) -> None:
    """Write the network, its normalisation and its config as one safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    norm = getattr(model, "input_norm", None)
    if norm is not None:
        tensors[_NORM_PREFIX + "mean"] = norm.mean.detach().cpu().contiguous()
        tensors[_NORM_PREFIX + "std"] = norm.std.detach().cpu().contiguous()
    header = {"format": "resnets", "model": json.dumps(dict(model_config)),
              "metadata": json.dumps(dict(metadata or {}))}
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


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What the run that wrote a resnets weights file recorded (metrics, data set, ...)."""
    header = _safetensors_header(path)
    return json.loads(header.get("metadata", "{}"))


def _require_file(path: str | os.PathLike) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"weights file {path} does not exist")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from .safetensors or a .pt/.pth file (a bare state dict, or one under
    'state_dict' / 'model' / 'net' as training scripts commonly save it)."""
    _require_file(path)
    if str(path).endswith(".safetensors"):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    obj = load_torch_file(path, "weights file")
    for key in ("state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return obj


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_state_dict(model: nn.Module, path_or_dict: str | os.PathLike | Mapping[str, Tensor]) -> nn.Module:
    """Load weights strictly, accepting `module.` / `_orig_mod.` prefixes.

    On mismatch the CheckpointError names the missing keys, the unexpected keys and the
    shape mismatches, instead of PyTorch's wall of text.
    """
    source = "state dict"
    if isinstance(path_or_dict, Mapping):
        state_dict = dict(path_or_dict)
    else:
        source = str(path_or_dict)
        state_dict = read_state_dict(path_or_dict)
    state_dict = strip_wrapper_prefixes(state_dict)
    norm = {k[len(_NORM_PREFIX):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(_NORM_PREFIX)}

    expected = model.state_dict()
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
    if norm:
        model.input_norm = Normalize(norm["mean"], norm["std"]).to(next(model.parameters()).device)
    return model


def load_weights_into(model: nn.Module, path: str | os.PathLike, expected_name: str | None = None,
                      stride_in_1x1: bool | None = None) -> nn.Module:
    """Load a weights file into `model`, checking the file describes the same network."""
    config = read_weights_config(path)
    if expected_name and config.get("name") not in (None, expected_name):
        raise CheckpointError(f"{path} holds weights of {config['name']}, not {expected_name}")
    if stride_in_1x1 is not None and _has_bottlenecks(model):
        warn_if_stride_differs(config.get("stride_in_1x1"), stride_in_1x1, str(path))
    return load_state_dict(model, path)


def _has_bottlenecks(model: nn.Module) -> bool:
    from .resnet import Bottleneck

    return any(isinstance(m, Bottleneck) for m in model.modules())


def warn_if_stride_differs(file_stride_in_1x1: bool | None, model_stride_in_1x1: bool, source: str) -> None:
    """v1.5 weights (stride in the 3x3) in a paper-stride network: keys match, maths differs."""
    if file_stride_in_1x1 is not None and file_stride_in_1x1 != model_stride_in_1x1:
        placement = {True: "the first 1x1 (paper)", False: "the 3x3 (v1.5)"}
        warnings.warn(f"{source} was trained with the stride in {placement[file_stride_in_1x1]}, "
                      f"but the network puts it in {placement[model_stride_in_1x1]}: the keys match, "
                      f"the computation differs", stacklevel=3)
