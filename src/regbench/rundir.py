"""A run folder's life: claimed by one process at a time, resumed or cleaned after an interruption."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
REFUSED_DIR = "refused"        # checkpoints that were not resumed from, kept as evidence
OWNER_KEY = "regbench_owner"   # in a checkpoint: {"run_id", "config_hash"} of the run that wrote it

log = logging.getLogger("regbench")


class RunLock:
    """An exclusive claim on a run folder: `fcntl.flock` on `.lock`, which holds host and pid.

    Two sweeps that share a runs root never train the same run at once: the second finds the claim
    and skips the run. The kernel drops the claim when its process dies, even by SIGKILL, so there is
    no stale lock to detect. After locking, the file must still be the one at `.lock` (a releaser
    may have unlinked the inode we locked); if not, the claim is retried on the new file.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> bool:
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                self.fd = fd  # held: release() unlinks it, also when writing the owner fails (a full disk)
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
                return True
            os.close(fd)

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a waiter then re-checks the inode
            os.close(self.fd)
            self.fd = None


def last_checkpoint(run_dir: Path) -> Path | None:
    p = run_dir / CHECKPOINT_DIR / "last.ckpt"
    return p if p.exists() else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, unpickled with `weights_only=True`: tensors and plain types only, so a
    planted file cannot run code (torch refuses any other object before creating it)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_problem(path: Path, owner: dict[str, str]) -> str | None:
    """Why the checkpoint at `path` must not be resumed from by the run `owner`, or None if it may:
    unreadable (truncated, not a checkpoint, or holding objects other than tensors and plain types),
    or written by another run (its run id or config hash differ)."""
    try:
        ckpt = load_checkpoint(path)
        found = ckpt.get(OWNER_KEY) if isinstance(ckpt, dict) else None
        int(ckpt["epoch"])
    except Exception as e:  # any failure to read it is a reason to start fresh, never to crash
        return f"it cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    if found != owner:
        return f"it belongs to another run ({found!r}, expected {owner!r})"
    return None


def resumable_checkpoint(run_dir: Path, owner: dict[str, str]) -> Path | None:
    """The run's checkpoint if it is safe to resume from; a foreign or corrupt one is moved aside to
    `<run>/refused/` with a warning naming it, and None is returned: the run starts fresh."""
    path = last_checkpoint(run_dir)
    if path is None:
        return None
    problem = checkpoint_problem(path, owner)
    if problem is None:
        return path
    aside = run_dir / REFUSED_DIR / f"last-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.ckpt"
    aside.parent.mkdir(exist_ok=True)
    os.replace(path, aside)
    log.warning("not resuming from %s: %s; moved it to %s and starting the run fresh", path, problem, aside)
    return None


ATTEMPT_DIR = ".attempt"       # where a force=true rerun of a finished run writes until its record exists
PARTIAL = ("tb", "csv", CHECKPOINT_DIR, "traceback.txt", "run.log", "hparams.yaml", "best.ckpt", "best.ckpt.tmp")
EVENTS = "events.out.tfevents.*"  # TensorBoard's files, in the run folder itself


def attempt_dir(run_dir: Path) -> Path:
    """A fresh `<run>/.attempt/<run id>/` for a rerun of a finished run (named like the run, so its
    log lines and curves carry the run id); what a killed earlier attempt left there is removed."""
    drop_attempt(run_dir)
    work = run_dir / ATTEMPT_DIR / run_dir.name
    work.mkdir(parents=True)
    return work


def drop_attempt(run_dir: Path) -> None:
    shutil.rmtree(run_dir / ATTEMPT_DIR, ignore_errors=True)


def swap_in_attempt(work: Path, run_dir: Path) -> None:
    """Replace the run's curves, log and traceback by the attempt's (once its record is written)."""
    if work == run_dir:
        return
    clean_partial(run_dir)
    for new in [work / n for n in PARTIAL] + sorted(work.glob(EVENTS)):
        if new.exists():
            os.replace(new, run_dir / new.name)
    drop_attempt(run_dir)


def clean_partial(run_dir: Path) -> None:
    """Remove what an interrupted attempt left (curves, log, old checkpoints) before a fresh start,
    so TensorBoard does not show two attempts' curves mixed in one run."""
    for p in [run_dir / n for n in PARTIAL] + sorted(run_dir.glob(EVENTS)):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
