"""The results record: one `results.json` per run, the only thing the reports read.

A record is written once, atomically (temp file in the same folder + `os.replace`), so a
reader sees either no record or a whole one, never a half-written file, even when the
run is killed mid-write.

Schema (version 1); every key is always present, `null` where it does not apply:

    schema          1
    status          "ok" | "collapsed" | "diverged" | "failed" (collapsed: finished without
                    learning, regbench.health)
    run_id          folder name of the run
    seed            int, the run seed (init, batch order, dropout masks)
    data, model, regularizer      the names of the three config groups
    group_hash      short hash of the config minus seed and regularizer: runs are only
                    ever pooled in a table when data, model, regularizer and this agree
    config          the resolved config (dict)
    metrics         {"test/acc", "test/loss", "train/acc", "train/loss",
                     "val/acc", "val/loss", "best_val/acc", "best_val/loss"}: floats;
                    train/*, val/* and test/* are measured in eval mode on the weights that
                    were finally kept (best_val/* are the best values of the per-epoch history)
    best_epoch      epoch (0-based) of the best monitored validation value
    epochs_trained  number of epochs run
    stopped_early   bool; stopped_epoch (0-based, or null) and stop_reason (str or null)
    restored_best   bool, whether the best-validation weights were restored before testing
    steps           optimizer steps taken
    train_seconds   wall-clock seconds in fit (no start-up, no test)
    history         {"epoch": [...], "train/loss": [...], "train/acc": [...],
                     "val/loss": [...], "val/acc": [...]}: one entry per epoch
    error           null, or the error message of a failed / diverged run
    diverged_epoch  null, or the epoch at which the loss became NaN / infinite
    extra           dict of arm-specific measurements (e.g. mc_dropout entropy)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
STATUSES = ("ok", "collapsed", "diverged", "failed")  # collapsed: see regbench.health
METRIC_KEYS = (
    "test/acc", "test/loss", "train/acc", "train/loss",
    "val/acc", "val/loss", "best_val/acc", "best_val/loss",
)
HISTORY_KEYS = ("epoch", "train/loss", "train/acc", "val/loss", "val/acc")


def empty_record() -> dict[str, Any]:
    """A record with every key present and nothing measured."""
    return {
        "schema": SCHEMA_VERSION, "status": None, "run_id": None, "seed": None,
        "data": None, "model": None, "regularizer": None, "group_hash": None,
        "config": None, "metrics": {k: None for k in METRIC_KEYS},
        "best_epoch": None, "epochs_trained": 0, "stopped_early": False,
        "stopped_epoch": None, "stop_reason": None, "restored_best": False,
        "steps": 0, "train_seconds": None,
        "history": {k: [] for k in HISTORY_KEYS},
        "error": None, "diverged_epoch": None, "extra": {},
    }


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` to `run_dir/results.json` atomically and return the path."""
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / RESULTS_FILE
    fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read one record; raises ValueError (naming the file) when it is not a valid record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable results record ({e})") from e
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        raise ValueError(f"{path}: not a results record (no valid 'status')")
    return record


def find_records(paths: list[str | os.PathLike]) -> list[Path]:
    """Every results.json at or below the given files / folders, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == RESULTS_FILE:
            found.add(p)
        elif p.is_dir():
            found.update(p.rglob(RESULTS_FILE))
    return sorted(found)
