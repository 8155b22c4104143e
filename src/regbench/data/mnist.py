"""MNIST and Fashion-MNIST from the original gzipped IDX files.

Files (cached under `<root>/<name>/`, e.g. `data/mnist/train-images-idx3-ubyte.gz`):
train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz -- 60,000 training and 10,000 test images, 28x28 grey, returned as
[N, 1, 28, 28]. Missing files are downloaded once and every file is verified against the
official md5 (the values torchvision lists); `checksums={file: md5 or None}` overrides them.

IDX format (http://yann.lecun.com/exdb/mnist/): big-endian; magic = 0x00 0x00 <dtype code>
<number of dims>, then one uint32 per dim, then the data in C order. Images have magic 2051
(ubyte, 3 dims), labels 2049 (ubyte, 1 dim).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from regbench.data.download import FileFormatError, fetch, merged_checksums
from regbench.data.images import finish_images
from regbench.data.splits import DataSplits

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

SOURCES = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion_mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAGIC_IMAGES, MAGIC_LABELS = 2051, 2049


def read_idx(path: str | Path, expect_magic: int | None = None) -> np.ndarray:
    """Parse a (gzipped if the name ends in .gz) IDX file; clear errors naming the file."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise FileFormatError(f"cannot read {path}: {type(err).__name__}: {err} "
                              f"(truncated or corrupt file? delete it and retry)") from err
    if len(raw) < 4:
        raise FileFormatError(f"{path} is truncated: {len(raw)} bytes, no IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise FileFormatError(f"{path} is not an IDX file (first bytes {raw[:4].hex()})")
    magic, ndim = int.from_bytes(raw[:4], "big"), raw[3]
    if expect_magic is not None and magic != expect_magic:
        raise FileFormatError(f"{path}: IDX magic number {magic}, expected {expect_magic}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FileFormatError(f"{path} is truncated: {len(raw)} bytes, the header alone needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != need:
        state = "truncated" if have < need else "longer than its header says"
        raise FileFormatError(f"{path} is {state}: header {dims} needs {need} data bytes, found {have}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def raw_idx_dataset(name: str, folder: Path, *, checksums: Mapping[str, str | None] | None,
                    download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    src = SOURCES[name]
    md5 = merged_checksums(src["md5"], checksums)
    files = list(FILES.values())
    paths = {key: fetch(fn, folder, src["mirrors"], md5[fn], download=download, all_files=files)
             for key, fn in FILES.items()}
    out = []
    for split in ("train", "test"):
        x = read_idx(paths[f"{split}_images"], MAGIC_IMAGES)
        y = read_idx(paths[f"{split}_labels"], MAGIC_LABELS)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise FileFormatError(f"{paths[f'{split}_images']} / {paths[f'{split}_labels']}: "
                                  f"images {x.shape} and labels {y.shape} do not match")
        out += [x[:, None], y.astype(np.int64)]  # [N, 1, H, W]
    return tuple(out)  # type: ignore[return-value]


def _load(name: str, root: str, val_size: int, split_seed: int, train_size: int | None,
          resize: Sequence[int] | None, checksums: Mapping[str, str | None] | None, download: bool) -> DataSplits:
    x_train, y_train, x_test, y_test = raw_idx_dataset(name, Path(root) / name, checksums=checksums,
                                                       download=download)
    return finish_images(name, x_train, y_train, x_test, y_test, val_size=val_size, split_seed=split_seed,
                         train_size=train_size, resize=resize)


def load_mnist(*, root: str, val_size: int, split_seed: int, train_size: int | None = None,
               resize: Sequence[int] | None = None, checksums: Mapping[str, str | None] | None = None,
               download: bool | None = True) -> DataSplits:
    """MNIST (60k train / 10k test, [N, 1, 28, 28]); files in `<root>/mnist/`."""
    return _load("mnist", root, val_size, split_seed, train_size, resize, checksums, download)


def load_fashion_mnist(*, root: str, val_size: int, split_seed: int, train_size: int | None = None,
                       resize: Sequence[int] | None = None, checksums: Mapping[str, str | None] | None = None,
                       download: bool | None = True) -> DataSplits:
    """Fashion-MNIST (60k train / 10k test, [N, 1, 28, 28]); files in `<root>/fashion_mnist/`."""
    return _load("fashion_mnist", root, val_size, split_seed, train_size, resize, checksums, download)
