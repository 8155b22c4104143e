"""regbench: a comparative experiment framework for neural-network regularization."""

import time

STARTED = time.perf_counter()  # the first regbench import: start-up time is measured from here
