"""The statistics behind the comparison tables.

Everything is scipy.stats except two one-liners scipy lacks: Holm's step-down correction and the
probability of improvement of Agarwal et al. (2021). Bootstrap intervals use a fixed seed, so a
report regenerated from the same records has the same numbers.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_METHOD = "percentile"  # robust for n = 2..10 and for constant samples (BCa is NaN there)
BOOTSTRAP_SEED = 0               # every interval uses a fresh generator with this seed
ALPHA = 0.05                     # family-wise level of the verdicts (after Holm)


@contextmanager
def _quiet():
    """Silence scipy's small-sample / degenerate-data warnings: the tables show NaN and a note instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _rng() -> np.random.Generator:
    return np.random.default_rng(BOOTSTRAP_SEED)


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50 % (25 % trimmed from each end)."""
    x = np.asarray(x, float)
    return float(stats.trim_mean(x, 0.25)) if x.size else float("nan")


def bootstrap_mean_ci(x) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of the mean; (nan, nan) with fewer than 2 values."""
    x = np.asarray(x, float)
    if x.size < 2:
        return float("nan"), float("nan")
    with _quiet():
        ci = stats.bootstrap((x,), np.mean, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                             method=BOOTSTRAP_METHOD, rng=_rng()).confidence_interval
    return float(ci.low), float(ci.high)


def bootstrap_diff_ci(a, b) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of mean(a) - mean(b), a and b resampled independently."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")

    def diff(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    with _quiet():
        ci = stats.bootstrap((a, b), diff, n_resamples=N_RESAMPLES, confidence_level=CONFIDENCE,
                             method=BOOTSTRAP_METHOD, rng=_rng()).confidence_interval
    return float(ci.low), float(ci.high)


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values; NaN entries are not part of the family and stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    idx = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    out[idx] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[idx]))
    return out


