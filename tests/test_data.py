"""Offline datasets (mnist5k, digits, mnist1d) and the split / normalisation helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("regbench") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regbench.data import DATASETS, DataSplits, build_data, make_splits
from regbench.data.bundled import raw_digits, raw_mnist5k
from regbench.data.images import parse_resize, resize_images

# name -> (raw loader, val_size, expected (train, val, test) sizes, input shape)
OFFLINE = {
    "mnist5k": (raw_mnist5k, 500, (3500, 500, 1000), (1, 28, 28)),
    "digits": (raw_digits, 180, (1257, 180, 360), (1, 8, 8)),
}


@pytest.fixture(scope="module")
def raw():
    return {name: spec[0]() for name, spec in OFFLINE.items()}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    return {name: build_data(name, root=root, val_size=spec[1], split_seed=0, train_size=None)
            for name, spec in OFFLINE.items()}


def locate(d: DataSplits, raw_x: np.ndarray) -> dict[str, np.ndarray]:
    """Indices into the raw dataset of every example of each split, found by undoing the
    normalisation and matching pixels (the raw images are all distinct)."""
    lookup = {row.tobytes(): i for i, row in enumerate(raw_x.reshape(len(raw_x), -1))}
    assert len(lookup) == len(raw_x)
    out = {}
    for split in ("train", "val", "test"):
        x = getattr(d, f"x_{split}").numpy().reshape(len(getattr(d, f"x_{split}")), -1)
        pixels = np.rint(x.astype(np.float64) * d.norm_std + d.norm_mean)
        assert np.abs(pixels - (x * d.norm_std + d.norm_mean)).max() < 1e-3  # same affine map on every split
        out[split] = np.array([lookup[row.astype(np.uint8).tobytes()] for row in pixels])
    return out


def test_registry_has_every_loader():
    assert {"mnist1d", "mnist5k", "digits", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS)
    with pytest.raises(KeyError, match="unknown data='nope'.*mnist5k"):
        build_data("nope", root=".", val_size=1, split_seed=0, train_size=None)


@pytest.mark.parametrize("name", OFFLINE)
def test_shapes_dtypes_sizes(loaded, name):
    d = loaded[name]
    _, _, sizes, shape = OFFLINE[name]
    assert d.name == name and d.num_classes == 10 and d.input_shape == shape
    for split, n in zip(("train", "val", "test"), sizes):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (n, *shape) and y.shape == (n,)
        assert int(y.min()) == 0 and int(y.max()) == 9


@pytest.mark.parametrize("name", OFFLINE)
def test_splits_disjoint_stratified_and_labels_match(loaded, raw, name):
    d, (raw_x, raw_y) = loaded[name], raw[name]
    idx = locate(d, raw_x)
    tr, va, te = set(idx["train"]), set(idx["val"]), set(idx["test"])
    assert len(tr) == len(idx["train"]) and not tr & va and not tr & te and not va & te
    assert len(tr | va | te) == len(raw_y)  # nothing lost when train_size is None
    overall = np.bincount(raw_y, minlength=10) / len(raw_y)
    for split in ("train", "val", "test"):
        y = getattr(d, f"y_{split}").numpy()
        np.testing.assert_array_equal(y, raw_y[idx[split]])  # labels travel with their images
        props = np.bincount(y, minlength=10) / len(y)
        assert np.abs(props - overall).max() < 1.0 / len(y) + 1e-9  # within one example per class


@pytest.mark.parametrize("name", OFFLINE)
def test_normalisation_uses_train_only(loaded, raw, name):
    d, (raw_x, _) = loaded[name], raw[name]
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    idx = locate(d, raw_x)
    train_pixels = raw_x[idx["train"]].astype(np.float64)
    assert d.norm_mean == pytest.approx(train_pixels.mean(), rel=1e-5)
    assert d.norm_std == pytest.approx(train_pixels.std(), rel=1e-4)
    # statistics including val/test would differ: they were not used
    everything = raw_x.astype(np.float64)
    assert abs(everything.mean() - d.norm_mean) > 1e-6
    assert abs(float(d.x_val.mean())) > 1e-5 and abs(float(d.x_test.mean())) > 1e-5


def test_make_splits_ignores_val_and_test_values():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 20)
    x = rng.normal(3.0, 2.0, size=(200, 5)).astype(np.float32)
    x_test, y_test = rng.normal(size=(50, 5)).astype(np.float32), np.repeat(np.arange(10), 5)
    a = make_splits("t", x, y, x_test, y_test, val_size=40, split_seed=1, train_size=None, num_classes=10)
    # blow up the validation examples and the test set: the training tensors and statistics must not move
    x2 = x.copy()
    val_rows = [i for i, row in enumerate(x) if any(np.allclose(row, v) for v in
                                                     (a.x_val.numpy() * a.norm_std + a.norm_mean))]
    assert len(val_rows) == 40
    x2[val_rows] += 1000.0
    b = make_splits("t", x2, y, x_test + 1000.0, y_test, val_size=40, split_seed=1, train_size=None,
                    num_classes=10)
    assert torch.equal(a.x_train, b.x_train) and (a.norm_mean, a.norm_std) == (b.norm_mean, b.norm_std)
    assert float(b.x_val.mean()) > 100 and float(b.x_test.mean()) > 100


def test_split_seed_determinism(tmp_path):
    kw = dict(root=str(tmp_path), val_size=180, train_size=None)
    a, b = build_data("digits", split_seed=3, **kw), build_data("digits", split_seed=3, **kw)
    c = build_data("digits", split_seed=4, **kw)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}"))
        assert torch.equal(getattr(a, f"y_{split}"), getattr(b, f"y_{split}"))
    assert not torch.equal(a.x_val, c.x_val)  # another validation split ...
    ta = a.x_test * a.norm_std + a.norm_mean
    tc = c.x_test * c.norm_std + c.norm_mean
    assert torch.allclose(ta, tc, atol=1e-3)  # ... but the same fixed test split (test_seed)


def test_train_size_subsample(tmp_path, raw):
    d = build_data("mnist5k", root=str(tmp_path), val_size=500, split_seed=0, train_size=1000)
    assert len(d.x_train) == 1000 and len(d.x_val) == 500 and len(d.x_test) == 1000
    assert np.bincount(d.y_train.numpy(), minlength=10).tolist() == [100] * 10  # stratified
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3  # stats of the subsample
    full = build_data("mnist5k", root=str(tmp_path), val_size=500, split_seed=0, train_size=None)
    idx_sub, idx_full = locate(d, raw["mnist5k"][0]), locate(full, raw["mnist5k"][0])
    assert set(idx_sub["train"]) <= set(idx_full["train"])  # a subset of the training pool
    np.testing.assert_array_equal(np.sort(idx_sub["val"]), np.sort(idx_full["val"]))  # same validation split
    with pytest.raises(ValueError, match="train_size=3501"):
        build_data("mnist5k", root=str(tmp_path), val_size=500, split_seed=0, train_size=3501)


def test_resize_on_load(tmp_path, raw):
    d = build_data("mnist5k", root=str(tmp_path), val_size=500, split_seed=0, train_size=None, resize=[14, 14])
    assert d.input_shape == (1, 14, 14) and len(d.x_train) == 3500
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    up = build_data("digits", root=str(tmp_path), val_size=180, split_seed=0, train_size=None, resize=(14, 14))
    assert up.input_shape == (1, 14, 14) and torch.isfinite(up.x_train).all()


def test_resize_images_modes():
    x = np.random.default_rng(0).integers(0, 256, size=(5, 1, 28, 28)).astype(np.uint8)
    small = resize_images(x, (14, 14))  # area: exact 2x2 block means
    expected = F.avg_pool2d(torch.from_numpy(x.astype(np.float32)), 2).numpy()
    np.testing.assert_allclose(small, expected, rtol=1e-6)
    big = resize_images(x[:, :, :8, :8], (14, 14))  # bilinear (antialias) for upsizing
    assert big.shape == (5, 1, 14, 14) and big.dtype == np.float32
    assert big.min() >= -1e-3 and big.max() <= 255 + 1e-3
    assert parse_resize(None) is None and parse_resize([14, 14]) == (14, 14)
    for bad in ([14], [0, 14], [14.5, 14], "14x14"):
        with pytest.raises(ValueError, match="data.resize"):
            parse_resize(bad)


def test_test_size_option(tmp_path):
    kw = dict(root=str(tmp_path), val_size=10, split_seed=0, train_size=None)
    assert len(build_data("digits", test_size=None, **kw).x_test) == 360  # null = the default
    small = build_data("digits", test_size=100, test_seed=5, **kw)
    assert len(small.x_test) == 100 and len(small.x_train) == 1797 - 100 - 10
    for bad in (0, 1797, 2.5):
        with pytest.raises(ValueError, match="test_size"):
            build_data("digits", test_size=bad, **kw)


def test_mnist1d_still_loads(tmp_path):
    d = build_data("mnist1d", root=str(tmp_path), val_size=500, split_seed=0, train_size=None, generator_seed=0)
    assert d.input_shape == (40,) and len(d.x_train) == 3500 and len(d.x_test) == 1000
    assert abs(float(d.x_train.mean())) < 1e-4 and d.to("cpu").norm_std == d.norm_std


def test_mnist1d_validation_from_another_generator_seed_keeps_all_4000_training_sequences():
    """The benchmark's own protocol: every training sequence trains, validation comes from a dataset
    generated with another seed (none of its sequences is a training or test one), stratified."""
    import os

    from regbench.config import ConfigError
    from regbench.data.mnist1d import cached

    root = os.environ["REGBENCH_DATA"]
    kw = dict(root=root, split_seed=0, train_size=None, generator_seed=42)
    d = build_data("mnist1d", val_size=1000, val_generator_seed=43, **kw)
    ours = cached(root, 42)
    assert len(d.x_train) == 4000 and len(d.x_val) == 1000 and len(d.x_test) == 1000
    raw_train = torch.from_numpy(ours["x"].astype(np.float32))
    assert torch.allclose(d.x_train * d.norm_std + d.norm_mean, raw_train, atol=1e-5)  # all, in order
    val = d.x_val * d.norm_std + d.norm_mean
    assert torch.cdist(val, raw_train, compute_mode="donot_use_mm_for_euclid_dist").min() > 1e-3  # not training sequences ...
    other = torch.from_numpy(cached(root, 43)["x"].astype(np.float32))
    assert (torch.cdist(val, other, compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-4).all()  # ... but seed 43's
    pool = np.bincount(cached(root, 43)["y"], minlength=10)
    counts = torch.bincount(d.y_val, minlength=10).numpy()
    assert counts.sum() == 1000 and (np.abs(counts - 1000 * pool / pool.sum()) < 1).all()  # stratified
    carved = build_data("mnist1d", val_size=1000, **kw)
    assert len(carved.x_train) == 3000  # without the key: carved from the 4000, as before
    with pytest.raises(ConfigError, match=r"data.val_generator_seed=42 .*allowed any other seed"):
        build_data("mnist1d", val_size=500, val_generator_seed=42, **kw)
    with pytest.raises(ConfigError, match=r"data.val_size=5000 .*allowed \[1, 4000\]"):
        build_data("mnist1d", val_size=5000, val_generator_seed=43, **kw)


def test_mnist1d_training_pool_from_another_generator_seed_keeps_the_benchmarks_test_set():
    import os

    from regbench.config import ConfigError
    from regbench.data.mnist1d import cached

    root = os.environ["REGBENCH_DATA"]
    kw = dict(root=root, split_seed=0, generator_seed=42, val_generator_seed=43)
    d = build_data("mnist1d", val_size=100, train_size=None, train_generator_seed=44, train_pool=400, **kw)
    official = cached(root, 42)
    pool = cached(root, 44, 500)  # 400 training sequences are 80% of 500 generated ones
    assert len(d.x_train) == 400 and len(pool["x"]) == 400
    assert torch.allclose(d.x_train * d.norm_std + d.norm_mean, torch.from_numpy(pool["x"].astype(np.float32)),
                          atol=1e-5)
    assert torch.allclose(d.x_test * d.norm_std + d.norm_mean, torch.from_numpy(official["x_test"].astype(np.float32)),
                          atol=1e-5)  # the benchmark's test set, whatever the pool
    sub = build_data("mnist1d", val_size=100, train_size=250, train_generator_seed=44, train_pool=400, **kw)
    assert len(sub.x_train) == 250
    for bad, match in ((dict(train_generator_seed=43), r"data.val_generator_seed=43 is also data.train_generator_seed"),
                       (dict(train_generator_seed=42), r"data.train_generator_seed=42 is also data.generator_seed"),
                       (dict(train_pool=400), r"data.train_pool=400 needs data.train_generator_seed"),
                       (dict(train_generator_seed=44, train_pool=404), r"data.train_pool=404 .*multiple of 8")):
        with pytest.raises(ConfigError, match=match):
            build_data("mnist1d", val_size=100, train_size=None, **kw, **bad)
