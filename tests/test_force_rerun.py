"""A killed force=true rerun leaves the finished run whole; a completed one swaps its files in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, compose
from regbench.app import _run_locked
from regbench.config import validate
from regbench.naming import run_id

ARGS = ["data.train_size=500", "trainer.max_epochs=300", "trainer.progress_every=0"]  # ~1 s to train


def snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and ".attempt" not in p.parts and p.name != ".lock"}


def test_a_killed_force_rerun_keeps_the_finished_run(tmp_path):
    cfg = compose([*ARGS, f"runs_root={tmp_path}"])
    run_dir = tmp_path / "default" / run_id(cfg)
    run_dir.mkdir(parents=True)
    assert _run_locked(cfg, validate(cfg), run_dir) == "ok"
    before = snapshot(run_dir)
    assert {"results.json", "run.log"} <= set(before) and any(k.startswith("events.out.tfevents") for k in before)

    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *ARGS, f"runs_root={tmp_path}", "force=true"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    old_events = set(run_dir.rglob("events.out.tfevents.*"))
    deadline = time.time() + 120
    while not set(run_dir.rglob("events.out.tfevents.*")) - old_events and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-rerun: its curves and log exist, its record does not
    proc.wait()
    assert set(run_dir.rglob("events.out.tfevents.*")) - old_events, "the rerun never started"
    assert snapshot(run_dir) == before  # the finished run's record, curves and log are untouched

    rerun = compose([*ARGS, f"runs_root={tmp_path}", "force=true"])
    assert _run_locked(rerun, validate(rerun), run_dir) == "ok"
    after = snapshot(run_dir)
    assert not (run_dir / ".attempt").exists()
    assert after["run.log"] != before["run.log"]  # the completed rerun's files are in place
    assert sorted(k for k in after if k.startswith("events.out.tfevents")) != sorted(k for k in before if k.startswith("events.out.tfevents"))
