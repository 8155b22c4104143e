"""The MNIST-1D baselines report (experiments/mnist1d_baselines/analysis.py): on synthetic records with
known accuracies its verdicts against the published figures follow the numbers; on the committed
records it regenerates the committed README byte for byte."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from regbench.reporting.synthetic import make_record, write_runs

FOLDER = Path(__file__).resolve().parents[1] / "experiments" / "mnist1d_baselines"
# the report's own module, beside its records, loaded under its own name (the study's is `analysis` too)
_spec = importlib.util.spec_from_file_location("mnist1d_baselines_analysis", FOLDER / "analysis.py")
B = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = B
_spec.loader.exec_module(B)


def runs_of(model: str, accs, *, hidden: int | None = None, epochs: int = 150) -> list[dict]:
    cfg = lambda s: {"seed": s, "data": {"name": "mnist1d", "generator_seed": 42, "val_generator_seed": 43,  # noqa: E731
                                         "val_size": 1000},
                     "model": {"name": model, **({"hidden": hidden} if hidden else {})},
                     "regularizer": {"name": "none"}, "trainer": {"max_epochs": epochs},
                     "optim": {"name": "adam", "lr": 0.01, "batch_size": 100}}
    return [make_record(seed=s, acc=a, model=model, epochs=epochs, config=cfg(s), group_hash=f"{model}{hidden}{epochs}")
            for s, a in enumerate(accs)]


def row(text: str, label: str) -> list[str]:
    return next(line.split(" | ") for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_verdicts_against_the_published_figures_follow_the_records(tmp_path):
    rng = np.random.default_rng(0)
    accs = {"logreg": 0.32 + 0.01 * rng.standard_normal(10),      # around 32%: reaches
            "mlp": 0.60 + 0.01 * rng.standard_normal(10),         # far below 68%
            "cnn1d": 0.97 + 0.005 * rng.standard_normal(10)}      # above 94%
    records = [r for m, a in accs.items() for r in runs_of(m, a)]
    records += runs_of("mlp", 0.68 + 0.01 * rng.standard_normal(10), hidden=256)  # a probe that closes the gap
    write_runs(tmp_path, records)
    text = B.report(tmp_path)
    for model, word in (("logreg", "reaches"), ("mlp", "below"), ("cnn1d", "above")):
        cells = row(text, model)
        a = accs[model]
        lo, hi = stats.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=stats.sem(a))
        assert cells[3] == f"{100 * a.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        assert cells[7] == word, (model, cells)
    assert row(text, "mlp, hidden 256")[7] == "reaches"
    assert "- mlp: below its published figure under the preset; probes that reach it: hidden 256" in text
    assert "cnn1d:" not in text.split("Probe rows")[1].split("Reading it")[0]  # only models below get a line


def test_the_committed_report_regenerates_byte_for_byte_from_its_records(tmp_path):
    if not (FOLDER / "README.md").exists():
        pytest.skip("no committed baselines report")
    copy = tmp_path / "baselines"
    shutil.copytree(FOLDER, copy, ignore=shutil.ignore_patterns("*.png", "*.pdf", "README.md"))
    assert B.main([str(copy)]) == 0
    assert (copy / "README.md").read_bytes() == (FOLDER / "README.md").read_bytes()
