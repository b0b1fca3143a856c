"""Stopping an event loop's reading of a file descriptor, on asyncio's loop and uvloop's alike."""

from __future__ import annotations

import asyncio
from typing import Any


def stop_reading(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """loop.remove_reader(fd), its answer not read.

    asyncio's loop answers a bool and uvloop's None, and a compiled build (dnsguard/native.py) checks
    the answer of a call typed bool: the reader would be gone and the caller stopped halfway by a
    TypeError (a paused TUN never marked paused). The compiled data paths (the tunnel's shell, the DNS
    listeners) call this instead, which reads no answer.
    """
    untyped: Any = loop
    untyped.remove_reader(fd)
