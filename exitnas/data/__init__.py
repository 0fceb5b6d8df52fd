"""Datasets as uint8 train/val/test tensors, and the loaders that batch and augment them.

Importing this package registers the built-in datasets in :data:`DATASETS`:
``digits`` (built in), ``cifar10``, ``cifar100``, ``image-folder`` and ``cifar10-jpeg``.
"""

from __future__ import annotations

from exitnas.data import _builtin as _builtin  # noqa: F401  (registers digits, cifar10, cifar100)
from exitnas.data import _files as _files  # noqa: F401  (registers image-folder, cifar10-jpeg)
from exitnas.data._files import find_cifar10_jpeg
from exitnas.data._loader import GpuBatchLoader, make_dataloader, normalize
from exitnas.data._splits import DATASETS, DataConfig, ImageSplits, load_dataset

__all__ = [
    "DATASETS",
    "DataConfig",
    "GpuBatchLoader",
    "ImageSplits",
    "find_cifar10_jpeg",
    "load_dataset",
    "make_dataloader",
    "normalize",
]
