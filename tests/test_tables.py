"""The report tables and the CLI, on synthetic records with known statistics."""

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from regbench import tables as cli
from regbench.records import write_record
from regbench.reporting import NoRunsError, find_sweep_dirs, write_report
from regbench.reporting.synthetic import make_record, write_runs

A = [0.80, 0.82, 0.85, 0.79, 0.83]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def cfg(seed, reg="none", hidden=100, **reg_settings):
    return {"seed": seed, "data": {"name": "mnist1d"}, "model": {"name": "mlp", "hidden": hidden},
            "regularizer": {"name": reg, **reg_settings}, "trainer": {"max_epochs": 5}}


@pytest.fixture
def sweep(tmp_path):
    """none: A; dropout: A + 0.02 on every seed, plus one diverged and one failed dropout run."""
    recs = [make_record(seed=s, acc=a, config=cfg(s)) for s, a in enumerate(A)]
    recs += [make_record(seed=s, acc=a + 0.02, regularizer="dropout", config=cfg(s, "dropout", p=0.5))
             for s, a in enumerate(A)]
    recs += [make_record(seed=5, acc=0.0, regularizer="dropout", status="diverged", config=cfg(5, "dropout", p=0.5)),
             make_record(seed=6, acc=0.0, regularizer="dropout", status="failed", config=cfg(6, "dropout", p=0.5))]
    write_runs(tmp_path / "sweep", recs)
    return tmp_path / "sweep"


def row(df, **match):
    sel = np.logical_and.reduce([df[k] == v for k, v in match.items()])
    assert sel.sum() == 1, df
    return df[sel].iloc[0]


def test_per_arm_numbers(sweep):
    rep = write_report([sweep], sweep, plots=False)
    none = row(rep.per_arm, regularizer="none")
    assert none["seeds_ok"] == 5 and none["test_acc_mean"] == pytest.approx(np.mean(A))
    assert none["test_acc_std"] == pytest.approx(np.std(A, ddof=1))
    assert none["test_acc_ci95_low"] < np.mean(A) < none["test_acc_ci95_high"]
    assert none["train_minus_test_acc_mean"] == pytest.approx(0.05)
    drop = row(rep.per_arm, regularizer="dropout")
    # diverged and failed runs are counted, never averaged in (their acc of 0.0 would pull the mean down)
    assert (drop["seeds_ok"], drop["seeds_diverged"], drop["seeds_failed"]) == (5, 1, 1)
    assert drop["test_acc_mean"] == pytest.approx(np.mean(A) + 0.02)
    assert "excluded from statistics: 1 diverged, 1 failed" in drop["note"]
    assert list(rep.per_arm["regularizer"]) == ["dropout", "none"]  # sorted by score, best first
    assert list(rep.per_arm["rank"]) == [1, 2]
    # the t-interval of the mean
    h = sps.t.ppf(0.975, 4) * np.std(A, ddof=1) / np.sqrt(5)
    assert none["test_acc_ci95_low"] == pytest.approx(np.mean(A) - h)
    # the files carry the same numbers
    csv = pd.read_csv(sweep / "per_arm.csv")
    assert csv.loc[1, "test_acc_mean"] == pytest.approx(np.mean(A), abs=1e-6)
    assert "test_acc_std" in csv.columns
    md = (sweep / "per_arm.md").read_text()
    m = np.mean(A)
    assert f"| {m:.4f} [{m - h:.4f}, {m + h:.4f}] |" in md and "*Legend:*" in md  # mean [CI] in one cell
    assert "| dropout ★ |" in md  # the best arm is marked
    header = md.splitlines()[2]
    assert header.count("|") - 1 <= 8  # at a glance: at most 8 columns printed
    assert (sweep / "comparison.md").read_text() == md
    assert (sweep / "comparison.csv").read_text() == (sweep / "per_arm.csv").read_text()
    assert "\\begin{tabular}" in (sweep / "per_arm.tex").read_text()
    assert not (sweep / "ranking.md").exists()  # one data/model: nothing to rank across


