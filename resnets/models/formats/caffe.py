"""The paper's own ImageNet models: the authors' Caffe ResNet-50/101/152 -> resnets networks.

github.com/KaimingHe/deep-residual-networks released the models of the paper as Caffe files:
`ResNet-{50,101,152}-deploy.prototxt` (the network), `ResNet-{50,101,152}-model.caffemodel`
(the weights) and `ResNet_mean.binaryproto` (the per-pixel mean image subtracted from every
input, Sec. 3.4). Their layout is the paper's own:

* stride 2 in the first 1x1 convolution of conv3_1, conv4_1 and conv5_1 (`res3a_branch2a`);
* projection shortcuts only where the shape changes (option B, `res*a_branch1`);
* BN as a Caffe `BatchNorm` layer (mean and variance, each times a scale factor) followed
  by a `Scale` layer (gamma, beta); ResNet-50's conv1 also has a bias;
* BGR input in 0..255 minus the mean image;
* a 3x3/2 max pooling without padding in Caffe's round-up mode, and a 7x7 average pooling.

Each convolution and its BatchNorm + Scale pair is mapped onto our modules by the names the
release uses (`conv1`/`bn_conv1`/`scale_conv1`, `res{2..5}{a,b,c,...|a,b1,b2,...}_branch{1,2a,2b,2c}`),
every kernel, stride and padding is checked against the network, and what differs is folded
exactly: conv1's bias into bn1's running mean (BN(x + b) is BN with mean - b), Caffe's BN
epsilon into the variance, BGR into conv1's input channels, and the mean image and the
0..255 scale into the network's `Normalize`. The result is a `resnet50/101/152` with the
paper's stride placement and the `imagenet_caffe` stem, which computes the Caffe network's
logits from the same image -- so `resnets eval --tta 10crop` runs the paper's 10-crop
protocol (Table 3) on the paper's own weights.

The files are read with the `protobuf` package (`pip install "resnets[caffe]"`); the messages
needed are built here as descriptors with caffe.proto's field numbers (BVLC/caffe), so
neither Caffe nor protoc is needed, and fields this converter does not use are skipped.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ..factory import IMAGENET_LAYOUTS, model_spec
from ..normalize import Normalize
from ..pretrained import label_config
from ..resnet import Bottleneck, ResNet

__all__ = ["convert_caffe", "caffe_messages"]

# (field name, number, type, repeated, message/enum type or None, default or None), from caffe.proto.
_MESSAGES: dict[str, tuple[tuple, ...]] = {
    "BlobShape": (("dim", 1, "int64", True, None, None),),
    "BlobProto": (
        ("shape", 7, "message", False, "BlobShape", None),
        ("data", 5, "float", True, None, None),
        ("double_data", 8, "double", True, None, None),
        # 4-D dimensions of files written before BlobShape existed.
        ("num", 1, "int32", False, None, None), ("channels", 2, "int32", False, None, None),
        ("height", 3, "int32", False, None, None), ("width", 4, "int32", False, None, None),
    ),
    "NetParameter": (
        ("name", 1, "string", False, None, None),
        ("input", 3, "string", True, None, None),
        ("input_shape", 8, "message", True, "BlobShape", None),
        ("input_dim", 4, "int32", True, None, None),
        ("layer", 100, "message", True, "LayerParameter", None),
        ("layers", 2, "message", True, "V1LayerParameter", None),  # the pre-2015 format, refused
    ),
    "V1LayerParameter": (),
    "LayerParameter": (
        ("name", 1, "string", False, None, None), ("type", 2, "string", False, None, None),
        ("bottom", 3, "string", True, None, None), ("top", 4, "string", True, None, None),
        ("blobs", 7, "message", True, "BlobProto", None),
        ("convolution_param", 106, "message", False, "ConvolutionParameter", None),
        ("batch_norm_param", 139, "message", False, "BatchNormParameter", None),
        ("scale_param", 142, "message", False, "ScaleParameter", None),
        ("pooling_param", 121, "message", False, "PoolingParameter", None),
        ("inner_product_param", 117, "message", False, "InnerProductParameter", None),
        ("eltwise_param", 110, "message", False, "EltwiseParameter", None),
    ),
    "ConvolutionParameter": (
        ("num_output", 1, "uint32", False, None, None), ("bias_term", 2, "bool", False, None, "true"),
        ("pad", 3, "uint32", True, None, None), ("kernel_size", 4, "uint32", True, None, None),
        ("stride", 6, "uint32", True, None, None), ("dilation", 18, "uint32", True, None, None),
        ("pad_h", 9, "uint32", False, None, None), ("pad_w", 10, "uint32", False, None, None),
        ("kernel_h", 11, "uint32", False, None, None), ("kernel_w", 12, "uint32", False, None, None),
        ("stride_h", 13, "uint32", False, None, None), ("stride_w", 14, "uint32", False, None, None),
        ("group", 5, "uint32", False, None, "1"), ("axis", 16, "int32", False, None, "1"),
    ),
    "BatchNormParameter": (
        ("use_global_stats", 1, "bool", False, None, None),
        ("moving_average_fraction", 2, "float", False, None, "0.999"),
        ("eps", 3, "float", False, None, "1e-05"),
    ),
    "ScaleParameter": (
        ("axis", 1, "int32", False, None, "1"), ("num_axes", 2, "int32", False, None, "1"),
        ("bias_term", 4, "bool", False, None, "false"),
    ),
    "PoolingParameter": (
        ("pool", 1, "enum", False, "PoolingParameter.PoolMethod", "MAX"),
        ("pad", 4, "uint32", False, None, "0"), ("pad_h", 9, "uint32", False, None, None),
        ("pad_w", 10, "uint32", False, None, None), ("kernel_size", 2, "uint32", False, None, None),
        ("kernel_h", 5, "uint32", False, None, None), ("kernel_w", 6, "uint32", False, None, None),
        ("stride", 3, "uint32", False, None, "1"), ("stride_h", 7, "uint32", False, None, None),
        ("stride_w", 8, "uint32", False, None, None), ("global_pooling", 12, "bool", False, None, "false"),
    ),
    "InnerProductParameter": (
        ("num_output", 1, "uint32", False, None, None), ("bias_term", 2, "bool", False, None, "true"),
        ("axis", 5, "int32", False, None, "1"), ("transpose", 6, "bool", False, None, "false"),
    ),
    "EltwiseParameter": (
        ("operation", 1, "enum", False, "EltwiseParameter.EltwiseOp", "SUM"),
        ("coeff", 2, "float", True, None, None),
    ),
}
_ENUMS = {
    "PoolingParameter": ("PoolMethod", (("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2))),
    "EltwiseParameter": ("EltwiseOp", (("PROD", 0), ("SUM", 1), ("MAX", 2))),
}


@functools.cache
def caffe_messages() -> dict[str, type]:
    """Message classes for the part of caffe.proto a ResNet needs, in a private descriptor pool."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise ConfigError('converting Caffe models needs the protobuf package: pip install "resnets[caffe]"') from None
    fdp = descriptor_pb2.FileDescriptorProto(name="resnets/caffe_subset.proto", package="caffe", syntax="proto2")
    kinds = descriptor_pb2.FieldDescriptorProto
    for message_name, fields in _MESSAGES.items():
        message = fdp.message_type.add(name=message_name)
        if message_name in _ENUMS:
            enum_name, values = _ENUMS[message_name]
            enum = message.enum_type.add(name=enum_name)
            for value_name, number in values:
                enum.value.add(name=value_name, number=number)
        for name, number, kind, repeated, type_name, default in fields:
            f = message.field.add(name=name, number=number, type=getattr(kinds, f"TYPE_{kind.upper()}"),
                                  label=kinds.LABEL_REPEATED if repeated else kinds.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".caffe.{type_name}"
            if default is not None:
                f.default_value = default
            if repeated and kind not in ("message", "string"):
                f.options.packed = True  # caffe.proto's [packed = true]; unpacked data parses too
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}")) for name in _MESSAGES}


