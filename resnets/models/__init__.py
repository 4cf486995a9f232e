"""The networks of the paper, their counts, and their weights files."""

_FROM = {
    "counting": ("count_flops", "count_params", "feature_map_sizes", "network_counts"),
    "factory": ("CIFAR_DEPTHS", "IMAGENET_LAYOUTS", "ModelSpec", "list_models", "model_spec"),
    "loading": ("create_model", "input_normalization", "model_from_file"),
    "normalize": ("Normalize",),
    "resnet": ("BasicBlock", "Bottleneck", "ResNet", "ZeroPadShortcut", "make_shortcut", "make_stage"),
    "weights": ("load_state_dict", "read_weights_config", "read_weights_metadata", "save_weights"),
}
__all__ = sorted(name for names in _FROM.values() for name in names)


def __getattr__(name: str):
    # Imported on first use (PEP 562), not with the package: `resnets predict --help` reads the
    # pretrained-weights registry (`resnets.models.pretrained`, no torch) and must not wait 1-2 s
    # for torch.
    if name not in __all__:  # before importing: `from . import x` asks this module for x first
        raise AttributeError(f"module 'resnets.models' has no attribute {name!r}")
    from . import counting, factory, loading, normalize, resnet, weights

    modules = {"counting": counting, "factory": factory, "loading": loading, "normalize": normalize,
               "resnet": resnet, "weights": weights}
    for module, names in _FROM.items():
        if name in names:
            return getattr(modules[module], name)
