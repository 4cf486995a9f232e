"""ONNX export of a trained network, checked against PyTorch in onnxruntime.

The exported graph is the whole inference path of `ResNet.forward`: the input
normalisation the network was trained with (the paper's per-pixel mean, Sec. 3.4 / 4.2,
or a channel mean/std) followed by the network and its classifier. It takes float32
images in [0, 1], NCHW, and returns logits; the batch dimension is dynamic, the image
size is fixed at export time (a per-pixel mean image has one size; export again with
another `image_size` for the fully-convolutional test scales of Sec. 3.4).

Needs the `export` extra (onnx, onnxscript for torch's exporter, onnxruntime to check).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class OnnxCheck:
    """How closely onnxruntime reproduces PyTorch on the same images."""

    images: int
    max_abs_diff: float
    top1_agreement: float


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"ONNX export needs the '{module}' package: pip install -c constraints.txt -e \".[export]\"")


def export_onnx(model: nn.Module, path: str | Path, image_size: int, opset: int = 18) -> Path:
    """Write `model` (eval mode, fp32, on CPU) to `path` as one self-contained .onnx file."""
    _require("onnx")
    _require("onnxscript")
    if image_size < 32:
        raise ConfigError(f"--image-size: expected at least 32 pixels, got {image_size}")
    # A copy, so the caller's model keeps its device, dtype and mode.
    model = copy.deepcopy(model).float().cpu().eval()
    example = torch.rand(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # torch's exporter logs that torchvision's ops are missing (we do not use them) and
    # warns about its own pytree internals; neither is news to the user.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    finally:
        registration_log.setLevel(level)
    # torch records each node's Python stack trace, with the absolute paths of this machine's
    # source files; a shared model carries none (issue 28).
    for graph in (program.model.graph, *program.model.functions.values()):
        for node in graph.all_nodes() if hasattr(graph, "all_nodes") else graph:
            node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    atomic_write(path, program.save)  # a crash never leaves a half-written model behind
    return Path(path)


def check_onnx(path: str | Path, model: nn.Module, images: torch.Tensor) -> OnnxCheck:
    """Run `images` (float in [0, 1], NCHW) through onnxruntime and through `model`, on the
    device `model` is on (`resnets export --device`)."""
    _require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = copy.deepcopy(model).float().eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = model(images.float().to(device)).cpu().numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images.float().numpy()})[0]
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    return OnnxCheck(images=len(images), max_abs_diff=float(abs(got - expected).max()), top1_agreement=agree)
