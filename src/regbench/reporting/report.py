"""Turn a folder of runs into the comparison report: tables (.md/.csv/.tex) and plots (.png).

    write_report(paths, out_dir, baseline="none", metric="test/acc")  -> Report
    find_sweep_dirs(roots)                                            -> sweep folders below roots

Files written into out_dir: per_arm.{md,csv,tex}, comparison.{md,csv} (the same per-arm table under
its older name), pairwise.{md,csv,tex}, ranking.{md,csv,tex} (only when the runs cover several
data/model/config contexts; a stale one is removed otherwise), curves.png, intervals.png, gap.png,
and, when the folder holds protocol=tuned runs, tuning.md and its files (reporting/tuning.py; the
tuning runs enter only that report, never the tables above).
Everything is a pure function of the records: regenerating gives byte-identical files.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from regbench.records import METRIC_KEYS, RESULTS_FILE
from regbench.reporting import render, stats
from regbench.reporting.collect import load_runs
from regbench.reporting.tables import pairwise_table, per_arm_table, ranking_table, tag

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


def default_out_dir(paths: list[Path]) -> Path:
    """The single given folder (a results.json's folder), else runs/."""
    if len(paths) == 1:
        p = paths[0]
        return p.parent if p.is_file() else p
    return Path("runs")


def _legends(metric: str) -> dict[str, str]:
    t = tag(metric)
    ci = (f"{int(stats.CONFIDENCE * 100)}% {stats.BOOTSTRAP_METHOD} bootstrap CI "
          f"({stats.N_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED})")
    return {
        "per_arm": (
            f"one row per arm (data, model, regularizer, config = hash of the config without seed and "
            f"regularizer; runs are pooled only when all four agree, and a regularizer name used with "
            f"several settings is split into arms named by the settings that differ); "
            f"seeds_ok/diverged/failed = runs by "
            f"status, only ok runs enter the statistics; {t}_mean, {t}_std (sample, ddof=1), {t}_iqm "
            f"(interquartile mean), {t}_ci95_low/high ({ci} of the mean); test_loss_mean; "
            f"train_minus_test_acc_mean = mean of train/acc - test/acc; best_epoch_mean (0-based) and "
            f"epochs_trained_mean; train_seconds_mean = wall-clock fit seconds per run."),
        "pairwise": (
            f"each arm against the '{{baseline}}' arm of the same data, model and config; {t}_diff_mean = "
            f"mean(arm) - mean(baseline), on the shared seeds when paired; diff_ci95_low/high = {ci}, "
            f"resampling seed pairs when paired, each arm independently when unpaired; p_welch = Welch's "
            f"t-test; p_paired_t = paired t-test and p_wilcoxon = Wilcoxon signed-rank (paired rows only); "
            f"p_holm = Holm-adjusted p of the paired t-test (paired rows) or Welch's t-test (unpaired rows) "
            f"over all rows of this table; prob_improvement = P(arm better than baseline) + 0.5 P(tie) "
            f"over all pairs of runs (Agarwal et al. 2021); verdict = better / worse at p_holm < "
            f"{stats.ALPHA}, else no detectable difference."),
        "ranking": (
            f"rank <data/model> = rank of the arm's mean {metric} among the arms of that data/model/config "
            f"(1 = best, ties share the average rank); mean_rank = mean over the contexts_ranked in which "
            f"the arm has ok runs."),
    }


def write_report(paths, out_dir=None, *, baseline: str = "none", metric: str = "test/acc",
                 plots: bool = True) -> Report:
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
    legends = _legends(metric)

    read_note = f"{len(runs)} runs read from {loaded.found} {RESULTS_FILE} files"
    if loaded.skipped:
        read_note += f"; {len(loaded.skipped)} unreadable file(s) skipped (in no row)"
    notes = [read_note] + [f"skipped {_rel(p, out_dir)}: {why}" for p, why in loaded.skipped]

    per_arm = per_arm_table(runs, metric, baseline)
    files, md = render.write_table(per_arm, out_dir, "per_arm", f"Per-arm results: {metric}",
                                   legends["per_arm"], notes)
    for ext in ("md", "csv"):
        shutil.copyfile(out_dir / f"per_arm.{ext}", out_dir / f"comparison.{ext}")
        files.append(out_dir / f"comparison.{ext}")

    pairwise, pair_notes = pairwise_table(runs, metric, baseline)
    files += render.write_table(pairwise, out_dir, "pairwise", f"Each arm against '{baseline}': {metric}",
                                legends["pairwise"].replace("{baseline}", baseline), pair_notes)[0]

    ranking = ranking_table(per_arm, metric)
    if ranking is not None:
        files += render.write_table(ranking, out_dir, "ranking", f"Average rank across contexts: {metric}",
                                    legends["ranking"], [])[0]
    else:
        for ext in ("md", "csv", "tex"):
            (out_dir / f"ranking.{ext}").unlink(missing_ok=True)

    if plots:
        from regbench.reporting.plots import write_plots  # matplotlib only when plotting

        files += write_plots(runs, per_arm, out_dir, metric, baseline)
    files += tuning.write_tuning_report(loaded.runs, out_dir, baseline, plots)
    return Report(out_dir=out_dir, per_arm=per_arm, pairwise=pairwise, ranking=ranking,
                  n_runs=len(runs), skipped=loaded.skipped, files=files, markdown=md)


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
