"""Data sets and input pipelines."""

__all__ = ["CifarArrays", "CifarBatches", "EvalBatches", "augment_batch", "crop_flip", "download_cifar10",
           "load_cifar10", "per_pixel_mean", "read_cifar10", "split_indices"]


def __getattr__(name: str):
    # Imported on first use (PEP 562): `resnets download-cifar10 --help` reads only
    # `resnets.data.download`, and must not import torch through `cifar`.
    if name == "download_cifar10":
        from resnets.data.download import download_cifar10

        return download_cifar10
    if name in ("augment_batch", "crop_flip"):
        from resnets.data import gpu_augment

        return getattr(gpu_augment, name)
    if name in __all__:
        from resnets.data import cifar

        return getattr(cifar, name)
    raise AttributeError(f"module 'resnets.data' has no attribute {name!r}")