def read_prototxt(path: str | os.PathLike) -> Any:
    """A NetParameter from a text prototxt (fields this converter does not use are skipped)."""
    net = caffe_messages()["NetParameter"]()  # first: it says how to install protobuf if missing
    from google.protobuf import text_format

    try:
        text_format.Parse(Path(path).read_text(), net, allow_unknown_field=True)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as e:
        raise CheckpointError(f"{path}: not a readable Caffe prototxt ({e})") from None
    return net


def _read_binary(path: str | os.PathLike, message: str) -> Any:
    msg = caffe_messages()[message]()
    from google.protobuf.message import DecodeError

    try:
        msg.ParseFromString(Path(path).read_bytes())
    except (OSError, DecodeError) as e:
        raise CheckpointError(f"{path}: not a readable Caffe {message} file ({e})") from None
    return msg


def blob_array(blob: Any) -> np.ndarray:
    """A BlobProto's values with its shape (BlobShape, or the legacy num/channels/height/width)."""
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    if int(np.prod(shape)) != values.size:
        shape = (values.size,)
    return values.reshape(shape)


@dataclass
class _Unit:
    """A convolution with the BatchNorm and Scale layers that follow it."""

    conv: Any
    bn: Any = None
    scale: Any = None


_BRANCH = re.compile(r"^res(\d+)([a-z])(\d*)_branch(1|2a|2b|2c)$")


