"""CIFAR-10 from the official python pickle batches (cifar-10-python.tar.gz).

The archive (~163 MiB, md5 c58f30108f718f92721af3b95e74349a, the value torchvision lists) is
cached under `<root>/cifar10/`, downloaded once if absent and verified by md5
(`checksums={"cifar-10-python.tar.gz": md5 or None}` overrides it). Its members
`cifar-10-batches-py/data_batch_1..5` (50,000 training images) and `test_batch` (10,000) are
pickled dicts with `data` (uint8 [N, 3072], channel-major 3x32x32) and `labels`; they are
read straight from the archive (nothing is extracted) and the parsed arrays are cached as
`<root>/cifar10/cifar10-uint8.npz` so later runs skip the decompression. Images are
[N, 3, 32, 32]; normalisation is one scalar mean/std over all channels, as for every dataset.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from regbench.atomic import write_atomic
from regbench.data.download import FileFormatError, fetch, md5_of, merged_checksums, remove_stale
from regbench.data.images import finish_images
from regbench.data.splits import DataSplits

log = logging.getLogger("regbench")

ARCHIVE = "cifar-10-python.tar.gz"
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
MD5 = {ARCHIVE: "c58f30108f718f92721af3b95e74349a"}
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]
CACHE = "cifar10-uint8.npz"


# the only globals a CIFAR-10 batch pickle refers to (numpy array reconstruction); anything else is
# refused, so a hand-placed file (checksums disabled) cannot run code when it is unpickled
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
    ("__builtin__", "object"), ("builtins", "object"),
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1")  # the batches were written by Python 2's cPickle
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise FileFormatError(f"{self.where} is not a CIFAR-10 batch: it refers to {module}.{name}, "
                                  f"refused (only numpy arrays are expected)")
        return super().find_class(module, name)


def _key(d: dict, name: str):
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise KeyError(name)


def read_batches(archive: str | Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the pickle batches `members` (names under cifar-10-batches-py/) of `archive`."""
    archive = Path(archive)
    xs, ys = [], []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in members:
                try:
                    f = tar.extractfile(f"{FOLDER}/{m}")
                except KeyError:
                    f = None
                if f is None:
                    raise FileFormatError(f"{archive} has no member {FOLDER}/{m} (not the CIFAR-10 python archive?)")
                batch = _BatchUnpickler(f, f"{archive}:{FOLDER}/{m}").load()
                if not isinstance(batch, dict):
                    raise FileFormatError(f"{archive}:{FOLDER}/{m} is not a CIFAR-10 batch (a {type(batch).__name__})")
                try:
                    data = np.asarray(_key(batch, "data"), dtype=np.uint8)
                    labels = np.asarray(_key(batch, "labels"), dtype=np.int64)
                except (KeyError, TypeError, ValueError) as err:
                    raise FileFormatError(f"{archive}:{FOLDER}/{m} is not a CIFAR-10 batch ({err})") from err
                if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
                    raise FileFormatError(f"{archive}:{FOLDER}/{m}: data {data.shape} / labels {labels.shape}, "
                                          f"expected [N, 3072] and [N]")
                xs.append(data.reshape(-1, 3, 32, 32))
                ys.append(labels)
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError) as err:
        raise FileFormatError(f"cannot read {archive}: {type(err).__name__}: {err} "
                              f"(truncated or corrupt file? delete it and retry)") from err
    return np.concatenate(xs), np.concatenate(ys)


def raw_cifar10(folder: Path, *, checksums: Mapping[str, str | None] | None,
                download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cache = folder / CACHE
    md5 = merged_checksums(MD5, checksums)
    if cache.exists():
        if _cache_is_verified(cache, md5[ARCHIVE]):
            with np.load(cache) as z:
                return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
        log.warning("%s was not made here from a verified %s (or has changed since): rebuilding it from the archive",
                    cache, ARCHIVE)
    archive = fetch(ARCHIVE, folder, MIRRORS, md5[ARCHIVE], download=download, all_files=[ARCHIVE])
    remove_stale(folder, f".{CACHE}.*.tmp.npz")  # what killed processes left
    x_train, y_train = read_batches(archive, TRAIN_BATCHES)
    x_test, y_test = read_batches(archive, TEST_BATCHES)
    tmp = folder / f".{CACHE}.{os.getpid()}.{uuid.uuid4().hex}.tmp.npz"
    try:
        np.savez(tmp, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
        # the cache's own md5 and the verified archive's, beside it: a hand-placed cache has neither
        write_atomic(_sidecar(cache), f"{md5_of(tmp)} {md5_of(archive)}\n")
        tmp.replace(cache)  # atomic: a concurrent run never reads a half-written cache
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return x_train, y_train, x_test, y_test


def _sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".md5")


def _cache_is_verified(cache: Path, archive_md5: str | None) -> bool:
    """The cache is the one built here from an archive with md5 `archive_md5` (None: checks are off)."""
    if archive_md5 is None:
        return True
    try:
        cache_md5, source_md5 = _sidecar(cache).read_text().split()
    except (OSError, ValueError):
        return False
    return source_md5 == archive_md5.lower() and md5_of(cache) == cache_md5


def load_cifar10(*, root: str, val_size: int, split_seed: int, train_size: int | None = None,
                 resize: Sequence[int] | None = None, checksums: Mapping[str, str | None] | None = None,
                 download: bool | None = True) -> DataSplits:
    """CIFAR-10 (50k train / 10k test, [N, 3, 32, 32]); files in `<root>/cifar10/`."""
    x_train, y_train, x_test, y_test = raw_cifar10(Path(root) / "cifar10", checksums=checksums, download=download)
    return finish_images("cifar10", x_train, y_train, x_test, y_test, val_size=val_size, split_seed=split_seed,
                         train_size=train_size, resize=resize)
