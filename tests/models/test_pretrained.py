"""Named pretrained weights: the registry table, downloads from a local HTTP server, shipped weights.

The server on 127.0.0.1 serves the real published akamaster files (../shared/peer-weights)
and, for torchvision's entries, a file written here in torchvision's layout by an
independent re-implementation (these machines reach no other host).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from resnets.cli import main
from resnets.errors import CheckpointError, DataError
from resnets.models import Normalize, create_model, model_spec, save_weights
from resnets.models.loading import load_network
from resnets.models.pretrained import CIFAR10_CLASSES, PRETRAINED, class_names, weights_file

from reference_nets import TorchvisionResNet50, randomize_bn

REPO = Path(__file__).resolve().parents[2]
R20 = ("cifar_resnet20", "akamaster-cifar10")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_is_a_plain_table_of_valid_entries(tmp_path):
    assert {tag for _, tag in PRETRAINED} == {"torchvision-imagenet1k-v1", "torchvision-imagenet1k-v2",
                                              "akamaster-cifar10", "keras-imagenet", "cifar10-jpeg"}
    for (name, tag), entry in PRETRAINED.items():
        assert dataclasses.is_dataclass(entry) and entry.__dataclass_params__.frozen
        assert entry.architecture.name == name and entry.tag == tag
        assert (entry.architecture.shortcut is None) == (not model_spec(name).residual)
        assert entry.reported is None or 0 < entry.reported.top1 < 35
        if entry.url is None:
            assert entry.file_format == "resnets" and entry.sha256 is None  # shipped package data
        elif entry.file_format == "keras":  # Keras publishes md5s (keras/applications/resnet.py WEIGHTS_HASHES)
            assert entry.sha256 is None and re.fullmatch(r"[0-9a-f]{32}", entry.md5) and entry.digest[0] == "md5"
            assert entry.url.endswith(f"/{name}_weights_tf_dim_ordering_tf_kernels.h5")
        else:
            assert entry.url.startswith("https://") and re.fullmatch(r"[0-9a-f]{8}([0-9a-f]{56})?", entry.sha256)
            assert entry.sha256[:8] in entry.filename  # torch.hub's convention: the name carries the hash
    # torchvision's bottlenecks are "v1.5"; their basic-block nets have no 1x1 to place it in.
    assert not PRETRAINED[("resnet50", "torchvision-imagenet1k-v2")].architecture.stride_in_1x1
    assert PRETRAINED[("resnet50", "torchvision-imagenet1k-v2")].preprocessing.resize == 232
    assert len(class_names("imagenet1k")) == 1000 and class_names("imagenet1k")[:2] == ("tench", "goldfish")
    assert class_names("imagenet1k")[999] == "toilet tissue" and class_names("cifar10") == CIFAR10_CLASSES
    # Importing the registry reads, downloads and creates nothing.
    env = {**os.environ, "RESNETS_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", "import resnets.models.pretrained, resnets.models.formats"],
                   env=env, check=True, timeout=120)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "home").exists()


def test_download_is_checked_atomic_and_never_repeated(serve_pretrained, peer_weights, tmp_path, capsys):
    published = peer_weights / "akamaster-resnet20-12fca82f.th"
    server = serve_pretrained(*R20, published)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    expected = create_model("cifar_resnet20", weights=str(published)).eval()(x)

    net = create_model("cifar_resnet20", weights="akamaster-cifar10").eval()
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    cached = tmp_path / "cache" / "weights" / "resnet20-12fca82f.th"
    assert sha256(cached) == sha256(published) and os.listdir(cached.parent) == [cached.name]  # no temp files
    assert server.requests == ["/resnet20-12fca82f.th"]
    create_model("cifar_resnet20", weights="akamaster-cifar10")
    assert len(server.requests) == 1  # cached and checked: never fetched twice

    cached.write_bytes(b"a half-finished download")  # checked before use, so fetched again
    torch.testing.assert_close(create_model("cifar_resnet20", weights="akamaster-cifar10").eval()(x), expected)
    assert len(server.requests) == 2 and sha256(cached) == sha256(published)

    cached.unlink()
    capsys.readouterr()
    weights_file(PRETRAINED[R20], progress=True)  # the progress bar (tqdm on stderr)
    assert "resnet20-12fca82f.th" in capsys.readouterr().err


def test_a_wrong_download_is_refused_and_nothing_kept(serve_pretrained, peer_weights, tmp_path):
    serve_pretrained(*R20, peer_weights / "akamaster-resnet32-d509ac18.th")  # the wrong file under resnet20's name
    with pytest.raises(DataError, match="has sha256 d509ac18.*expected 12fca82f.*nothing was kept"):
        create_model("cifar_resnet20", weights="akamaster-cifar10")
    assert os.listdir(tmp_path / "cache" / "weights") == []


def test_offline_gives_one_line_naming_the_url_and_where_to_put_the_file(serve_pretrained, peer_weights,
                                                                         tmp_path, capsys):
    server = serve_pretrained(*R20, peer_weights / "akamaster-resnet20-12fca82f.th")
    server.close()  # the machine is offline
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    assert main(["predict", str(image), "--model", "cifar_resnet20", "--weights", "akamaster-cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{server.url}/resnet20-12fca82f.th" in err
    assert str(tmp_path / "cache" / "weights" / "resnet20-12fca82f.th") in err


def test_torchvision_weights_build_v15_with_their_preprocessing(serve_pretrained, tmp_path, capsys):
    torch.manual_seed(0)
    reference = randomize_bn(TorchvisionResNet50())  # torchvision's architecture: stride in the 3x3
    file = tmp_path / "resnet50-torchvision.pth"
    torch.save(reference.state_dict(), file)
    serve_pretrained("resnet50", "torchvision-imagenet1k-v1", file, sha256=sha256(file)[:8])
    x = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # v1.5 is built without being asked, and without a warning
        net, config = load_network("torchvision-imagenet1k-v1", "resnet50")
        torch.testing.assert_close(net(x), reference(Normalize.channel()(x)), rtol=1e-4, atol=1e-4)
    assert config["stride_in_1x1"] is False and (config["eval_resize"], config["eval_crop"]) == (256, 224)
    assert config["class_names"][:1] == ["tench"] and config["normalization"] == "channel_mean_std"
    # `resnets convert` on the downloaded file recognises it by its hash: v1.5 again, no flag needed.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["convert", str(tmp_path / "cache" / "weights" / "resnet50-0676ba61.pth"),
                     "--out", str(tmp_path / "r50.safetensors"), "--json"]) == 0
    assert '"weights": "torchvision-imagenet1k-v1"' in capsys.readouterr().out
    assert create_model("resnet50", weights=str(tmp_path / "r50.safetensors")).layer2[0].conv2.stride == (2, 2)


def test_shipped_cifar10_jpeg_weights_resolve_to_package_data(tmp_path, monkeypatch):
    monkeypatch.setattr("resnets.models.pretrained.SHIPPED_WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(CheckpointError, match=r"'cifar10-jpeg' for cifar_resnet56 are not shipped with this "
                                              r"version.*weights/cifar10-jpeg/cifar_resnet56.safetensors"):
        create_model("cifar_resnet56", weights="cifar10-jpeg")
    torch.manual_seed(1)
    trained = create_model("cifar_resnet56").eval()
    trained.input_norm = Normalize(torch.rand(3, 32, 32))
    save_weights(tmp_path / "weights" / "cifar10-jpeg" / "cifar_resnet56.safetensors", trained,
                 {"name": "cifar_resnet56", "num_classes": 10, "shortcut": "A", "normalization": "per_pixel_mean",
                  "classes": list(CIFAR10_CLASSES)}, {"val_error": 6.9})
    net, config = load_network("cifar10-jpeg", "cifar_resnet56")
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(net(x), trained(x), rtol=0, atol=0)
    assert config["weights"] == "cifar10-jpeg" and (config["eval_resize"], config["eval_crop"]) == (32, 32)
    assert net.input_norm.kind == "per_pixel_mean"
    with pytest.raises(CheckpointError, match="holds weights of cifar_resnet56, not cifar_resnet20"):
        load_network(str(tmp_path / "weights" / "cifar10-jpeg" / "cifar_resnet56.safetensors"), "cifar_resnet20")


def test_a_built_wheel_carries_shipped_weights_and_class_names(tmp_path):
    """setuptools puts resnets/weights/<tag>/*.safetensors and the class names in the wheel."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "resnets", source / "resnets", ignore=shutil.ignore_patterns("__pycache__", "weights"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, source / file)
    shipped = source / "resnets" / "weights" / "cifar10-jpeg" / "cifar_resnet56.safetensors"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"weights")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("resnets-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "resnets/weights/cifar10-jpeg/cifar_resnet56.safetensors" in names
    assert "resnets/models/imagenet_classes.txt" in names
