"""The Makefile's user targets do what they say: `make run` prints the table of the sweep it ran,
`make tables` rebuilds only the reports whose records changed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, python
from regbench.reporting.synthetic import make_record, write_runs


def make_dry(*args: str) -> list[str]:
    """The commands `make ARGS` would run (make -n: nothing runs)."""
    r = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_make_run_prints_the_table_of_the_sweep_it_ran():
    assert make_dry("run")[-1].endswith("-m regbench.tables runs/default")
    assert make_dry("run", "SWEEP=seed=0,1 name=mk")[-1].endswith("-m regbench.tables runs/mk")
    lines = make_dry("run", "SWEEP=name=mk runs_root=/tmp/elsewhere seed=0")
    assert lines[-2].endswith("run.py -m hydra/launcher=joblib name=mk runs_root=/tmp/elsewhere seed=0")
    assert lines[-1].endswith("-m regbench.tables /tmp/elsewhere/mk")


def test_make_tables_asks_for_changed_reports_only_unless_forced():
    assert any("regbench.tables --each --if-changed runs experiments" in line for line in make_dry("tables"))
    assert any("regbench.tables --each  runs experiments" in line for line in make_dry("tables", "FORCE=1"))


def _tree(root):
    write_runs(root / "a", [make_record(seed=s, acc=0.8 + 0.01 * s) for s in range(3)])
    write_runs(root / "b", [make_record(seed=s, acc=0.7 + 0.01 * s, regularizer="dropout") for s in range(3)])


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "results.json" not in p.name}


def test_tables_if_changed_rebuilds_only_the_reports_whose_records_changed(tmp_path):
    _tree(tmp_path)
    first = python("-m", "regbench.tables", "--each", "--if-changed", "--no-plots", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "2 report(s) rebuilt, 0 unchanged" in first.stderr
    before = _mtimes(tmp_path)

    again = python("-m", "regbench.tables", "--each", "--if-changed", "--no-plots", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "0 report(s) rebuilt, 2 unchanged" in again.stderr
    assert _mtimes(tmp_path) == before  # nothing rewritten

    # one new record in b: only b's report is rebuilt, and the command says so
    write_runs(tmp_path / "b", [make_record(seed=7, acc=0.75, regularizer="dropout")])
    third = python("-m", "regbench.tables", "--each", "--if-changed", "--no-plots", str(tmp_path))
    assert f"{tmp_path / 'b'}: rebuilt: report of 4 runs" in third.stdout
    assert f"{tmp_path / 'a'}: unchanged" in third.stdout
    after = _mtimes(tmp_path)
    assert all(after[p] == t for p, t in before.items() if p.parent == tmp_path / "a")
    assert after[tmp_path / "b" / "per_arm.md"] != before[tmp_path / "b" / "per_arm.md"]


@pytest.mark.slow
def test_make_run_with_a_name_prints_that_sweeps_table(tmp_path):
    """The real target, end to end (~40 s): STAMP=Makefile skips the set-up, PY is this interpreter."""
    sweep = f"SWEEP=trainer.max_epochs=2 trainer.progress_every=0 seed=0 name=mk runs_root={tmp_path} hydra.launcher.n_jobs=1"
    r = subprocess.run(["make", "--no-print-directory", "run", f"PY={sys.executable}", "STAMP=Makefile", sweep],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| mnist1d | mlp | none |" in r.stdout
    assert (tmp_path / "mk" / "per_arm.md").read_text().strip() in r.stdout
