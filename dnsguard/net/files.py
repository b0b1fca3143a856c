"""Files that readers see whole: written aside, synced, then renamed over the old one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

FileSignature = tuple[int, int, int] | None
"""(inode, size, mtime in ns) of a file, or None when it cannot be stat'ed: a changed signature means
the file was replaced or rewritten."""


def file_signature(path: str | Path) -> FileSignature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def atomic_write(path: Path, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `path` so that readers see the old file or the whole new one, never a part.

    The temporary file is hidden (a leading dot) beside `path`, so a directory scan skips it and a crash
    leaves it where a cleanup finds it (`.*.tmp`).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
