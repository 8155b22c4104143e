"""Every dataset x model pair: the ones that fit train end to end and write a valid record; the others
are refused at start-up with a message naming both. mnist / fashion_mnist / cifar10 run on small
files written in their official formats (nothing is downloaded)."""

from __future__ import annotations

import math

import pytest

from conftest import compose
from regbench.app import train
from regbench.config import validate
from regbench.models.inputs import IncompatibleInputError
from test_downloads import write_cifar, write_idx_set

FITS = {  # (data, model) -> extra overrides; pairs absent here must be refused
    **{("mnist1d", m): [] for m in ("mlp", "resmlp", "cnn1d", "logreg")},
    **{(d, m): [] for d in ("mnist5k", "digits", "mnist", "fashion_mnist", "cifar10") for m in ("mlp", "resmlp", "logreg")},
    **{(d, "seed_cnn"): ["data.resize=[14,14]"] for d in ("mnist5k", "digits", "mnist", "fashion_mnist")},
}
DATA = ["mnist1d", "mnist5k", "digits", "mnist", "fashion_mnist", "cifar10"]
MODELS = ["mlp", "resmlp", "cnn1d", "seed_cnn", "logreg"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Official-format files for the downloadable datasets, and their checksums."""
    root = tmp_path_factory.mktemp("files")
    sums = {}
    for name in ("mnist", "fashion_mnist"):
        _, sums[name] = write_idx_set(root / name)
    _, sums["cifar10"] = write_cifar(root / "cifar10")
    return root, sums


def run_pair(tmp_path, files, data: str, model: str, extra: list[str]) -> dict:
    overrides = [f"data={data}", f"model={model}", "trainer.max_epochs=1", "trainer.progress_every=0", *extra]
    if data in ("mnist1d", "mnist5k", "digits"):
        overrides.append("data.train_size=100")
    cfg = compose(overrides)
    if data in files[1]:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.data.root, cfg.data.download, cfg.data.val_size = str(files[0]), False, 10
            cfg.data.checksums = files[1][data]
    return train(validate(cfg), tmp_path, data_keys=[k for k in cfg.data if k != "name"],
                 model_keys=[k for k in cfg.model if k != "name"])


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_pair_trains_or_is_refused_naming_both(tmp_path, files, data, model):
    if (data, model) not in FITS:
        with pytest.raises(IncompatibleInputError) as e:
            run_pair(tmp_path, files, data, model, [])
        assert f"model={model}" in str(e.value) and f"data={data}" in str(e.value)
        return
    r = run_pair(tmp_path, files, data, model, FITS[(data, model)])
    assert r["status"] == "ok" and r["epochs_trained"] == 1
    assert all(math.isfinite(v) for v in r["metrics"].values())
