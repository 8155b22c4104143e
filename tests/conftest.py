"""Shared test helpers: compose the real config, run the real command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """One dataset cache for the whole session (MNIST-1D generation takes ~2 s)."""
    path = os.environ.get("REGBENCH_DATA") or str(tmp_path_factory.mktemp("data"))
    os.environ["REGBENCH_DATA"] = path
    return Path(path)


def compose(overrides: list[str] | None = None):
    """The config `python run.py OVERRIDES` would get (without the hydra node)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from regbench.naming import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [])


def cli(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` as a user would."""
    return python(str(ROOT / "run.py"), *args, cwd=cwd, timeout=timeout, env=env)


def python(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` (e.g. `-m regbench.tables DIR`)."""
    cmd = [sys.executable, *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def raising(*seeds: int) -> dict[str, str]:
    """Environment for `cli(..., env=...)` in which training raises for `seeds` (tests/faults/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(ROOT / "tests" / "faults"), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "REGBENCH_TEST_RAISE_SEEDS": ",".join(map(str, seeds))}


def tiny(*extra: str) -> list[str]:
    """Overrides for a run of a few seconds: 3 epochs, quiet."""
    return ["trainer.max_epochs=3", "trainer.progress_every=0", *extra]


def pytest_terminal_summary(terminalreporter):
    """Say so when the cluster tests were left out (make test), and whether a cluster is at hand."""
    if "not cluster" not in (terminalreporter.config.getoption("markexpr") or ""):
        return
    left_out = [i for i in terminalreporter.stats.get("deselected", []) if i.get_closest_marker("cluster")]
    if left_out:
        where = ("`sinfo` found: run them with `make test-cluster`" if shutil.which("sinfo") else
                 "no `sinfo` found: start a local cluster as root with `scripts/slurm-local.sh start`, "
                 "then `make test-cluster`")
        terminalreporter.write_line(f"{len(left_out)} cluster tests not run ({where})")
