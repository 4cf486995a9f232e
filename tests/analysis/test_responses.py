"""Fig. 7 numbers equal a direct computation from every BN output."""

from __future__ import annotations

import json

import torch

from resnets.cli import main
from resnets.analysis.responses import first_val_images, layer_response_stds, response_layers
from resnets.models import Normalize, create_model, save_weights


def manual_stds(model, images) -> list[float]:
    """Keep each 3x3 layer's BN output whole (a copy: ReLU overwrites it in place), then
    std per channel over images and positions, averaged over channels."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and not name.endswith("bn3"):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone())))
    model.eval()
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    stds = []
    for name in outputs:  # registration order = forward order for these networks
        x = outputs[name].double()
        stds.append(float(x.transpose(0, 1).flatten(1).std(dim=1, unbiased=False).mean()))
    return stds


def test_std_matches_manual_computation():
    torch.manual_seed(0)
    model = create_model("cifar_resnet8")
    # Random BN statistics and affine parameters, so the stds are not all ~1.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.2, 2)
            m.bias.data.uniform_(-1, 1)
    images = torch.randn(12, 3, 32, 32)
    result = layer_response_stds(model, images, batch_size=5)  # streamed over 3 batches
    assert result.layers == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2",
                             "layer3.0.bn1", "layer3.0.bn2"]
    expected = manual_stds(model, images)
    assert len(expected) == 7
    torch.testing.assert_close(torch.tensor(result.stds), torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert len(set(round(s, 4) for s in result.stds)) == 7


def test_only_3x3_layers_count():
    with torch.device("meta"):
        resnet50 = create_model("resnet50")
    # The 7x7 stem and the bottlenecks' 1x1 layers are not "3x3 layers": one per block.
    assert len(response_layers(resnet50)) == 3 + 4 + 6 + 3
    with torch.device("meta"):
        assert len(response_layers(create_model("cifar_plain20"))) == 19


def test_analyze_cli_on_saved_weights(tmp_path, tiny_cifar):
    torch.manual_seed(1)
    files = []
    for name in ("cifar_resnet8", "cifar_plain8"):
        model = create_model(name)
        model.input_norm = Normalize(torch.rand(3, 32, 32))
        path = tmp_path / name / "model.safetensors"
        path.parent.mkdir()
        save_weights(path, model, {"name": name, "num_classes": 10, "shortcut": "A" if "resnet" in name else None,
                                   "stride_in_1x1": True, "normalization": "per_pixel_mean"})
        files.append((path, model))
    out = tmp_path / "fig7"
    args = ["analyze", "responses", "--checkpoint", *(str(p) for p, _ in files), "--data", str(tiny_cifar),
            "--out", str(out), "--images", "16", "--val-size", "50", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    saved = json.loads((out / "responses.json").read_text())
    assert [s["label"] for s in saved] == ["cifar_resnet8", "cifar_plain8"]
    images = first_val_images(str(tiny_cifar), 16, 50, 0, str(tmp_path / "cache"))
    for entry, (_, model) in zip(saved, files):
        direct = layer_response_stds(model, images)
        assert entry["images"] == 16
        torch.testing.assert_close(torch.tensor([l["std"] for l in entry["layers"]]), torch.tensor(direct.stds))
        assert entry["sorted_std"] == sorted(direct.stds, reverse=True) or \
            torch.allclose(torch.tensor(entry["sorted_std"]), torch.tensor(sorted(direct.stds, reverse=True)))
    assert (out / "responses.png").stat().st_size > 0
