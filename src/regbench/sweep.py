"""What happened in a sweep: a summary line (ok, diverged, skipped, failed) and an honest exit code.

Hydra runs each job through `on_job_end` in the process that ran it (the main process, a joblib
worker or a submitit job), so each job appends one JSON line to `<sweep dir>/.sweep_status.jsonl`
(O_APPEND: lines from parallel jobs never interleave); when the multirun ends, the lines of this
invocation (its token) are counted. A sweep in which any run failed exits with status 1, after
every other run has run and the report has been written.

Progress: after each job, the process that ran it logs `sweep progress: k/N runs done (ok, failed,
...), elapsed, ETA` from those same lines, so it reads the same under the basic launcher, joblib's
workers and submitit's jobs. N is the sweep's planned job count (the basic sweeper's grid, or an
Optuna-style sweeper's n_trials); the ETA is elapsed / k x (N - k), which already accounts for jobs
running in parallel.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("regbench")
STATUS_FILE = ".sweep_status.jsonl"
TOKEN_ENV = "REGBENCH_SWEEP_TOKEN"
TOTAL_ENV = "REGBENCH_SWEEP_TOTAL"
START_ENV = "REGBENCH_SWEEP_START"


class SweepStatus(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[TOKEN_ENV] = uuid.uuid4().hex  # inherited by the job processes started after this
        # the sweep folder exists before the sweeper starts: hydra/sweeper=optuna opens its SQLite
        # storage there (hparams_search presets) before any job has created the folder
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        os.environ[START_ENV] = repr(time.time())
        total = planned_jobs(config)
        os.environ[TOTAL_ENV] = str(total or "")
        log.info("sweep of %s runs into %s", total if total is not None else "an unknown number of",
                 config.hydra.sweep.dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        token = os.environ.get(TOKEN_ENV)
        if token is None:  # a single run: its exit code already says what happened
            return
        if job_return.status == JobStatus.COMPLETED:
            status = job_return._return_value if isinstance(job_return._return_value, str) else "ok"
        else:
            status = "failed"
        run_dir = job_return.hydra_cfg.hydra.runtime.output_dir if job_return.hydra_cfg else "?"
        line = json.dumps({"token": token, "run": Path(str(run_dir)).name,
                           "status": status}) + "\n"
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(sweep_dir / STATUS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        log.info("%s", progress_line(sweep_counts(sweep_dir, token), os.environ.get(TOTAL_ENV),
                                     os.environ.get(START_ENV)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _release_idle_workers()
        token = os.environ.pop(TOKEN_ENV, None)
        os.environ.pop(TOTAL_ENV, None)
        start = os.environ.pop(START_ENV, None)
        counts = Counter(sweep_counts(Path(config.hydra.sweep.dir), token))
        total = sum(counts.values())
        parts = [f"{counts[s]} {label}" for s, label in LABELS if counts[s]]
        took = f" (took {_clock(time.time() - float(start))})" if start else ""
        log.info("sweep finished: %d runs: %s%s", total, ", ".join(parts) or "none", took)
        if counts["failed"] or counts["rejected"]:
            log.error("%d run(s) failed and %d rejected: see the log above, and each failed run's results.json "
                      "and traceback.txt in %s", counts["failed"], counts["rejected"], config.hydra.sweep.dir)
            failed = sweep_counts(Path(config.hydra.sweep.dir), token, "failed")
            if failed:
                log.error("failed: %s", ", ".join(sorted(failed)))
            sys.exit(1)


# every status a job reports, in the order the summary and progress lines count them
LABELS = (("ok", "ok"), ("collapsed", "collapsed"), ("diverged", "diverged"), ("skipped", "skipped (already ok)"),
          ("busy", "skipped (running elsewhere)"), ("rejected", "rejected (invalid config)"), ("failed", "failed"))


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(statuses: list[str], total: str | None, start: str | None, now: float | None = None) -> str:
    """`sweep progress: 3/8 runs done (2 ok, 1 failed), elapsed 0:42, ETA 1:10`."""
    done = len(statuses)
    counts = Counter(statuses)
    parts = ", ".join(f"{counts[s]} {label}" for s, label in LABELS if counts[s])
    n = int(total) if total else None
    text = f"sweep progress: {done}/{n if n is not None else '?'} runs done ({parts})"
    if start:
        elapsed = (time.time() if now is None else now) - float(start)
        text += f", elapsed {_clock(elapsed)}"
        if n is not None and done:
            text += f", ETA {_clock(elapsed / done * max(n - done, 0))}"
    return text


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the sweep will launch: the basic sweeper's grid (its `params` and the command
    line's sweeps, expanded as Hydra expands them), or a sweeper's `n_trials`; None if unknown."""
    sweeper = config.hydra.sweeper
    if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        try:
            from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
            from hydra.core.override_parser.overrides_parser import OverridesParser

            params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
            parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
            return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))
        except Exception as e:  # e.g. glob() choices need the config loader: report no N, never fail
            log.debug("could not count the sweep's jobs: %s", e)
            return None
    n = sweeper.get("n_trials")
    return int(n) if isinstance(n, int) else None


def _release_idle_workers() -> None:
    """End the joblib launcher's worker processes now that every job has returned (its records are
    written). Left to loky's exit handler, the parent waits for idle workers that hold torch and
    Lightning to wind down: about 1 s of a 27-s 2-job sweep of eight 5-s runs."""
    reusable = sys.modules.get("joblib.externals.loky.reusable_executor")
    # the executor joblib used (loky keeps one per process); get_reusable_executor() would not do:
    # called with other arguments it replaces that executor, waiting for its workers
    executor = getattr(reusable, "_executor", None)
    if executor is None:  # the launcher was not joblib: nothing to release
        return
    try:
        executor.shutdown(wait=False, kill_workers=True)
    except Exception as e:  # never let clean-up hide the sweep's summary
        log.debug("could not release the joblib workers: %s", e)


def sweep_counts(sweep_dir: Path, token: str | None, status: str | None = None) -> list[str]:
    """The statuses that the jobs of invocation `token` reported; with `status`, the names of the
    runs that reported it."""
    try:
        lines = (sweep_dir / STATUS_FILE).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("token") == token and status is None:
            out.append(entry["status"])
        elif entry.get("token") == token and entry["status"] == status:
            out.append(entry["run"])
    return out
