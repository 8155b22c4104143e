"""A joblib worker ends when the sweep's process dies, instead of training on as an orphan.

Killing only the joblib parent (SIGKILL, OOM killer, a lost ssh session) used to leave its loky
workers training (about 500 MB each) and holding their run locks, so an immediate rerun reported
their runs as "running elsewhere". A daemon thread in each worker polls its parent pid; once the
parent is gone (the worker was re-parented), the worker exits at once: the kernel drops its
`flock` run locks, and no record is written for the unfinished run (records are written whole, at
the end). Not `prctl(PR_SET_PDEATHSIG)`: it fires when the *thread* that spawned the worker ends,
and loky spawns workers from a helper thread; polling `getppid` is portable too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

log = logging.getLogger("regbench")
POLL_SECONDS = 0.5
_watching: int | None = None  # the parent pid being watched, once started


def in_joblib_worker() -> bool:
    """True in a loky worker process (loky sets its nesting depth there; 0 in the parent)."""
    executor = sys.modules.get("joblib.externals.loky.process_executor")
    return getattr(executor, "_CURRENT_DEPTH", 0) > 0


def exit_with_parent(poll_seconds: float = POLL_SECONDS) -> bool:
    """In a joblib worker, start (once) the thread that ends this process when its parent dies.
    Returns whether a watch is running."""
    global _watching
    if _watching is not None:
        return True
    if not in_joblib_worker():
        return False
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        log.error("the sweep's process %d is gone: ending joblib worker %d (its unfinished run writes no record)",
                  parent, os.getpid())
        logging.shutdown()
        os._exit(1)  # the kernel releases the run locks

    threading.Thread(target=watch, name="regbench-parent-watchdog", daemon=True).start()
    _watching = parent
    return True