def _units(net: Any, weights: dict[str, list[np.ndarray]]) -> tuple[dict[str, _Unit], Any, list[Any], int]:
    """The convolutions with their BN/Scale layers, the classifier, the pooling layers and the
    number of shortcut additions, following the blobs from layer to layer."""
    units: dict[str, _Unit] = {}
    producer: dict[str, tuple[str, str]] = {}  # blob -> (layer type, the convolution it belongs to)
    classifier, pools, sums = None, [], 0
    for layer in net.layer:
        kind, owner = layer.type, layer.name
        if kind == "Convolution":
            units[layer.name] = _Unit(layer)
        elif kind in ("BatchNorm", "Scale"):
            wanted = "Convolution" if kind == "BatchNorm" else "BatchNorm"
            previous, owner = producer.get(layer.bottom[0] if layer.bottom else "", (None, None))
            if previous != wanted:
                raise CheckpointError(f"layer {layer.name} ({kind}) does not follow a {wanted} layer; "
                                      "expected the authors' Convolution -> BatchNorm -> Scale layout")
            setattr(units[owner], "bn" if kind == "BatchNorm" else "scale", layer)
        elif kind == "InnerProduct":
            if classifier is not None:
                raise CheckpointError(f"two classifier (InnerProduct) layers: {classifier.name}, {layer.name}")
            classifier = layer
        elif kind == "Pooling":
            pools.append(layer)
        elif kind == "Eltwise":
            if layer.eltwise_param.operation != 1 or any(c != 1 for c in layer.eltwise_param.coeff):
                raise CheckpointError(f"layer {layer.name}: expected an element-wise SUM (the shortcut addition)")
            sums += 1
        elif kind not in ("ReLU", "Softmax", "Input"):
            raise CheckpointError(f"layer {layer.name}: type {kind!r} is not part of the authors' ResNets")
        for top in layer.top:
            producer[top] = (kind, owner)
    for name, unit in units.items():
        if unit.bn is None or unit.scale is None:
            raise CheckpointError(f"convolution {name} is not followed by BatchNorm and Scale layers")
        for layer in (unit.conv, unit.bn, unit.scale):
            if layer.name not in weights:
                raise CheckpointError(f"the caffemodel holds no weights for layer {layer.name}")
    if classifier is None or classifier.name not in weights:
        raise CheckpointError("no classifier (InnerProduct layer with weights) found")
    return units, classifier, pools, sums


