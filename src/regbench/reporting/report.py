"""Turn a folder of runs into the comparison report: tables (.md/.csv/.tex) and plots (.png).

    write_report(paths, out_dir, baseline="none", metric="test/acc")  -> Report
    find_sweep_dirs(roots)                                            -> sweep folders below roots

Files written into out_dir: per_arm.{md,csv,tex}, comparison.{md,csv} (the same per-arm table under
its older name), pairwise.{md,csv,tex}, ranking.{md,csv,tex} (only when the runs cover several
distinct data/model settings; a stale one is removed otherwise), curves.png, intervals.png, gap.png,
profile.png (performance profile, with the ranking), and, when the folder holds protocol=tuned runs,
tuning.md and its files (reporting/tuning.py; the tuning runs enter only that report, never the
tables above).
Everything is a pure function of the records: regenerating gives byte-identical files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from regbench.atomic import write_atomic
from regbench.records import METRIC_KEYS, RESULTS_FILE
from regbench import health
from regbench.reporting import glance, render, stats
from regbench.reporting.profile import write_profile
from regbench.reporting.collect import load_runs
from regbench.reporting.tables import collapse_warnings, pairwise_table, per_arm_table, ranking_table, tag

log = logging.getLogger(__name__)


class NoRunsError(ValueError):
    """No (readable) results.json below the given paths."""


@dataclass
class Report:
    out_dir: Path
    per_arm: pd.DataFrame
    pairwise: pd.DataFrame
    ranking: pd.DataFrame | None
    n_runs: int                                   # readable records
    skipped: list[tuple[Path, str]]               # unreadable results.json: (path, reason)
    files: list[Path] = field(default_factory=list)
    markdown: str = ""                            # the per-arm table as Markdown (what the CLI prints)
    warnings: list[str] = field(default_factory=list)  # arms that collapsed in > 10 % of their runs


def default_out_dir(paths: list[Path]) -> Path:
    """The single given folder (a results.json's folder), else runs/."""
    if len(paths) == 1:
        p = paths[0]
        return p.parent if p.is_file() else p
    return Path("runs")


def _legends(metric: str, margin: float) -> dict[str, str]:
    t = tag(metric)
    ci = f"{int(stats.CONFIDENCE * 100)}% Student t-interval"
    return {
        "per_arm": (
            f"one row per arm (data, model, regularizer, config = hash of the config without seed and "
            f"regularizer; runs are pooled only when all four agree, and a regularizer name used with "
            f"several settings is split into arms named by the settings that differ); rows sorted by "
            f"mean {metric} within each setting, best first ({'★'}, `rank` 1 in the CSV); "
            f"seeds_ok/collapsed/diverged/failed = runs by status, only ok runs enter the statistics "
            f"(collapsed = finished without learning: train/acc within {health.CHANCE_MARGIN:g} of chance or "
            f">= {health.DEAD_FRACTION:.0%} dead hidden units, regbench.health); {t}_mean, {t}_std (ddof=1), "
            f"{t}_iqm (interquartile mean), {t}_ci95_low/high ({ci} of the mean); collapse_rate = collapsed / "
            f"(ok + collapsed) with its 95% Wilson interval; {t}_mean_with_collapsed = the mean with the "
            f"collapsed runs included (for reference only); test_sampling_se = mean over runs of "
            f"sqrt(acc (1 - acc) / n_test), the binomial standard error of one run's test accuracy from the "
            f"finite test set (– when the records do not state n_test); test_loss_mean; "
            f"train_minus_test_acc_mean = mean of train/acc - test/acc; best_epoch_mean (0-based) and "
            f"epochs_trained_mean; train_seconds_mean = wall-clock fit seconds per ok run; train_seconds_total = the "
            f"fit seconds of every run of the arm, whatever its status. The Markdown shows "
            f"the at-a-glance columns; the CSV and LaTeX have all of them."),
        "pairwise": (
            f"each arm against the '{{baseline}}' arm of the same data, model and config (where a setting "
            f"has no '{{baseline}}' arm: every pair of its arms); {t}_diff_mean = mean(arm) - mean(baseline), "
            f"on the shared seeds when paired; diff_ci95_low/high = {ci} of the mean per-seed difference "
            f"(paired) or Welch's interval (unpaired); p_welch = Welch's t-test; p_paired_t = paired t-test "
            f"and p_wilcoxon = Wilcoxon signed-rank (paired rows only); p_holm = Holm-adjusted p of the paired "
            f"t-test (paired rows) or Welch's t-test (unpaired rows) **within the row's family** (one family "
            f"per data/model/config, named in the `family` column); p_tost / p_tost_holm = two one-sided "
            f"tests (statsmodels ttost_paired / ttost_ind) that |difference| < the equivalence margin "
            f"{margin:g}, raw and Holm-adjusted within the family; sd_diff = SD of the per-seed differences (paired) or "
            f"the pooled SD (unpaired); outcome = better / worse at p_holm < "
            f"{stats.ALPHA}, else equivalent at p_tost_holm < {stats.ALPHA}, else inconclusive; mde_dz / "
            f"mde_{t} = the smallest difference (standardised / in {metric} units, d_z times the SD of the "
            f"per-seed differences) a test at level {stats.ALPHA}/m (Holm's first step, m = family size) "
            f"detects with {stats.POWER:.0%} power with the seeds used (statsmodels TTestPower; "
            f"`python -m regbench.tables DIR --seeds-for 1pp` gives the seeds a target needs); "
            f"prob_improvement = P(arm better than baseline) + 0.5 P(tie) over all pairs of runs "
            f"(Agarwal et al. 2021) with its 95% percentile-bootstrap CI (each arm's runs resampled, 2000 "
            f"resamples, seed {stats.BOOTSTRAP_SEED})."),
        "ranking": (
            f"rank <data/model> = rank of the arm's mean {metric} among the arms of that distinct setting "
            f"(a data/model pair; 1 = best, ties share the average rank); a setting with several configs "
            f"(e.g. training-set-size subsets) is ranked per config and the ranks averaged, so each setting "
            f"counts once; mean_rank = mean over the settings_ranked in which the arm has ok runs."),
    }


def write_report(paths, out_dir=None, *, baseline: str = "none", metric: str = "test/acc",
                 plots: bool = True, equivalence_margin: float | None = None) -> Report:
    """Read every results.json at or below `paths` and write the tables and plots into `out_dir`.

    Raises NoRunsError when there is no readable record, ValueError for an unknown metric.
    """
    if metric not in METRIC_KEYS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRIC_KEYS)}")
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(paths)
    where = ", ".join(map(str, paths))
    loaded = load_runs(paths)
    if loaded.found == 0:
        raise NoRunsError(f"no runs: no {RESULTS_FILE} found in {where}")
    if loaded.runs.empty:
        raise NoRunsError(f"no runs: all {loaded.found} {RESULTS_FILE} files in {where} are unreadable")
    from regbench.reporting import tuning  # protocol=tuned: its tuning runs have their own report

    runs = tuning.without_tuning_runs(loaded.runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if runs.empty:  # a tuned sweep still tuning: only its tuning report so far
        files = tuning.write_tuning_report(loaded.runs, out_dir, baseline, plots)
        return Report(out_dir=out_dir, per_arm=pd.DataFrame(), pairwise=pd.DataFrame(), ranking=None,
                      n_runs=len(loaded.runs), skipped=loaded.skipped, files=files,
                      markdown=f"no final or fixed runs yet: {len(loaded.runs)} tuning runs, see tuning.md\n")
    margin = stats.EQUIVALENCE_MARGIN if equivalence_margin is None else float(equivalence_margin)
    legends = _legends(metric, margin)

    read_note = f"{len(runs)} runs read from {loaded.found} {RESULTS_FILE} files"
    if loaded.skipped:
        read_note += f"; {len(loaded.skipped)} records skipped (in no row): unreadable, invalid or duplicated, each named below"
    notes = [read_note] + [f"skipped {_rel(p, out_dir)}: {why}" for p, why in loaded.skipped]

    per_arm = per_arm_table(runs, metric, baseline)
    warnings = collapse_warnings(per_arm)
    for w in warnings:
        log.warning("%s", w)
    files, md = render.write_table(per_arm, out_dir, "per_arm", f"Per-arm results: {metric}",
                                   legends["per_arm"], notes + warnings, md_view=glance.per_arm_view(per_arm, metric))
    for ext in ("md", "csv"):
        write_atomic(out_dir / f"comparison.{ext}", (out_dir / f"per_arm.{ext}").read_bytes())
        files.append(out_dir / f"comparison.{ext}")

    pairwise, pair_notes = pairwise_table(runs, metric, baseline, margin)
    families = sorted(set(pairwise["family"]))
    fam_note = (f"Holm families ({len(families)}): " + "; ".join(families)) if families else "no comparisons"
    files += render.write_table(pairwise, out_dir, "pairwise", f"Each arm against '{baseline}': {metric}",
                                legends["pairwise"].replace("{baseline}", baseline), [fam_note] + pair_notes,
                                md_view=glance.pairwise_view(pairwise, metric))[0]

    ranking = ranking_table(per_arm, metric)
    if ranking is not None:
        files += render.write_table(ranking, out_dir, "ranking", f"Average rank across distinct settings: {metric}",
                                    legends["ranking"], [])[0]
    else:
        for ext in ("md", "csv", "tex"):
            (out_dir / f"ranking.{ext}").unlink(missing_ok=True)

    if plots:
        from regbench.reporting.plots import write_plots  # matplotlib only when plotting

        files += write_plots(runs, per_arm, out_dir, metric, baseline)
        files += write_profile(per_arm if ranking is not None else per_arm.iloc[:0], out_dir, metric)
    files += tuning.write_tuning_report(loaded.runs, out_dir, baseline, plots)
    return Report(out_dir=out_dir, per_arm=per_arm, pairwise=pairwise, ranking=ranking,
                  n_runs=len(runs), skipped=loaded.skipped, files=files, markdown=md, warnings=warnings)


def _rel(p: Path, base: Path) -> str:
    try:
        return os.path.relpath(p, base)
    except ValueError:
        return str(p)


def find_sweep_dirs(roots) -> list[Path]:
    """Folders below `roots` holding a multirun.yaml, or with a child folder holding a results.json."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            d = Path(dirpath)
            if "study.db" in filenames:  # a tuned arm's study: its runs belong to the sweep folder's report
                dirnames.clear()
                continue
            if "multirun.yaml" in filenames or any((d / c / RESULTS_FILE).is_file() for c in dirnames):
                found.add(d)
    return sorted(found)
