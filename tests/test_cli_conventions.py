"""One command line, one convention (issues 12 and 14): every option has help that says what it
does, outputs go to --out, devices are one set, --json prints one JSON object last, and
the stride placement is one flag pair."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnets.cli import build_parser, main
from resnets.cli.options import DEVICE_METAVAR, device_option


def commands(parser=None, path=("resnets",)):
    """(path, parser) for every leaf command, nested ones (detect train, analyze responses) included."""
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, path + (name,))


LEAVES = dict(commands())
HIDDEN_ALIASES = {"--run-dir", "--out-dir", "--iterations", "--dir"}


def options(parser):
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_every_option_has_help(command):
    for action in options(LEAVES[command]):
        name = "/".join(action.option_strings) or action.dest
        if action.help == argparse.SUPPRESS:
            # only the spellings kept for existing commands, and convert's old positional DST
            assert set(action.option_strings) <= HIDDEN_ALIASES and (action.option_strings or action.dest == "dst")
            continue
        assert action.help and len(action.help) > 10, f"{command} {name} has no help text"


@pytest.mark.parametrize("command", sorted(LEAVES))
def test_one_convention_for_outputs_devices_and_json(command):
    parser = LEAVES[command]
    by_flag = {flag: a for a in options(parser) for flag in a.option_strings}
    visible = {f for f, a in by_flag.items() if a.help != argparse.SUPPRESS}
    assert not visible & {"--run-dir", "--out-dir", "--iterations", "--dir", "--output"}, command
    if "--device" in by_flag:
        device = by_flag["--device"]  # one spelling: auto, cpu, cuda or cuda:N
        assert device.type is device_option and device.metavar == DEVICE_METAVAR, command
    assert "--json" in by_flag, command
    if "--checkpoint" in by_flag and by_flag["--checkpoint"].nargs == "+":
        assert isinstance(by_flag["--checkpoint"], argparse._ExtendAction), command  # repeated --checkpoint


def test_negated_flags_say_what_they_do():
    train = LEAVES["resnets train"]
    helps = {flag: a.help for a in options(train) for flag in a.option_strings}
    assert helps["--no-tensorboard"].split("] ", 1)[1].startswith("do not write")
    assert "Also log" not in helps["--no-tensorboard"]
    assert "keep NCHW" in helps["--no-channels-last"] and "slower" in helps["--no-channels-last"]
    assert "instead of the fused" in helps["--no-fused-bn-relu"]


def test_fused_bn_relu_is_on_unless_turned_off(capsys):
    import yaml

    for flags, expected in (([], True), (["--no-fused-bn-relu"], False)):
        assert main(["train", *flags, "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["fused_bn_relu"] is expected


def test_train_stride_placement_is_one_flag_pair(capsys):
    import yaml

    for flags, expected in (([], True), (["--stride-in-1x1"], True), (["--stride-in-3x3"], False)):
        assert main(["train", "--model", "resnet50", *flags, "--print-config"]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["model"]["stride_in_1x1"] is expected
    with pytest.raises(SystemExit) as e:
        main(["train", "--stride-in-1x1", "--stride-in-3x3", "--print-config"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_old_spellings_still_run_with_a_note(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["detect", "train", "--run-dir", str(tmp_path / "r"), "--iterations", "3"])
    assert args.out == str(tmp_path / "r") and args.iters == 3
    args = parser.parse_args(["detect", "predict", "--checkpoint", "c.pt", "x.png", "--out-dir", "preds"])
    assert args.out == "preds"
    args = parser.parse_args(["download-cifar10", "--dir", "data"])
    assert args.out == "data"
    err = capsys.readouterr().err
    assert "--run-dir is deprecated; use --out" in err and "--iterations is deprecated; use --iters" in err


def test_json_is_one_object_on_the_last_line(tmp_path, capsys, tiny_cifar):
    assert main(["models", "--json"]) == 0
    assert "models" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50",
                 "--batch-size", "16", "--iters", "2", "--milestones", "1", "--device", "cpu", "--precision", "fp32",
                 "--no-tensorboard", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["iteration"] == 2
    assert main(["train", "--resume", "--out", str(out)]) == 0  # without --json: words, not JSON
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("resnets train: cifar_resnet8 finished at iteration 2")
    import torch

    from resnets import create_model

    # a CIFAR ResNet as the common CIFAR repositories save it ('module.' prefix, 'linear' classifier)
    state = {"module." + k.replace("fc.", "linear."): v for k, v in create_model("cifar_resnet8").state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "r8.th")
    assert main(["convert", str(tmp_path / "r8.th"), "--out", str(tmp_path / "c.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == str(tmp_path / "c.safetensors")
    assert main(["plot", str(out), "--out", str(tmp_path / "fig.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"written": str(tmp_path / "fig.png")}


def run_in_fresh_interpreter(commands, suffix=(), watched=("torch", "numpy", "safetensors", "PIL")):
    """Run `resnets COMMAND *suffix` for each command in one fresh interpreter: (its stdout,
    which of the `watched` modules it imported)."""
    script = ("import sys\nfrom resnets.cli import main\n"
              "for argv in sys.argv[1:]:\n"
              "    try:\n"
              f"        main(argv.split() + {list(suffix)!r})\n"
              "    except SystemExit:\n        pass\n"
              f"print('IMPORTED', sorted(m for m in {tuple(watched)!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("IMPORTED ")
    return out.stdout, lines[-1].removeprefix("IMPORTED ")


def test_help_of_every_command_imports_no_torch():
    """`resnets CMD --help` answers at once (issue 26.5): no command imports torch (1-2 s, more on a
    busy machine) before it runs. Checked in a fresh interpreter, on every leaf command."""
    commands = [""] + [name.removeprefix("resnets").strip() for name in LEAVES]
    out, imported = run_in_fresh_interpreter(commands, ["--help"])
    assert "usage: resnets detect predict" in out  # every help was printed, nested ones too
    assert imported == "[]"
    assert run_in_fresh_interpreter([""], ["--version"])[1] == "[]"


def test_models_table_imports_no_torch_compiler():
    """`resnets models` and `--table1` (issue 26) count multiply-adds and map sizes from the
    networks' layers: neither torch's FlopCounterMode nor a meta-device forward (its batch
    norm), both of which import torch._dynamo (1-3 s, most of what the command took)."""
    out, imported = run_in_fresh_interpreter(["models", "models --table1"],
                                             watched=("torch", "torch._dynamo", "torch.utils.flop_counter"))
    assert "cifar_resnet1202" in out and "11.282" in out  # the table was printed, ResNet-152 counted
    assert "| conv5_x (layer4) | 7x7 |" in out  # and Table 1, with its map sizes
    assert imported == "['torch']"


def test_every_command_that_writes_calls_the_one_out_handling():
    """Issue 26.2: an --out in a folder that does not exist is handled one way by every command
    (`options.prepare_out`: created and named on stderr). Each command module that has an --out
    goes through it, and nothing in resnets/cli creates folders on its own."""
    import inspect

    import resnets.cli as cli_package

    modules = {}
    for command, parser in LEAVES.items():
        flags = {f for a in options(parser) for f in a.option_strings}
        if "--out" in flags:
            func = parser.get_default("func")
            modules[command] = inspect.getsource(inspect.getmodule(func))
    assert len(modules) >= 9, sorted(modules)
    for command, source in modules.items():
        assert "prepare_out(" in source, command
    for path in Path(cli_package.__file__).parent.glob("*.py"):
        assert path.name == "options.py" or ".mkdir(" not in path.read_text(), path.name


@pytest.mark.parametrize("kind", ["file", "folder", "run directory"])
def test_prepare_out_creates_and_names_missing_folders(tmp_path, capsys, kind):
    from resnets.cli.options import prepare_out
    from resnets.errors import ConfigError

    out = tmp_path / "a" / "b" / "out"
    assert prepare_out(out, kind) == out
    assert out.parent.is_dir() and not out.exists()  # the command writes the output itself
    assert f"created {tmp_path / 'a'}" in capsys.readouterr().err
    prepare_out(out, kind)  # already there: nothing said
    assert capsys.readouterr().err == ""
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=f"cannot hold .*: {tmp_path / 'f'} is a file; expected a {kind}"):
        prepare_out(tmp_path / "f" / "x" / "y", kind)
    with pytest.raises(ConfigError, match="is a folder; expected a file" if kind == "file" else "is a file; expected"):
        prepare_out(tmp_path if kind == "file" else tmp_path / "f", kind)


def test_a_missing_out_folder_is_created_and_named_by_convert_train_and_plot(tmp_path, capsys, tiny_cifar):
    import torch

    from resnets import create_model

    state = {"module." + k.replace("fc.", "linear."): v for k, v in create_model("cifar_resnet8").state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "r8.th")  # as the common CIFAR repositories save it
    assert main(["convert", str(tmp_path / "r8.th"), "--out", str(tmp_path / "new1" / "r8.safetensors")]) == 0
    assert f"created {tmp_path / 'new1'}" in capsys.readouterr().err
    run = tmp_path / "new2" / "run"
    assert main(["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50",
                 "--batch-size", "16", "--iters", "2", "--milestones", "1", "--device", "cpu", "--precision", "fp32",
                 "--no-tensorboard", "--out", str(run)]) == 0
    assert f"created {tmp_path / 'new2'}" in capsys.readouterr().err
    assert main(["plot", str(run), "--out", str(tmp_path / "new3" / "fig.png")]) == 0
    assert f"created {tmp_path / 'new3'}" in capsys.readouterr().err


# Options that share a name but rightly differ: what --out is (a file, a folder, a run
# directory) is its metavar; --format is the weights' format in convert and the data set's in
# detect; convert's --normalization offers the kinds a converted file can carry; --preset names
# a recipe of its own command's config (train: cifar-paper, imagenet-paper; detect train: finetune).
DIFFERING_ON_PURPOSE = {"--out", "--format", "--normalization", "--preset"}


def test_an_option_is_spelled_the_same_in_every_command():
    """README: "Every command spells its options the same way". An option that several commands
    take has one metavar, one type and one set of choices everywhere (e.g. --model NAME,
    --weights TAG, --iters N, --data PATH, --device {auto,cpu,cuda})."""
    spellings: dict[str, dict[str, tuple]] = {}
    for command, parser in LEAVES.items():
        for action in options(parser):
            if action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                kind = (action.metavar, tuple(action.choices or ()), getattr(action.type, "__name__", None))
                spellings.setdefault(flag, {})[command] = kind
    shared = {flag: by_command for flag, by_command in spellings.items() if len(by_command) > 1}
    assert {"--model", "--weights", "--iters", "--data", "--device", "--json", "--checkpoint"} <= set(shared)
    differ = {flag: by_command for flag, by_command in shared.items()
              if flag not in DIFFERING_ON_PURPOSE and len(set(by_command.values())) > 1}
    assert not differ, differ
