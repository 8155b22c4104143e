"""Comparison tables and plots from results.json records (see report.py)."""

from regbench.reporting.report import NoRunsError, Report, find_sweep_dirs, write_report

__all__ = ["NoRunsError", "Report", "find_sweep_dirs", "write_report"]
