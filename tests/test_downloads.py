"""Downloaders and file parsers for mnist / fashion_mnist / cifar10, entirely offline.

The tests write small files in the exact official formats (gzipped IDX with the right magic
numbers; a tar.gz of Python pickle batches), inject their checksums, and replace the URL
opener so that nothing ever touches the network.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import sys
import tarfile
from pathlib import Path
from urllib.error import URLError

if importlib.util.find_spec("regbench") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import pytest
import torch

from regbench.data import build_data
from regbench.data import cifar, download, mnist
from regbench.data.download import ChecksumError, DatasetFileError, DownloadError, FileFormatError, md5_of

N_TRAIN, N_TEST, SIDE = 40, 20, 6


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a URL fails, as on a machine without internet."""
    calls: list[str] = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise URLError("network is unreachable (test)")

    monkeypatch.setattr(download, "urlopen", offline)
    return calls


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def idx_bytes(arr: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[dtype_code]
    return header + arr.astype(big).tobytes()


def fake_idx_set(seed: int = 0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(N_TRAIN, SIDE, SIDE), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(N_TEST, SIDE, SIDE), dtype=np.uint8)
    y_train = np.tile(np.arange(10, dtype=np.uint8), N_TRAIN // 10)
    y_test = np.tile(np.arange(10, dtype=np.uint8), N_TEST // 10)
    return {
        "train-images-idx3-ubyte.gz": x_train, "train-labels-idx1-ubyte.gz": y_train,
        "t10k-images-idx3-ubyte.gz": x_test, "t10k-labels-idx1-ubyte.gz": y_test,
    }


def write_idx_set(folder: Path, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write the four gzipped IDX files into `folder`; return the arrays and their md5s."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_idx_set(seed)
    for name, arr in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arr)))
    return arrays, {name: md5_of(folder / name) for name in arrays}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_reads_files_in_the_official_format(tmp_path, name, no_network):
    arrays, md5s = write_idx_set(tmp_path / name)
    d = build_data(name, root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert no_network == []  # files present: no download attempted
    assert d.name == name and d.input_shape == (1, SIDE, SIDE)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (N_TRAIN - 10, 10, N_TEST)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # the test images come back exactly, in order, after undoing the train-only normalisation
    pixels = (d.x_test * d.norm_std + d.norm_mean).round().squeeze(1).numpy()
    np.testing.assert_array_equal(pixels, arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k-labels-idx1-ubyte.gz"])
    resized = build_data(name, root=str(tmp_path), val_size=10, split_seed=0, train_size=20, checksums=md5s,
                         resize=[3, 3])
    assert resized.input_shape == (1, 3, 3) and len(resized.x_train) == 20


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_dtypes(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "a-idx3.gz"
    path.write_bytes(gzip.compress(idx_bytes(arr, code)))
    out = mnist.read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_official_checksums_reject_other_files(tmp_path):
    write_idx_set(tmp_path / "mnist")  # right format, but not the official bytes
    with pytest.raises(ChecksumError, match=r"checksum mismatch for .*mnist[/\\]train-images-idx3-ubyte\.gz.*"
                                            r"expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None)


def test_truncated_file_with_checksum_is_a_checksum_error(tmp_path):
    _, md5s = write_idx_set(tmp_path / "mnist")
    f = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte\.gz.*truncated or corrupt"):
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)


def test_truncated_gzip_names_the_file(tmp_path):
    _, md5s = write_idx_set(tmp_path / "mnist")
    f = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-30])
    no_check = {k: None for k in md5s}
    with pytest.raises(FileFormatError, match=r"cannot read .*train-images-idx3-ubyte\.gz.*truncated"):
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=no_check)


def test_truncated_idx_payload_and_bad_magic(tmp_path):
    arr = np.zeros((4, SIDE, SIDE), dtype=np.uint8)
    short = tmp_path / "short-idx3-ubyte.gz"
    short.write_bytes(gzip.compress(idx_bytes(arr)[:-5]))  # valid gzip, IDX data cut short
    with pytest.raises(FileFormatError, match=r"short-idx3-ubyte\.gz is truncated: header \(4, 6, 6\) needs 144"):
        mnist.read_idx(short, mnist.MAGIC_IMAGES)
    labels = tmp_path / "labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8))))
    with pytest.raises(FileFormatError, match=r"labels-idx1-ubyte\.gz: IDX magic number 2049, expected 2051"):
        mnist.read_idx(labels, mnist.MAGIC_IMAGES)
    junk = tmp_path / "junk.gz"
    junk.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
    with pytest.raises(FileFormatError, match=r"junk\.gz is not an IDX file"):
        mnist.read_idx(junk)


def test_offline_without_files_says_where_to_put_them(tmp_path, no_network):
    with pytest.raises(DownloadError) as err:
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None)
    msg = str(err.value)
    assert msg.startswith("download failed: https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz (")
    assert "network is unreachable" in msg
    assert f"put the files in {tmp_path / 'mnist'} by hand" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert len(no_network) == 2  # both mirrors were tried
    with pytest.raises(DownloadError):  # download=null (unset in a YAML) means the default: try
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, download=None)
    assert list((tmp_path / "mnist").iterdir()) == []  # no partial file left behind
    with pytest.raises(DatasetFileError, match=r"missing .*train-images-idx3-ubyte\.gz and data\.download=false"):
        build_data("fashion_mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, download=False)


class FakeResponse(io.BytesIO):
    """What `urlopen` returns: a readable context manager."""


def serve(monkeypatch, files: dict[str, bytes], hits: list[str]):
    def opener(url, *args, **kwargs):
        hits.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise URLError("404")
        return FakeResponse(files[name])

    monkeypatch.setattr(download, "urlopen", opener)


def test_download_is_verified_and_atomic(tmp_path, monkeypatch):
    src = tmp_path / "server"
    arrays, md5s = write_idx_set(src)
    hits: list[str] = []
    serve(monkeypatch, {n: (src / n).read_bytes() for n in arrays}, hits)
    root = tmp_path / "root"
    d = build_data("mnist", root=str(root), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert len(hits) == 4 and all(h.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for h in hits)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(arrays)  # cached, no .part files
    assert len(d.x_test) == N_TEST
    build_data("mnist", root=str(root), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert len(hits) == 4  # second load uses the cache


def test_corrupt_download_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "server"
    arrays, md5s = write_idx_set(src)
    served = {n: (src / n).read_bytes() for n in arrays}
    served["train-labels-idx1-ubyte.gz"] = served["train-labels-idx1-ubyte.gz"][:-4]  # truncated in transit
    serve(monkeypatch, served, [])
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match=r"checksum mismatch for train-labels-idx1-ubyte\.gz downloaded from "
                                            r"https://ossci-datasets\S+: \d+ bytes with md5"):
        build_data("mnist", root=str(root), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert not (root / "mnist" / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (root / "mnist").iterdir() if p.name.endswith(".part")]


def test_unknown_checksum_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown file 'train-images.gz'"):
        build_data("mnist", root=str(tmp_path), val_size=10, split_seed=0, train_size=None,
                   checksums={"train-images.gz": "0" * 32})


# ---------------------------------------------------------------- CIFAR-10

def batch_pickle(x: np.ndarray, y: np.ndarray, bytes_keys: bool) -> bytes:
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    d = {k("batch_label"): "batch", k("labels"): [int(v) for v in y], k("data"): x.reshape(len(x), -1),
         k("filenames"): [f"{i}.png" for i in range(len(y))]}
    return pickle.dumps(d, protocol=2)


def write_cifar(folder: Path, per_batch: int = 10, members: dict[str, bytes] | None = None):
    """A cifar-10-python.tar.gz with 5 train batches + test_batch of `per_batch` images each."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    payload = dict(members or {})
    for i, m in enumerate(cifar.TRAIN_BATCHES + cifar.TEST_BATCHES):
        x = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        y = np.arange(per_batch) % 10
        arrays[m] = (x, y)
        payload.setdefault(m, batch_pickle(x, y, bytes_keys=(i % 2 == 1)))
    payload["batches.meta"] = pickle.dumps({"label_names": [str(i) for i in range(10)]}, protocol=2)
    path = folder / cifar.ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for m, data in payload.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{m}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return arrays, {cifar.ARCHIVE: md5_of(path)}


def test_cifar_loader_reads_the_pickle_batches(tmp_path, no_network):
    arrays, md5s = write_cifar(tmp_path / "cifar10")
    d = build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert no_network == []
    assert d.input_shape == (3, 32, 32) and (len(d.x_train), len(d.x_val), len(d.x_test)) == (40, 10, 10)
    pixels = (d.x_test * d.norm_std + d.norm_mean).round().numpy()
    np.testing.assert_array_equal(pixels, arrays["test_batch"][0])  # channel-major layout kept
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["test_batch"][1])
    # the parsed arrays are cached: later runs need neither the archive nor its checksum
    (tmp_path / "cifar10" / cifar.ARCHIVE).unlink()
    again = build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, resize=[16, 16],
                       checksums=md5s)  # the cache is trusted for the archive it was built from
    assert again.input_shape == (3, 16, 16) and no_network == []


def test_cifar_bad_checksum_truncated_and_offline(tmp_path, no_network):
    write_cifar(tmp_path / "cifar10")
    with pytest.raises(ChecksumError, match=r"cifar10[/\\]cifar-10-python\.tar\.gz: md5 \w+, expected "
                                            r"c58f30108f718f92721af3b95e74349a"):
        build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None)
    f = tmp_path / "cifar10" / cifar.ARCHIVE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(FileFormatError, match=r"cannot read .*cifar-10-python\.tar\.gz.*truncated or corrupt"):
        build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None,
                   checksums={cifar.ARCHIVE: None})
    assert not (tmp_path / "cifar10" / cifar.CACHE).exists()
    with pytest.raises(DownloadError, match=r"^download failed: https://www\.cs\.toronto\.edu/~kriz/"
                                            r"cifar-10-python\.tar\.gz \(URLError: network is unreachable.*\); "
                                            r"put the files in .*empty[/\\]cifar10 by hand"):
        build_data("cifar10", root=str(tmp_path / "empty"), val_size=10, split_seed=0, train_size=None)


def test_cifar_refuses_unexpected_pickle_content(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    _, md5s = write_cifar(tmp_path / "cifar10", members={"data_batch_3": pickle.dumps(Evil(), protocol=2)})
    with pytest.raises(FileFormatError, match=r"data_batch_3 is not a CIFAR-10 batch: it refers to "
                                                r"(__builtin__|builtins)\.print, refused"):
        build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    _, md5s = write_cifar(tmp_path / "other" / "cifar10", members={"test_batch": pickle.dumps([1, 2], protocol=2)})
    with pytest.raises(FileFormatError, match=r"test_batch is not a CIFAR-10 batch"):
        build_data("cifar10", root=str(tmp_path / "other"), val_size=10, split_seed=0, train_size=None,
                   checksums=md5s)


def test_a_hand_placed_cifar_cache_is_verified_too(tmp_path, no_network):
    """The parsed-array cache skips the archive's md5 check only when it is the one built here from
    the verified archive (its md5 and the archive's beside it): a hand-placed one is rebuilt, or
    refused when the archive is not there to rebuild it from."""
    arrays, md5s = write_cifar(tmp_path / "cifar10")
    kw = dict(root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    good = build_data("cifar10", **kw)
    cache = tmp_path / "cifar10" / cifar.CACHE
    with np.load(cache) as z:
        planted = {k: z[k] for k in z.files}
    planted["y_train"] = (planted["y_train"] + 1) % 10  # wrong labels, same shapes
    np.savez(cache, **planted)  # by hand: no matching md5 beside it
    rebuilt = build_data("cifar10", **kw)
    assert torch.equal(rebuilt.y_train, good.y_train) and torch.equal(rebuilt.y_test, good.y_test)
    np.savez(cache, **planted)
    (tmp_path / "cifar10" / cifar.ARCHIVE).unlink()
    with pytest.raises(DatasetFileError, match="missing .*cifar-10-python.tar.gz"):
        build_data("cifar10", **{**kw, "download": False})


def test_temp_files_of_killed_writers_are_removed(tmp_path, no_network):
    """A killed download leaves a .part file, a killed cache write a .tmp.npz: the next load removes
    those no writer has touched for 10 minutes, and leaves a live writer's alone."""
    import os
    import time

    arrays, md5s = write_cifar(tmp_path / "cifar10")
    folder = tmp_path / "cifar10"
    old_part, old_tmp = folder / f".{cifar.ARCHIVE}.123.ab.part", folder / f".{cifar.CACHE}.123.ab.tmp.npz"
    live = folder / f".{cifar.ARCHIVE}.456.cd.part"
    for p in (old_part, old_tmp, live):
        p.write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    for p in (old_part, old_tmp):
        os.utime(p, (hour_ago, hour_ago))
    build_data("cifar10", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, checksums=md5s)
    assert not old_part.exists() and not old_tmp.exists() and live.exists()
    mnist1d_tmp = tmp_path / ".mnist1d-seed7.npz.1.ab.tmp.npz"
    mnist1d_tmp.write_bytes(b"x")
    os.utime(mnist1d_tmp, (hour_ago, hour_ago))
    build_data("mnist1d", root=str(tmp_path), val_size=10, split_seed=0, train_size=None, generator_seed=7)
    assert not mnist1d_tmp.exists() and not list(tmp_path.glob(".mnist1d-seed7.npz.*"))
