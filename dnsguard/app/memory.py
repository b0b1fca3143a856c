"""Process memory: freed heap pages go back to the system after a list build."""

from __future__ import annotations

import ctypes


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc; elsewhere a no-op); call after dropping parses."""
    # glibc keeps freed memory below the top of its heap mapped: the build's transient hundred-odd MB
    # (texts, name strings, float keys) would otherwise stay in the daemon's RSS after every (re)load.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return
    trim(0)
