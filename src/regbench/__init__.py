"""regbench: a comparative experiment framework for neural-network regularization."""

import time

_STARTED: float | None = time.perf_counter()  # the first regbench import: start-up is measured from here


def startup_seconds() -> float:
    """Seconds from regbench's first import to now (Hydra compose, torch and Lightning imports), the
    first time it is asked in a process; 0 afterwards (later runs of a sweep pay no imports)."""
    global _STARTED
    elapsed = time.perf_counter() - _STARTED if _STARTED is not None else 0.0
    _STARTED = None
    return elapsed
