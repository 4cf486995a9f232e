"""The commands in README.md and docs/*.md work as written (issue 12).

Every documented `resnets` command is parsed by the real parser with its current
spellings; the ones that need only CIFAR-sized data run, on 200 generated images, with
the schedule shortened by flags appended at the end (so every documented flag is still
exercised). Commands for ImageNet, VOC/COCO, GPUs or many machines are parsed only.
"""

import re
import shlex
from pathlib import Path

import pytest

from resnets.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CIFAR_ARCHIVE = "../shared/data/cifar10-jpeg-train.tar.gz"
# Placeholders the docs use for paths and values, and what the parser is given instead.
PLACEHOLDERS = {"RUN_DIR...": "runs/r20", "RUN_DIR": "runs/r20", "FILE...": "runs/r20/model.safetensors",
                "FILE": "runs/r20/model.safetensors", "PATH": CIFAR_ARCHIVE, "DIR": "out", "ROOT": "/data/imagenet",
                "SRC": "src.pth", "DST": "dst.safetensors", "K": "2", "N": "4", "T": "title", "PERCENT": "20",
                "fig.png": "fig.png"}
SHORT = ["--val-size", "50", "--batch-size", "16", "--device", "cpu", "--precision", "fp32", "--no-tensorboard"]


def documented_commands() -> list[tuple[str, str, bool]]:
    """(file, command, whole) for each `resnets ...` command: in a code block or an indented block
    (whole: a complete command), or in inline code (often a fragment, e.g. `resnets eval --tta ...`)."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
        blocks += ["\n".join(line[4:] for line in m.group(1).splitlines())
                   for m in re.finditer(r"(?m)^\n((?:^    .+\n)+)", prose)]
        for block in blocks:
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip().startswith("resnets "):
                    # "resnets eval ... --tta 10crop": a variant of the line above, not a whole command
                    found.append((path.name, " ".join(line.split()), " ... " not in line))
        for inline in re.findall(r"`(resnets [^`]+)`", prose):
            if "|" not in inline:  # "resnets detect train|eval|predict" names commands
                found.append((path.name, inline, False))
    return found


def argv_of(command: str) -> list[str]:
    words = shlex.split(command, comments=True)[1:]
    words = [PLACEHOLDERS.get(w.strip("[]"), w.strip("[]")) for w in words if w.strip("[]") != "..."]
    return [re.sub(r"^\{(\w+),.*\}$", r"\1", w) for w in words]  # --tta {center,10crop,...}: one choice


def command_parser(argv: list[str]):
    """The parser of the (sub)command `argv` names, e.g. ["detect", "train", ...] -> detect train's."""
    import argparse

    parser = build_parser()
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    assert len([c for c in COMMANDS if c[2]]) > 15
    assert ("README.md", f"resnets train --model cifar_resnet20 --data {CIFAR_ARCHIVE} --out runs/r20",
            True) in COMMANDS


@pytest.mark.parametrize("where, command, whole", COMMANDS)
def test_every_documented_command_uses_current_options(where, command, whole, capsys):
    import argparse

    argv = argv_of(command)
    parser = command_parser(argv)
    current = {flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings}
    for word in argv:
        if word.startswith("--"):
            assert word.split("=")[0] in current, f"{where}: `{command}`: {word} is not an option of {parser.prog}"
    if whole:
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: `{command}` does not parse: {capsys.readouterr().err}")


