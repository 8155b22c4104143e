"""The command line as users drive it: sweeps, reruns, failures, divergence, kills, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli, python, raising, tiny


def records(root: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("results.json")}


def arms_in(per_arm_md: str) -> set[str]:
    """The arms of the mnist1d/mlp rows of a per-arm Markdown table (the best one carries a star)."""
    rows = [ln.split(" | ") for ln in per_arm_md.splitlines() if ln.startswith("| mnist1d/mlp [")]
    return {r[1].replace(" ★", "") for r in rows}


def test_the_readme_sweep_without_none_prints_a_pairwise_verdict(tmp_path):
    """README: `python run.py -m regularizer=dropout,early_stop seed=0,1,2` has no `none` arm; the
    report compares the pair (Holm over the setting's pairs) and the sweep's log says the outcome."""
    r = cli("-m", "regularizer=dropout,early_stop", "seed=0,1,2", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    pairwise = (tmp_path / "default" / "pairwise.md").read_text()
    assert "early_stop − dropout (paired on 3 shared seeds)" in pairwise
    line = next(ln for ln in r.stderr.splitlines() if "mnist1d/mlp: early_stop − dropout test/acc" in ln)
    assert line.rstrip().endswith(("better", "worse", "equivalent", "inconclusive")), line
    assert "no 'none' arm, so every pair of its arms is compared" in pairwise


def test_sweep_writes_one_record_per_run_a_report_and_reruns_nothing(tmp_path):
    args = ["-m", "regularizer=none,dropout", "seed=0,1", *tiny(), f"runs_root={tmp_path}"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path)
    assert len(recs) == 4
    assert {(x["regularizer"], x["seed"]) for x in recs.values()} == {("none", 0), ("none", 1), ("dropout", 0), ("dropout", 1)}
    assert all(x["status"] == "ok" and x["epochs_trained"] == 3 for x in recs.values())
    # run folders are named from the config, not the clock
    assert any(name.startswith("mnist1d-mlp-dropout-p0.5-s1-") for name in recs)
    sweep = tmp_path / "default"
    table = (sweep / "per_arm.md").read_text()
    assert arms_in(table) == {"none", "dropout"}
    assert "sweep finished: 4 runs: 4 ok" in r.stderr
    # progress after every job: k/N, the counts so far, elapsed and an ETA
    for k in range(1, 5):
        assert f"sweep progress: {k}/4 runs done ({k} ok), elapsed " in r.stderr
    assert r.stderr.count(", ETA ") >= 4
    # Lightning's per-run noise is silenced at its source (the srun hint shows where an srun binary exists)
    for noise in ("litlogger", "`srun` command is available", "LeafSpec", "weights_only"):
        assert noise not in r.stderr, noise
    # TensorBoard: curves and an hparams summary with real final metrics, in every run folder
    for name in recs:
        assert list((sweep / name).glob("events.out.tfevents.*"))  # in the run folder: TensorBoard's run name

    again = cli(*args)
    assert again.returncode == 0
    assert "sweep finished: 4 runs: 4 skipped (already ok)" in again.stderr
    assert records(tmp_path) == recs  # nothing rewritten

    # the sweep left the whole report; `make tables` (--each) regenerates it byte for byte
    report = {name: (sweep / name).read_bytes() for name in
              [f"{t}.{ext}" for t in ("per_arm", "pairwise") for ext in ("md", "csv", "tex")]
              + ["curves.png", "intervals.png", "gap.png"]}
    regen = python("-m", "regbench.tables", "--each", str(tmp_path))
    assert regen.returncode == 0, regen.stderr
    assert {name: (sweep / name).read_bytes() for name in report} == report

    out = tmp_path / "tables"
    t = python("-m", "regbench.tables", str(sweep), "--out", str(out))
    assert t.returncode == 0, t.stderr
    assert (out / "comparison.md").read_text() == (sweep / "comparison.md").read_text()
    assert "dropout" in arms_in(t.stdout)


def test_a_diverging_and_a_failing_run_do_not_stop_their_siblings(tmp_path):
    # lr 1e6 diverges; seed 1 raises inside the run (injected: bad input is refused before a run starts); the
    # lr 0.05 run on 1000 examples learns (train/acc ~0.26 after 3 epochs: on 100 examples it stayed at chance
    # and is collapsed)
    # separate runs (hydra/launcher=basic): stacked, an error inside the population fails all of its runs
    r = cli("-m", "hydra/launcher=basic", "optim=sgd", "optim.lr=0.05,1e6", "seed=0,1", "data.train_size=1000",
            *tiny(), f"runs_root={tmp_path}", env=raising(1))
    assert r.returncode == 1, "a sweep in which a run failed must exit non-zero"
    recs = records(tmp_path)
    assert len(recs) == 4
    status = {(x["config"]["optim"]["lr"], x["seed"]): x for x in recs.values()}
    assert status[(0.05, 0)]["status"] == "ok"
    diverged = status[(1e6, 0)]
    assert diverged["status"] == "diverged" and diverged["epochs_trained"] == diverged["diverged_epoch"] + 1
    for lr in (0.05, 1e6):
        failed = status[(lr, 1)]
        assert failed["status"] == "failed" and "injected failure" in failed["error"]
        run_dir = next(p.parent for p in tmp_path.rglob("results.json") if json.loads(p.read_text()) == failed)
        assert "Traceback" in (run_dir / "traceback.txt").read_text()
    assert "1 ok, 1 diverged, 2 failed" in r.stderr
    import pandas as pd

    per_arm = pd.read_csv(tmp_path / "default" / "per_arm.csv")
    assert (per_arm["seeds_ok"].sum(), per_arm["seeds_diverged"].sum(), per_arm["seeds_failed"].sum()) == (1, 1, 2)


def test_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path):
    # separate runs (hydra/launcher=basic): a population writes its records together, when it ends
    args = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=basic", "seed=0,1,2", "trainer.max_epochs=60",
            "trainer.progress_every=0", f"runs_root={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ})
    deadline = time.time() + 120
    while not list(tmp_path.rglob("results.json")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # now inside the second run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = records(tmp_path)
    assert 1 <= len(done) < 3 and all(x["status"] == "ok" for x in done.values())
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written record

    r = cli(*args[2:])
    assert r.returncode == 0, r.stderr[-3000:]
    after = records(tmp_path)
    assert sorted(x["seed"] for x in after.values()) == [0, 1, 2]
    assert f"{len(done)} skipped (already ok)" in r.stderr
    for name, rec in done.items():
        assert after[name] == rec  # finished runs were not redone
    assert not list(tmp_path.rglob(".lock"))


def test_two_concurrent_sweeps_into_one_root_give_all_their_runs(tmp_path):
    # separate runs (hydra/launcher=basic), each logging `<run>: ok test/acc`; stacked sweeps that
    # overlap: test_stacking_launcher.py
    common = [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=basic", *tiny(), f"runs_root={tmp_path}"]
    a = subprocess.Popen([*common, "seed=0,1,2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = subprocess.Popen([*common, "seed=2,3,4"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (_, ea), (_, eb) = a.communicate(timeout=300), b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, ea[-2000:] + eb[-2000:]
    recs = records(tmp_path)
    seeds = sorted(x["seed"] for x in recs.values())
    assert seeds == [0, 1, 2, 3, 4]
    trained = [line.split("]")[-1].split(":")[0].strip() for line in (ea + eb).splitlines() if "ok test/acc" in line]
    assert sorted(trained) == sorted(recs)  # each run trained exactly once, seed 2 by whichever sweep claimed it
    assert all(x["status"] == "ok" for x in recs.values())


def test_bad_values_for_ten_keys_through_the_command_line(tmp_path):
    """Each bad value: exit 2, a message naming key, value and allowed range, nothing written."""
    from concurrent.futures import ThreadPoolExecutor

    from test_config import BAD

    cases = [c for c in BAD if "weight_decay" not in c[0]][:12]
    assert len({c[0].split()[-1].split("=")[0] for c in cases}) >= 10  # ten distinct keys
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: cli(*c[0].split(), f"runs_root={tmp_path}"), cases))
    for (overrides, message), r in zip(cases, results):
        assert r.returncode == 2, (overrides, r.stderr[-2000:])
        assert message in r.stderr, (overrides, r.stderr[-2000:])
    assert not list(tmp_path.rglob("*"))  # no run folder, no file


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_one(tmp_path):
    args = ["seed=3", "regularizer=dropout", "trainer.max_epochs=40", "trainer.checkpoint_every=5",
            "trainer.progress_every=0"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"runs_root={killed}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list(killed.rglob("last.ckpt")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(killed.rglob("last.ckpt")) and not list(killed.rglob("results.json"))
    # what the killed process may have logged after its checkpoint, made certain: the next epoch, with a
    # value no run produces (whether it really got that far and flushed depends on timing)
    import torch
    from torch.utils.tensorboard import SummaryWriter

    (ckpt,) = killed.rglob("last.ckpt")
    with SummaryWriter(str(ckpt.parent.parent)) as writer:  # the run folder holds the events
        writer.add_scalar("val/acc", -1.0, torch.load(ckpt, weights_only=True)["epoch"] + 1)

    r = cli(*args, f"runs_root={killed}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr
    assert "weights_only" not in r.stderr  # saving and loading a resumable checkpoint print no note
    whole = cli(*args, f"runs_root={tmp_path / 'whole'}")
    assert whole.returncode == 0
    (resumed,), (uninterrupted,) = records(killed).values(), records(tmp_path / "whole").values()
    assert resumed["extra"]["resumed"] and not uninterrupted["extra"]["resumed"]
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert not list(killed.rglob("last.ckpt"))  # removed once the record is written
    # TensorBoard shows every epoch once, with the values of the uninterrupted run: the epochs the killed
    # process logged after its checkpoint are purged (without purge_step, an epoch it logged just before
    # the kill appeared twice), the ones before it were flushed when the checkpoint was saved
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (killed, tmp_path / "whole"):
        tb = EventAccumulator(str(next(run.rglob("results.json")).parent)).Reload()
        scalars = tb.Scalars("val/acc")
        assert [e.step for e in scalars] == list(range(40)), run
        assert [e.value for e in scalars] == pytest.approx(uninterrupted["history"]["val/acc"], abs=1e-6)


def test_replicas_write_one_ordinary_record_per_seed_and_pool_with_separate_runs(tmp_path):
    r = cli("replicas=3", "regularizer=dropout", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = records(tmp_path)
    assert sorted(x["seed"] for x in recs.values()) == [0, 1, 2]
    assert all(x["status"] == "ok" and x["extra"]["engine"] == "population" for x in recs.values())
    assert len({x["metrics"]["test/acc"] for x in recs.values()}) > 1  # each replica its own seed
    separate = cli("seed=0", "regularizer=dropout", *tiny(), f"runs_root={tmp_path}")
    assert separate.returncode == 0
    both = records(tmp_path)
    assert len(both) == 4  # the separate run of seed 0 has its own folder
    assert len({x["group_hash"] for x in both.values()}) == 1  # ... and pools with the stacked ones
    again = cli("replicas=3", "regularizer=dropout", *tiny(), f"runs_root={tmp_path}")
    assert "all 3 records say ok" in again.stderr

    stacked = cli("replicas=2", "model=cnn1d", "regularizer=spatial_dropout", *tiny(), f"runs_root={tmp_path / 'cnn'}")
    assert stacked.returncode == 0 and "2 replicas in one population" in stacked.stderr  # every arm stacks
    recs = records(tmp_path / "cnn").values()
    assert sorted(x["seed"] for x in recs) == [0, 1] and all(x["extra"]["engine"] == "population" for x in recs)
    fallback = cli("replicas=2", "trainer.checkpoint_every=1", *tiny(), f"runs_root={tmp_path / 'ckpt'}")
    assert fallback.returncode == 0
    assert "training separately: trainer.checkpoint_every > 0" in fallback.stderr
    recs = records(tmp_path / "ckpt").values()
    assert sorted(x["seed"] for x in recs) == [0, 1] and all("engine" not in x["extra"] for x in recs)


def test_a_sweep_with_one_invalid_value_runs_the_rest_and_exits_non_zero(tmp_path):
    r = cli("-m", "regularizer=dropout", "regularizer.dropout.p=0.5,1.5", *tiny(), f"runs_root={tmp_path}")
    assert r.returncode == 1
    assert "regularizer.dropout.p=1.5 is out of range: allowed [0, 1)" in r.stderr
    assert "1 ok, 1 rejected (invalid config)" in r.stderr
    recs = records(tmp_path)
    assert [x["config"]["regularizer"]["dropout"]["p"] for x in recs.values()] == [0.5]
    assert not [p for p in (tmp_path / "default").iterdir() if "p1.5" in p.name]


def test_sigterm_mid_run_exits_non_zero_and_writes_no_record(tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "trainer.max_epochs=400", "trainer.progress_every=0",
                             f"runs_root={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not list(tmp_path.rglob("events.out.tfevents.*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err[-2000:]
    assert not list(tmp_path.rglob("results.json"))


def test_a_failing_replica_group_records_each_seed_as_failed(tmp_path):
    r = cli("-m", "replicas=2", *tiny(), f"runs_root={tmp_path}", env=raising(0))
    assert r.returncode == 1
    recs = records(tmp_path)
    assert sorted(x["seed"] for x in recs.values()) == [0, 1]
    assert all(x["status"] == "failed" and "injected failure" in x["error"] for x in recs.values())
    assert "2 failed" in r.stderr or "1 failed" in r.stderr
