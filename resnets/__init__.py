"""resnets: "Deep Residual Learning for Image Recognition" (He, Zhang, Ren, Sun, 2015) as software."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, ResnetsError

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "ResnetsError", "__version__",
    "count_flops", "count_params", "create_model", "list_models", "load_state_dict",
]
_FROM_MODELS = {"count_flops", "count_params", "create_model", "list_models", "load_state_dict"}


def __getattr__(name: str):
    # The networks are imported on first use (PEP 562), not with the package: importing torch
    # takes 1-2 s, and `resnets --help` or `resnets --version` need none of it.
    if name in _FROM_MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")
