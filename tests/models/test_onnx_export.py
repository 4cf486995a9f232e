"""ONNX export: the file runs in onnxruntime and gives PyTorch's logits, normalisation included."""

import json
from pathlib import Path

import onnx
import torch

import resnets
from resnets.cli import main
from resnets.models import Normalize, create_model, save_weights
from resnets.models.onnx_export import INPUT_NAME, OUTPUT_NAME, check_onnx, export_onnx


def trained_looking(name: str, num_classes: int = 10):
    """A network whose BN statistics and normalisation are not the identity, so a dropped
    normalisation or a train-mode BN in the export shows up in the logits."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    model.input_norm = Normalize(torch.rand(3, 32, 32) * 0.5 + 0.25)
    return model.eval()


def test_export_matches_pytorch_at_another_batch_size(tmp_path):
    model = trained_looking("cifar_resnet8")
    path = export_onnx(model, tmp_path / "m.onnx", image_size=32)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == [OUTPUT_NAME]
    # exported with batch 2; 5 checks that the batch dimension really is dynamic
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check = check_onnx(path, model, images)
    assert check.images == 5
    assert check.max_abs_diff < 1e-4
    assert check.top1_agreement == 1.0
    # the per-pixel mean is inside the graph: without it the logits differ
    bare = trained_looking("cifar_resnet8")
    bare.input_norm = None
    assert check_onnx(path, bare, images).max_abs_diff > 1e-3


def test_export_cli_from_a_weights_file(tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    save_weights(weights, trained_looking("cifar_resnet8", num_classes=4), {"name": "cifar_resnet8", "num_classes": 4})
    out = tmp_path / "export" / "model.onnx"
    assert main(["export", "--checkpoint", str(weights), "--out", str(out), "--check-images", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["written"] == str(out) and out.is_file()
    assert result["model"] == "cifar_resnet8" and result["image_size"] == 32
    assert result["top1_agreement"] == 1.0 and result["max_abs_diff"] < 1e-4
    assert not list(out.parent.glob("*.tmp"))
    graph = onnx.load(str(out))
    logits_dims = graph.graph.output[0].type.tensor_type.shape.dim
    assert logits_dims[1].dim_value == 4


def test_export_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    weights = tmp_path / "model.safetensors"
    save_weights(weights, trained_looking("cifar_resnet8"), {"name": "cifar_resnet8", "num_classes": 10})
    assert main(["export", "--checkpoint", str(weights), "--out", str(tmp_path / "m.onnx"), "--image-size", "8"]) == 2
    assert "--image-size" in capsys.readouterr().err


def test_export_cli_from_a_training_checkpoint(tiny_cifar, tmp_path, capsys):
    from resnets.config import resolve_config
    from resnets.train import engine
    from resnets.models.loading import model_from_file

    run = tmp_path / "run"
    engine.train(resolve_config(overrides={
        "model.name": "cifar_resnet8", "data.path": str(tiny_cifar), "data.val_size": 50, "optim.batch_size": 16,
        "optim.iters": 4, "optim.milestones": "2,3", "log_every": 2, "eval_every": 4, "checkpoint_every": 2,
        "out": str(run), "device": "cpu", "precision": "fp32", "tensorboard": False}))
    capsys.readouterr()
    checkpoint = run / "checkpoints" / "last.pt"
    out = tmp_path / "ckpt.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--check-images", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "cifar_resnet8" and result["top1_agreement"] == 1.0
    # the trained per-pixel mean travelled from the checkpoint into the graph
    model, _ = model_from_file(checkpoint)
    assert model.input_norm is not None and model.input_norm.kind == "per_pixel_mean"
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert check_onnx(out, model, images).max_abs_diff < 1e-4


def test_export_cli_takes_model_weights_tag_and_device(tmp_path, capsys):
    # Issue 26.2: export reads weights as eval and predict do (--model NAME --weights TAG), and
    # says where PyTorch runs; a missing --out folder is created and named, as by every command.
    out = tmp_path / "new" / "r20.onnx"
    assert main(["export", "--model", "cifar_resnet20", "--weights", "cifar10-jpeg", "--device", "cpu",
                 "--out", str(out), "--check-images", "2", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["model"] == "cifar_resnet20" and result["top1_agreement"] == 1.0 and out.is_file()
    assert f"created {tmp_path / 'new'}" in captured.err
    raw = out.read_bytes()  # issue 28: no path of this machine (torch's stack traces carried them)
    assert str(Path(resnets.__file__).parent).encode() not in raw and b'File "/' not in raw
    code = main(["export", "--model", "cifar_resnet20", "--weights", "cifar10-jpeg", "--device", "cuda",
                 "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA device" in err and "Traceback" not in err
    assert main(["export", "--weights", "cifar10-jpeg", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--weights TAG needs --model NAME" in capsys.readouterr().err
