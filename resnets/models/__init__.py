"""The networks of the paper, their counts, and their weights files."""

from .counting import count_flops, count_params
from .factory import CIFAR_DEPTHS, IMAGENET_LAYOUTS, ModelSpec, list_models, model_spec
from .loading import create_model, input_normalization, model_from_file
from .normalize import Normalize
from .resnet import BasicBlock, Bottleneck, ResNet, ZeroPadShortcut, make_shortcut, make_stage
from .weights import load_state_dict, read_weights_config, read_weights_metadata, save_weights

__all__ = [
    "BasicBlock", "Bottleneck", "CIFAR_DEPTHS", "IMAGENET_LAYOUTS", "ModelSpec", "Normalize", "ResNet",
    "ZeroPadShortcut", "count_flops", "count_params", "create_model", "input_normalization", "list_models",
    "load_state_dict", "make_shortcut", "make_stage", "model_from_file", "model_spec", "read_weights_config",
    "read_weights_metadata", "save_weights",
]
