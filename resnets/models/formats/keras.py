"""Keras Applications' ImageNet ResNets -> resnets networks.

Keras ships the authors' Caffe ResNet-50/101/152 (github.com/KaimingHe/deep-residual-networks)
re-saved as Keras models, in two forms this module reads:

* TensorFlow.js "layers" format: a folder with `model.json` (the Keras model config and a
  `weightsManifest`) and `group*-shard*of*.bin` files holding the tensors the manifest names,
  back to back, little-endian float32, split into shards of equal size (the last shorter);
* Keras HDF5 (`.h5`), the file `keras.applications.ResNet50(weights="imagenet")` downloads:
  a group per layer listing its `weight_names`, under `model_weights` when the whole model was
  saved (with its config in the `model_config` attribute), at the root for weights only.
  Read with h5py (`pip install "resnets[keras]"`).

Keras has named the layers two ways, both read here:

* Caffe's names (keras_applications' resnet50.py, and the TF.js package): `conv1`/`bn_conv1`,
  `res{2..5}{a,b,c,...}_branch{1,2a,2b,2c}` with `bn{2..5}..._branch...`, `fc1000`;
* keras.applications.resnet's: `conv1_conv`/`conv1_bn`, `conv{2..5}_block{1..}_{0,1,2,3}_conv`
  with `..._bn` (0 is the projection shortcut), `predictions`.

Both are the paper's network: a 7x7/2 convolution after 3-pixel zero padding, a 3x3/2 max
pooling after 1-pixel zero padding (after a ReLU, so zeros pad as PyTorch's -inf does),
stride 2 in the first 1x1 of conv3_1, conv4_1, conv5_1, projection shortcuts where the shape
changes (option B), global average pooling and a softmax classifier. The depth comes from
the number of blocks per stage (Table 1). What differs from ours is folded exactly:

* every convolution has a bias: BN(conv(x) + b) is BN with its running mean minus b;
* Keras' BatchNormalization epsilon (the layer's config; without one, 1e-3 for Caffe's names,
  the Keras default keras_applications' resnet50.py kept, and 1.001e-5 for resnet.py's, which
  sets it) goes into the running variance, with PyTorch's 1e-5 taken out;
* kernels are stored HWIO (height, width, input, output; Keras' layout whatever its
  data_format) and Dense kernels (input, output);
* the input: Keras' "caffe" preprocessing (BGR 0..255 minus the mean pixel, no scaling)
  becomes the network's own `Normalize` (RGB mean / 255, std 1 / 255) with BGR folded into
  conv1's input channels, so our network takes the same uint8 RGB images as every other;
* the softmax on the classifier is dropped: our networks return logits.

A model config, when the file has one, is checked layer by layer (kernel, stride, padding,
the pooling, the epsilon); what cannot be computed the same way is refused, naming the layer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CheckpointError, ConfigError
from ..factory import IMAGENET_LAYOUTS, model_spec
from ..normalize import Normalize
from ..pretrained import KERAS_CAFFE_MEAN_RGB, KERAS_CAFFE_STD, label_config
from ..resnet import Bottleneck, ResNet
from ..weights import load_state_dict

__all__ = ["KerasFile", "convert_keras", "is_keras_path", "read_keras"]

# The BatchNormalization epsilon of each naming scheme when the file carries no model config.
_DEFAULT_EPSILON = {"caffe": 1e-3, "keras": 1.001e-5}


@dataclass
class KerasFile:
    """What a Keras file holds: its tensors by "layer/weight" and, if saved, each layer's config."""

    path: str
    weights: dict[str, np.ndarray]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"class_name", "config"}


def is_keras_path(path: str | os.PathLike) -> bool:
    """A TF.js folder or model.json, or an HDF5 file (by name; the readers check the content)."""
    p = Path(path)
    return (p.is_dir() and (p / "model.json").is_file()) or p.suffix.lower() in (".json", ".h5", ".hdf5")


