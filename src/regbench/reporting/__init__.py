"""Comparison tables and plots from results.json records (see report.py).

The names below are loaded on first use (PEP 562): Hydra instantiates the report callback
(`reporting.hydra_callback`) in every run, and importing report.py eagerly would load pandas,
matplotlib, scipy and statsmodels (~1.6 s) into runs that write no report.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NoRunsError", "Report", "find_sweep_dirs", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from regbench.reporting import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