def test_pairwise_known_paired_difference(sweep):
    rep = write_report([sweep], sweep, plots=False)
    assert len(rep.pairwise) == 1
    r = rep.pairwise.iloc[0]
    assert r["pairing"] == "paired on 5 shared seeds" and r["n_arm"] == 5
    assert r["test_acc_diff_mean"] == pytest.approx(0.02)
    assert r["diff_ci95_low"] == pytest.approx(0.02, abs=1e-9) and r["diff_ci95_high"] == pytest.approx(0.02, abs=1e-9)
    assert r["p_holm"] < 0.05 and r["verdict"] == "better"
    b = np.array(A) + 0.02  # P(arm > baseline) over all 25 pairs, counted by hand
    expected = sum((x > y) + 0.5 * (x == y) for x in b for y in A) / 25
    assert r["prob_improvement"] == pytest.approx(expected)
    assert "| better |" in (sweep / "pairwise.md").read_text()
    assert "Holm families (1): mnist1d/mlp [g0]: 1 vs none" in (sweep / "pairwise.md").read_text()


def test_pairwise_holm_across_rows(tmp_path):
    # two unpaired arms (no shared seeds): verdict test = Welch, Holm over the 2 rows
    recs = [make_record(seed=s, acc=a) for s, a in enumerate(A)]
    recs += [make_record(seed=10 + s, acc=a + d, regularizer="a") for s, (a, d) in
             enumerate(zip(A, [0.03, 0.01, 0.04, 0.02, 0.05]))]
    recs += [make_record(seed=20 + s, acc=a + d, regularizer="b") for s, (a, d) in
             enumerate(zip(A, [0.0, 0.02, -0.01, 0.01, 0.0]))]
    write_runs(tmp_path, recs)
    pw = write_report([tmp_path], tmp_path, plots=False).pairwise
    assert set(pw["pairing"]) == {"unpaired (0 shared seeds)"}
    p = pw["p_welch"].to_numpy()
    lo, hi = np.argsort(p)
    assert pw["p_holm"][lo] == pytest.approx(min(1, 2 * p[lo]))
    assert pw["p_holm"][hi] == pytest.approx(min(1, max(2 * p[lo], p[hi])))


def test_configs_that_differ_are_not_pooled(tmp_path):
    recs = [make_record(seed=s, acc=a, config=cfg(s)) for s, a in enumerate(A)]
    recs += [make_record(seed=s, acc=a - 0.1, group_hash="g1", config=cfg(s, hidden=200)) for s, a in enumerate(A)]
    write_runs(tmp_path, recs)
    pa = write_report([tmp_path], tmp_path, plots=False).per_arm
    assert list(pa["config"]) == ["g0", "g1"]
    assert row(pa, config="g0")["test_acc_mean"] == pytest.approx(np.mean(A))
    assert row(pa, config="g1")["test_acc_mean"] == pytest.approx(np.mean(A) - 0.1)
    assert "not pooled with config g1: model.hidden=100 (vs 200 in g1)" in row(pa, config="g0")["note"]
    assert "model.hidden=200 (vs 100 in g0)" in (tmp_path / "per_arm.md").read_text()


def test_regularizer_settings_are_separate_arms(tmp_path):
    # group_hash leaves the regularizer out, so dropout p=0.1 and p=0.5 share it: they must not pool
    recs = [make_record(seed=s, acc=a, regularizer="dropout", config=cfg(s, "dropout", p=0.1)) for s, a in enumerate(A)]
    recs += [make_record(seed=s, acc=a + 0.05, regularizer="dropout", config=cfg(s, "dropout", p=0.5))
             for s, a in enumerate(A)]
    write_runs(tmp_path, recs)
    pa = write_report([tmp_path], tmp_path, plots=False).per_arm
    assert list(pa["regularizer"]) == ["dropout (p=0.5)", "dropout (p=0.1)"]  # best first
    assert row(pa, regularizer="dropout (p=0.5)")["test_acc_mean"] == pytest.approx(np.mean(A) + 0.05)


def test_data_never_pooled_and_ranking(tmp_path):
    recs = []
    for data, shift in (("d1", 0.0), ("d2", -0.2)):
        recs += [make_record(seed=s, acc=a + shift, data=data) for s, a in enumerate(A)]
        recs += [make_record(seed=s, acc=a + shift + 0.01, data=data, regularizer="dropout") for s, a in enumerate(A)]
    recs.append(make_record(seed=0, acc=0.3, data="d2", regularizer="weird"))  # last in d2
    write_runs(tmp_path, recs)
    rep = write_report([tmp_path], tmp_path, plots=False)
    assert len(rep.per_arm) == 5
    assert row(rep.per_arm, data="d2", regularizer="none")["test_acc_mean"] == pytest.approx(np.mean(A) - 0.2)
    rk = rep.ranking.set_index("regularizer")
    assert rk.loc["dropout", "rank d1/mlp"] == 1 and rk.loc["dropout", "rank d2/mlp"] == 1
    assert rk.loc["weird", "rank d2/mlp"] == 3 and math.isnan(rk.loc["weird", "rank d1/mlp"])
    assert rk.loc["none", "mean_rank"] == 2 and rk.loc["weird", "settings_ranked"] == 1
    assert list(rk.index) == ["dropout", "none", "weird"]
    assert (tmp_path / "ranking.md").exists() and (tmp_path / "ranking.tex").exists()
    # "weird" has a single ok run: no CI, the reason given, and not testable against the baseline
    w = row(rep.per_arm, regularizer="weird")
    assert math.isnan(w["test_acc_ci95_low"]) and "no CI: only 1 ok run" in w["note"]
    assert row(rep.pairwise, regularizer="weird")["verdict"] == "not testable (<2 ok runs)"


