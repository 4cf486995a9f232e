"""Table 1 and the CIFAR table come from the model objects."""

from __future__ import annotations

import re

import pytest
import torch

from resnets.analysis.tables import PAPER_TABLE1_GFLOPS, architecture_tables
from resnets.models import count_flops, create_model


@pytest.fixture(scope="module")
def text() -> str:
    return architecture_tables()


def test_architecture_tables_joins_both(monkeypatch):
    import resnets.analysis.tables as tables

    monkeypatch.setattr(tables, "table1", lambda: "T1")
    monkeypatch.setattr(tables, "cifar_table", lambda: "CIFAR")
    assert architecture_tables() == "T1\n\nCIFAR"


def test_table1_flops(text):
    counted = re.search(r"\| FLOPs \(counted\) \|  \| (.*) \|", text).group(1).split(" | ")
    assert len(counted) == 5
    for cell, depth in zip(counted, (18, 34, 50, 101, 152)):
        gflops = float(cell.removesuffix("x10^9"))
        # Within 2% of Table 1 (the paper rounds; 34-layer: 3.66 counted vs "3.6").
        assert abs(gflops - PAPER_TABLE1_GFLOPS[depth]) / PAPER_TABLE1_GFLOPS[depth] < 0.02
        if depth in (18, 50):  # the cells are count_flops of the named network
            with torch.device("meta"):
                flops = count_flops(create_model(f"resnet{depth}"), 224)
            assert cell == f"{flops / 1e9:.2f}x10^9"


def test_table1_layout(text):
    for size in ("112x112", "56x56", "28x28", "14x14", "7x7"):
        assert f"| {size} |" in text
    assert "[3x3, 64; 3x3, 64] x2" in text  # 18-layer conv2_x
    assert "[1x1, 256; 3x3, 256; 1x1, 1024] x36" in text  # 152-layer conv4_x
    assert "[1x1, 128; 3x3, 128; 1x1, 512] x8" in text  # 152-layer conv3_x
    assert "3x3 max pool, stride 2" in text and "7x7, 64, stride 2" in text


def test_cifar_table(text):
    assert "| output map size | 32x32 | 16x16 | 8x8 |" in text
    assert "| # layers | 1+2n | 2n | 2n |" in text
    assert "| # filters | 16 | 32 | 64 |" in text
    assert "| 110 | 18 | 1.73M | 253M |" in text  # Table 6: 1.7M
    assert "| 1202 | 200 | 19.42M | 2829M |" in text  # Sec. 4.2: 19.4M
