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
    from PIL import Image

    for name in PLOTS:
        data = (sweep / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"Software" not in data
        img = imread(sweep / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert min(Image.open(sweep / name).info["dpi"]) >= 199.9  # print resolution: 200 dpi
        assert sweep / name in rep.files
        # every figure also as a vector PDF, without a creation date (regenerates byte-identically)
        pdf = (sweep / name).with_suffix(".pdf")
        assert pdf.read_bytes().startswith(b"%PDF") and b"CreationDate" not in pdf.read_bytes()
        assert pdf in rep.files
    first = _digests(sweep)
    assert {"per_arm.md", "per_arm.csv", "per_arm.tex", "pairwise.md", "comparison.csv", *PLOTS,
            *(p.replace(".png", ".pdf") for p in PLOTS)} <= set(first)
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


@pytest.fixture
def figures(tmp_path, monkeypatch):
    """The figures write_plots draws, kept instead of saved: (name -> Figure), from runs of one
    data/model at two training-set sizes whose loss bands would dip below 0 and accuracy bands above 1."""
    from regbench.reporting import plots

    kept = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.setdefault(f"{path.parent.name}/{path.stem}", fig) and [path])
    rng = np.random.default_rng(0)
    recs = []
    for n, h in ((500, "h500"), (2000, "h2000")):
        for arm in ("none", "early_stop"):
            for s in range(4):
                cfg = {"seed": s, "data": {"name": "mnist1d", "train_size": n}, "model": {"name": "mlp"},
                       "regularizer": {"name": arm}, "trainer": {"max_epochs": 6}}
                recs.append(make_record(seed=s, acc=float(0.97 + 0.03 * rng.random()), regularizer=arm,
                                        group_hash=h, loss=float(0.05 * rng.random()), config=cfg, epochs=6))
    write_runs(tmp_path / "sizes", recs)
    write_report([tmp_path / "sizes"], tmp_path / "sizes")
    write_runs(tmp_path / "one", recs[:8])  # one setting: the narrowest figures, whose titles were clipped
    write_report([tmp_path / "one"], tmp_path / "one")
    return kept


def test_figures_are_bounded_labelled_by_setting_and_titled_within_the_page(figures):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    assert set(figures) == {f"{d}/{f}" for d in ("sizes", "one") for f in ("curves", "intervals", "gap")}
    titles = [ax.get_title() for k, fig in figures.items() if k.startswith("sizes/") for ax in fig.axes if ax.get_visible()]
    assert any(t.startswith("mnist1d/mlp, n=500") for t in titles) and any("n=2000" in t for t in titles)
    assert not any("h500" in t or "[" in t for t in titles)  # setting names, not hashes
    for name, fig in figures.items():
        FigureCanvasAgg(fig)
        fig.draw_without_rendering()
        box = fig._suptitle.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, name  # the title is not clipped
    # alone, a setting needs no other keys, but says that it trains on part of its split
    assert figures["one/curves"].axes[0].get_title() == "mnist1d/mlp, n=500: accuracy"
    for ax in figures["sizes/curves"].axes:
        lo, hi = ax.get_ylim()
        if ax.get_title().endswith("accuracy"):
            assert 0 <= lo and hi <= 1 and ax.get_legend() is not None
        else:
            assert lo >= 0  # no band below zero loss
    for ax in figures["sizes/intervals"].axes:
        lo, hi = ax.get_xlim()
        assert 0 <= lo and hi <= 1


def test_a_tuned_arms_tick_rounds_its_chosen_values_and_keeps_its_panel_on_the_page(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from regbench.reporting import plots

    assert plots.arm_tick("maxnorm_dropout (dropout.p=0.09844710947480101, maxnorm=3.7430843262921614)") == \
        "maxnorm_dropout\n(dropout.p=0.0984, maxnorm=3.74)"
    assert plots.arm_tick("weight_decay (weight_decay=1e-05)") == "weight_decay\n(weight_decay=1e-05)"
    kept = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.setdefault(path.stem, fig) and [path])
    # one setting, dropout at two tuned rates: the arms are labelled by their full-precision p
    recs = [make_record(seed=s, acc=0.6 + 0.01 * s, regularizer=arm, group_hash="g0",
                        config={"seed": s, "data": {"name": "mnist1d"}, "model": {"name": "mlp"},
                                "regularizer": {"name": arm, "dropout": {"p": p}}})
            for s in range(3)
            for arm, p in (("dropout", 0.15205045388782884), ("dropout", 0.2941162624954094), ("none", 0.0))]
    write_runs(tmp_path / "tuned", recs)
    write_report([tmp_path / "tuned"], tmp_path / "tuned")
    fig = kept["intervals"]
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    for ax in (a for a in fig.axes if a.get_visible()):
        assert ax.get_window_extent().width > 0.1 * fig.bbox.width      # the panel has room to draw
        for t in ax.get_yticklabels():
            box = t.get_window_extent()
            assert box.x0 >= 0 and "0.15205" not in t.get_text()
    ticks = [t.get_text() for ax in fig.axes if ax.get_visible() for t in ax.get_yticklabels()]
    assert "dropout\n(dropout.p=0.152)" in ticks


def test_a_lone_setting_is_labelled_with_its_training_size_only_when_it_uses_part_of_the_split():
    import pandas as pd

    from regbench.reporting.plots import context_labels

    def cfg(data, model, size):
        return {"seed": 0, "data": {"name": data, "train_size": size}, "model": {"name": model},
                "regularizer": {"name": "none"}, "trainer": {"max_epochs": 6}}

    runs = pd.DataFrame([{"data": "mnist5k", "model": "seed_cnn", "group_hash": "a", "config": cfg("mnist5k", "seed_cnn", 1000)},
                         {"data": "mnist1d", "model": "mlp", "group_hash": "b", "config": cfg("mnist1d", "mlp", None)}])
    labels = context_labels(runs, [("mnist5k", "seed_cnn", "a"), ("mnist1d", "mlp", "b")])
    assert labels == {("mnist5k", "seed_cnn", "a"): "mnist5k/seed_cnn, n=1000", ("mnist1d", "mlp", "b"): "mnist1d/mlp"}
