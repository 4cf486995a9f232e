"""Unpickling restricted to what the CIFAR-10 python format contains.

`pickle.load` can call any importable function, so a doctored `data_batch_1`
could run code on the machine that opens it. The CIFAR batches are plain
dicts, lists, bytes, strings and ints, plus one numpy array (b'data'), so the
unpickler below resolves only the few numpy globals that rebuild an array and
refuses every other global with a `DataError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from resnets.errors import DataError

try:  # numpy >= 2 moved the implementation modules to numpy._core.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# (module, name) -> object. Both spellings of the module appear in real files:
# the official batches were written by numpy 1.x ("numpy.core.multiarray"),
# files written by numpy 2 say "numpy._core.multiarray". Protocol 5 pickles
# rebuild arrays with `_frombuffer` instead of `_reconstruct`.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _numeric._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the numpy globals needed to rebuild arrays."""

    def __init__(self, file: IO[bytes], name: str) -> None:
        # encoding="bytes": the official batches were pickled by Python 2, whose
        # str objects come back as bytes (hence the b'data' / b'labels' keys).
        super().__init__(file, encoding="bytes")
        self._name = name

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._name}: refusing to unpickle global '{module}.{name}'; a CIFAR-10 "
                "batch file may only contain dicts, lists, bytes, strings, ints and numpy arrays"
            ) from None


def load_pickle(file: IO[bytes], name: str) -> Any:
    """Unpickle `file` (named `name` in error messages) with `RestrictedUnpickler`."""
    try:
        return RestrictedUnpickler(file, name).load()
    except DataError:
        raise
    except Exception as e:  # truncated or garbage files raise many different errors
        raise DataError(f"{name}: not a readable CIFAR-10 python batch file ({type(e).__name__}: {e})") from None


def load_pickle_file(path: str | Path) -> Any:
    """Unpickle the file at `path` with `RestrictedUnpickler`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    return load_pickle(io.BytesIO(data), str(path))
