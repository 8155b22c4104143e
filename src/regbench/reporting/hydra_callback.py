"""Hydra callback: write the comparison report into the sweep folder when a multirun ends.

Registered in conf/config.yaml as
    hydra.callbacks.report._target_: regbench.reporting.hydra_callback.ReportCallback
A report failure is logged, never raised: the sweep's own results.json files are what matter.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def verdict_lines(report, metric: str) -> list[str]:
    """One line per pairwise comparison: what the sweep found, as the end of a sweep prints it."""
    t = metric.replace("/", "_")
    out = []
    for _, r in report.pairwise.iterrows():
        d, lo, hi = r[f"{t}_diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"]
        ci = "" if lo != lo else f" [{lo:+.4f}, {hi:+.4f}]"
        out.append(f"{r['data']}/{r['model']}: {r['regularizer']} − {r['baseline']} {metric} {d:+.4f}{ci}, "
                   f"p_holm {r['p_holm']:.3g}: {r['verdict']}")
    return out


class ReportCallback(Callback):
    def __init__(self, baseline: str = "none", metric: str = "test/acc", plots: bool = True,
                 equivalence_margin: float | None = None) -> None:
        self.baseline, self.metric, self.plots = baseline, metric, plots
        self.equivalence_margin = equivalence_margin

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = None
        try:
            from regbench.reporting.report import write_report

            sweep_dir = Path(str(config.hydra.sweep.dir))
            report = write_report([sweep_dir], sweep_dir, baseline=self.baseline,
                                  metric=self.metric, plots=self.plots,
                                  equivalence_margin=self.equivalence_margin)
            log.info("report of %d runs (%d unreadable skipped) written to %s", report.n_runs,
                     len(report.skipped), sweep_dir)
            for line in verdict_lines(report, self.metric):
                log.info("%s", line)
        except Exception:  # noqa: BLE001 - a report must never hide the sweep's results
            log.exception("could not write the report for sweep %s (the runs themselves are unaffected; "
                          "retry with `python -m regbench.tables %s`)", sweep_dir, sweep_dir or "<sweep dir>")