def prob_improvement(x, y) -> float:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of runs (Agarwal et al. 2021, rliable).

    Equals the Mann-Whitney U statistic of x against y divided by len(x) * len(y).
    """
    x, y = np.asarray(x, float)[:, None], np.asarray(y, float)[None, :]
    if x.size == 0 or y.size == 0:
        return float("nan")
    return float(np.mean((x > y) + 0.5 * (x == y)))


def _pvalue(test, *args, **kwargs) -> float:
    try:
        with _quiet():
            p = float(test(*args, **kwargs).pvalue)
    except ValueError:  # e.g. wilcoxon with every difference zero
        return float("nan")
    return p


def compare(arm: dict[Any, float], base: dict[Any, float], higher_is_better: bool = True,
            margin: float | None = None) -> dict[str, Any]:
    """Compare one arm with the baseline; both given as {seed: value} of their ok runs.

    With at least 2 shared seeds the comparison is paired on the shared seeds (the other runs are
    left out of it): t-interval of the mean per-seed difference, paired t-test (the verdict's test),
    paired TOST against `margin`, Wilcoxon signed-rank. Otherwise it is unpaired on all runs: Welch's
    t-interval of the difference of means, Welch's t-test (the verdict's test), Welch TOST. Welch's p
    is always reported. `sd_diff` is the spread the power analysis uses (of the per-seed differences
    when paired, the pooled standard deviation when not).
    """
    margin = EQUIVALENCE_MARGIN if margin is None else margin
    shared = sorted(set(arm) & set(base), key=str)
    paired = len(shared) >= 2
    if paired:
        a = np.array([arm[s] for s in shared], float)
        b = np.array([base[s] for s in shared], float)
    else:
        a = np.array([arm[s] for s in sorted(arm, key=str)], float)
        b = np.array([base[s] for s in sorted(base, key=str)], float)
    sign = 1.0 if higher_is_better else -1.0
    out: dict[str, Any] = {
        "paired": paired, "n_shared": len(shared), "n_arm": a.size, "n_baseline": b.size,
        "diff_mean": float(a.mean() - b.mean()) if a.size and b.size else float("nan"),
        "ci_low": float("nan"), "ci_high": float("nan"),
        "p_welch": float("nan"), "p_paired_t": float("nan"), "p_wilcoxon": float("nan"),
        "p_verdict": float("nan"), "p_tost": float("nan"), "sd_diff": float("nan"), "margin": margin,
        "prob_improvement": prob_improvement(sign * a, sign * b),
        "prob_improvement_ci_low": float("nan"), "prob_improvement_ci_high": float("nan"),
    }
    if a.size < 2 or b.size < 2:
        return out
    out["p_welch"] = _pvalue(stats.ttest_ind, a, b, equal_var=False)
    out["prob_improvement_ci_low"], out["prob_improvement_ci_high"] = prob_improvement_ci(sign * a, sign * b)
    out["p_tost"] = tost_pvalue(a, b, margin, paired)
    if paired:
        out["ci_low"], out["ci_high"] = t_mean_ci(a - b)
        out["p_paired_t"] = _pvalue(stats.ttest_rel, a, b)
        out["p_wilcoxon"] = _pvalue(stats.wilcoxon, a, b)
        out["p_verdict"] = out["p_paired_t"]
        out["sd_diff"] = float(np.std(a - b, ddof=1))
    else:
        out["ci_low"], out["ci_high"] = welch_diff_ci(a, b)
        out["p_verdict"] = out["p_welch"]
        out["sd_diff"] = float(np.sqrt((a.var(ddof=1) * (a.size - 1) + b.var(ddof=1) * (b.size - 1))
                                       / (a.size + b.size - 2)))
    if np.isnan(out["p_verdict"]) and out["diff_mean"] == 0:
        out["p_verdict"] = 1.0  # identical constant samples: no evidence of any difference
    return out


def verdict(diff: float, p_holm: float, higher_is_better: bool = True) -> str:
    if np.isnan(p_holm):
        return "not testable"
    if p_holm >= ALPHA:
        return "no detectable difference"
    return "better" if (diff > 0) == higher_is_better else "worse"


# --------------------------------------------------------------------------------------------------
# Intervals at small n, equivalence, power, rates (issue 15). statsmodels where it has the test.
# --------------------------------------------------------------------------------------------------

CI_METHOD = "t"                  # mean CIs: Student's t-interval (a percentile bootstrap covers ~90 % at n=10)
EQUIVALENCE_MARGIN = 0.01        # smallest effect of interest: 1 pp accuracy (conf/config.yaml sets the same)
POWER = 0.80                     # power of the minimum detectable effect
COLLAPSE_WARN = 0.10             # warn when more than this share of an arm's runs collapsed
OUTCOMES = ("better", "worse", "equivalent", "inconclusive")


def t_mean_ci(x, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t-interval of the mean, mean +- t_{n-1} s / sqrt(n); (nan, nan) below 2 values."""
    x = np.asarray(x, float)
    if x.size < 2:
        return float("nan"), float("nan")
    m, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.size))
    if se == 0:
        return m, m
    h = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * se
    return m - h, m + h


