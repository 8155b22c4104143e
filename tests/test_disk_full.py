"""A full disk is reported as such, naming the path, and leaves no partial record or lock."""

from __future__ import annotations

import os
import subprocess

import pytest

from test_bad_input import run_in_process


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and a kernel that lets it mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk, leave_kb: int) -> None:
    st = os.statvfs(disk)
    free_kb = st.f_bavail * st.f_frsize // 1024
    with open(disk / "fill", "wb") as f:
        f.write(b"\0" * max(0, free_kb - leave_kb) * 1024)


@pytest.mark.parametrize("leave_kb", [0, 8])
def test_a_full_disk_is_named_and_leaves_no_partial_record(small_disk, leave_kb, capsys):
    fill(small_disk, leave_kb)
    with pytest.raises(SystemExit) as exited:
        run_in_process([f"runs_root={small_disk / 'runs'}", "trainer.max_epochs=3", "trainer.progress_every=0"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"regbench: no space left on device: {small_disk / 'runs'}" in err, err[-2000:]
    assert not list(small_disk.rglob("results.json")) and not list(small_disk.rglob(".results.json.*"))
    assert not list(small_disk.rglob(".lock"))
