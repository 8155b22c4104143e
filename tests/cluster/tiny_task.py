"""The trivial task of the 200-job scale test in tests/test_cluster.py: it trains nothing, it
appends one line (its own index and SLURM's ids for it) to a shared file, and returns its index."""

import json
import os
import time


def append_line(path: str, task: int, sleep_s: float = 0.0) -> int:
    time.sleep(sleep_s)
    line = json.dumps({"task": task, "array_job": os.environ.get("SLURM_ARRAY_JOB_ID"),
                       "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # O_APPEND: lines never interleave
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return task
