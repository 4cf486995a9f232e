"""Data sets and input pipelines."""

from resnets.data.cifar import (
    CifarArrays,
    CifarBatches,
    EvalBatches,
    load_cifar10,
    per_pixel_mean,
    read_cifar10,
    split_indices,
)
from resnets.data.download import download_cifar10
from resnets.data.gpu_augment import augment_batch, crop_flip
