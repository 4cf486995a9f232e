"""The `resnets` command: --help everywhere, --version, `models`, error reporting."""

import json
import subprocess
import sys

import pytest

from resnets import __version__
from resnets.cli import build_parser, main


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out


@pytest.mark.parametrize("command", subcommands())
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: resnets " + command)


def test_models_table_and_json(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert "resnet50" in table and "25,557,032" in table and "cifar_resnet1202" in table
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"]}
    assert rows["cifar_resnet110"]["params"] == 1_727_962 and rows["cifar_resnet110"]["shortcut"] == "A"
    assert rows["resnet152"]["gflops"] == pytest.approx(11.3, rel=0.02)
    assert rows["plain34"]["shortcut"] == "none"


def test_user_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    code = main(["train", "--model", "cifar_resnet20", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing" in err and "Traceback" not in err


def test_bad_model_name_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model:\n  name: resnet19\n")
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    # Named before any data is read (tmp_path holds no data set, which would be another error).
    assert "model.name: unknown model 'resnet19'" in err and "Traceback" not in err


def test_print_config_applies_flags(capsys):
    assert main(["train", "--model", "cifar_resnet110", "--lr", "0.05", "--milestones", "1,2", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "name: cifar_resnet110" in out and "lr: 0.05" in out and "- 1\n  - 2" in out


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "resnets", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_a_plain_pickle_is_named_as_such_without_torch_warnings(tmp_path, capsys):
    """Issue 26.2: pickle.dump output given as weights is described as a plain pickle, not as a
    corrupt file, and torch's UserWarning about its pickle protocol is not shown."""
    import pickle
    import warnings

    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"conv1.weight": [0.0] * 4}, protocol=4))
    data = tmp_path / "data"
    for argv in (["eval", "--checkpoint", str(path), "--data", str(data)],
                 ["predict", str(data), "--checkpoint", str(path)],
                 ["convert", str(path), "--out", str(tmp_path / "x.safetensors")]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path} is a plain Python pickle (pickle.dump), not a PyTorch file" in err, (argv, err)
        assert not caught and "Warning" not in err and "Traceback" not in err
