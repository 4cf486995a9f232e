"""Keras ResNets -> resnets, checked against a Keras interpreter written here.

The real weights are Keras Applications' ImageNet ResNet-50 as the TF.js package ships it
(../shared/weights/keras-resnet50-tfjs). The reference below reads `model.json` and its
shards with json and NumPy alone and executes the layer list the way Keras defines each layer
(NHWC kernels, BGR input minus the mean pixel, BatchNormalization with the layer's epsilon,
the Dense layer before its softmax) with torch.nn.functional -- without the converter. HDF5
files are written here in the layout Keras 2 writes (`layer_names`, per-layer `weight_names`,
datasets under `<layer>/<layer>/<weight>:0`), with either naming scheme.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resnets.cli import main
from resnets.data.transforms import ResizeCenterCrop
from resnets.errors import CheckpointError
from resnets.models import create_model, read_weights_config, read_weights_metadata
from resnets.models.formats.keras import KerasFile, _architecture, _Layers, _scheme, convert_keras, read_keras

PHOTOS = ("n01440764_tench.JPEG", "n01860187_black_swan.JPEG", "n04562935_water_tower.JPEG")
KERAS_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications.imagenet_utils, mode="caffe"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------- the reference

def read_tfjs_by_hand(folder: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    model = json.loads((folder / "model.json").read_text())
    layers = model["modelTopology"]["model_config"]["config"]["layers"]
    weights = {}
    for group in model["weightsManifest"]:
        data = np.frombuffer(b"".join((folder / p).read_bytes() for p in group["paths"]), dtype="<f4")
        offset = 0
        for entry in group["weights"]:
            n = int(np.prod(entry["shape"]))
            weights[entry["name"]] = data[offset:offset + n].reshape(entry["shape"]).copy()
            offset += n
    return layers, weights


@torch.no_grad()
def keras_forward(layers: list[dict], weights: dict[str, np.ndarray], rgb: torch.Tensor) -> torch.Tensor:
    """The Keras model's pre-softmax scores for uint8 RGB images (N, 3, H, W), layer by layer."""
    w = {k: torch.from_numpy(v) for k, v in weights.items()}
    x = rgb.flip(1).float() - torch.tensor(KERAS_MEAN_BGR)[:, None, None]  # "caffe" mode
    values: dict[str, torch.Tensor] = {}
    for layer in layers:
        kind, name, cfg = layer["class_name"], layer["name"], layer["config"]
        inputs = [values[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        y = inputs[0]
        if kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            y = F.pad(y, (left, right, top, bottom))
        elif kind == "Conv2D":
            kernel = w[f"{name}/kernel"].permute(3, 2, 0, 1)  # HWIO -> OIHW
            pad = 0 if cfg["padding"] == "valid" else kernel.shape[-1] // 2
            assert cfg["padding"] == "valid" or cfg["strides"] == [1, 1]  # TF's "same" is symmetric only then
            y = F.conv2d(y, kernel, w[f"{name}/bias"] if cfg["use_bias"] else None, cfg["strides"], pad)
        elif kind == "BatchNormalization":
            shape = (-1, 1, 1)
            y = ((y - w[f"{name}/moving_mean"].view(shape))
                 / torch.sqrt(w[f"{name}/moving_variance"].view(shape) + cfg["epsilon"])
                 * w[f"{name}/gamma"].view(shape) + w[f"{name}/beta"].view(shape))
        elif kind == "Activation":
            assert cfg["activation"] == "relu"
            y = y.clamp_min(0)
        elif kind == "MaxPooling2D":
            assert cfg["padding"] == "valid"
            y = F.max_pool2d(y, cfg["pool_size"], cfg["strides"])
        elif kind == "Add":
            y = sum(inputs)
        elif kind == "GlobalAveragePooling2D":
            y = y.mean(dim=(2, 3))
        elif kind == "Dense":
            y = y @ w[f"{name}/kernel"] + w[f"{name}/bias"]  # before its softmax
        else:
            assert kind == "InputLayer", kind
        values[name] = y
    return values[layers[-1]["name"]]


def photos(sample: Path) -> torch.Tensor:
    view = ResizeCenterCrop(256, 224)
    return torch.stack([view(Image.open(sample / p).convert("RGB")) for p in PHOTOS])


@pytest.fixture(scope="module")
def converted(keras_tfjs, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("keras") / "resnet50-keras.safetensors"
    assert main(["convert", str(keras_tfjs), "--out", str(dst)]) == 0
    return dst


def test_tfjs_resnet50_computes_the_keras_models_logits_on_real_photos(converted, keras_tfjs, imagenet_sample):
    images = photos(imagenet_sample)
    expected = keras_forward(*read_tfjs_by_hand(keras_tfjs), images)
    net = create_model("resnet50", weights=str(converted)).eval()
    with torch.no_grad():
        logits = net(images)
    relative = float((logits - expected).abs().max() / expected.abs().max())
    assert relative < 1e-4, relative
    # The photos are named by these weights' own class list.
    config = read_weights_config(converted)
    synsets = [p.split("_")[0] for p in PHOTOS]
    assert [config["synsets"][int(i)] for i in logits.argmax(1)] == synsets
    assert {k: config[k] for k in ("name", "shortcut", "stride_in_1x1", "normalization", "converted_from")} == {
        "name": "resnet50", "shortcut": "B", "stride_in_1x1": True, "normalization": "channel_mean_std",
        "converted_from": "keras"}
    assert config["class_names"][0] == "tench" and len(config["synsets"]) == 1000
    # The metadata names the source by file name and digest only, never by where it was.
    meta = read_weights_metadata(converted)
    assert meta["source_file"] == f"{keras_tfjs.name}/model.json" and "/" + keras_tfjs.name not in json.dumps(meta)
    assert meta["source_sha256"] == hashlib.sha256((keras_tfjs / "model.json").read_bytes()).hexdigest()
    # What makes it exact: the folded epsilon (Keras' 1e-3, PyTorch's 1e-5) and the BGR order.
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in batch_norms:
            m.running_var -= 1e-3 - 1e-5
        assert float((net(images[:1]) - expected[:1]).abs().max() / expected.abs().max()) > 1e-3
        for m in batch_norms:
            m.running_var += 1e-3 - 1e-5
        net.conv1.weight.copy_(net.conv1.weight.flip(1))
        assert float((net(images[:1]) - expected[:1]).abs().max() / expected.abs().max()) > 1e-3


def test_predict_names_real_photos(converted, imagenet_sample, capsys):
    assert main(["predict", *(str(imagenet_sample / p) for p in PHOTOS), "--checkpoint", str(converted),
                 "--top", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["top"][0]["class"] for p in result["predictions"]] == ["tench", "black swan", "water tower"]


def test_eval_numbers_a_subset_of_classes_by_the_weights_synsets(converted, imagenet_sample, tmp_path, capsys):
    root = tmp_path / "imagenet"
    for p in PHOTOS:
        (root / "val" / p.split("_")[0]).mkdir(parents=True)
        (root / "val" / p.split("_")[0] / p).symlink_to(imagenet_sample / p)
    args = ["eval", "--dataset", "imagenet", "--data", str(root), "--checkpoint", str(converted), "--workers", "0",
            "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Three folders are classes 0, 100 and 900 of the 1000, which the network names correctly
    # (numbered by the folders present, they would be 0, 1 and 2).
    assert result["n"] == 3 and result["top1_err"] == 0.0

    (root / "val" / "n99999999").mkdir()
    shutil.copy(imagenet_sample / PHOTOS[0], root / "val" / "n99999999" / "x.JPEG")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "n99999999" in err and "not among the 1000 ImageNet synsets" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- HDF5, both naming schemes

def keras_name(caffe: str) -> str:
    """Caffe's layer name -> keras.applications.resnet's."""
    fixed = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": "predictions"}
    if caffe in fixed:
        return fixed[caffe]
    kind, rest = ("bn", caffe[2:]) if caffe.startswith("bn") else ("conv", caffe[3:])
    stage, block, branch = rest[0], rest[1:rest.index("_")], rest[rest.index("_branch") + 7:]
    index = LETTERS.index(block) + 1 if len(block) == 1 else int(block[1:]) + 1  # a, b, c... or a, b1, b2...
    return f"conv{stage}_block{index}_{ {'1': 0, '2a': 1, '2b': 2, '2c': 3}[branch]}_{kind}"


def write_keras_h5(path: Path, weights: dict[str, np.ndarray], rename=lambda n: n, compression=None) -> None:
    """Weights only, as Keras 2's `model.save_weights(path)` writes them (layers in model order)."""
    by_layer: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        layer, weight = key.rsplit("/", 1)
        by_layer.setdefault(rename(layer), {})[weight] = value
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        names = ["input_1", *by_layer, "avg_pool"]  # weightless layers are listed too
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for layer in names:
            group = f.create_group(layer)
            entries = by_layer.get(layer, {})
            group.attrs["weight_names"] = np.array([f"{layer}/{w}:0".encode() for w in entries])
            for w, value in entries.items():
                group.create_dataset(f"{layer}/{w}:0", data=value, compression=compression)


@pytest.fixture(scope="module")
def tfjs_weights(keras_tfjs):
    return read_tfjs_by_hand(keras_tfjs)[1]


def test_hdf5_in_both_naming_schemes_converts_as_the_tfjs_folder(converted, tfjs_weights, tmp_path):
    reference = create_model("resnet50", weights=str(converted)).state_dict()
    write_keras_h5(tmp_path / "caffe-names.h5", tfjs_weights)
    net, config = convert_keras(read_keras(tmp_path / "caffe-names.h5"))
    assert config["name"] == "resnet50"
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key]), key

    # keras.applications.resnet's names; its BatchNormalization sets epsilon=1.001e-5.
    write_keras_h5(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5", tfjs_weights, keras_name)
    net, config = convert_keras(read_keras(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"))
    for key, value in net.state_dict().items():
        if key.endswith("running_var"):
            torch.testing.assert_close(value, reference[key] - (1e-3 - 1.001e-5), rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, reference[key]), key


def test_deeper_networks_come_from_the_layer_names():
    for depth, stages in ((101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))):
        caffe = {"conv1/kernel", "fc1000/kernel"}
        for stage, blocks in zip((2, 3, 4, 5), stages):
            for i in range(blocks):
                block = "a" if i == 0 else f"b{i}"  # the authors' names for 101/152
                caffe |= {f"res{stage}{block}_branch{b}/kernel" for b in ("2a", "2b", "2c")}
        for rename in (lambda n: n, keras_name):
            weights = {f"{rename(k.split('/')[0])}/kernel": np.zeros(1, np.float32) for k in caffe}
            layers = _Layers(KerasFile("x.h5", weights))
            name, blocks = _architecture(layers, _scheme(layers))
            assert name == f"resnet{depth}" and [len(blocks[s]) for s in (2, 3, 4, 5)] == list(stages)
            assert blocks[4][22] == ("b22" if rename is not keras_name else "23")


# --------------------------------------------------------------------------- the keras-imagenet tag

def test_keras_imagenet_tag_downloads_checks_and_converts(tfjs_weights, serve_pretrained, tmp_path):
    # A small file: the real layout with each tensor constant, gzip-compressed (h5py reads that as Keras does).
    constant = {k: np.full(v.shape, 0.5 if "variance" in k else 0.01 * (i % 7 + 1), np.float32)
                for i, (k, v) in enumerate(tfjs_weights.items())}
    published = tmp_path / "published.h5"
    write_keras_h5(published, constant, keras_name, compression="gzip")
    assert published.stat().st_size < 2_000_000
    md5 = hashlib.md5(published.read_bytes()).hexdigest()
    server = serve_pretrained("resnet50", "keras-imagenet", published, md5=md5)
    net = create_model("resnet50", weights="keras-imagenet")
    assert server.requests == ["/resnet50_weights_tf_dim_ordering_tf_kernels.h5"]
    assert torch.equal(net.fc.bias, torch.from_numpy(constant["fc1000/bias"]))
    folded = constant["bn2a_branch2a/moving_mean"][0] - constant["res2a_branch2a/bias"][0]
    assert float(net.layer1[0].bn1.running_mean[0]) == pytest.approx(float(folded), abs=1e-7)
    create_model("resnet50", weights="keras-imagenet")
    assert len(server.requests) == 1  # cached and checked, not fetched again

    serve_pretrained("resnet101", "keras-imagenet", published, md5="0" * 32)
    with pytest.raises(Exception, match="md5 .* expected 0{32}"):
        create_model("resnet101", weights="keras-imagenet")


# --------------------------------------------------------------------------- what is refused

def tfjs_copy(src: Path, dst: Path, edit=None) -> Path:
    """The folder with its shards linked and model.json (optionally) edited."""
    dst.mkdir()
    for shard in src.glob("*.bin"):
        (dst / shard.name).symlink_to(shard)
    model = json.loads((src / "model.json").read_text())
    if edit:
        edit(model)
    (dst / "model.json").write_text(json.dumps(model))
    return dst


def test_files_that_are_not_keras_resnets_are_refused_in_one_line(keras_tfjs, tmp_path, capsys):
    def rename_layer(model):
        for entry in model["weightsManifest"][0]["weights"]:
            entry["name"] = entry["name"].replace("res3b_branch2c/", "res3b_branchX/")

    folder = tfjs_copy(keras_tfjs, tmp_path / "renamed", rename_layer)
    assert main(["convert", str(folder), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"resnets convert: error: {folder / 'model.json'}: not a Keras ResNet: layer res3b_branch2c is missing"

    def drop_last(model):
        model["weightsManifest"][0]["weights"].pop()

    folder = tfjs_copy(keras_tfjs, tmp_path / "fewer", drop_last)
    with pytest.raises(CheckpointError, match=r"model.json: the shards hold 102546848 bytes but the manifest "
                                              r"describes \d+: they belong to another model.json"):
        read_keras(folder)

    folder = tfjs_copy(keras_tfjs, tmp_path / "truncated")
    (folder / "group1-shard3of25.bin").unlink()
    (folder / "group1-shard3of25.bin").write_bytes((keras_tfjs / "group1-shard3of25.bin").read_bytes()[:1000])
    assert main(["convert", str(folder / "model.json"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"{folder / 'group1-shard3of25.bin'}: truncated shard (1000 bytes; the shards before it "
                        "hold 4194304)") and len(err.splitlines()) == 1
    (folder / "group1-shard25of25.bin").unlink()
    (folder / "group1-shard25of25.bin").write_bytes(b"")
    (folder / "group1-shard3of25.bin").unlink()
    (folder / "group1-shard3of25.bin").symlink_to(keras_tfjs / "group1-shard3of25.bin")
    with pytest.raises(CheckpointError, match="group1-shard25of25.bin: truncated shard: the manifest"):
        read_keras(folder)
    (folder / "group1-shard25of25.bin").unlink()
    with pytest.raises(CheckpointError, match="model.json: its weights shard group1-shard25of25.bin is missing"):
        read_keras(folder)

    (tmp_path / "not.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(CheckpointError, match="not.h5: not a readable HDF5 file"):
        read_keras(tmp_path / "not.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        f.create_group("dense").attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(CheckpointError, match=r"other.h5: not a Keras ResNet: no layer conv1 \(Caffe's names"):
        convert_keras(read_keras(tmp_path / "other.h5"))
    assert not (tmp_path / "x.safetensors").exists()
