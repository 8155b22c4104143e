"""A run folder's life: claimed by one process at a time, resumed or cleaned after an interruption."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path

LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"


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
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
                self.fd = fd
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


def clean_partial(run_dir: Path) -> None:
    """Remove what an interrupted attempt left (curves, log, old checkpoints) before a fresh start,
    so TensorBoard does not show two attempts' curves mixed in one run."""
    partial = [run_dir / n for n in ("tb", "csv", CHECKPOINT_DIR, "traceback.txt", "run.log", "hparams.yaml",
                                     "best.ckpt", "best.ckpt.tmp")]
    for p in partial + sorted(run_dir.glob("events.out.tfevents.*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
