"""The CUDA paths' logic, on a machine without a GPU: torch.cuda's answers are scripted.

What is checked is what resnets asks and does with the answers (which GPU, which precision,
which random streams, pinned memory, host syncs), not the hardware; the hardware is checked
by `benchmarks/gpu_check.py` on a machine with GPUs.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from resnets.checkpoint import load_checkpoint
from resnets.cli import main
from resnets.config import resolve_config, validate
from resnets.errors import ConfigError
from resnets.eval.metrics import TopKAccumulator
from resnets.runtime import Runtime, resolve_device, resolve_precision, rng_state, set_rng_state, setup_runtime
from resnets.train import imagenet_data
from test_imagenet_train import build_small, make_tree, small_config


class FakeCuda:
    """torch.cuda on a machine with GPUs of compute capability `majors` (7: V100/T4, which only
    emulate bf16; 8: A100), none of it real. Calls that would touch a GPU are refused."""

    def __init__(self, monkeypatch, majors: list[int], emulation: bool = True) -> None:
        self.majors, self.emulation, self.current = majors, emulation, 0
        self.rng = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(len(majors))}
        self.set_rng: list[tuple[torch.Tensor, torch.device]] = []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: len(self.majors))
        monkeypatch.setattr(cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(cuda, "get_device_properties", lambda d: SimpleNamespace(major=self.majors[self._index(d)]))
        monkeypatch.setattr(cuda, "_check_bf16_tensor_supported", lambda d: self.emulation)
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(cuda, "device", self._device)
        monkeypatch.setattr(cuda, "get_rng_state", lambda d="cuda": self.rng[self._index(d)].clone())
        monkeypatch.setattr(cuda, "set_rng_state", lambda state, d="cuda": self.set_rng.append((state, d)))
        for name in ("get_rng_state_all", "set_rng_state_all", "init", "_lazy_init", "set_device"):
            monkeypatch.setattr(cuda, name, self._refused(name))

    def _index(self, d) -> int:
        index = d if isinstance(d, int) else torch.device(d).index
        return self.current if index is None else index

    @contextlib.contextmanager
    def _device(self, d):
        before, self.current = self.current, self._index(d)
        try:
            yield
        finally:
            self.current = before

    @staticmethod
    def _refused(name: str):
        def refuse(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called")
        return refuse


def cuda(i: int) -> torch.device:
    return torch.device("cuda", i)


# --- precision -----------------------------------------------------------------------------------

def test_auto_precision_takes_bf16_only_where_the_runs_gpu_has_it_natively(monkeypatch):
    gpus = FakeCuda(monkeypatch, majors=[7, 8])  # GPU 0 a V100 (emulated bf16), GPU 1 an A100
    assert resolve_precision("auto", cuda(0)) == "fp32"
    # Asked about the run's GPU, not the current one (still GPU 0 here).
    assert resolve_precision("auto", cuda(1)) == "bf16" and gpus.current == 0
    gpus.current = 1
    assert resolve_precision("auto", cuda(0)) == "fp32"
    # What `resnets train / eval / detect` set up.
    assert setup_runtime("cuda:1", "auto") == Runtime(cuda(1), "bf16")
    assert setup_runtime("cuda:0", "auto") == Runtime(cuda(0), "fp32")
    # Asked for by name, emulated bf16 runs (slowly); a GPU without any bf16 is refused, by name.
    assert resolve_precision("bf16", cuda(0)) == "bf16"
    gpus.emulation = False
    with pytest.raises(ConfigError, match="cuda:0 has no bf16"):
        resolve_precision("bf16", cuda(0))
    assert resolve_precision("bf16", cuda(1)) == "bf16"


# --- cuda:N ----------------------------------------------------------------------------------------

def test_cuda_n_is_chosen_from_the_command_line_and_the_config(monkeypatch, tmp_path, capsys, tiny_cifar):
    FakeCuda(monkeypatch, majors=[8, 8])
    assert resolve_device("cuda:1") == cuda(1)
    assert resolve_device("cuda", local_rank=1) == cuda(1) and resolve_device("auto") == cuda(0)
    with pytest.raises(ConfigError, match="GPU 2 was asked for .* 2 CUDA device"):
        resolve_device("cuda:2")

    assert main(["train", "--model", "cifar_resnet8", "--device", "cuda:1", "--out", str(tmp_path / "r"),
                 "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["device"] == "cuda:1"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({"device": "cuda:1"}))
    assert main(["train", "--config", str(config_file), "--out", str(tmp_path / "r"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["device"] == "cuda:1"

    for command in (["train", "--out", str(tmp_path / "r")], ["eval", "--checkpoint", "x.safetensors"],
                    ["detect", "train", "--out", str(tmp_path / "d")]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--device", "gpu1"])
        assert exit_.value.code == 2 and "expected auto, cpu, cuda or cuda:N, got 'gpu1'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="device: expected auto, cpu, cuda or cuda:N"):
        validate(resolve_config(overrides={"device": "cuda:x"}))
    # A GPU that is not there: one line, before any data is read.
    assert main(["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--device", "cuda:5",
                 "--out", str(tmp_path / "r5")]) == 2
    assert "GPU 5 was asked for" in capsys.readouterr().err


# --- random streams in checkpoints -------------------------------------------------------------

def test_checkpoint_holds_only_the_runs_gpu_stream_and_resumes_with_fewer_gpus(monkeypatch):
    FakeCuda(monkeypatch, majors=[8, 8, 8, 8])
    saved = rng_state(cuda(3))  # a run on GPU 3 of 4
    assert torch.equal(saved["cuda"], torch.full((8,), 3, dtype=torch.uint8))
    torch.save(saved, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    monkeypatch.undo()
    one_gpu = FakeCuda(monkeypatch, majors=[8])  # resumed where one GPU is visible
    set_rng_state(loaded, cuda(0))
    assert len(one_gpu.set_rng) == 1 and torch.equal(one_gpu.set_rng[0][0], saved["cuda"])
    assert one_gpu.set_rng[0][1] == cuda(0)

    # Checkpoints written before held every visible GPU's stream: the run's GPU takes its own.
    old = {**loaded, "cuda": [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]}
    one_gpu.set_rng.clear()
    set_rng_state(old, cuda(0))
    assert torch.equal(one_gpu.set_rng[0][0], old["cuda"][0])
    one_gpu.set_rng.clear()
    set_rng_state(old, torch.device("cpu"))  # and a CPU run ignores them
    assert not one_gpu.set_rng


def test_a_cpu_run_on_a_gpu_machine_never_touches_cuda(monkeypatch, tmp_path, tiny_cifar):
    gpus = FakeCuda(monkeypatch, majors=[8, 8])
    for name in ("get_rng_state", "set_rng_state"):
        monkeypatch.setattr(torch.cuda, name, FakeCuda._refused(name))
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet8", "--data", str(tiny_cifar), "--val-size", "50", "--batch-size", "16",
            "--iters", "4", "--milestones", "2,3", "--checkpoint-every", "2", "--eval-every", "4", "--out", str(out),
            "--device", "cpu", "--precision", "fp32", "--no-tensorboard"]
    assert main(args) == 0
    assert "cuda" not in load_checkpoint(out / "checkpoints" / "last.pt")["rng"]
    assert main([*args, "--iters", "6", "--resume"]) == 0  # restores the streams it saved
    assert not gpus.set_rng


# --- pinned memory -----------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_imagenet_loaders_pin_memory_for_a_gpu_run_only(monkeypatch, tmp_path, device):
    FakeCuda(monkeypatch, majors=[8, 8])  # GPUs are there either way
    pinned = []
    real_loader = imagenet_data.imagenet_loader

    def loader(*args, **kwargs):
        pinned.append(kwargs.get("pin_memory"))
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(imagenet_data, "imagenet_loader", loader)
    root = make_tree(tmp_path / "tree", 2, 1, (40, 36))
    data = build_small(small_config(tmp_path, root), Runtime(torch.device(device), "fp32"))
    stream = data.train.batches(0)
    with contextlib.suppress(Exception):  # the batch would go to a GPU that is not there
        next(stream)
    assert pinned == [device != "cpu"] * 2  # validation loader, training loader


# --- host syncs in validation ----------------------------------------------------------------------

class HostToDeviceCopies(TorchDispatchMode):
    """Counts tensors copied from the host to another device (on a GPU: a copy that waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(out, torch.Tensor) and out.device.type != "cpu" and any(a.device.type == "cpu" for a in inputs):
            self.copies.append(str(func))
        return out


def test_validation_counts_copy_nothing_from_the_host_per_batch():
    # The meta device stands in for a GPU: whatever is computed on it stays there.
    acc = TopKAccumulator((1, 5), device="meta")
    scores, targets = torch.randn(6, 10, device="meta"), torch.zeros(6, dtype=torch.int64, device="meta")
    with HostToDeviceCopies() as mode:
        for _ in range(3):
            acc.update(scores, targets)
    assert mode.copies == []
    # And on the CPU the counts are right.
    cpu = TopKAccumulator((1, 5))
    cpu.update(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, 0]))
    assert cpu.compute() == {"top1_err": pytest.approx(200 / 3), "top5_err": 0.0, "n": 3}


# --- the GPU check script ------------------------------------------------------------------------------

def test_gpu_check_script_dry_run_on_the_cpu(tmp_path, capsys):
    """benchmarks/gpu_check.py with --device cpu: the steps run (a subset here, to stay fast), each
    checked, a table printed and the JSON written."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).parents[2] / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "gpu_check.json"
    code = gpu_check.main(["--device", "cpu", "--precisions", "fp32", "--steps", "train,resume,eval,ddp",
                           "--iters", "4", "--model", "cifar_resnet8", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = json.loads(out.read_text())
    assert result["dry_run"] and [(r["step"], r["status"]) for r in result["rows"]] == [
        ("train", "ok"), ("resume", "ok"), ("eval", "ok"), ("ddp", "skipped")]
    assert "iteration 4 -> 8" in printed and "50 images" in printed
    # A failing step is reported, the ones that need it skipped, and the exit status says so.
    code = gpu_check.main(["--device", "cpu", "--precisions", "fp32", "--steps", "train,resume", "--iters", "4",
                           "--model", "no_such_net", "--json", str(out)])
    assert code == 1
    assert [r["status"] for r in json.loads(out.read_text())["rows"]] == ["FAILED", "skipped"]
