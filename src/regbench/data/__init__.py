"""Datasets: each loader returns a `DataSplits`; one registry entry per `conf/data/*.yaml`.

Every loader takes the keyword-only arguments `root, val_size, split_seed, train_size` plus its
own options (see each module's docstring); inputs are [N, L] for 1-D signals and float32
[N, C, H, W] for images, normalised with statistics of the training split only.
"""

from __future__ import annotations

from typing import Callable

from regbench.data.bundled import load_digits, load_mnist5k
from regbench.data.cifar import load_cifar10
from regbench.data.download import ChecksumError, DatasetFileError, DownloadError, FileFormatError
from regbench.data.mnist import load_fashion_mnist, load_mnist
from regbench.data.mnist1d import load_mnist1d
from regbench.data.splits import DataSplits, make_splits

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "mnist1d": load_mnist1d,
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}

__all__ = ["DATASETS", "DataSplits", "make_splits", "build_data", "load_mnist1d", "load_mnist5k", "load_digits",
           "load_mnist", "load_fashion_mnist", "load_cifar10", "DatasetFileError", "DownloadError",
           "ChecksumError", "FileFormatError"]


def build_data(name: str, **kwargs) -> DataSplits:
    if name not in DATASETS:
        raise KeyError(f"unknown data={name!r}; known datasets: {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
