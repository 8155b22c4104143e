"""Fetch a dataset file once into a cache folder, verified by checksum.

`fetch` returns the path of a verified file under `folder`. A file already there is checked
against its expected md5 and used; a missing one is downloaded from the first mirror that
answers into a temporary file beside the target, verified, then renamed into place, so a
concurrent run or an interrupted download never leaves a half-written file under the final
name. With no network the error says which URL failed, why, and where to put the file by hand.

The expected checksums are plain arguments (`md5=None` skips the check), so tests can verify
small files they write themselves; the loaders take a `checksums` override for the same reason.
`urlopen` is looked up on this module at call time, so tests replace it and never touch the network.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Mapping, Sequence
from urllib.request import urlopen

CHUNK = 1 << 20
TIMEOUT_S = 60


class DatasetFileError(RuntimeError):
    """A dataset file is missing, cannot be downloaded, or is corrupt."""


class DownloadError(DatasetFileError):
    """Every mirror failed (typically: no network)."""


class ChecksumError(DatasetFileError):
    """A file's md5 is not the expected one."""


class FileFormatError(DatasetFileError):
    """A file is truncated or not in the expected format."""


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, md5: str | None) -> None:
    """Raise `ChecksumError` naming `path` unless its md5 is `md5` (None: no check)."""
    if md5 is None:
        return
    got = md5_of(path)
    if got != md5.lower():
        raise ChecksumError(
            f"checksum mismatch for {path}: md5 {got}, expected {md5} ({path.stat().st_size} bytes; "
            f"a truncated or corrupt file?) -- delete it so that it is downloaded again, or replace it by hand"
        )


def merged_checksums(defaults: Mapping[str, str | None],
                     override: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """The official checksums with `override` (file name -> md5, or None to skip) applied on top."""
    out = dict(defaults)
    for k, v in (override or {}).items():
        if k not in defaults:
            raise ValueError(f"checksums given for unknown file {k!r}; known files: {sorted(defaults)}")
        out[k] = None if v is None else str(v)
    return out


def _download(url: str, tmp: Path) -> str:
    """Stream `url` into `tmp`; return the md5 of what was written."""
    h = hashlib.md5()
    # `urlopen` is a module global looked up at call time: tests monkeypatch it
    with urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
        for block in iter(lambda: response.read(CHUNK), b""):
            h.update(block)
            out.write(block)
    return h.hexdigest()


STALE_SECONDS = 600  # a temp file untouched this long belongs to a killed process (a download writes constantly)


def remove_stale(folder: Path, pattern: str, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the temp files matching `pattern` in `folder` that no live writer has touched for
    `older_than` seconds (by age, not pid: another host may share the folder). Returns them."""
    removed = []
    now = time.time()
    for p in folder.glob(pattern) if folder.is_dir() else []:
        try:
            if now - p.stat().st_mtime > older_than:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # another process removed it first
            pass
    return removed


def fetch(filename: str, folder: str | os.PathLike, mirrors: Sequence[str], md5: str | None, *,
          download: bool | None = True, all_files: Sequence[str] | None = None) -> Path:
    """Path of `folder/filename`, downloading it from `mirror + filename` if absent; always verified.

    `download=False` never touches the network (None counts as the default, True).

    `all_files` only improves the error message (the list of files a user has to put by hand).
    """
    folder = Path(folder)
    target = folder / filename
    remove_stale(folder, f".{filename}.*.part")  # what killed downloads left
    by_hand = f"put the files in {folder} by hand" + (f" ({', '.join(all_files)})" if all_files else "")
    if target.exists():
        verify(target, md5)
        return target
    if download is False:
        raise DatasetFileError(f"missing {target} and data.download=false; {by_hand}")
    folder.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    bad_checksum: list[str] = []
    for mirror in mirrors:
        url = mirror + filename
        tmp = folder / f".{filename}.{os.getpid()}.{uuid.uuid4().hex}.part"
        try:
            got = _download(url, tmp)
        except Exception as err:  # URLError, timeouts, connection resets, HTTP errors ...
            tmp.unlink(missing_ok=True)
            reason = getattr(err, "reason", None) or err
            failures.append(f"{url} ({type(err).__name__}: {reason})")
            continue
        if md5 is not None and got != md5.lower():
            size = tmp.stat().st_size
            tmp.unlink(missing_ok=True)
            bad_checksum.append(f"{url}: {size} bytes with md5 {got}, expected {md5}")
            continue
        os.replace(tmp, target)  # atomic within one file system: no reader sees a partial file
        return target
    if bad_checksum:
        raise ChecksumError(f"checksum mismatch for {filename} downloaded from "
                            f"{'; '.join(bad_checksum)} (truncated or corrupt download?); "
                            f"other mirrors: {'; '.join(failures) or 'none'}; {by_hand}")
    raise DownloadError(f"download failed: {'; '.join(failures)}; {by_hand}")
