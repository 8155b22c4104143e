"""Helpers shared by the image loaders: one-off resizing and the common split/normalise step.

Images are [N, C, H, W]. `resize` happens once, on load, before splitting and normalisation
(so the normalisation statistics are those of the resized training images).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from regbench.data.splits import DataSplits, make_splits

RESIZE_CHUNK = 4096


def parse_resize(resize: Sequence[int] | None) -> tuple[int, int] | None:
    """Validate the `data.resize` option: null or [H, W] with positive integers."""
    if resize is None:
        return None
    size = tuple(resize)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                 for v in size):
        raise ValueError(f"data.resize must be null or [H, W] with positive integers, got {resize!r}")
    return int(size[0]), int(size[1])


def resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize [N, C, H, W] images to [N, C, *size] (float32).

    Shrinking both sides uses mode="area" (an exact block average when the factor is an
    integer, e.g. 28 -> 14); anything else uses antialiased bilinear interpolation.
    """
    if x.ndim != 4:
        raise ValueError(f"resize expects images [N, C, H, W], got shape {x.shape}")
    h, w = x.shape[2:]
    if (h, w) == tuple(size):
        return x.astype(np.float32, copy=False)
    shrink = size[0] <= h and size[1] <= w
    out = np.empty((x.shape[0], x.shape[1], *size), dtype=np.float32)
    for start in range(0, len(x), RESIZE_CHUNK):  # bounded memory for 50k CIFAR images
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + RESIZE_CHUNK], dtype=np.float32))
        if shrink:
            r = F.interpolate(chunk, size=size, mode="area")
        else:
            r = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start:start + len(chunk)] = r.numpy()
    return out


def finish_images(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, *, val_size: int, split_seed: int, train_size: int | None,
                  resize: Sequence[int] | None, num_classes: int = 10) -> DataSplits:
    """Optionally resize, then validation carve-out, subsample and train-only normalisation."""
    size = parse_resize(resize)
    if size is not None:
        x_train, x_test = resize_images(x_train, size), resize_images(x_test, size)
    return make_splits(name, x_train, np.asarray(y_train, dtype=np.int64), x_test,
                       np.asarray(y_test, dtype=np.int64), val_size=val_size, split_seed=split_seed,
                       train_size=train_size, num_classes=num_classes)