def test_corrupt_file_skipped_with_warning(sweep, caplog):
    bad = sweep / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"status": "ok", "metr')
    with caplog.at_level(logging.WARNING):
        rep = write_report([sweep], sweep, plots=False)
    assert str(bad) in caplog.text
    assert rep.n_runs == 12 and [p for p, _ in rep.skipped] == [bad]
    md = (sweep / "per_arm.md").read_text()
    assert "12 runs read from 13 results.json files; 1 unreadable file(s) skipped" in md
    assert "skipped broken/results.json" in md
    assert row(rep.per_arm, regularizer="none")["seeds_ok"] == 5


def test_empty_folder_fails(tmp_path, capsys):
    with pytest.raises(NoRunsError):
        write_report([tmp_path], tmp_path)
    assert cli.main([str(tmp_path)]) == 1
    assert "no runs" in capsys.readouterr().err
    assert not (tmp_path / "per_arm.md").exists()


def test_each_finds_sweep_folders(tmp_path, capsys):
    write_runs(tmp_path / "runs" / "a", [make_record(seed=s, acc=a) for s, a in enumerate(A)])
    hydra_sweep = tmp_path / "experiments" / "b"
    write_record(hydra_sweep / "0", make_record(seed=0, acc=0.8))  # Hydra layout: <sweep>/<job>/results.json
    (hydra_sweep / "multirun.yaml").write_text("hydra: {}\n")
    (tmp_path / "experiments" / "empty").mkdir()
    roots = [tmp_path / "runs", tmp_path / "experiments"]
    assert find_sweep_dirs(roots) == [hydra_sweep, tmp_path / "runs" / "a"]
    assert cli.main(["--each", *map(str, roots), "--no-plots"]) == 0
    assert (tmp_path / "runs" / "a" / "per_arm.md").exists() and (hydra_sweep / "pairwise.csv").exists()
    assert cli.main(["--each", str(tmp_path / "experiments" / "empty")]) == 1


def test_hydra_callback_writes_report_and_never_raises(sweep, tmp_path, caplog):
    from regbench.reporting.hydra_callback import ReportCallback

    ReportCallback(plots=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "per_arm.md").exists() and (sweep / "pairwise.md").exists()
    with caplog.at_level(logging.ERROR):
        ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}}))
    assert "could not write the report" in caplog.text


def test_cli_subprocess(sweep):
    (sweep / "broken").mkdir()
    (sweep / "broken" / "results.json").write_text("not json")
    proc = subprocess.run([sys.executable, "-m", "regbench.tables", str(sweep)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 0, proc.stderr
    assert "| mnist1d/mlp [g0] | dropout ★ | 5 ok, 1 diverged, 1 failed |" in proc.stdout
    assert str(sweep / "broken" / "results.json") in proc.stderr
    for name in ("per_arm.md", "per_arm.csv", "per_arm.tex", "pairwise.md", "comparison.md", "curves.png"):
        assert (sweep / name).exists(), name


def test_a_sweep_whose_runs_all_failed_still_gets_its_report(tmp_path):
    """Every run failed on two datasets (as a first GPU run did): the per-arm table lists them as failed,
    with no statistics, and there is nothing to rank; the report is written, not lost to an error."""
    recs = [make_record(seed=s, acc=0.0, data=d, regularizer=r, status="failed")
            for d in ("d1", "d2") for r in ("none", "dropout") for s in range(2)]
    write_runs(tmp_path, recs)
    rep = write_report([tmp_path], tmp_path, plots=True)
    assert len(rep.per_arm) == 4 and (rep.per_arm["seeds_failed"] == 2).all()
    assert rep.per_arm["test_acc_mean"].isna().all() and rep.ranking is None
    assert "excluded from statistics: 2 failed" in (tmp_path / "per_arm.md").read_text()