def read_keras(path: str | os.PathLike) -> KerasFile:
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".json":
        return _read_tfjs(p / "model.json" if p.is_dir() else p)
    return _read_hdf5(p)


def _weight_key(name: str) -> str:
    """"resnet50/res2a_branch2a/kernel:0" -> "res2a_branch2a/kernel" (layer and weight)."""
    parts = name.split(":")[0].split("/")
    return "/".join(parts[-2:])


def _layer_configs(model_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    config = model_config.get("config", {})
    layers = config.get("layers", []) if isinstance(config, dict) else []
    return {layer["name"]: layer for layer in layers if isinstance(layer, dict) and "name" in layer}


def _read_tfjs(path: Path) -> KerasFile:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable TF.js model.json ({e})") from None
    if not isinstance(model, dict) or "weightsManifest" not in model:
        raise CheckpointError(f"{path}: not a TF.js layers model (no weightsManifest)")
    topology = model.get("modelTopology") or {}
    layers = _layer_configs(topology.get("model_config", topology))
    weights: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        shards = [path.parent / p for p in group["paths"]]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"{path}: its weights shard {shard.name} is missing")
        sizes = [s.stat().st_size for s in shards]
        entries = group["weights"]
        for entry in entries:
            if entry.get("dtype", "float32") != "float32" or entry.get("quantization"):
                raise CheckpointError(f"{path}: weight {entry['name']} is stored as {entry.get('dtype')}"
                                      f"{' quantized' if entry.get('quantization') else ''}; only float32 is read")
        needed = sum(4 * int(np.prod(e["shape"], dtype=np.int64)) for e in entries)
        # The converter cuts the group's bytes into shards of one size; only the last is shorter.
        for shard, size in zip(shards[:-1], sizes[:-1]):
            if size != sizes[0]:
                raise CheckpointError(f"{shard}: truncated shard ({size} bytes; the shards before it hold {sizes[0]})")
        if sum(sizes) < needed:
            raise CheckpointError(f"{shards[-1]}: truncated shard: the manifest in {path.name} needs {needed} bytes, "
                                  f"the {len(shards)} shards hold {sum(sizes)}")
        if sum(sizes) > needed:
            raise CheckpointError(f"{path}: the shards hold {sum(sizes)} bytes but the manifest describes {needed}: "
                                  "they belong to another model.json")
        data = np.frombuffer(b"".join(s.read_bytes() for s in shards), dtype="<f4")
        offset = 0
        for entry in entries:
            n = int(np.prod(entry["shape"], dtype=np.int64))
            weights[_weight_key(entry["name"])] = data[offset:offset + n].reshape(entry["shape"])
            offset += n
    return KerasFile(str(path), weights, layers)


def _read_hdf5(path: Path) -> KerasFile:
    try:
        import h5py
    except ImportError:
        raise ConfigError(f'{path}: reading Keras HDF5 files needs h5py: pip install "resnets[keras]"') from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise CheckpointError(f"{path}: not a Keras HDF5 weights file (no layer_names attribute; Keras 3's "
                                  "'.weights.h5' layout is not read: save with the legacy .h5 format)")
        weights = {}
        for layer in root.attrs["layer_names"]:
            group = root[layer.decode() if isinstance(layer, bytes) else layer]
            for name in group.attrs.get("weight_names", []):
                name = name.decode() if isinstance(name, bytes) else name
                weights[_weight_key(name)] = np.asarray(group[name][()], dtype=np.float32)
        layers = {}
        config = f.attrs.get("model_config")
        if config is not None:
            try:
                layers = _layer_configs(json.loads(config.decode() if isinstance(config, bytes) else config))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: unreadable model_config attribute ({e})") from None
    return KerasFile(str(path), weights, layers)


