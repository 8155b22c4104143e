"""Unit tests of the report statistics against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from regbench.reporting import stats

A = [0.80, 0.82, 0.85, 0.79, 0.83]


def test_holm_hand_computed():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.02, 0.03, 0.06, 0.06
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])


def test_holm_ignores_nan_and_caps_at_one():
    got = stats.holm([0.2, float("nan"), 0.6])  # family of 2: 0.2*2=0.4, max(0.4, 0.6*1)=0.6
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [0.4, 0.6])
    np.testing.assert_allclose(stats.holm([0.7, 0.9]), [1.0, 1.0])


def test_prob_improvement_hand_computed():
    # x=3: >1 (1) + =3 (0.5) + <5 (0) = 1.5; x=4: 1 + 1 + 0 = 2  -> 3.5 / 6
    assert stats.prob_improvement([3, 4], [1, 3, 5]) == pytest.approx(3.5 / 6)
    assert stats.prob_improvement([1, 1], [1]) == 0.5
    assert stats.prob_improvement([2], [1]) == 1.0
    x, y = [0.8, 0.9, 0.9, 0.7], [0.85, 0.9, 0.6]
    u = sps.mannwhitneyu(x, y).statistic
    assert stats.prob_improvement(x, y) == pytest.approx(u / 12)


def test_iqm_trims_quarters():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # mean of 3..6
    assert stats.iqm([1, 2, 3]) == pytest.approx(2.0)


def test_bootstrap_ci_seeded_and_sane():
    lo, hi = stats.bootstrap_mean_ci(A)
    assert (lo, hi) == stats.bootstrap_mean_ci(A)  # identical on rerun
    assert min(A) <= lo < np.mean(A) < hi <= max(A)
    assert all(math.isnan(v) for v in stats.bootstrap_mean_ci([0.8]))
    assert stats.bootstrap_mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    x = np.random.default_rng(1).normal(size=30)  # continuous data: an unseeded bootstrap would differ
    assert stats.bootstrap_mean_ci(x) == stats.bootstrap_mean_ci(x)
    assert stats.bootstrap_diff_ci(x, x[::-1] + 1) == stats.bootstrap_diff_ci(x, x[::-1] + 1)


def test_paired_constant_shift():
    base = dict(enumerate(A))
    arm = {s: v + 0.02 for s, v in base.items()}
    c = stats.compare(arm, base)
    assert c["paired"] and c["n_shared"] == 5
    assert c["diff_mean"] == pytest.approx(0.02)
    assert c["ci_low"] == pytest.approx(0.02, abs=1e-9) and c["ci_high"] == pytest.approx(0.02, abs=1e-9)
    assert c["p_verdict"] == c["p_paired_t"] < 0.05
    assert c["p_wilcoxon"] == pytest.approx(0.0625)  # all 5 differences positive: 2 / 2**5
    assert c["p_welch"] == pytest.approx(sps.ttest_ind(list(arm.values()), A, equal_var=False).pvalue)
    assert stats.verdict(c["diff_mean"], c["p_verdict"]) == "better"


def test_unpaired_without_shared_seeds_uses_welch():
    base = dict(enumerate(A))
    arm = {10 + s: v + 0.03 for s, v in base.items()}
    c = stats.compare(arm, base)
    assert not c["paired"] and c["n_shared"] == 0
    assert math.isnan(c["p_paired_t"]) and math.isnan(c["p_wilcoxon"])
    assert c["p_verdict"] == c["p_welch"]
    assert c["ci_low"] < 0.03 < c["ci_high"]


def test_partial_overlap_pairs_on_shared_seeds_only():
    base = dict(enumerate(A))
    arm = {0: 0.9, 1: 0.9, 2: 0.9, 7: 0.1, 8: 0.1}
    c = stats.compare(arm, base)
    assert c["paired"] and c["n_arm"] == c["n_baseline"] == 3
    assert c["diff_mean"] == pytest.approx(0.9 - np.mean(A[:3]))


def test_too_few_runs_not_testable():
    c = stats.compare({0: 0.9}, dict(enumerate(A)))
    assert math.isnan(c["p_verdict"]) and math.isnan(c["ci_low"])
    assert stats.verdict(c["diff_mean"], float("nan")) == "not testable"


def test_verdict_direction_for_losses():
    assert stats.verdict(-0.1, 0.01, higher_is_better=False) == "better"
    assert stats.verdict(0.1, 0.01, higher_is_better=False) == "worse"
    assert stats.verdict(0.1, 0.2) == "no detectable difference"
    c = stats.compare({s: v - 0.1 for s, v in enumerate(A)}, dict(enumerate(A)), higher_is_better=False)
    assert c["prob_improvement"] > 0.5  # lower values are the improvement
