"""resnets: "Deep Residual Learning for Image Recognition" (He, Zhang, Ren, Sun, 2015) as software."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, ResnetsError
from .models import count_flops, count_params, create_model, list_models, load_state_dict

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "ResnetsError", "__version__",
    "count_flops", "count_params", "create_model", "list_models", "load_state_dict",
]
