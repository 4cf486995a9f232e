"""What leaves the machine carries none of its paths (issue 28), and files resnets writes have one
file mode (issue 26.2).

A weights file is shared; its metadata names the data set by file name, sha256 and
fingerprint, never by where the file lay. Docs and usage lines use placeholders (PATH, DIR).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import resnets
from resnets.io import atomic_write_text
from resnets.models import create_model, read_weights_metadata, save_weights

REPO = Path(__file__).resolve().parents[1]
# Spelt in pieces so that this file does not match itself.
MACHINE_PATHS = [s.encode() for s in ("/" + "home/", "/" + "root/", "/" + "work/", "/" + "tmp/", "C:" + "\\")]
SHIPPED = sorted((Path(resnets.__file__).parent / "weights").rglob("*.safetensors"))


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [REPO / name for name in out.decode().split("\0") if name]


def machine_paths_in(data: bytes) -> list[str]:
    return [p.decode() for p in MACHINE_PATHS if p in data]


def test_no_shipped_weights_file_names_a_path_of_the_machine_that_made_it():
    assert SHIPPED
    found = {p.name: machine_paths_in(p.read_bytes()) for p in SHIPPED}
    assert not any(found.values()), found
    for path in SHIPPED:  # the data set stays identified, by name and content
        meta = read_weights_metadata(path)
        assert meta["config"]["data"]["path"] == "cifar10-jpeg-train.tar.gz"
        assert len(meta["data_sha256"]) == 64 and meta["data_fingerprint"].startswith("sha256:")


def test_no_tracked_text_file_names_a_path_of_this_machine():
    found = {}
    for path in tracked_files():
        data = path.read_bytes() if path.is_file() else b""
        if b"\0" in data[:8192] and path.suffix != ".safetensors":
            continue  # binary (images): no text to leak a path into
        if hits := machine_paths_in(data):
            found[str(path.relative_to(REPO))] = hits
    assert not found, f"use placeholders (PATH, DIR) instead: {found}"


def test_weights_record_the_data_by_name_not_by_path(tmp_path):
    from resnets.models.weights import without_machine_paths

    model = create_model("cifar_resnet8")
    home = str(Path.home() / "data" / "cifar.tar.gz")
    metadata = {"data": f"class-folder archive {home} [split=train]", "urls": ["https://example.org/a/b.pth"],
                "config": {"data": {"path": home, "cache_dir": "~/.cache/resnets"}, "out": "/srv/runs/r8"}}
    save_weights(tmp_path / "m.safetensors", model, {"name": "cifar_resnet8"}, metadata)
    raw = (tmp_path / "m.safetensors").read_bytes()
    header = raw[8:8 + int.from_bytes(raw[:8], "little")]  # the JSON header; the rest is tensor bytes
    assert str(Path.home()).encode() not in header and b"/srv/" not in header and b"~/" not in header
    meta = read_weights_metadata(tmp_path / "m.safetensors")
    assert meta["data"] == "class-folder archive cifar.tar.gz [split=train]"
    assert meta["config"] == {"data": {"path": "cifar.tar.gz", "cache_dir": "resnets"}, "out": "r8"}
    assert meta["urls"] == ["https://example.org/a/b.pth"]  # a URL is not a path of this machine
    assert without_machine_paths("runs/r20 and D:\\Users\\me\\d.tar.gz") == "runs/r20 and d.tar.gz"


def test_a_trained_model_safetensors_names_no_path_but_the_run_keeps_them(tmp_path, tiny_cifar):
    from resnets.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50",
                 "--batch-size", "16", "--iters", "2", "--milestones", "1", "--device", "cpu", "--precision", "fp32",
                 "--no-tensorboard", "--out", str(out)]) == 0
    raw = (out / "model.safetensors").read_bytes()
    assert str(tmp_path).encode() not in raw and str(tiny_cifar).encode() not in raw
    meta = read_weights_metadata(out / "model.safetensors")
    assert meta["config"]["data"]["path"] == tiny_cifar.name and meta["config"]["out"] == "run"
    assert meta["data_fingerprint"]
    assert str(tiny_cifar) in (out / "config.yaml").read_text()  # --resume needs it: it stays in the run


def test_weights_get_the_file_mode_of_everything_else_written(tmp_path):
    from resnets.io import _UMASK

    save_weights(tmp_path / "model.safetensors", create_model("cifar_resnet8"), {"name": "cifar_resnet8"})
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    expected = oct(0o666 & ~_UMASK)  # 0o644 under the usual umask 022, as config.yaml and metrics.jsonl
    assert modes == {"model.safetensors": expected, "config.yaml": expected}
