"""The sweep callback's clean-up of the joblib launcher's workers."""

import os

from joblib import Parallel, delayed
from joblib.externals.loky import reusable_executor

from regbench.sweep import _release_idle_workers


def test_idle_joblib_workers_are_ended_when_the_sweep_ends():
    pids = Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in range(4))
    executor = reusable_executor._executor
    workers = list(executor._processes.values())
    manager = executor._executor_manager_thread
    assert workers and {p.pid for p in workers} >= set(pids) - {os.getpid()}
    _release_idle_workers()
    # loky's manager thread kills and reaps the workers. Not p.join() / p.is_alive() here: a second
    # thread waiting on the same child races it, and multiprocessing reports a child that the other
    # thread reaped first as alive (waitpid fails with ECHILD and poll() returns None): on a loaded
    # machine this test failed that way. Wait for the reaper instead, then read what it recorded.
    manager.join(timeout=30)
    assert not manager.is_alive()
    for p in workers:
        assert p.exitcode is not None  # reaped: the worker is gone
        assert not os.path.exists(f"/proc/{p.pid}")
    # joblib starts a fresh executor for the next sweep in the same process
    assert sorted(Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(3))) == [0, 1, 2]


def test_nothing_to_release_without_joblib(monkeypatch):
    """Another launcher: loky never imported (it is not imported here either), or imported but idle."""
    import sys

    monkeypatch.delitem(sys.modules, "joblib.externals.loky.reusable_executor")
    _release_idle_workers()
    assert "joblib.externals.loky.reusable_executor" not in sys.modules
    monkeypatch.undo()
    monkeypatch.setattr(reusable_executor, "_executor", None)
    _release_idle_workers()  # no executor: returns without starting one
    assert reusable_executor._executor is None