def _layout(units: dict[str, _Unit]) -> tuple[dict[str, str], str, tuple[int, ...], bool, str]:
    """Our module prefix for each convolution; the model name, blocks per stage, stride
    placement and shortcut option that the layer names and strides describe."""
    blocks: dict[int, list[str]] = {}
    branches: dict[tuple[int, str], dict[str, str]] = {}
    for name in units:
        if name == "conv1":
            continue
        m = _BRANCH.match(name)
        if m is None:
            raise CheckpointError(f"convolution {name}: not a layer name of the authors' ResNets "
                                  "(conv1, res<stage><block>_branch<1|2a|2b|2c>)")
        stage, block = int(m.group(1)), m.group(2) + m.group(3)
        if block not in blocks.setdefault(stage, []):
            blocks[stage].append(block)
        branches.setdefault((stage, block), {})[m.group(4)] = name
    if "conv1" not in units or sorted(blocks) != [2, 3, 4, 5]:
        raise CheckpointError(f"expected conv1 and stages res2..res5, found stages {sorted(blocks)}")
    bottleneck = any("2c" in b for b in branches.values())
    layers = tuple(len(blocks[s]) for s in (2, 3, 4, 5))
    depth = next((d for d, (block, layout) in IMAGENET_LAYOUTS.items()
                  if layout == layers and (block is Bottleneck) == bottleneck), None)
    if depth is None:
        raise CheckpointError(f"{'bottleneck' if bottleneck else 'basic'} blocks per stage {layers} match no network "
                              f"of Table 1 ({', '.join(f'resnet{d}' for d in IMAGENET_LAYOUTS)})")
    own = {"1": "downsample.0", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
    prefixes = {"conv1": "conv1"}
    projected = []
    for stage, names in blocks.items():
        for i, block in enumerate(names):
            for branch, conv in branches[(stage, block)].items():
                prefixes[conv] = f"layer{stage - 1}.{i}.{own[branch]}"
            projected.append("1" in branches[(stage, block)])
    firsts = [i == 0 for s in (2, 3, 4, 5) for i in range(len(blocks[s]))]
    shortcut = "C" if all(projected) else ("B" if projected == firsts else None)
    if shortcut is None:
        raise CheckpointError("projection shortcuts (branch1) neither in exactly the first block of each stage "
                              "(option B) nor in every block (option C)")
    stride_1x1 = [_conv_geometry(units[branches[(s, blocks[s][0])]["2a"]].conv)[1] for s in (3, 4, 5)]
    return prefixes, f"resnet{depth}", layers, all(s == (2, 2) for s in stride_1x1), shortcut


def _pair(repeated: Any, h: int, w: int, default: int) -> tuple[int, int]:
    if h or w:
        return h, w
    values = list(repeated) or [default]
    return (values[0], values[-1])


def _conv_geometry(conv: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    p = conv.convolution_param
    return (_pair(p.kernel_size, p.kernel_h, p.kernel_w, 1), _pair(p.stride, p.stride_h, p.stride_w, 1),
            _pair(p.pad, p.pad_h, p.pad_w, 0))


def _check_pooling(pools: list[Any]) -> None:
    if len(pools) != 2:
        raise CheckpointError(f"expected two pooling layers (pool1 max, pool5 average), found {len(pools)}")
    first, last = (p.pooling_param for p in pools)
    if (first.pool, _pair([first.kernel_size], first.kernel_h, first.kernel_w, 1),
            _pair([first.stride], first.stride_h, first.stride_w, 1),
            _pair([first.pad], first.pad_h, first.pad_w, 0)) != (0, (3, 3), (2, 2), (0, 0)):
        raise CheckpointError(f"layer {pools[0].name}: expected 3x3/2 max pooling without padding (the authors' pool1)")
    if last.pool != 1 or not (last.global_pooling or last.kernel_size == 7 or last.kernel_h == 7):
        raise CheckpointError(f"layer {pools[1].name}: expected the final 7x7 (global) average pooling")


def _set(module: nn.Module, name: str, value: np.ndarray, layer: str) -> None:
    target = module.get_parameter(name) if name in dict(module.named_parameters()) else module.get_buffer(name)
    if value.size != target.numel():
        raise CheckpointError(f"layer {layer}: {value.size} values for {name} of shape {tuple(target.shape)}")
    target.data.copy_(torch.from_numpy(np.ascontiguousarray(value)).reshape(target.shape))


def _load_unit(net: ResNet, prefix: str, unit: _Unit, blobs: dict[str, list[np.ndarray]], bgr_input: bool) -> None:
    conv = net.get_submodule(prefix)
    # conv1 -> bn1, layerS.i.convK -> layerS.i.bnK, layerS.i.downsample.0 -> layerS.i.downsample.1
    bn = net.get_submodule(prefix[:-1] + "1" if prefix.endswith("downsample.0") else re.sub(r"conv(\d)$", r"bn\1", prefix))
    geometry = _conv_geometry(unit.conv)
    p = unit.conv.convolution_param
    if (geometry, p.num_output, p.group) != ((conv.kernel_size, conv.stride, conv.padding), conv.out_channels, 1):
        raise CheckpointError(f"layer {unit.conv.name}: kernel/stride/pad {geometry}, {p.num_output} outputs do not "
                              f"match {prefix} ({conv.kernel_size}, {conv.stride}, {conv.padding}, {conv.out_channels})")
    weight, *bias = blobs[unit.conv.name]
    weight = weight.reshape(conv.weight.shape) if weight.size == conv.weight.numel() else weight
    if bgr_input:
        weight = weight[:, ::-1]  # Caffe feeds BGR; our networks take RGB
    _set(conv, "weight", weight, unit.conv.name)
    mean, var, factor = blobs[unit.bn.name][:3]
    # Caffe keeps running sums and their scale factor: the statistics are sum / factor.
    inv = 0.0 if factor.ravel()[0] == 0 else 1.0 / float(factor.ravel()[0])
    mean, var = mean.ravel() * inv, var.ravel() * inv
    if p.bias_term and bias:
        mean = mean - bias[0].ravel()  # BN(conv(x) + b) == BN with its mean shifted by -b
    var = var + unit.bn.batch_norm_param.eps - bn.eps  # Caffe's epsilon, expressed with ours
    if (var < 0).any():
        raise CheckpointError(f"layer {unit.bn.name}: epsilon {unit.bn.batch_norm_param.eps} is below PyTorch's {bn.eps}")
    gamma, *beta = blobs[unit.scale.name]
    beta = beta[0] if unit.scale.scale_param.bias_term and beta else np.zeros_like(gamma)
    for name, value in (("running_mean", mean), ("running_var", var), ("weight", gamma), ("bias", beta)):
        _set(bn, name, value.ravel(), unit.bn.name if name.startswith("running") else unit.scale.name)


def read_mean_image(path: str | os.PathLike) -> torch.Tensor:
    """The mean image of a Caffe mean .binaryproto, as RGB in [0, 1], shape (3, H, W)."""
    mean = blob_array(_read_binary(path, "BlobProto"))
    mean = mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 else mean
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise CheckpointError(f"{path}: expected a 3-channel mean image, got shape {mean.shape}")
    return torch.from_numpy(np.ascontiguousarray(mean[::-1] / 255.0)).float()


def convert_caffe(prototxt: str | os.PathLike, caffemodel: str | os.PathLike,
                  mean_file: str | os.PathLike) -> tuple[ResNet, dict[str, Any]]:
    """The authors' Caffe ResNet as a resnets network (eval mode) and its model config."""
    net_def = read_prototxt(prototxt)
    trained = _read_binary(caffemodel, "NetParameter")
    if not trained.layer and trained.layers:
        raise CheckpointError(f"{caffemodel}: written in Caffe's old V1 layer format; upgrade it with Caffe's "
                              "upgrade_net_proto_binary first")
    blobs = {layer.name: [blob_array(b) for b in layer.blobs] for layer in trained.layer if layer.blobs}
    units, classifier, pools, sums = _units(net_def, blobs)
    prefixes, name, layers, stride_in_1x1, shortcut = _layout(units)
    _check_pooling(pools)
    if sums != sum(layers):
        raise CheckpointError(f"{prototxt}: {sums} shortcut additions (Eltwise) for {sum(layers)} blocks")
    fc_weight, *fc_bias = blobs[classifier.name]
    num_classes = int(classifier.inner_product_param.num_output)
    spec = model_spec(name)
    # Caffe subtracts the mean image from BGR pixels in 0..255; ours see RGB uint8 (or [0, 1])
    # and compute (x / 255 - mean / 255) / (1 / 255), the same numbers.
    net = spec.build(num_classes=num_classes, shortcut=shortcut, stride_in_1x1=stride_in_1x1, stem="imagenet_caffe",
                     input_norm=Normalize(read_mean_image(mean_file), 1.0 / 255.0))
    with torch.no_grad():
        for conv_name, unit in units.items():
            _load_unit(net, prefixes[conv_name], unit, blobs, bgr_input=conv_name == "conv1")
        if classifier.inner_product_param.transpose:
            raise CheckpointError(f"layer {classifier.name}: transposed InnerProduct weights are not supported")
        _set(net.fc, "weight", fc_weight, classifier.name)
        has_bias = classifier.inner_product_param.bias_term and fc_bias
        _set(net.fc, "bias", fc_bias[0] if has_bias else np.zeros(num_classes, np.float32), classifier.name)
    config = {"name": name, "num_classes": num_classes, "shortcut": shortcut, "stride_in_1x1": stride_in_1x1,
              "stem": "imagenet_caffe", "normalization": "per_pixel_mean", "converted_from": "caffe",
              # The authors' 1-crop numbers: the center 224 crop of the image resized to 256.
              "eval_resize": 256, "eval_crop": 224}
    if num_classes == 1000:
        config.update(label_config("imagenet1k"))
    return net.eval(), config

