"""Which reports are out of date: a fingerprint of what a report is computed from.

A report folder's fingerprint hashes the bytes of every results.json at or below it (with their
relative paths), the reporting code (regbench/reporting/*.py) and the options it is written with
(a study's analysis passes a digest of its own code among them). `make tables` (`--if-changed`)
rebuilds a report only when its fingerprint differs from the one stored in the folder's
`.report_stamp` when the report was last written: an unchanged tree rebuilds nothing, a new or
rerun record or an edit of the reporting code rebuilds the reports it touches. Content, not modification times, so a fresh checkout agrees with itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from regbench.records import RESULTS_FILE

STAMP_FILE = ".report_stamp"
_PACKAGE = Path(__file__).resolve().parents[1]


def _code_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((_PACKAGE / "reporting").glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def fingerprint(folder: Path, **options) -> str:
    folder = Path(folder)
    h = hashlib.sha256(_code_digest().encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        if RESULTS_FILE in filenames:
            p = Path(dirpath) / RESULTS_FILE
            h.update(str(p.relative_to(folder)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _read(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_current(folder: Path, key: str, fp: str) -> bool:
    """Whether the report `key` ("report", "study") of `folder` was written from exactly `fp`."""
    return _read(folder).get(key) == fp


def mark(folder: Path, key: str, fp: str) -> None:
    """Record that the report `key` of `folder` was just written from `fp` (atomically)."""
    folder = Path(folder)
    stamps = {**_read(folder), key: fp}
    tmp = folder / (STAMP_FILE + ".tmp")
    tmp.write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / STAMP_FILE)
