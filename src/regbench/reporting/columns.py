"""Per-run columns the statistics need beyond the record's metrics: health, test-set size, predictions.

``run_columns(record)`` is merged into each run's row by ``collect.load_runs``; the status it returns
has the training-health rule applied (``regbench.health``), so records written before the rule are
classified on read.
"""

from __future__ import annotations

from typing import Any

from regbench.health import collapse_reason, health_status
from regbench.records import lookup


def run_columns(record: dict[str, Any]) -> dict[str, Any]:
    n_test = lookup(record, "extra", "mechanism", "n_test")
    preds = lookup(record, "extra", "mechanism", "test_predictions")
    return {
        "status": health_status(record),
        "collapse_reason": collapse_reason(record) or lookup(record, "extra", "collapse_reason"),
        "n_test": float(n_test) if isinstance(n_test, int) and not isinstance(n_test, bool) else float("nan"),
        "test_predictions": preds if isinstance(preds, dict) else None,
        "split_per_seed": bool(lookup(record, "config", "data", "split_per_seed")),
    }
