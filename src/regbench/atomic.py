"""Write a file so that a reader (or a kill) never sees half of it: a temp file beside it, then a rename.

Every file regbench leaves for people to read (results.json, tables, plots) goes through
`write_atomic`: a kill at any moment leaves either the old file or the new one, never a cut or
empty one, and at most a hidden `.NAME.*.tmp` that the next write does not depend on. The temp
file is created with mode 0666 minus the umask (0644 by default), like any file, so collaborators
on a shared filesystem can read it (tempfile.mkstemp would make it 0600).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Callable, Union

Content = Union[str, bytes, Callable[[IO[bytes]], None]]


def write_atomic(path: str | os.PathLike, content: Content) -> Path:
    """Write `content` (text, bytes, or a function writing to a binary file object) to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
