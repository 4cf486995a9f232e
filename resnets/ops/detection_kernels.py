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

from resnets.ops.fused_bn_relu import build_cpu_extension

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
            _extension = build_cpu_extension("resnets_detection_ops", _SOURCE)
        except Exception as e:  # no compiler, no headers, a failed build: run the PyTorch versions
            _unavailable = True
            log.warning("detection C++ kernels unavailable, using the PyTorch versions: %s", str(e).splitlines()[0])
    return _extension
