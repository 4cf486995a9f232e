"""DDP on CPU: two gloo processes launched by torchrun, against one process with the same global batch.

A small driver script (written to tmp_path) runs `resnets.train.engine.train` with the
engine's `evaluate` wrapped so that every process records its parameters and the number
of validation images it counted - the engine itself only writes from rank 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnets
from resnets.config import resolve_config
from resnets.train import engine

REPO = Path(resnets.__file__).resolve().parent.parent
VAL_SIZE = 50
ITERS = 6

DRIVER = '''
import json, sys
import torch
from resnets.config import resolve_config
from resnets.train import engine

overrides, record_dir = json.loads(sys.argv[1]), sys.argv[2]
original = engine.evaluate

def recording_evaluate(model, batches, rt):
    result = original(model, batches, rt)
    params = torch.cat([p.detach().double().flatten().cpu() for p in model.parameters()])
    torch.save({"params": params, "n": result["n"], "top1_err": result["top1_err"]},
               f"{record_dir}/rank{rt.rank}_of{rt.world_size}.pt")
    return result

engine.evaluate = recording_evaluate
summary = engine.train(resolve_config(None, overrides))
print(json.dumps(summary))
'''


@pytest.fixture(scope="module")
def cifar_folders(tmp_path_factory) -> Path:
    """10 classes x 30 PNG images, 32x32, class-dependent colours plus noise."""
    root = tmp_path_factory.mktemp("cifar_folders")
    rng = np.random.default_rng(0)
    for c in range(10):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(30):
            img = np.clip(20 * c + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def overrides(data: Path, out: Path, **extra) -> dict:
    values = {"model.name": "cifar_resnet8", "data.path": str(data), "data.val_size": VAL_SIZE,
              "data.cache_dir": str(out.parent / "cache"), "optim.batch_size": 16, "optim.iters": ITERS,
              "eval_every": ITERS, "log_every": ITERS, "device": "cpu", "precision": "fp32",
              "out": str(out), "tensorboard": False}
    values.update(extra)
    return values


def run_torchrun(tmp_path: Path, values: dict, nproc: int) -> Path:
    record = tmp_path / "record"
    record.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={nproc}", str(script), json.dumps(values), str(record)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return record


def run_single(tmp_path: Path, values: dict, monkeypatch) -> dict:
    recorded = {}
    original = engine.evaluate

    def recording_evaluate(model, batches, rt):
        result = original(model, batches, rt)
        recorded.update(params=torch.cat([p.detach().double().flatten() for p in model.parameters()]), **result)
        return result

    monkeypatch.setattr(engine, "evaluate", recording_evaluate)
    engine.train(resolve_config(None, values))
    return recorded


def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path, cifar_folders, monkeypatch):
    single = run_single(tmp_path, overrides(cifar_folders, tmp_path / "one"), monkeypatch)
    assert single["n"] == VAL_SIZE

    record = run_torchrun(tmp_path, overrides(cifar_folders, tmp_path / "two"), nproc=2)
    ranks = [torch.load(record / f"rank{r}_of2.pt", weights_only=True) for r in range(2)]
    # (a) DDP keeps the replicas identical: same initial broadcast, same averaged gradients.
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])
    # (c) distributed validation scores every held-out image exactly once (strided shards, summed).
    assert ranks[0]["n"] == ranks[1]["n"] == VAL_SIZE
    assert ranks[0]["top1_err"] == ranks[1]["top1_err"]
    # (b) Same global batch of 16, same data order; the only difference is that BN normalises
    # with per-process statistics (8 images each, as the paper's per-GPU BN). Measured for
    # cifar_resnet8, 6 steps at lr 0.1: relative parameter difference 0.063 (after 1 step: 0.006;
    # 6 steps at lr 0.01: 0.003). A different seed differs by ~1.4. (SyncBN, which would remove
    # the difference, is GPU-only in PyTorch.)
    p1, p2 = single["params"], ranks[0]["params"]
    relative = float((p2 - p1).norm() / p1.norm())
    print(f"relative parameter difference, 2 processes vs 1: {relative:.2e}")
    assert 0 < relative < 0.15
    # A different seed gives a difference far larger: the agreement above is not trivial.
    other = run_single(tmp_path, overrides(cifar_folders, tmp_path / "seed1", seed=1), monkeypatch)
    assert float((other["params"] - p1).norm() / p1.norm()) > 5 * relative
