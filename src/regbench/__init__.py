"""regbench: a comparative experiment framework for neural-network regularization."""

import time

STARTED: float | None = time.perf_counter()  # the first regbench import: start-up is measured from here
