"""The C++ CPU kernels of RoI Align (forward, backward) and NMS (``csrc/detection_ops.cpp``).

Compiled at first use with ``torch.utils.cpp_extension.load`` for the instruction set ATen
reports for this CPU, exactly as :mod:`resnets.ops.fused_bn_relu` builds its kernel, and
cached by torch in ``TORCH_EXTENSIONS_DIR``. When it cannot be built (no compiler),
:func:`load_extension` returns None once with a warning in the log, and
:func:`resnets.ops.roi_align` / :func:`resnets.ops.nms` run their pure-PyTorch versions
(same results: tests/ops compare both against loop transcriptions of torchvision's kernels).
Set ``RESNETS_DETECTION_KERNELS=0`` to force the pure-PyTorch versions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from resnets.ops.fused_bn_relu import _CAPABILITY_FLAGS

__all__ = ["load_extension"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "detection_ops.cpp"
_extension: Any = None
_unavailable = False


def load_extension() -> Any:
    """The compiled kernel module, or None when it cannot be built here (logged once) or is
    switched off with ``RESNETS_DETECTION_KERNELS=0``."""
    global _extension, _unavailable
    if os.environ.get("RESNETS_DETECTION_KERNELS", "1") == "0":
        return None
    if _extension is None and not _unavailable:
        try:
            from torch.utils import cpp_extension

            capability = torch.backends.cpu.get_cpu_capability()
            flags = _CAPABILITY_FLAGS.get(capability, [])
            _extension = cpp_extension.load(
                name=f"resnets_detection_ops_{capability.lower()}",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-fopenmp", *flags, f"-DCPU_CAPABILITY={capability if flags else 'DEFAULT'}"],
                extra_ldflags=["-fopenmp"],
            )
        except Exception as e:  # no compiler, no headers, a failed build: run the PyTorch versions
            _unavailable = True
            log.warning("detection C++ kernels unavailable, using the PyTorch versions: %s", str(e).splitlines()[0])
    return _extension
