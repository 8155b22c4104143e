"""Records are validated when the tables read them, duplicates count once, every skip is named,
and every file regbench leaves (records, tables, plots) is written whole or not at all.

Before (tracker issue 17): 12 of 34 bad records entered the tables (a copied run folder counted
twice, test/acc 7.5 gave a mean of 2.339, Infinity gave inf, any schema was accepted), a record
behind a symlinked folder was dropped, a non-numeric history crashed the plots; 6 of 21 kills during
report writing left cut files; results.json was mode 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pandas as pd
import pytest

from regbench.records import RESULTS_FILE, write_record
from regbench.reporting import write_report
from regbench.reporting.synthetic import make_record, write_runs

A = [0.80, 0.82, 0.85, 0.79]


def good(seed, reg="none", acc=None):
    return make_record(seed=seed, acc=A[seed] if acc is None else acc, regularizer=reg)


@pytest.fixture
def sweep(tmp_path):
    """none and dropout, 4 seeds each: the population every bad record below is added to."""
    write_runs(tmp_path / "sweep", [good(s) for s in range(4)] + [good(s, "dropout", A[s] + 0.02) for s in range(4)])
    return tmp_path / "sweep"


def corrupt(**change):
    """A dropout record of a fifth seed (so it would change the row if counted), with `change` applied
    to its top level, or to metrics / history with keys 'metrics.x' / 'history.x'."""
    r = good(4, "dropout", 0.9)
    for key, value in change.items():
        where, _, sub = key.partition("__")
        if sub:
            r[where][sub.replace("_", "/")] = value
        else:
            r[where] = value
    return r


BAD = {
    "unknown schema": (corrupt(schema=99), "schema 99 is not a known version"),
    "no schema": (corrupt(schema=None), "schema None is not a known version"),
    "accuracy 7.5": (corrupt(metrics__test_acc=7.5), "metrics.test/acc=7.5 is out of range: an accuracy is in [0, 1]"),
    "infinite accuracy": (corrupt(metrics__test_acc=float("inf")), "metrics.test/acc=inf is not finite in an ok run"),
    "NaN loss in an ok run": (corrupt(metrics__test_loss=float("nan")), "metrics.test/loss=nan is not finite"),
    "negative loss": (corrupt(metrics__val_loss=-1.0), "metrics.val/loss=-1.0 is out of range: a loss is >= 0"),
    "accuracy as text": (corrupt(metrics__test_acc="0.9"), "metrics.test/acc='0.9' is not a number"),
    "metrics not a mapping": (corrupt(metrics=[0.9]), "metrics [0.9] is not a mapping"),
    "seed as text": (corrupt(seed="4"), "seed '4' is not a non-negative integer"),
    "fractional seed": (corrupt(seed=4.5), "seed 4.5 is not a non-negative integer"),
    "boolean seed": (corrupt(seed=True), "seed True is not a non-negative integer"),
    "no run id": (corrupt(run_id=None), "run_id None is not a name"),
    "non-numeric history": (corrupt(history__val_acc=["a", "b", "c", "d", "e"]), "history val/acc holds 'a': not a number"),
    "history of unequal lengths": (corrupt(history__train_loss=[1.0]), "history columns differ in length"),
    "history missing": (corrupt(history=None), "history lacks the lists"),
    "epochs as text": (corrupt(epochs_trained="5"), "epochs_trained '5' is not a non-negative integer"),
}


def dropout_row(report):
    return report.per_arm.set_index("regularizer").loc["dropout"]


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_record_is_skipped_and_named(name, sweep, tmp_path):
    record, why = BAD[name]
    target = sweep / "bad" / RESULTS_FILE
    target.parent.mkdir()
    target.write_text(json.dumps(record, allow_nan=True))
    rep = write_report([sweep], tmp_path / "out", plots="history" in name)  # the plots read the histories
    assert rep.n_runs == 8 and dropout_row(rep)["seeds_ok"] == 4  # the bad record is in no row
    assert dropout_row(rep)["test_acc_mean"] == pytest.approx(sum(A) / 4 + 0.02)
    md = (tmp_path / "out" / "per_arm.md").read_text()
    assert "8 runs read from 9 results.json files; 1 records skipped (in no row)" in md
    assert f"skipped {os.path.relpath(target, tmp_path / 'out')}: {why}" in md, md


def test_a_copied_run_folder_counts_once_and_is_named(sweep, tmp_path):
    original = next(p.parent for p in sweep.rglob(RESULTS_FILE) if json.loads(p.read_text())["seed"] == 0
                    and json.loads(p.read_text())["regularizer"] == "dropout")
    shutil.copytree(original, sweep / "zz-copy")
    rep = write_report([sweep], tmp_path / "out", plots=False)
    assert rep.n_runs == 8 and dropout_row(rep)["seeds_ok"] == 4
    pairwise = rep.pairwise.set_index("regularizer").loc["dropout"]
    assert pairwise["n_arm"] == 4 and pairwise["pairing"].startswith("paired on 4 ")
    md = (tmp_path / "out" / "per_arm.md").read_text()
    assert f"skipped {os.path.relpath(sweep / 'zz-copy' / RESULTS_FILE, tmp_path / 'out')}: same run id as" in md
    assert "counted once" in md


def test_a_record_behind_a_symlinked_folder_is_read(sweep, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_runs(elsewhere, [good(4, "none", 0.81)])
    (run,) = elsewhere.iterdir()
    os.symlink(run, sweep / "linked")
    os.symlink(sweep, sweep / "loop")  # a link loop ends
    rep = write_report([sweep], tmp_path / "out", plots=False)
    assert rep.n_runs == 9 and rep.per_arm.set_index("regularizer").loc["none", "seeds_ok"] == 5
    assert rep.skipped == []


def test_every_report_file_is_written_by_a_rename(sweep, tmp_path, monkeypatch):
    """Tables (md, csv, tex) and plots (png) all reach their name by os.replace of a finished temp file."""
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.abspath(dst)), real(src, dst))[1])
    out = tmp_path / "out"
    rep = write_report([sweep], out)
    written = sorted(str(p) for p in out.iterdir())
    assert {p.suffix for p in out.iterdir()} >= {".md", ".csv", ".tex", ".png"}
    assert written == sorted(set(renamed)) and sorted(map(str, rep.files)) == sorted(set(map(str, rep.files)))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_write_killed_midway_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "per_arm.md"
    target.write_text("the old table\n")
    code = ("import os, sys\nfrom regbench.atomic import write_atomic\n"
            "def half(f):\n    f.write(b'the new ta'); f.flush(); os.kill(os.getpid(), 9)\n"
            f"write_atomic({str(target)!r}, half)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert target.read_text() == "the old table\n"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_results_json_respects_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_record(tmp_path, good(0))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
