"""hubconf.py: torch.hub.load(repo, NAME, source="local", weights=...) for every network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from resnets.models import Normalize, list_models, save_weights
from resnets.models.pretrained import CIFAR10_CLASSES

REPO = Path(__file__).resolve().parents[1]


def test_one_entry_per_network_each_taking_weights(tmp_path, monkeypatch, serve_pretrained, peer_weights):
    # torch.hub.list/help read GitHub only; what they list is a hubconf's public callables.
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(list_models())
    assert "akamaster-cifar10" in hubconf.cifar_resnet20.__doc__ and "cifar10-jpeg" in hubconf.cifar_resnet56.__doc__
    untrained = torch.hub.load(str(REPO), "resnet18", source="local", num_classes=7)
    assert untrained.fc.out_features == 7 and untrained.input_norm is None

    # Our own shipped weights (package data; written here into a stand-in package folder).
    monkeypatch.setattr("resnets.models.pretrained.SHIPPED_WEIGHTS_DIR", tmp_path / "weights")
    shipped = torch.hub.load(str(REPO), "cifar_resnet56", source="local", weights=None).eval()
    shipped.input_norm = Normalize(torch.rand(3, 32, 32))  # the per-pixel mean of its training images
    save_weights(tmp_path / "weights" / "cifar10-jpeg" / "cifar_resnet56.safetensors", shipped,
                 {"name": "cifar_resnet56", "num_classes": 10, "classes": list(CIFAR10_CLASSES)})
    x = torch.rand(2, 3, 32, 32)
    loaded = torch.hub.load(str(REPO), "cifar_resnet56", source="local", weights="cifar10-jpeg").eval()
    torch.testing.assert_close(loaded(x), shipped(x), rtol=0, atol=0)

    # A published file through the registry (downloaded from the local server).
    published = peer_weights / "akamaster-resnet20-12fca82f.th"
    serve_pretrained("cifar_resnet20", "akamaster-cifar10", published)
    hub = torch.hub.load(str(REPO), "cifar_resnet20", source="local", weights="akamaster-cifar10").eval()
    from resnets import create_model

    torch.testing.assert_close(hub(x), create_model("cifar_resnet20", weights=str(published)).eval()(x))
