"""MNIST-1D (Greydanus & Kobak 2020), generated locally by the `mnist1d` package.

`make_dataset` with the package's default arguments gives the benchmark's 4000 train / 1000
test sequences of length 40; nothing is downloaded. The validation split is carved from the 4000
training sequences, or (``val_generator_seed``) drawn from a dataset generated with another seed. Generation takes ~2 s, so the arrays are
cached as .npz under `root` (keyed by the generator seed).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from regbench.config import ConfigError
from regbench.data.download import remove_stale
from regbench.data.splits import DataSplits, make_splits


def generate(seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)  # never get_dataset(): its default path downloads
    return {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}


def write_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the .npz atomically under a name unique to this process and call (not from np.random,
    which mnist1d has just seeded: every process would draw the same name and write into one file),
    and remove the temp file when writing fails (a full disk leaves nothing behind)."""
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        tmp.replace(cache)  # atomic: concurrent runs never read a half-written cache
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cached(root: str, generator_seed: int) -> dict[str, np.ndarray]:
    """The arrays ``make_dataset`` generates with ``generator_seed``, from the cache under ``root``."""
    cache = Path(root) / f"mnist1d-seed{generator_seed}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    cache.parent.mkdir(parents=True, exist_ok=True)  # first: an unusable root fails before the 2-s generation
    remove_stale(cache.parent, f".{cache.name}.*.tmp.npz")  # what killed processes left
    arrays = generate(generator_seed)
    write_cache(cache, arrays)
    return arrays


def load_mnist1d(*, root: str, val_size: int, split_seed: int, train_size: int | None,
                 generator_seed: int, val_generator_seed: int | None = None) -> DataSplits:
    """``val_generator_seed``: None carves the validation split from the 4000 training sequences;
    a seed draws it (``val_size`` sequences, stratified) from the training part of another dataset
    that ``make_dataset`` generates with that seed, so that all 4000 sequences train, as in the
    MNIST-1D benchmark's own protocol (which has no validation set)."""
    arrays = cached(root, generator_seed)
    held_out = None
    if val_generator_seed is not None:
        if val_generator_seed == generator_seed:
            raise ConfigError(f"data.val_generator_seed={val_generator_seed} is the training data's own "
                              f"generator_seed: allowed any other seed (the validation set must be other sequences)")
        other = cached(root, val_generator_seed)
        held_out = (other["x"], other["y"])
    return make_splits("mnist1d", arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"],
                       val_size=val_size, split_seed=split_seed, train_size=train_size, num_classes=10,
                       held_out=held_out)