# Layer names of the two schemes. Caffe's: res<stage><block>_branch<1|2a|2b|2c>; block ids are
# a, b, c, ... (ResNet-50) or a, b1, b2, ... (the authors' 101/152).
_CAFFE_CONV = re.compile(r"^res(\d)([a-z])(\d*)_branch(1|2a|2b|2c)$")
_KERAS_CONV = re.compile(r"^conv(\d)_block(\d+)_([0-3])_conv$")
# Our module for each branch (Caffe's branch names); keras.applications.resnet numbers them 0..3.
_OUR_BRANCH = {"1": "downsample.0", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_KERAS_BRANCH = {"1": 0, "2a": 1, "2b": 2, "2c": 3}


@dataclass(frozen=True)
class _Scheme:
    name: str  # "caffe" or "keras"
    conv1: str
    bn1: str
    fc: str

    def blocks(self, layer_names: set[str]) -> dict[int, list[str]]:
        """Block ids per stage, in order, from the convolution names present."""
        found: dict[int, set[tuple]] = {}
        for name in layer_names:
            if self.name == "caffe" and (m := _CAFFE_CONV.match(name)):
                found.setdefault(int(m.group(1)), set()).add((m.group(2), int(m.group(3) or 0), m.group(2) + m.group(3)))
            elif self.name == "keras" and (m := _KERAS_CONV.match(name)):
                found.setdefault(int(m.group(1)), set()).add((int(m.group(2)), 0, m.group(2)))
        return {stage: [b[2] for b in sorted(ids)] for stage, ids in found.items()}

    def conv(self, stage: int, block: str, branch: str) -> str:
        """Our branch (1/2a/2b/2c) of a block as this scheme names its convolution."""
        if self.name == "caffe":
            return f"res{stage}{block}_branch{branch}"
        return f"conv{stage}_block{block}_{_KERAS_BRANCH[branch]}_conv"

    def bn(self, conv: str) -> str:
        if conv == self.conv1:
            return self.bn1
        return "bn" + conv[3:] if self.name == "caffe" else conv[: -len("conv")] + "bn"


_SCHEMES = (_Scheme("caffe", "conv1", "bn_conv1", "fc1000"), _Scheme("keras", "conv1_conv", "conv1_bn", "predictions"))


class _Layers:
    """The file's tensors by layer, with errors that name the file and the missing layer."""

    def __init__(self, keras: KerasFile) -> None:
        self.file = keras
        self.by_layer: dict[str, dict[str, np.ndarray]] = {}
        for key, value in keras.weights.items():
            layer, _, weight = key.rpartition("/")
            self.by_layer.setdefault(layer, {})[weight] = value

    def fail(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.file.path}: not a Keras ResNet: {message}")

    def get(self, layer: str, weight: str, shape: tuple[int, ...]) -> np.ndarray:
        if layer not in self.by_layer:
            raise self.fail(f"layer {layer} is missing")
        value = self.by_layer[layer].get(weight)
        if value is None:
            raise self.fail(f"layer {layer} has no {weight} (it has {', '.join(sorted(self.by_layer[layer]))})")
        if tuple(value.shape) != shape:
            raise self.fail(f"{layer}/{weight} has shape {tuple(value.shape)}, expected {shape}")
        return value

    def config(self, layer: str) -> dict[str, Any] | None:
        entry = self.file.layers.get(layer)
        return entry.get("config", {}) if entry else None


def _scheme(layers: _Layers) -> _Scheme:
    for scheme in _SCHEMES:
        if scheme.conv1 in layers.by_layer:
            return scheme
    raise layers.fail("no layer conv1 (Caffe's names, e.g. res2a_branch2a) or conv1_conv "
                      "(keras.applications.resnet's, e.g. conv2_block1_1_conv)")


def _architecture(layers: _Layers, scheme: _Scheme) -> tuple[str, dict[int, list[str]]]:
    blocks = scheme.blocks(set(layers.by_layer))
    missing = [s for s in (2, 3, 4, 5) if s not in blocks]
    if missing:
        raise layers.fail(f"layer {scheme.conv(missing[0], 'a' if scheme.name == 'caffe' else '1', '2a')} is "
                          f"missing (no stage {missing[0]})")
    counts = tuple(len(blocks[s]) for s in (2, 3, 4, 5))
    for depth, (block, layout) in IMAGENET_LAYOUTS.items():
        if block is Bottleneck and layout == counts:
            return f"resnet{depth}", blocks
    raise layers.fail(f"blocks per stage {counts} match no bottleneck network of Table 1 "
                      f"(resnet50 {IMAGENET_LAYOUTS[50][1]}, resnet101 {IMAGENET_LAYOUTS[101][1]}, "
                      f"resnet152 {IMAGENET_LAYOUTS[152][1]})")


def _check_conv(layers: _Layers, layer: str, conv: torch.nn.Conv2d) -> None:
    """Kernel, stride and padding as the saved config has them (conv1 pads before, in a layer)."""
    config = layers.config(layer)
    if config is None:
        return
    kernel, stride = tuple(config.get("kernel_size", ())), tuple(config.get("strides", (1, 1)))
    padding = config.get("padding", "valid")
    same = padding == "same" and stride == (1, 1) and conv.padding == tuple(k // 2 for k in kernel)
    valid = padding == "valid" and (conv.padding == (0, 0) or conv.kernel_size == (7, 7))
    if (kernel, stride) != (conv.kernel_size, conv.stride) or not (same or valid) \
            or tuple(config.get("dilation_rate", (1, 1))) != (1, 1) or config.get("groups", 1) != 1:
        raise layers.fail(f"layer {layer}: kernel {kernel}, strides {stride}, padding {padding!r} do not compute "
                          f"our {conv.kernel_size} convolution with stride {conv.stride} and padding {conv.padding}")


def _check_stem(layers: _Layers) -> None:
    """conv1 after 3 pixels of zero padding; one 3x3/2 max pooling after 1 pixel of zero padding."""
    if not layers.file.layers:
        return
    by_class: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in layers.file.layers.items():
        by_class.setdefault(entry.get("class_name", ""), []).append((name, entry.get("config", {})))
    pads = [(name, np.array(c.get("padding")).ravel().tolist()) for name, c in by_class.get("ZeroPadding2D", [])]
    pools = by_class.get("MaxPooling2D", [])
    if [p for _, p in pads] != [[3, 3, 3, 3], [1, 1, 1, 1]]:
        raise layers.fail(f"expected zero padding of 3 before conv1 and of 1 before the max pooling, found "
                          f"{pads or 'none'} (a max pooling without padding, as early keras_applications built "
                          "it, is not ours)")
    if len(pools) != 1 or (tuple(pools[0][1].get("pool_size", ())), tuple(pools[0][1].get("strides", ())),
                           pools[0][1].get("padding")) != ((3, 3), (2, 2), "valid"):
        raise layers.fail(f"expected one 3x3/2 max pooling, found {[name for name, _ in pools]}")
    for kind in ("AveragePooling2D", "Flatten", "Dropout"):
        if kind in by_class:
            raise layers.fail(f"layer {by_class[kind][0][0]} ({kind}) is not part of the paper's ResNet "
                              "(global average pooling, then the classifier)")


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(value, dtype=np.float32))  # a copy: the file's arrays may be read-only


def _conv_bn(layers: _Layers, scheme: _Scheme, layer: str, net: ResNet, prefix: str,
             state: dict[str, torch.Tensor], bgr_input: bool = False) -> None:
    """conv + BN of Keras -> our bias-free conv and BN, folding the bias and the epsilon."""
    conv = net.get_submodule(prefix)
    bn_prefix = prefix[:-1] + "1" if prefix.endswith("downsample.0") else re.sub(r"conv(\d)$", r"bn\1", prefix)
    bn_module = net.get_submodule(bn_prefix)
    out, c_in, kh, kw = conv.weight.shape
    _check_conv(layers, layer, conv)
    kernel = layers.get(layer, "kernel", (kh, kw, c_in, out)).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if bgr_input:
        kernel = kernel[:, ::-1]  # Keras feeds BGR; our networks take RGB
    bn = scheme.bn(layer)
    mean = layers.get(bn, "moving_mean", (out,)).astype(np.float64)
    variance = layers.get(bn, "moving_variance", (out,)).astype(np.float64)
    config = layers.config(layer)
    if config.get("use_bias", True) if config is not None else "bias" in layers.by_layer[layer]:
        mean = mean - layers.get(layer, "bias", (out,))  # BN(conv(x) + b) == BN with its mean shifted by -b
    bn_config = layers.config(bn)
    epsilon = float(bn_config["epsilon"]) if bn_config and "epsilon" in bn_config else _DEFAULT_EPSILON[scheme.name]
    if bn_config and bn_config.get("axis") not in (3, -1, [3], [-1], 1, [1]):
        raise layers.fail(f"layer {bn}: normalises axis {bn_config.get('axis')}, not the channels")
    variance = variance + epsilon - bn_module.eps  # Keras' epsilon, expressed with ours
    if (variance < 0).any():
        raise layers.fail(f"layer {bn}: epsilon {epsilon} is below PyTorch's {bn_module.eps}")
    scale = (bn_config or {}).get("scale", True)
    center = (bn_config or {}).get("center", True)
    gamma = layers.get(bn, "gamma", (out,)) if scale else np.ones(out, np.float32)
    beta = layers.get(bn, "beta", (out,)) if center else np.zeros(out, np.float32)
    state[prefix + ".weight"] = _tensor(kernel)
    for name, value in (("running_mean", mean), ("running_var", variance), ("weight", gamma), ("bias", beta)):
        state[f"{bn_prefix}.{name}"] = _tensor(value)


def convert_keras(keras: KerasFile) -> tuple[ResNet, dict[str, Any]]:
    """The Keras ResNet as a resnets network (eval mode) and its model config."""
    layers = _Layers(keras)
    scheme = _scheme(layers)
    name, blocks = _architecture(layers, scheme)
    fc = layers.by_layer.get(scheme.fc)
    if fc is None or "kernel" not in fc:
        raise layers.fail(f"layer {scheme.fc} (the classifier) is missing")
    num_classes = int(fc["kernel"].shape[-1])
    _check_stem(layers)
    fc_config = layers.config(scheme.fc) or {}
    if fc_config.get("activation", "softmax") not in ("softmax", "linear"):
        raise layers.fail(f"layer {scheme.fc}: activation {fc_config['activation']!r}, expected softmax")
    net = model_spec(name).build(num_classes=num_classes, shortcut="B", stride_in_1x1=True,
                                 input_norm=Normalize(torch.tensor(KERAS_CAFFE_MEAN_RGB), torch.tensor(KERAS_CAFFE_STD)))
    state: dict[str, torch.Tensor] = {}
    _conv_bn(layers, scheme, scheme.conv1, net, "conv1", state, bgr_input=True)
    for stage in (2, 3, 4, 5):
        for i, block in enumerate(blocks[stage]):
            for branch in (("1", "2a", "2b", "2c") if i == 0 else ("2a", "2b", "2c")):
                prefix = f"layer{stage - 1}.{i}.{_OUR_BRANCH[branch]}"
                _conv_bn(layers, scheme, scheme.conv(stage, block, branch), net, prefix, state)
    # Keras' Dense computes x @ kernel + bias, and its softmax is dropped: logits, like our networks.
    state["fc.weight"] = _tensor(layers.get(scheme.fc, "kernel", (2048, num_classes)).T)
    state["fc.bias"] = _tensor(layers.get(scheme.fc, "bias", (num_classes,)))
    load_state_dict(net, state)
    config: dict[str, Any] = {
        "name": name, "num_classes": num_classes, "shortcut": "B", "stride_in_1x1": True,
        "normalization": net.input_norm.kind, "converted_from": "keras",
        # The paper's and the authors' 1-crop view: the center 224 crop of the image resized to 256.
        "eval_resize": 256, "eval_crop": 224}
    if num_classes == 1000:
        config.update(label_config("imagenet1k"))
    return net.eval(), config
