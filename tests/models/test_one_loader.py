"""Every command that reads weights reads them through one loader (`resnets.models.loading`):
the same files and tags everywhere, the same refusals, each naming the file the user gave."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch

import resnets
from resnets.cli import main
from resnets.eval.predict import network_from_args
from resnets.models import create_model, model_from_file
from resnets.models.loading import load_network

AKAMASTER_R20 = "akamaster-resnet20-12fca82f.th"
CLI = Path(resnets.__file__).resolve().parent / "cli"


def test_every_command_takes_the_file_predict_takes(peer_weights, tiny_cifar, tmp_path, capsys):
    published = str(peer_weights / AKAMASTER_R20)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = network_from_args(None, None, published)[0].eval()(x)  # what `predict --checkpoint` loads
        # eval, export and analyze load with model_from_file; detect --backbone-weights with create_model.
        for net in (model_from_file(published)[0], create_model("cifar_resnet20", weights=published),
                    load_network(published, "cifar_resnet20")[0]):
            assert torch.equal(net.eval()(x), expected)
    assert main(["eval", "--checkpoint", published, "--data", str(tiny_cifar), "--val-size", "50", "--workers", "0",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 50 and result["checkpoints"] == [published]


def test_no_command_reads_weights_files_by_itself():
    for module in CLI.glob("*.py"):
        text = module.read_text()
        for reader in ("read_state_dict", "load_torch_file", "convert_file", "convert_caffe", "convert_keras",
                       "torch.load", "safe_open", "load_file("):
            assert reader not in text, f"{module.name} reads weights with {reader}, not through the loader"


def test_a_model_that_does_not_fit_the_file_is_refused_in_one_line(peer_weights, tmp_path, capsys):
    published = str(peer_weights / AKAMASTER_R20)
    out = tmp_path / "x.safetensors"
    assert main(["convert", published, "--model", "resnet18", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and published in err and "--model resnet18 does not fit" in err
    assert "[3, 3, 3]" in err and "[2, 2, 2, 2]" in err
    assert main(["convert", published, "--model", "cifar_plain20", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a residual network (akamaster layout), cifar_plain20 is a plain one" in err
    assert not out.exists()
    assert main(["convert", published, "--model", "cifar_resnet20", "--out", str(out)]) == 0


def test_eval_refuses_a_checkpoint_of_another_network(peer_weights, tiny_cifar, tmp_path, capsys):
    published = str(peer_weights / AKAMASTER_R20)
    converted = tmp_path / "r20.safetensors"
    assert main(["convert", published, "--out", str(converted)]) == 0
    capsys.readouterr()
    for checkpoint, says in ((published, "--model cifar_resnet56 does not fit"),
                             (str(converted), "holds weights of cifar_resnet20, not cifar_resnet56")):
        assert main(["eval", "--model", "cifar_resnet56", "--checkpoint", checkpoint, "--data", str(tiny_cifar),
                     "--val-size", "50", "--workers", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and checkpoint in err and says in err


def test_a_refusal_names_the_file_given_not_a_temporary_one(peer_weights, tmp_path, monkeypatch, capsys):
    import resnets.models.weights as weights

    def full_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(weights, "save_file", full_disk)
    out = tmp_path / "r20.safetensors"
    assert main(["convert", str(peer_weights / AKAMASTER_R20), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"resnets convert: error: {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []
