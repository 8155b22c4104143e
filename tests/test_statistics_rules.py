"""The statistics rules of issue 15: training health, four outcomes, Holm families, intervals at small n,
power, P(improvement) CIs, test-set predictions, ranking per distinct setting, the performance profile."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from regbench import health
from regbench import tables as cli
from regbench.analysis import predictions
from regbench.reporting import stats, write_report
from regbench.reporting.profile import profile_ratios
from regbench.reporting.synthetic import make_record, write_runs
from regbench.reporting.tables import ranking_table

ROOT = Path(__file__).resolve().parents[1]


def paired_records(diffs, base=0.80, spread=0.01, arm="dropout", data="mnist1d", seed=0, gh="g0"):
    """`none` with accuracies base + spread * N(0, 1) per seed, `arm` = none + diffs[seed]."""
    rng = np.random.default_rng(seed)
    recs = []
    for s, d in enumerate(diffs):
        a = base + spread * rng.standard_normal()
        recs.append(make_record(seed=s, acc=float(a), data=data, group_hash=gh))
        recs.append(make_record(seed=s, acc=float(a + d), regularizer=arm, data=data, group_hash=gh))
    return recs


def verdict_of(tmp_path, recs, **kw):
    write_runs(tmp_path, recs)
    pw = write_report([tmp_path], tmp_path, plots=False, **kw).pairwise
    assert len(pw) == 1
    return pw.iloc[0]


# --------------------------------------------------------------------------------------------------
# four outcomes
# --------------------------------------------------------------------------------------------------

def test_known_effect_is_better(tmp_path):
    rng = np.random.default_rng(1)
    r = verdict_of(tmp_path, paired_records(0.03 + 0.003 * rng.standard_normal(10)))
    assert r["verdict"] == "better" and r["p_holm"] < 0.05


def test_known_zero_effect_with_tight_spread_is_equivalent(tmp_path):
    rng = np.random.default_rng(2)
    r = verdict_of(tmp_path, paired_records(0.001 * rng.standard_normal(10)))
    assert r["verdict"] == "equivalent"
    assert r["p_holm"] >= 0.05 and r["p_tost_holm"] < 0.05 and r["equivalence_margin"] == 0.01
    # the same spread judged against a margin smaller than the noise: equivalence is no longer shown
    assert verdict_of(tmp_path / "m", paired_records(0.001 * rng.standard_normal(10)),
                      equivalence_margin=0.0002)["verdict"] == "inconclusive"


def test_noisy_zero_effect_is_inconclusive(tmp_path):
    rng = np.random.default_rng(3)
    r = verdict_of(tmp_path, paired_records(0.03 * rng.standard_normal(10)))
    assert r["verdict"] == "inconclusive"
    assert r["p_holm"] >= 0.05 and r["p_tost_holm"] >= 0.05


def test_tost_matches_statsmodels_and_the_outcome_rule():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(4)
    b = 0.8 + 0.01 * rng.standard_normal(8)
    a = b + 0.002 + 0.003 * rng.standard_normal(8)
    assert stats.tost_pvalue(a, b, 0.01, paired=True) == pytest.approx(ttost_paired(a, b, -0.01, 0.01)[0])
    assert stats.tost_pvalue(b + 0.003, b, 0.01, paired=True) == 0.0   # no spread, inside the margin
    assert stats.tost_pvalue(b + 0.02, b, 0.01, paired=True) == 1.0    # no spread, outside it
    assert stats.outcome(+0.02, 0.01, 0.9) == "better" and stats.outcome(+0.02, 0.01, 0.9, False) == "worse"
    assert stats.outcome(0.0, 0.5, 0.01) == "equivalent" and stats.outcome(0.0, 0.5, 0.2) == "inconclusive"


# --------------------------------------------------------------------------------------------------
# training health
# --------------------------------------------------------------------------------------------------

def with_layers(record, dead, units=100):
    record["extra"]["mechanism"] = {"num_classes": 10, "layers": [{"units": units, "dead_units": dead}]}
    return record


def test_health_rule_and_thresholds():
    ok = with_layers(make_record(seed=0, acc=0.8, train_acc=0.9), dead=10)
    assert health.collapse_reason(ok) is None and health.health_status(ok) == "ok"
    chance = make_record(seed=0, acc=0.1, train_acc=0.1 + health.CHANCE_MARGIN)
    assert "chance" in health.collapse_reason(chance)
    assert health.collapse_reason(make_record(seed=0, acc=0.2, train_acc=0.1 + health.CHANCE_MARGIN + 0.01)) is None
    dead = with_layers(make_record(seed=0, acc=0.8, train_acc=0.9), dead=int(100 * health.DEAD_FRACTION))
    assert "dead" in health.collapse_reason(dead)
    assert health.collapse_reason(with_layers(make_record(seed=0, acc=0.8, train_acc=0.9),
                                              dead=int(100 * health.DEAD_FRACTION) - 1)) is None
    failed = make_record(seed=0, acc=0.0, status="failed")
    assert health.health_status(failed) == "failed"  # only ok runs can be reclassified
    marked = health.mark_health(make_record(seed=0, acc=0.1, train_acc=0.1))
    assert marked["status"] == "collapsed" and "chance" in marked["extra"]["collapse_reason"]


def test_planted_collapsed_run_is_counted_and_excluded(tmp_path, caplog):
    recs = [make_record(seed=s, acc=0.80 + 0.01 * s) for s in range(5)]
    recs += [make_record(seed=s, acc=0.85 + 0.01 * s, regularizer="dropout") for s in range(4)]
    # written with status ok (as the committed study's records were): reclassified on read
    recs.append(make_record(seed=4, acc=0.10, train_acc=0.10, regularizer="dropout"))
    write_runs(tmp_path, recs)
    rep = write_report([tmp_path], tmp_path, plots=False)
    drop = rep.per_arm[rep.per_arm["regularizer"] == "dropout"].iloc[0]
    assert (drop["seeds_ok"], drop["seeds_collapsed"]) == (4, 1)
    assert drop["test_acc_mean"] == pytest.approx(np.mean([0.85, 0.86, 0.87, 0.88]))  # the 0.10 is not in it
    assert drop["test_acc_mean_with_collapsed"] == pytest.approx(np.mean([0.85, 0.86, 0.87, 0.88, 0.10]))
    assert drop["collapse_rate"] == pytest.approx(0.2)
    lo, hi = stats.wilson_ci(1, 5)
    assert (drop["collapse_ci95_low"], drop["collapse_ci95_high"]) == pytest.approx((lo, hi))
    assert "excluded from statistics: 1 collapsed" in drop["note"]
    assert rep.warnings == ["WARNING: dropout on mnist1d/mlp collapsed in 1 of 5 runs, more than 10% "
                            "(seeds 4): they are excluded from its statistics"]
    assert rep.warnings[0] in (tmp_path / "per_arm.md").read_text()
    pw = rep.pairwise.iloc[0]
    assert pw["pairing"] == "paired on 4 shared seeds"  # seed 4 of dropout is out of the comparison too


def test_wilson_interval_is_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    assert stats.wilson_ci(8, 70) == pytest.approx(proportion_confint(8, 70, method="wilson"))
    lo, hi = stats.wilson_ci(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.25 < hi < 0.3


# --------------------------------------------------------------------------------------------------
# Holm families
# --------------------------------------------------------------------------------------------------

def test_an_arm_added_in_another_setting_leaves_this_settings_p_values(tmp_path):
    rng = np.random.default_rng(5)
    first = paired_records(0.005 + 0.01 * rng.standard_normal(6), data="d1", gh="a")
    first += [r for r in paired_records(0.004 + 0.01 * rng.standard_normal(6), arm="gaussian", data="d1", gh="a")
              if r["regularizer"] == "gaussian"]
    other = paired_records(0.01 * rng.standard_normal(6), data="d2", gh="b", arm="weight_decay")
    write_runs(tmp_path / "one", first)
    write_runs(tmp_path / "two", first + other)
    a = write_report([tmp_path / "one"], tmp_path / "one", plots=False).pairwise
    b = write_report([tmp_path / "two"], tmp_path / "two", plots=False).pairwise
    b = b[b["data"] == "d1"].reset_index(drop=True)
    pd.testing.assert_series_equal(a["p_holm"], b["p_holm"])
    assert set(b["family"]) == {"d1/mlp [a]: 2 vs none"}


def test_study_claim_p_values_ignore_an_unrelated_arm(tmp_path):
    from test_study import S, study_records

    settings = [("mnist1d", "mlp", None), ("mnist5k", "mlp", None), ("digits", "mlp", None)]
    recs = study_records(settings=settings, arms=("none", "dropout", "weight_decay", "gaussian_dropout"),
                         seeds=range(4), noise=0.01, mechanism=False)
    write_runs(tmp_path / "a", [r for r in recs if r["regularizer"] in ("none", "dropout")])
    write_runs(tmp_path / "b", recs)  # the same runs plus two arms no claim-1 comparison uses
    small, big = S.write_study(tmp_path / "a", plots=False), S.write_study(tmp_path / "b", plots=False)
    tested = {k: c for k, c in small.families["claim1_accuracy"].items() if c.result}
    assert len(tested) == 3
    for key, c in tested.items():
        assert big.families["claim1_accuracy"][key].p_holm == pytest.approx(c.p_holm, rel=1e-12), key
        assert big.families["claim1_accuracy"][key].outcome == c.outcome


# --------------------------------------------------------------------------------------------------
# intervals at small n: coverage by simulation
# --------------------------------------------------------------------------------------------------

N_SIM = 4000  # Monte-Carlo SE of a 95 % coverage: sqrt(.95 * .05 / 4000) = 0.0034; tolerance 3 SE


def test_t_interval_covers_95_percent_at_n_10():
    rng = np.random.default_rng(6)
    x = rng.normal(0.8, 0.02, size=(N_SIM, 10))
    lo, hi = np.array([stats.t_mean_ci(row) for row in x]).T
    cover = np.mean((lo <= 0.8) & (0.8 <= hi))
    assert abs(cover - 0.95) < 3 * math.sqrt(0.95 * 0.05 / N_SIM), cover


def test_welch_interval_covers_95_percent_with_unequal_spreads():
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(N_SIM):
        lo, hi = stats.welch_diff_ci(rng.normal(0.01, 0.01, 6), rng.normal(0.0, 0.03, 10))
        hits += lo <= 0.01 <= hi
    assert abs(hits / N_SIM - 0.95) < 3 * math.sqrt(0.95 * 0.05 / N_SIM), hits / N_SIM


@pytest.mark.slow
def test_percentile_bootstrap_undercovers_at_n_10():
    """Why the tables use the t-interval: the percentile bootstrap they used covered ~90 % at n = 10."""
    rng = np.random.default_rng(8)
    n_sim, hits = 1000, 0
    for _ in range(n_sim):
        x = rng.normal(0.8, 0.02, 10)
        ci = sps.bootstrap((x,), np.mean, n_resamples=2000, method="percentile", rng=rng).confidence_interval
        hits += ci.low <= 0.8 <= ci.high
    assert hits / n_sim < 0.95 - 3 * math.sqrt(0.95 * 0.05 / n_sim)


def test_pairwise_ci_is_the_t_interval_of_the_per_seed_differences(tmp_path):
    rng = np.random.default_rng(9)
    diffs = 0.01 + 0.01 * rng.standard_normal(7)
    recs = paired_records(diffs)
    r = verdict_of(tmp_path, recs)
    d = np.array([b["metrics"]["test/acc"] - a["metrics"]["test/acc"] for a, b in zip(recs[::2], recs[1::2])])
    h = sps.t.ppf(0.975, 6) * d.std(ddof=1) / np.sqrt(7)
    assert (r["diff_ci95_low"], r["diff_ci95_high"]) == pytest.approx((d.mean() - h, d.mean() + h))


# --------------------------------------------------------------------------------------------------
# power, P(improvement)
# --------------------------------------------------------------------------------------------------

def test_minimum_detectable_effect_per_row(tmp_path):
    from statsmodels.stats.power import TTestPower

    rng = np.random.default_rng(10)
    recs = paired_records(0.01 * rng.standard_normal(10))
    r = verdict_of(tmp_path, recs)
    dz = TTestPower().solve_power(nobs=10, alpha=0.05, power=0.8)  # family of 1: alpha / 1
    assert r["mde_dz"] == pytest.approx(dz)
    d = np.array([b["metrics"]["test/acc"] - a["metrics"]["test/acc"] for a, b in zip(recs[::2], recs[1::2])])
    assert r["mde_test_acc"] == pytest.approx(dz * d.std(ddof=1))
    # power at that effect is 80 %: simulate the paired t-test
    sims = rng.normal(dz, 1.0, size=(4000, 10))
    power = np.mean(sps.ttest_1samp(sims, 0.0, axis=1).pvalue < 0.05)
    assert abs(power - 0.8) < 3 * math.sqrt(0.8 * 0.2 / 4000)


def test_seeds_for_command(tmp_path, capsys):
    from statsmodels.stats.power import TTestPower

    rng = np.random.default_rng(11)
    recs = paired_records(0.02 * rng.standard_normal(5))
    write_runs(tmp_path, recs)
    assert cli.main([str(tmp_path), "--seeds-for", "1pp"]) == 0
    out = capsys.readouterr().out
    d = np.array([b["metrics"]["test/acc"] - a["metrics"]["test/acc"] for a, b in zip(recs[::2], recs[1::2])])
    need = math.ceil(TTestPower().solve_power(effect_size=0.01 / d.std(ddof=1), alpha=0.05, power=0.8))
    assert f"| dropout − none | mnist1d/mlp [g0] | 5 | {d.std(ddof=1):.4f} | {need} |" in out
    assert not (tmp_path / "per_arm.md").exists()  # it writes nothing
    assert cli.parse_effect("0.5pp") == pytest.approx(0.005) and cli.parse_effect("0.02") == 0.02
    assert cli.main([str(tmp_path), "--seeds-for", "big"]) == 2
    assert "--seeds-for='big' is not an effect size" in capsys.readouterr().err


def test_prob_improvement_ci_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(12)
    x, y = rng.normal(0.81, 0.01, 8), rng.normal(0.80, 0.01, 8)
    lo, hi = stats.prob_improvement_ci(x, y)
    assert lo <= stats.prob_improvement(x, y) <= hi and (lo, hi) == stats.prob_improvement_ci(x, y)
    assert 0.0 <= lo < hi <= 1.0
    assert stats.prob_improvement_ci(x + 1, y) == (1.0, 1.0)  # every arm run beats every baseline run


# --------------------------------------------------------------------------------------------------
# test-set predictions, test-sampling error, the split option
# --------------------------------------------------------------------------------------------------

def test_predictions_round_trip_and_mcnemar():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(13)
    y = rng.integers(0, 10, 500)
    pa = np.where(rng.random(500) < 0.9, y, (y + 1) % 10)
    pb = np.where(rng.random(500) < 0.8, y, (y + 3) % 10)
    e = predictions.encode(pa, y)
    assert len(e["pred"]) < 1000 and e["n"] == 500
    p2, y2 = predictions.decode(e)
    assert (p2 == pa).all() and (y2 == y).all()
    ca, cb = predictions.correct(e), predictions.correct(predictions.encode(pb, y))
    m = stats.mcnemar_runs(ca, cb)
    table = [[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]]
    assert m["p_mcnemar"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert m["diff"] == pytest.approx(ca.mean() - cb.mean()) and m["ci_low"] < m["diff"] < m["ci_high"]
    with pytest.raises(ValueError):
        predictions.decode({"encoding": "x"})


def test_measure_stores_the_test_predictions():
    import torch
    from torch import nn

    from regbench.analysis.mechanism import measure

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    m = measure(net, x, y, chunk=16)
    pred, target = predictions.decode(m["test_predictions"])
    assert (target == y.numpy()).all() and (pred == net(x).argmax(1).numpy()).all()
    assert predictions.correct(m["test_predictions"]).mean() == pytest.approx(m["acc"])
    assert m["num_classes"] == 3


def test_test_sampling_se_in_the_per_arm_table(tmp_path):
    recs = [make_record(seed=s, acc=0.9) for s in range(3)]
    for r in recs:
        r["extra"]["mechanism"] = {"n_test": 360}
    write_runs(tmp_path, recs)
    pa = write_report([tmp_path], tmp_path, plots=False).per_arm
    assert pa.iloc[0]["test_sampling_se"] == pytest.approx(math.sqrt(0.9 * 0.1 / 360))  # 1.6 pp


def test_split_per_seed_draws_the_split_with_the_run_seed(tmp_path):
    from regbench.app import split_kwargs
    from regbench.data import build_data

    assert split_kwargs({"split_seed": 0, "val_size": 5}, 3) == {"split_seed": 0, "val_size": 5}
    assert split_kwargs({"split_seed": 0, "split_per_seed": True}, 3) == {"split_seed": 3}
    a = build_data("digits", val_size=100, **{k: v for k, v in split_kwargs({"split_seed": 0, "split_per_seed": True}, 1).items()})
    b = build_data("digits", val_size=100, split_seed=0)
    assert not np.array_equal(a.y_val.numpy(), b.y_val.numpy()) or not np.array_equal(a.x_val.numpy(), b.x_val.numpy())
    # the tables say when it was on
    recs = [make_record(seed=s, acc=0.8, config={"seed": s, "data": {"name": "mnist1d", "split_per_seed": True},
                                                  "model": {"name": "mlp"}, "regularizer": {"name": "none"}})
            for s in range(2)]
    write_runs(tmp_path, recs)
    pa = write_report([tmp_path], tmp_path, plots=False).per_arm
    assert "validation split drawn per seed (data.split_per_seed)" in pa.iloc[0]["note"]


def test_split_per_seed_is_a_valid_key_and_off_by_default():
    from hydra import compose, initialize_config_dir

    from regbench.config import validate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        assert validate(compose("config")).data.split_per_seed is None
        assert validate(compose("config", overrides=["+data.split_per_seed=true"])).data.split_per_seed is True
        margin = compose("config", return_hydra_config=True).hydra.callbacks.report.equivalence_margin
    assert margin == stats.EQUIVALENCE_MARGIN  # the YAML and the CLI default agree


# --------------------------------------------------------------------------------------------------
# ranking per distinct setting, performance profile
# --------------------------------------------------------------------------------------------------

def per_arm_rows(rows):
    return pd.DataFrame([{"data": d, "model": m, "config": c, "regularizer": a, "test_acc_mean": v}
                         for d, m, c, a, v in rows])


def test_ranking_counts_each_distinct_setting_once():
    # d1/mlp has three configs (e.g. training-set sizes) where A wins; d2/mlp and d3/mlp, where B wins
    rows = [("d1", "mlp", c, "A", 0.9) for c in "xyz"] + [("d1", "mlp", c, "B", 0.8) for c in "xyz"]
    rows += [(d, "mlp", "w", "A", 0.7) for d in ("d2", "d3")] + [(d, "mlp", "w", "B", 0.75) for d in ("d2", "d3")]
    rk = ranking_table(per_arm_rows(rows)).set_index("regularizer")
    assert list(rk.columns[:3]) == ["rank d1/mlp", "rank d2/mlp", "rank d3/mlp"]
    assert rk.loc["B", "mean_rank"] == pytest.approx((2 + 1 + 1) / 3)  # per config it would be (3*2+1+1)/5
    assert list(rk.index) == ["B", "A"] and rk.loc["A", "settings_ranked"] == 3


def test_performance_profile_ratios():
    rows = [("d1", "mlp", "x", "A", 0.9), ("d1", "mlp", "x", "B", 0.8),
            ("d2", "mlp", "x", "A", 0.6), ("d2", "mlp", "x", "B", 0.8)]
    r = profile_ratios(per_arm_rows(rows))
    assert r.loc[("d1", "mlp"), "A"] == 1.0 and r.loc[("d1", "mlp"), "B"] == pytest.approx(0.2 / 0.1)
    assert r.loc[("d2", "mlp"), "B"] == 1.0 and r.loc[("d2", "mlp"), "A"] == pytest.approx(0.4 / 0.2)


def test_a_run_that_does_not_learn_is_written_as_collapsed_and_not_rerun(tmp_path):
    """app writes the health status: an MLP trained at lr 1e-12 stays at its initial, chance-level accuracy."""
    from conftest import compose

    from regbench import app
    from regbench.config import validate
    from regbench.records import read_record

    cfg = compose(["optim.lr=1e-12", "trainer.max_epochs=1", "trainer.progress_every=0", "data=digits"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert app._run_locked(cfg, validate(cfg), run_dir) == "collapsed"
    r = read_record(run_dir / "results.json")
    assert r["status"] == "collapsed" and "chance" in r["extra"]["collapse_reason"]
    assert r["metrics"]["train/acc"] <= 0.1 + health.CHANCE_MARGIN
    assert app._is_done(run_dir)  # a rerun skips it: the same seed would collapse again
