"""Killing only a joblib sweep's parent process ends its workers and frees their run locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT
from regbench.rundir import RunLock


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_workers_end_when_the_sweep_process_is_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                             "seed=0,1", "trainer.max_epochs=100000", "trainer.progress_every=0",
                             f"runs_root={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 240
        while len(workers) < 2 and time.time() < deadline:  # both workers have claimed a run
            locks = list(tmp_path.rglob(".lock"))
            workers = [int(t.split()[-1]) for t in (p.read_text() for p in locks) if t.strip()]
            time.sleep(0.2)
        assert len(workers) == 2 and proc.pid not in workers, workers
        proc.kill()  # only the parent
        proc.wait()
        deadline = time.time() + 30
        while any(map(alive, workers)) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(map(alive, workers)), "joblib workers outlived the sweep's process"
        claimed = {p.parent for p in tmp_path.rglob(".lock")}  # left by the killed workers, unlocked
        assert len(claimed) == 2
        for run_dir in claimed:
            lock = RunLock(run_dir)
            assert lock.acquire(), f"{run_dir} is still locked"  # a rerun can take the runs over
            lock.release()
        assert not list(tmp_path.rglob("results.json"))  # no record for the unfinished runs
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
