"""A run folder's life: claimed by one process at a time, resumed or cleaned after an interruption."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from pathlib import Path

LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class RunLock:
    """An exclusive claim on a run folder (O_EXCL lock file holding host and pid).

    Two sweeps that share a runs root never train the same run at once: the second finds the claim
    and skips the run. A claim left by a killed process (same host, pid gone) is stale and taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self.held = False

    def acquire(self) -> bool:
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return True
        return False

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True  # unreadable or half-written: its writer died between create and write
        return host == socket.gethostname() and not _alive(int(pid))

    def owner(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return "?"

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def last_checkpoint(run_dir: Path) -> Path | None:
    p = run_dir / CHECKPOINT_DIR / "last.ckpt"
    return p if p.exists() else None


def clean_partial(run_dir: Path) -> None:
    """Remove what an interrupted attempt left (curves, logs, old checkpoints) before a fresh start,
    so TensorBoard does not show two attempts' curves mixed in one run."""
    for name in ("tb", CHECKPOINT_DIR, "traceback.txt"):
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
