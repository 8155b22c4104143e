"""The sweep callback's clean-up of the joblib launcher's workers."""

import os

from joblib import Parallel, delayed
from joblib.externals.loky import reusable_executor

from regbench.sweep import _release_idle_workers


def test_idle_joblib_workers_are_ended_when_the_sweep_ends():
    pids = Parallel(n_jobs=2, backend="loky")(delayed(os.getpid)() for _ in range(4))
    executor = reusable_executor._executor
    workers = list(executor._processes.values())
    assert workers and {p.pid for p in workers} >= set(pids) - {os.getpid()}
    _release_idle_workers()
    for p in workers:
        p.join(timeout=10)
        assert not p.is_alive()
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
