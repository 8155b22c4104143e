"""What happened in a sweep: a summary line (ok, diverged, skipped, failed) and an honest exit code.

Hydra runs each job through `on_job_end` in the process that ran it (the main process, a joblib
worker or a submitit job), so each job appends one JSON line to `<sweep dir>/.sweep_status.jsonl`
(O_APPEND: lines from parallel jobs never interleave); when the multirun ends, the lines of this
invocation (its token) are counted. A sweep in which any run failed exits with status 1, after
every other run has run and the report has been written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
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


class SweepStatus(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[TOKEN_ENV] = uuid.uuid4().hex  # inherited by the job processes started after this

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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _release_idle_workers()
        token = os.environ.pop(TOKEN_ENV, None)
        counts = Counter(sweep_counts(Path(config.hydra.sweep.dir), token))
        total = sum(counts.values())
        parts = [f"{counts[s]} {label}" for s, label in (("ok", "ok"), ("collapsed", "collapsed"), ("diverged", "diverged"),
                 ("skipped", "skipped (already ok)"), ("busy", "skipped (running elsewhere)"),
                 ("rejected", "rejected (invalid config)"), ("failed", "failed")) if counts[s]]
        log.info("sweep finished: %d runs: %s", total, ", ".join(parts) or "none")
        if counts["failed"] or counts["rejected"]:
            log.error("%d run(s) failed and %d rejected: see the log above, and each failed run's results.json "
                      "and traceback.txt in %s", counts["failed"], counts["rejected"], config.hydra.sweep.dir)
            failed = sweep_counts(Path(config.hydra.sweep.dir), token, "failed")
            if failed:
                log.error("failed: %s", ", ".join(sorted(failed)))
            sys.exit(1)


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
