"""The one interface every dataset returns, and the split / normalisation helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from regbench.config import ConfigError


@dataclass
class DataSplits:
    """Train / validation / test tensors held in memory.

    `x_*` are float32 of shape [N, *input_shape], already normalised with statistics of
    the training split only; `y_*` are int64 class indices. The test split is never used
    for any decision during training.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    # the scalar statistics used to normalise every split, computed on the training split only
    # (kept so that a record can state them and tests can check that val/test were not used)
    norm_mean: float = 0.0
    norm_std: float = 1.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "DataSplits":
        """Move every tensor to `device` (done once, before training)."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return DataSplits(**moved)


def stratified_take(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subset of size `n` (sorted), reproducible by `seed`.

    Each class gets round(n * class_fraction) examples (largest remainders fix the total), so a
    subsample keeps the class balance of the full set.
    """
    if not 0 < n <= len(y):
        raise ValueError(f"cannot take {n} of {len(y)} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / len(y)
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota))[: n - quota.sum()]:
        quota[i] += 1
    picked = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picked))


def split_off(y: np.ndarray, n_held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) with a stratified held-out part of size `n_held_out`."""
    held = stratified_take(y, n_held_out, seed)
    kept = np.setdiff1d(np.arange(len(y)), held)
    return kept, held


def make_splits(
    name: str,
    x_train: np.ndarray, y_train: np.ndarray,
    x_test: np.ndarray, y_test: np.ndarray,
    *, val_size: int, split_seed: int, train_size: int | None, num_classes: int,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> DataSplits:
    """Carve a stratified validation split from train, optionally subsample train, normalise.
    ``held_out`` (x, y): draw the validation split from these examples instead, and keep every
    training example.

    `split_seed` is independent of the run seed, so every arm and every seed sees the same
    examples. Normalisation (one mean and std over all training inputs) uses the training split only
    (after the `train_size` subsample: the statistics are those of the examples actually trained on).
    """
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"{name}: inputs and labels differ in length "
                         f"(train {len(x_train)} vs {len(y_train)}, test {len(x_test)} vs {len(y_test)})")
    if held_out is not None:
        if val_size > len(held_out[1]):
            raise ConfigError(f"data.val_size={val_size} is out of range for {name}: allowed [1, {len(held_out[1])}] "
                              f"(the examples of the separately generated validation pool)")
        kept, held = np.arange(len(y_train)), stratified_take(held_out[1], val_size, split_seed)
        x_val_pool, y_val_pool = held_out
    else:
        if val_size >= len(y_train):
            raise ConfigError(f"data.val_size={val_size} is out of range for {name}: allowed [1, {len(y_train) - 1}] "
                              f"(its training split has {len(y_train)} examples, and some must remain to train on)")
        kept, held = split_off(y_train, val_size, split_seed)
        x_val_pool, y_val_pool = x_train, y_train
    if train_size is not None:
        if train_size > len(kept):
            raise ConfigError(f"data.train_size={train_size} is out of range for {name}: allowed [1, {len(kept)}] "
                              + ("(its training examples)" if held_out is not None else
                                 f"(the training examples that remain after the {val_size}-example validation split)"))
        kept = kept[stratified_take(y_train[kept], train_size, split_seed + 1)]
    xt = x_train[kept].astype(np.float32)
    mean, std = float(xt.mean()), float(xt.std()) or 1.0

    def norm(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x.astype(np.float32) - mean) / std).astype(np.float32))

    def lab(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    return DataSplits(
        x_train=norm(x_train[kept]), y_train=lab(y_train[kept]),
        x_val=norm(x_val_pool[held]), y_val=lab(y_val_pool[held]),
        x_test=norm(x_test), y_test=lab(y_test),
        num_classes=num_classes, name=name, norm_mean=mean, norm_std=std,
    )
