"""Report plots: valid PNGs, ragged (early-stopped) histories, byte-identical regeneration."""

import hashlib

import numpy as np
import pytest
from matplotlib.image import imread

from regbench.reporting import write_report
from regbench.reporting.plots import _curve_matrix, _mean_band
from regbench.reporting.synthetic import make_record, write_runs

A = [0.80, 0.82, 0.85, 0.79, 0.83]
PLOTS = ("curves.png", "intervals.png", "gap.png")


@pytest.fixture
def sweep(tmp_path):
    recs = [make_record(seed=s, acc=a, epochs=6) for s, a in enumerate(A)]
    recs += [make_record(seed=s, acc=a + 0.01, regularizer="early_stop", epochs=6, stopped_epoch=2 + s % 3)
             for s, a in enumerate(A)]
    recs += [make_record(seed=9, acc=0.0, regularizer="early_stop", status="diverged")]
    recs += [make_record(seed=s, acc=a - 0.1, data="other") for s, a in enumerate(A[:1])]  # single run: no band
    noisy = 0.7 + 0.1 * np.random.default_rng(3).random(20)  # many distinct values: CIs depend on the seed
    recs += [make_record(seed=s, acc=float(a), regularizer="dropout") for s, a in enumerate(noisy)]
    write_runs(tmp_path / "sweep", recs)
    return tmp_path / "sweep"


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_plots_are_valid_pngs_and_regenerate_byte_identically(sweep):
    rep = write_report([sweep], sweep)
    for name in PLOTS:
        data = (sweep / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"Software" not in data
        img = imread(sweep / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert sweep / name in rep.files
    first = _digests(sweep)
    assert {"per_arm.md", "per_arm.csv", "per_arm.tex", "pairwise.md", "comparison.csv", *PLOTS} <= set(first)
    write_report([sweep], sweep)  # what `make tables` does on an unchanged folder
    assert _digests(sweep) == first


def test_ragged_histories_average_the_runs_still_training():
    short = {"epoch": [0, 1, 2], "val/acc": [0.1, 0.2, 0.3]}
    long = {"epoch": [0, 1, 2, 3, 4], "val/acc": [0.3, 0.4, 0.5, 0.6, 0.7]}
    m = _curve_matrix([short, long], "val/acc")
    assert list(m.count(axis=1)) == [2, 2, 2, 1, 1]
    mean, lo, hi = _mean_band(m)
    np.testing.assert_allclose(mean, [0.2, 0.3, 0.4, 0.6, 0.7])
    assert lo[0] < 0.2 < hi[0]
    assert np.isnan(lo[3]) and np.isnan(hi[4])  # a single run left: no band
