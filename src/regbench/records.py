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
    config          the resolved config (dict); protocol=tuned runs carry config.protocol.role
                    ("tune" / "final"), .trial and .study (regbench/tuning/study.py)
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
import math
import os
from pathlib import Path
from typing import Any

from regbench.atomic import write_atomic

# the statuses a run ends with, worst first (a sweep's summary is its worst); a collapsed run is one
# whose ok training ended at chance (health.py marks it)
COLLAPSED = "collapsed"
WORST_FIRST = ("failed", "rejected", "diverged", COLLAPSED, "busy", "ok", "skipped")
DONE = ("ok", COLLAPSED)  # finished records a rerun skips (a collapsed run would collapse again: same seed)


def worst(statuses: list[str]) -> str:
    return min(statuses, key=WORST_FIRST.index)

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


def lookup(record: Any, *keys: str) -> Any:
    """``record[k1][k2]...``, or None where a level is missing or not a dict (old or partial records)."""
    for k in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(k)
    return record


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` to `run_dir/results.json` atomically and return the path."""
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {record.get('status')!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, sort_keys=True, allow_nan=True)  # before any file: a bad record writes nothing
    return write_atomic(run_dir / RESULTS_FILE, text)


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


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def record_problem(record: dict[str, Any]) -> str | None:
    """Why `record` must not enter a table, or None: an unknown schema, a wrong type, a metric that is
    non-finite in an ok run or out of range (accuracy outside [0, 1], a negative loss), a seed that is
    not an integer, a history that is not numeric or whose columns differ in length."""
    if record.get("schema") != SCHEMA_VERSION or isinstance(record.get("schema"), bool):
        return f"schema {record.get('schema')!r} is not a known version (this regbench reads {SCHEMA_VERSION})"
    if record.get("status") not in STATUSES:
        return f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}"
    seed = record.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        return f"seed {seed!r} is not a non-negative integer"
    for key in ("run_id", "data", "model", "regularizer", "group_hash"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"{key} {record.get(key)!r} is not a name"
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return f"metrics {metrics!r} is not a mapping"
    ok = record["status"] == "ok"
    for key in METRIC_KEYS:
        v = metrics.get(key)
        if v is None and not ok:
            continue
        if not _number(v):
            return f"metrics.{key}={v!r} is not a number"
        if not math.isfinite(v):
            if ok:
                return f"metrics.{key}={v!r} is not finite in an ok run"
            continue
        if key.endswith("/acc") and not 0 <= v <= 1:
            return f"metrics.{key}={v!r} is out of range: an accuracy is in [0, 1]"
        if key.endswith("/loss") and v < 0:
            return f"metrics.{key}={v!r} is out of range: a loss is >= 0"
    history = record.get("history")
    if not isinstance(history, dict) or not all(isinstance(history.get(k), list) for k in HISTORY_KEYS):
        return f"history lacks the lists {', '.join(HISTORY_KEYS)}"
    lengths = {k: len(history[k]) for k in HISTORY_KEYS}
    if len(set(lengths.values())) > 1:
        return f"history columns differ in length ({', '.join(f'{k} {n}' for k, n in lengths.items())})"
    for k in HISTORY_KEYS:
        bad = next((v for v in history[k] if not (_number(v) or (v is None and k != "epoch"))), "none")
        if bad != "none" or (k == "epoch" and not all(isinstance(v, int) for v in history[k])):
            return f"history {k} holds {bad!r}: not a number"
    for key in ("epochs_trained", "steps"):
        v = record.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"{key} {v!r} is not a non-negative integer"
    return None


def find_records(paths: list[str | os.PathLike]) -> list[Path]:
    """Every results.json at or below the given files / folders, sorted; symlinked folders are
    followed (each real folder once, so a link loop ends)."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file() and p.name == RESULTS_FILE:
            found.add(p)
        elif p.is_dir():
            seen: set[str] = set()
            for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in seen:
                    dirnames[:] = []
                    continue
                seen.add(real)
                if RESULTS_FILE in filenames:
                    found.add(Path(dirpath) / RESULTS_FILE)
    return sorted(found)
