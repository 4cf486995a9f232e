"""The authors' Caffe ResNets -> resnets, checked against a Caffe interpreter written here.

The test writes a ResNet-50 in the exact layout of github.com/KaimingHe/deep-residual-networks
(`ResNet-50-deploy.prototxt`: the layer names, conv1's bias, BatchNorm + Scale pairs, the
stride in branch2a, pool1 without padding, the 7x7 average pool) with random weights as a
.caffemodel and a mean image as a .binaryproto, both serialised with protobuf. The reference
executes the same layer list the way Caffe defines each layer (BGR input minus the mean
image, running sums / scale factor in BatchNorm, round-up pooling) -- without the converter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnets.cli import main
from resnets.errors import CheckpointError
from resnets.models import create_model, read_weights_config
from resnets.models.formats.caffe import _layout, _units, caffe_messages, convert_caffe, read_prototxt

LETTERS = "abcdefghijklmnopqrstuvwxyz"
STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def authors_layers(depth: int, num_classes: int = 1000) -> list[dict]:
    """The layers of the authors' ResNet-{depth}-deploy.prototxt, in order."""
    layers = []

    def conv(name, bottom, out, kernel, stride, pad, bias=False):
        layers.append(dict(name=name, type="Convolution", bottom=[bottom], top=name, num_output=out,
                           kernel_size=kernel, stride=stride, pad=pad, bias_term=bias))
        suffix = name[3:] if name.startswith("res") else "_" + name
        layers.append(dict(name=f"bn{suffix}", type="BatchNorm", bottom=[name], top=name))
        layers.append(dict(name=f"scale{suffix}", type="Scale", bottom=[name], top=name))

    def relu(name, blob):
        layers.append(dict(name=name, type="ReLU", bottom=[blob], top=blob))

    conv("conv1", "data", 64, 7, 2, 3, bias=depth == 50)  # the released ResNet-50 has a conv1 bias
    relu("conv1_relu", "conv1")
    layers.append(dict(name="pool1", type="Pooling", bottom=["conv1"], top="pool1", pool="MAX", kernel_size=3, stride=2))
    bottom, channels = "pool1", 64
    for stage, (blocks, width) in enumerate(zip(STAGES[depth], (64, 128, 256, 512)), start=2):
        for i in range(blocks):
            block = "a" if i == 0 else (LETTERS[i] if depth == 50 else f"b{i}")
            name, stride = f"res{stage}{block}", 2 if i == 0 and stage > 2 else 1
            shortcut = bottom
            if i == 0:
                conv(f"{name}_branch1", bottom, width * 4, 1, stride, 0)
                shortcut = f"{name}_branch1"
            conv(f"{name}_branch2a", bottom, width, 1, stride, 0)  # the paper's stride: in the first 1x1
            relu(f"{name}_branch2a_relu", f"{name}_branch2a")
            conv(f"{name}_branch2b", f"{name}_branch2a", width, 3, 1, 1)
            relu(f"{name}_branch2b_relu", f"{name}_branch2b")
            conv(f"{name}_branch2c", f"{name}_branch2b", width * 4, 1, 1, 0)
            layers.append(dict(name=name, type="Eltwise", bottom=[shortcut, f"{name}_branch2c"], top=name))
            relu(f"{name}_relu", name)
            bottom, channels = name, width * 4
    layers.append(dict(name="pool5", type="Pooling", bottom=[bottom], top="pool5", pool="AVE", kernel_size=7, stride=1))
    layers.append(dict(name="fc1000", type="InnerProduct", bottom=["pool5"], top="fc1000", num_output=num_classes))
    layers.append(dict(name="prob", type="Softmax", bottom=["fc1000"], top="prob"))
    return layers