def run(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"resnets {' '.join(argv)}: {captured.err}"
    return captured.out


def test_readme_quick_start_and_outputs_run(tiny_cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    readme = [c for w, c, _ in COMMANDS if w == "README.md"]
    data = str(tiny_cifar)

    def doc(prefix: str) -> list[str]:
        (command,) = [c for c in readme if c.startswith(prefix)][:1]
        return [a.replace(CIFAR_ARCHIVE, data) for a in argv_of(command)]

    assert "cifar_resnet1202" in run(doc("resnets models"), capsys)
    run(doc("resnets train --model cifar_resnet20") + ["--iters", "2", "--milestones", "1", "--checkpoint-every", "1",
                                                      *SHORT], capsys)
    # README's table of the run directory names every file a run writes (previous.pt included).
    written = {p.relative_to("runs/r20").as_posix() for p in Path("runs/r20").rglob("*") if p.is_file()}
    readme_text = (REPO / "README.md").read_text()
    assert written >= {"checkpoints/previous.pt", "run.lock", "config_history.jsonl"}
    assert all(f"`{name}`" in readme_text for name in written), written
    out = run(doc("resnets train --resume --out runs/r20") + ["--iters", "3", "--milestones", "1"], capsys)
    assert "resuming runs/r20 at iteration 2 of 3" in out
    assert "top-1 error" in run(doc("resnets eval --checkpoint runs/r20/model.safetensors") + ["--device", "cpu"],
                                capsys)
    run(doc("resnets export --checkpoint runs/r20/model.safetensors") + ["--check-images", "2"], capsys)
    assert Path("r20.onnx").is_file()
    run(doc("resnets plot") + ["--out", "fig.png"], capsys)
    assert Path("fig.png").is_file()
    assert "Table 1" in run(doc("resnets models --table1"), capsys)


def test_reproduce_and_degradation_commands_run(tiny_cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (command,) = [c for w, c, _ in COMMANDS if w == "degradation.md" and c.startswith("resnets reproduce")]
    argv = [a.replace(CIFAR_ARCHIVE, str(tiny_cifar)) for a in argv_of(command)]
    argv[argv.index("--depths") + 1] = "8"  # the documented depths are minutes each; the command is the same
    run(argv + ["--train-size", "100", "--iters", "2", "--milestones", "1", "--eval-every", "2",
                "--checkpoint-every", "2", "--val-size", "50", "--batch-size", "16", "--precision", "fp32",
                "--response-images", "8"], capsys)
    assert Path("runs/degradation/report.md").is_file()


def test_detection_synthetic_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (command,) = [c for w, c, _ in COMMANDS if w == "detection.md" and "--format synthetic" in c]
    run(argv_of(command) + ["--iters", "1", "--synthetic-images", "2", "--set", "min_size=64",
                            "--set", "max_size=80", "--set", "rpn_batch_size_per_image=16",
                            "--set", "roi_batch_size_per_image=8"], capsys)
    assert Path("runs/smoke/checkpoints/last.pt").is_file()


def test_readme_says_what_needs_a_download_the_cache_and_the_image_size(tmp_path):
    """Issue 26.7: README's statements about downloads, the decode cache and CIFAR folders match
    the code: the tags it says are fetched are exactly those with a URL, the cache size it quotes
    is the decoded array of the 50k JPEG images, and a class folder of other-sized images is
    refused as it says."""
    from resnets.data.cifar import default_cache_dir, read_cifar10
    from resnets.errors import DataError
    from resnets.models.pretrained import PRETRAINED

    readme = " ".join((REPO / "README.md").read_text().split())
    downloaded = {e.tag for e in PRETRAINED.values() if e.url}
    shipped = {e.tag for e in PRETRAINED.values() if not e.url}
    offline = readme[readme.index("Offline, everything runs"):]
    offline = offline[:offline.index("by hand.")]
    assert shipped == {"cifar10-jpeg"} and "the shipped `cifar10-jpeg` networks" in offline
    assert {"torchvision-imagenet1k-v1", "torchvision-imagenet1k-v2", "akamaster-cifar10", "keras-imagenet"} == downloaded
    assert "`torchvision-imagenet1k-v1`/`v2`" in offline and "`akamaster-cifar10`" in offline
    assert "`keras-imagenet`" in offline
    assert "`$RESNETS_CACHE`" in readme and "`~/.cache/resnets`" in readme
    assert default_cache_dir().name == "resnets"
    assert f"{round(50_000 * 3 * 32 * 32 / 1e6)} MB for the 50k images" in readme  # uint8, 3x32x32 each
    assert re.search(r"about \d+ minutes on 2 CPU cores", readme)

    from PIL import Image

    (tmp_path / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "train" / "cat" / "big.png")
    assert "32x32" in readme and "another size is refused, naming the file" in readme
    with pytest.raises(DataError, match=r"big.png: image is 40x40, expected 32x32"):
        read_cifar10(tmp_path, tmp_path / "cache")