def welch_diff_ci(a, b, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Welch's t-interval of mean(a) - mean(b) (Welch-Satterthwaite degrees of freedom)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return float("nan"), float("nan")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    d, se = float(a.mean() - b.mean()), float(np.sqrt(va + vb))
    if se == 0:
        return d, d
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    h = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return d - h, d + h


def tost_pvalue(a, b, margin: float, paired: bool) -> float:
    """p of the two one-sided tests (TOST) that |mean difference| < margin: statsmodels' `ttost_paired`
    (paired) or `ttost_ind` (Welch). Equivalence is shown at level alpha when p < alpha."""
    from statsmodels.stats.weightstats import ttost_ind, ttost_paired

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2 or not margin > 0:
        return float("nan")
    d = (a - b) if paired else None
    if paired and np.ptp(d) == 0 or not paired and np.ptp(a) == 0 and np.ptp(b) == 0:
        # no spread: the difference is known exactly
        diff = float(d[0]) if paired else float(a[0] - b[0])
        return 0.0 if abs(diff) < margin else 1.0
    with _quiet():
        p = ttost_paired(a, b, -margin, margin)[0] if paired else \
            ttost_ind(a, b, -margin, margin, usevar="unequal")[0]
    return float(p)


def outcome(diff: float, p_holm: float, p_tost_holm: float, higher_is_better: bool = True) -> str:
    """better / worse when the difference test rejects (after Holm), else equivalent when the TOST
    rejects (after Holm), else inconclusive; `not testable` without a p-value."""
    if np.isnan(p_holm):
        return "not testable"
    if p_holm < ALPHA:
        return "better" if (diff > 0) == higher_is_better else "worse"
    if not np.isnan(p_tost_holm) and p_tost_holm < ALPHA:
        return "equivalent"
    return "inconclusive"


def wilson_ci(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (statsmodels' proportion_confint)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    return float(lo), float(hi)


def min_detectable_dz(n: int, alpha: float, power: float = POWER, paired: bool = True,
                      n_other: int | None = None) -> float:
    """Smallest standardised effect (d_z paired, Cohen's d unpaired) a two-sided t-test detects with
    `power` at level `alpha` with these run counts (statsmodels TTestPower / TTestIndPower)."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if n < 2 or (not paired and (n_other or 0) < 2):
        return float("nan")
    with _quiet():
        if paired:
            return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided"))
        return float(TTestIndPower().solve_power(nobs1=n, ratio=n_other / n, alpha=alpha, power=power,
                                                  alternative="two-sided"))


def seeds_needed(effect: float, sd: float, alpha: float, power: float = POWER) -> float:
    """Seeds (pairs) a paired t-test needs to detect a mean difference `effect` when the per-seed
    differences have standard deviation `sd`; inf when sd is 0 is impossible to say (returns 2)."""
    from statsmodels.stats.power import TTestPower

    if not sd > 0:
        return 2.0 if sd == 0 else float("nan")
    with _quiet():
        n = TTestPower().solve_power(effect_size=abs(effect) / sd, alpha=alpha, power=power,
                                     alternative="two-sided")
    return float(max(2, np.ceil(n)))


def prob_improvement_ci(x, y) -> tuple[float, float]:
    """95 % percentile-bootstrap CI of P(X > Y) + 0.5 P(X = Y), resampling each arm's runs
    independently (as rliable's stratified bootstrap does within a task)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or y.size < 2:
        return float("nan"), float("nan")

    def pi(a, b, axis=-1):
        a, b = np.moveaxis(a, axis, -1)[..., :, None], np.moveaxis(b, axis, -1)[..., None, :]
        return np.mean((a > b) + 0.5 * (a == b), axis=(-2, -1))

    with _quiet():
        ci = stats.bootstrap((x, y), pi, n_resamples=2_000, confidence_level=CONFIDENCE,
                             method="percentile", rng=_rng()).confidence_interval
    return float(ci.low), float(ci.high)


def test_sampling_se(acc, n_test) -> float:
    """Binomial standard error of one run's test accuracy from the finite test set, sqrt(a(1-a)/N)."""
    return float(np.sqrt(acc * (1 - acc) / n_test)) if n_test and n_test > 0 else float("nan")


def mcnemar_runs(correct_a, correct_b) -> dict[str, float]:
    """McNemar's exact test of two runs on the same test examples (per-example correctness) and a
    paired bootstrap CI over test examples of acc(a) - acc(b)."""
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("the two runs must be scored on the same test examples")
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    p = float(mcnemar(table, exact=True).pvalue)
    d = a.astype(float) - b.astype(float)
    lo, hi = bootstrap_mean_ci(d)
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "p_mcnemar": p,
            "a_only": table[0][1], "b_only": table[1][0]}
