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


BENCHMARK_SAMPLES = 5000  # make_dataset's default num_samples: 4000 training and 1000 test sequences


def generate(seed: int, num_samples: int = BENCHMARK_SAMPLES) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = seed, num_samples
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


def cached(root: str, generator_seed: int, num_samples: int = BENCHMARK_SAMPLES) -> dict[str, np.ndarray]:
    """The arrays ``make_dataset`` generates with ``generator_seed`` (and ``num_samples`` sequences, 80%
    of them training ones), from the cache under ``root``."""
    size = "" if num_samples == BENCHMARK_SAMPLES else f"-n{num_samples}"
    cache = Path(root) / f"mnist1d-seed{generator_seed}{size}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    cache.parent.mkdir(parents=True, exist_ok=True)  # first: an unusable root fails before the 2-s generation
    remove_stale(cache.parent, f".{cache.name}.*.tmp.npz")  # what killed processes left
    arrays = generate(generator_seed, num_samples)
    write_cache(cache, arrays)
    return arrays


def load_mnist1d(*, root: str, val_size: int, split_seed: int, train_size: int | None,
                 generator_seed: int, val_generator_seed: int | None = None,
                 train_generator_seed: int | None = None, train_pool: int | None = None) -> DataSplits:
    """``val_generator_seed``: None carves the validation split from the training sequences; a seed
    draws it (``val_size`` sequences, stratified) from the training part of another dataset that
    ``make_dataset`` generates with that seed, so that every training sequence trains, as in the
    MNIST-1D benchmark's own protocol (which has no validation set).

    ``train_generator_seed`` (with ``train_pool``, default 4000): the training sequences are the
    ``train_pool`` training sequences of a dataset generated with that seed (``num_samples =
    train_pool / 0.8``), for training sets larger than the benchmark's 4000 (the data-size axis);
    the test set stays the benchmark's (``generator_seed``). The seeds must differ pairwise."""
    arrays = cached(root, generator_seed)
    seeds = {"generator_seed": generator_seed, "val_generator_seed": val_generator_seed,
             "train_generator_seed": train_generator_seed}
    for key in ("val_generator_seed", "train_generator_seed"):
        value = seeds[key]
        clash = [k for k, v in seeds.items() if k != key and v is not None and v == value]
        if value is not None and clash:
            raise ConfigError(f"data.{key}={value} is also data.{clash[0]}: allowed any other seed "
                              f"(each set must be other sequences)")
    if train_pool is not None and train_generator_seed is None:
        raise ConfigError(f"data.train_pool={train_pool} needs data.train_generator_seed: allowed only with it "
                          f"(the benchmark's own training set has 4000 sequences)")
    x_train, y_train = arrays["x"], arrays["y"]
    if train_generator_seed is not None:
        pool = 4000 if train_pool is None else train_pool
        if pool % 8:
            raise ConfigError(f"data.train_pool={pool} is not allowed: a multiple of 8 (make_dataset makes "
                              f"num_samples / 10 sequences a class and trains on 80% of them)")
        generated = cached(root, train_generator_seed, pool * 5 // 4)
        x_train, y_train = generated["x"], generated["y"]
        if len(y_train) != pool:  # make_dataset's rounding changed: refuse rather than train on another size
            raise ConfigError(f"data.train_pool={pool}: make_dataset gave {len(y_train)} training sequences")
    held_out = None
    if val_generator_seed is not None:
        other = cached(root, val_generator_seed)
        held_out = (other["x"], other["y"])
    return make_splits("mnist1d", x_train, y_train, arrays["x_test"], arrays["y_test"],
                       val_size=val_size, split_seed=split_seed, train_size=train_size, num_classes=10,
                       held_out=held_out)
