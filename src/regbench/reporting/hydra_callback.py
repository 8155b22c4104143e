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


class ReportCallback(Callback):
    def __init__(self, baseline: str = "none", metric: str = "test/acc", plots: bool = True) -> None:
        self.baseline, self.metric, self.plots = baseline, metric, plots

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = None
        try:
            from regbench.reporting.report import write_report

            sweep_dir = Path(str(config.hydra.sweep.dir))
            report = write_report([sweep_dir], sweep_dir, baseline=self.baseline,
                                  metric=self.metric, plots=self.plots)
            log.info("report of %d runs (%d unreadable skipped) written to %s", report.n_runs,
                     len(report.skipped), sweep_dir)
        except Exception:  # noqa: BLE001 - a report must never hide the sweep's results
            log.exception("could not write the report for sweep %s (the runs themselves are unaffected; "
                          "retry with `python -m regbench.tables %s`)", sweep_dir, sweep_dir or "<sweep dir>")