def prototxt(layers: list[dict], depth: int) -> str:
    """The layers as the authors wrote them (tab-indented blocks, the same fields and order)."""
    text = [f'name: "ResNet-{depth}"', 'input: "data"', "input_dim: 1", "input_dim: 3", "input_dim: 224",
            "input_dim: 224", ""]
    for layer in layers:
        lines = [f'\tbottom: "{b}"' for b in layer["bottom"]]
        lines += [f'\ttop: "{layer["top"]}"', f'\tname: "{layer["name"]}"', f'\ttype: "{layer["type"]}"']
        kind = layer["type"]
        if kind == "Convolution":
            lines += ["\tconvolution_param {", f"\t\tnum_output: {layer['num_output']}",
                      f"\t\tkernel_size: {layer['kernel_size']}", f"\t\tpad: {layer['pad']}",
                      f"\t\tstride: {layer['stride']}"] + ([] if layer["bias_term"] else ["\t\tbias_term: false"]) + ["\t}"]
        elif kind == "BatchNorm":
            lines += ["\tbatch_norm_param {", "\t\tuse_global_stats: true", "\t}"]
        elif kind == "Scale":
            lines += ["\tscale_param {", "\t\tbias_term: true", "\t}"]
        elif kind == "Pooling":
            lines += ["\tpooling_param {", f"\t\tkernel_size: {layer['kernel_size']}", f"\t\tstride: {layer['stride']}",
                      f"\t\tpool: {layer['pool']}", "\t}"]
        elif kind == "InnerProduct":
            lines += ["\tinner_product_param {", f"\t\tnum_output: {layer['num_output']}", "\t}"]
        text += ["layer {", *lines, "}", ""]
    return "\n".join(text)


