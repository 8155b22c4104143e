"""The equal-steps data-size report (experiments/dropout_size_equal_steps/analysis.py) on synthetic
final-seed records with known gains: per-size outcomes and the rise / fall verdict follow them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from regbench.reporting.synthetic import make_record, write_runs

FOLDER = Path(__file__).resolve().parents[1] / "experiments" / "dropout_size_equal_steps"
_spec = importlib.util.spec_from_file_location("dropout_size_equal_steps_analysis", FOLDER / "analysis.py")
A = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = A
_spec.loader.exec_module(A)

SIZES = [250, 500, 1000, 2000, 4000, 8000, 16000]


def finals(root: Path, gain: dict[int, float], seeds=range(1000, 1020), noise=0.004):
    """Each size's final seeds for both arms: none at 60% + a per-seed effect shared by the arms (the
    pairing), dropout `gain[n]` above it."""
    rng = np.random.default_rng(1)
    for n in SIZES:
        shared = {s: 0.01 * rng.standard_normal() for s in seeds}
        for arm, extra in (("none", 0.0), ("dropout", gain[n])):
            cfg = lambda s: {"seed": s, "data": {"name": "mnist1d", "train_size": n},  # noqa: E731
                             "model": {"name": "mlp"}, "trainer": {"max_epochs": 10},
                             "optim": {"lr": 0.003}, "regularizer": {"name": arm, **(
                                 {"dropout": {"p": 0.2}} if arm == "dropout" else {})}}
            recs = [make_record(seed=s, acc=0.6 + shared[s] + extra + noise * rng.standard_normal(), regularizer=arm,
                                epochs=10, config=cfg(s), group_hash=f"{arm}{n}") for s in seeds]
            write_runs(root / f"tuned-{arm}-{n}" / "final", recs)
        write_runs(root / f"tuned-none-{n}" / "tune", [make_record(seed=0, acc=0.1, config={  # not a final run
            "data": {"train_size": n}, "trainer": {"max_epochs": 10}})])


def outcomes(text: str) -> dict[int, str]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    rows = [r for r in rows if len(r) >= 10]  # the outcome table, not the search table
    return {int(r[0][2:]): r[8].strip("*") for r in rows}


def test_per_size_outcomes_and_the_shape_follow_known_gains(tmp_path):
    gain = {250: 0.0, 500: 0.0, 1000: 0.02, 2000: 0.05, 4000: 0.04, 8000: 0.02, 16000: 0.005}
    finals(tmp_path, gain)
    text = A.report(tmp_path)
    got = outcomes(text)
    assert got[2000] == got[4000] == "better"
    assert got[250] == got[500] == "equivalent"  # 0 gain, tight: within the 1 pp margin
    assert "| 250 | 100 | 40 (40 ok) |" in text  # final runs only: the tune/ record is not counted
    assert "**supported: all three parts shown**" in text and (tmp_path / "size_gain.png").exists()


@pytest.mark.parametrize("gain, verdict", [
    ({250: 0.0, 500: 0.0, 1000: 0.02, 2000: 0.05, 4000: 0.05, 8000: 0.05, 16000: 0.05},
     "not shown (shown: little gain at 250 and 500, a rise to 2000; not shown: a fall from 2000 to 16000)"),
    ({n: 0.0 for n in SIZES}, "not shown (shown: little gain at 250 and 500; not shown: a rise to 2000, "
                              "a fall from 2000 to 16000)"),
    ({**{n: 0.0 for n in SIZES}, 250: 0.03, 500: 0.03},
     "contradicted (contradicted: little gain at 250 and 500, a rise to 2000; not shown: a fall from 2000 to 16000)"),
])
def test_a_gain_that_does_not_fall_or_never_rises_is_not_called_supported(tmp_path, gain, verdict):
    finals(tmp_path, gain)
    assert f"**{verdict}**" in A.report(tmp_path)


def test_the_parts_are_not_testable_without_the_sizes_fixed_for_them(tmp_path):
    finals(tmp_path, {n: 0.0 for n in SIZES})
    import shutil

    for d in tmp_path.glob("tuned-*-250"):
        shutil.rmtree(d)
    assert "Not testable: the parts need the sizes [250, 500, 2000, 16000]" in A.report(tmp_path)