def random_blobs(layers: list[dict], seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Weights as Caffe stores them: BN as running sums with a scale factor, Scale as gamma/beta."""
    rng = np.random.default_rng(seed)
    blobs, channels = {}, {"data": 3}
    for layer in layers:
        kind, name = layer["type"], layer["name"]
        if kind == "Convolution":
            c_in, k, out = channels[layer["bottom"][0]], layer["kernel_size"], layer["num_output"]
            weight = rng.normal(0, math.sqrt(2 / (c_in * k * k)), (out, c_in, k, k)).astype(np.float32)
            blobs[name] = [weight] + ([rng.normal(0, 0.5, out).astype(np.float32)] if layer["bias_term"] else [])
            channels[layer["top"]] = out
        elif kind == "BatchNorm":
            n, factor = channels[layer["top"]], np.float32(rng.uniform(0.5, 1000))
            mean = rng.normal(0, 0.2, n).astype(np.float32)
            var = rng.uniform(0.5, 2.0, n).astype(np.float32)
            blobs[name] = [mean * factor, var * factor, np.array([factor], np.float32)]
        elif kind == "Scale":
            n = channels[layer["top"]]
            blobs[name] = [rng.uniform(0.3, 1.0, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32)]
        elif kind == "InnerProduct":
            blobs[name] = [rng.normal(0, 0.05, (layer["num_output"], 2048)).astype(np.float32),
                           rng.normal(0, 0.1, layer["num_output"]).astype(np.float32)]
        elif kind in ("Pooling", "Eltwise", "ReLU"):
            channels[layer["top"]] = channels[layer["bottom"][-1]]
    return blobs


def write_caffemodel(path, blobs: dict[str, list[np.ndarray]], layers: list[dict]) -> None:
    messages = caffe_messages()
    net = messages["NetParameter"](name="ResNet")
    for layer in layers:
        if layer["name"] in blobs:
            entry = net.layer.add(name=layer["name"], type=layer["type"])
            for array in blobs[layer["name"]]:
                entry.blobs.add(shape=messages["BlobShape"](dim=array.shape), data=array.ravel().tolist())
    path.write_bytes(net.SerializeToString())


def write_mean(path, mean_bgr: np.ndarray) -> None:
    messages = caffe_messages()
    blob = messages["BlobProto"](num=1, channels=3, height=mean_bgr.shape[1], width=mean_bgr.shape[2],
                                 data=mean_bgr.ravel().tolist())  # the legacy 4-D fields, as in ResNet_mean.binaryproto
    path.write_bytes(blob.SerializeToString())


def caffe_forward(layers: list[dict], blobs: dict[str, list[np.ndarray]], data: torch.Tensor) -> torch.Tensor:
    """Run the layer list the way Caffe defines each layer (NCHW)."""
    values = {"data": data}
    t = {name: [torch.from_numpy(b) for b in arrays] for name, arrays in blobs.items()}
    for layer in layers:
        kind, name, x = layer["type"], layer["name"], values[layer["bottom"][0]]
        if kind == "Convolution":
            w, *b = t[name]
            y = F.conv2d(x, w, b[0] if b else None, layer["stride"], layer["pad"])
        elif kind == "BatchNorm":
            mean, var, factor = t[name]
            y = (x - (mean / factor)[:, None, None]) / torch.sqrt((var / factor)[:, None, None] + 1e-5)
        elif kind == "Scale":
            gamma, beta = t[name]
            y = x * gamma[:, None, None] + beta[:, None, None]
        elif kind == "ReLU":
            y = x.clamp_min(0)
        elif kind == "Pooling" and layer["pool"] == "MAX":
            # Caffe: ceil((H - k) / s) + 1 windows; the last one may hang over the edge.
            k, s = layer["kernel_size"], layer["stride"]
            out = [math.ceil((n - k) / s) + 1 for n in x.shape[2:]]
            pad = [(o - 1) * s + k - n for o, n in zip(out, x.shape[2:])]
            y = F.max_pool2d(F.pad(x, (0, pad[1], 0, pad[0]), value=-math.inf), k, s)
        elif kind == "Pooling":
            y = F.avg_pool2d(x, layer["kernel_size"], layer["stride"])
        elif kind == "Eltwise":
            y = values[layer["bottom"][0]] + values[layer["bottom"][1]]
        elif kind == "InnerProduct":
            w, b = t[name]
            y = x.flatten(1) @ w.T + b
        elif kind == "Softmax":
            continue
        values[layer["top"]] = y
    return values["fc1000"]


@pytest.fixture(scope="module")
def resnet50_caffe(tmp_path_factory):
    root = tmp_path_factory.mktemp("caffe")
    layers = authors_layers(50, num_classes=1000)
    blobs = random_blobs(layers)
    (root / "ResNet-50-deploy.prototxt").write_text(prototxt(layers, 50))
    write_caffemodel(root / "ResNet-50-model.caffemodel", blobs, layers)
    mean_bgr = np.random.default_rng(1).uniform(90, 130, (3, 224, 224)).astype(np.float32)
    write_mean(root / "ResNet_mean.binaryproto", mean_bgr)
    return root, layers, blobs, mean_bgr


def test_caffe_resnet50_gives_the_caffe_networks_logits(resnet50_caffe, tmp_path, capsys):
    root, layers, blobs, mean_bgr = resnet50_caffe
    images = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)  # RGB, as decoded
    caffe_input = images.flip(1).float() - torch.from_numpy(mean_bgr)  # BGR minus the mean image
    with torch.no_grad():
        expected = caffe_forward(layers, blobs, caffe_input)

    dst = tmp_path / "resnet50-caffe.safetensors"
    assert main(["convert", str(root / "ResNet-50-model.caffemodel"), "--out", str(dst),
                 "--prototxt", str(root / "ResNet-50-deploy.prototxt"),
                 "--mean-file", str(root / "ResNet_mean.binaryproto")]) == 0
    config = read_weights_config(dst)
    assert {k: config[k] for k in ("name", "shortcut", "stride_in_1x1", "stem", "normalization")} == {
        "name": "resnet50", "shortcut": "B", "stride_in_1x1": True, "stem": "imagenet_caffe",
        "normalization": "per_pixel_mean"}
    assert config["class_names"][0] == "tench" and (config["eval_resize"], config["eval_crop"]) == (256, 224)
    net = create_model("resnet50", weights=str(dst)).eval()
    with torch.no_grad():
        logits = net(images)
    scale = expected.abs().max()
    torch.testing.assert_close(logits / scale, expected / scale, rtol=0, atol=1e-4)

    # What makes it exact: Caffe's pooling (torchvision's padded one shifts every window).
    padded = create_model("resnet50", weights=str(dst)).eval()
    padded.maxpool = torch.nn.MaxPool2d(3, 2, 1)
    with torch.no_grad():
        assert not torch.allclose(padded(images) / scale, expected / scale, atol=1e-3)


def test_the_101_and_152_layer_names_map_to_their_networks(tmp_path):
    for depth in (101, 152):
        layers = authors_layers(depth)
        (tmp_path / f"{depth}.prototxt").write_text(prototxt(layers, depth))
        net = read_prototxt(tmp_path / f"{depth}.prototxt")
        units, _, _, sums = _units(net, {layer["name"]: [] for layer in layers})
        prefixes, name, blocks, stride_in_1x1, shortcut = _layout(units)
        assert (name, blocks, stride_in_1x1, shortcut) == (f"resnet{depth}", STAGES[depth], True, "B")
        assert sums == sum(STAGES[depth])
        assert prefixes["res4b22_branch2b"] == "layer3.22.conv2" and prefixes["res3a_branch1"] == "layer2.0.downsample.0"


def test_caffe_inputs_that_do_not_fit_give_clear_errors(resnet50_caffe, tmp_path, capsys):
    root, layers, blobs, _ = resnet50_caffe
    args = [str(root / "ResNet-50-model.caffemodel"), "--out", str(tmp_path / "out.safetensors")]
    assert main(["convert", *args, "--prototxt", str(root / "ResNet-50-deploy.prototxt")]) == 2
    assert "--mean-file" in capsys.readouterr().err
    assert main(["convert", *args, "--prototxt", str(root / "ResNet-50-deploy.prototxt"),
                 "--mean-file", str(root / "ResNet_mean.binaryproto"), "--stride-in-3x3"]) == 2
    assert "not used with Caffe models" in capsys.readouterr().err

    renamed = prototxt(layers, 50).replace('"res3b_branch2b"', '"branch_x"')
    (tmp_path / "renamed.prototxt").write_text(renamed)
    with pytest.raises(CheckpointError, match="the caffemodel holds no weights for layer branch_x"):
        convert_caffe(tmp_path / "renamed.prototxt", root / "ResNet-50-model.caffemodel", root / "ResNet_mean.binaryproto")
    units, *_ = _units(read_prototxt(tmp_path / "renamed.prototxt"), {"branch_x": [], **blobs})
    with pytest.raises(CheckpointError, match="branch_x: not a layer name of the authors' ResNets"):
        _layout(units)
    moved = prototxt(layers, 50).replace("\tname: \"res3a_branch2a\"\n\ttype: \"Convolution\"\n\tconvolution_param {\n"
                                         "\t\tnum_output: 128\n\t\tkernel_size: 1\n\t\tpad: 0\n\t\tstride: 2",
                                         "\tname: \"res3a_branch2a\"\n\ttype: \"Convolution\"\n\tconvolution_param {\n"
                                         "\t\tnum_output: 128\n\t\tkernel_size: 1\n\t\tpad: 0\n\t\tstride: 1")
    assert moved != prototxt(layers, 50)
    (tmp_path / "moved.prototxt").write_text(moved)
    with pytest.raises(CheckpointError, match="res3a_branch2b: kernel/stride/pad .* do not match"):
        convert_caffe(tmp_path / "moved.prototxt", root / "ResNet-50-model.caffemodel", root / "ResNet_mean.binaryproto")
    (tmp_path / "broken.caffemodel").write_bytes(b"\xff\xff\xff not protobuf")
    with pytest.raises(CheckpointError, match="broken.caffemodel: not a readable Caffe NetParameter"):
        convert_caffe(root / "ResNet-50-deploy.prototxt", tmp_path / "broken.caffemodel", root / "ResNet_mean.binaryproto")
