"""DHCP lease files, polled: read again when they change (or once a minute), parsed off the event loop.

dnsmasq rewrites its lease file in place, ISC dhcpd and Kea append and then rotate by rename; a stat of
(inode, size, mtime) per file every few seconds sees all three, as the configuration watcher does, and
costs nothing. A file is read once a minute even when unchanged, so that expired leases drop out.
Reading and parsing run in a worker thread: the serving loop never waits on the disk. A file that is
missing or unreadable counts as empty (its names go away) and is logged once per change of state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from dnsguard.net.files import FileSignature, file_signature
from dnsguard.policy.leases import MAX_LEASE_FILE_SIZE, LeaseParse, parse_leases

log = logging.getLogger("dnsguard.leases")

REREAD_AFTER: Final = 60.0
"""Seconds after which an unchanged file is read again (expired leases leave the names)."""

OnLeases = Callable[[str, LeaseParse], None]


@dataclass(slots=True)
class LeaseFileState:
    """What the API shows about one lease file."""

    path: str
    signature: FileSignature = None
    read_at: float = 0.0
    leases: int = 0
    errors: int = 0
    format: str | None = None
    error: str | None = None
    """Why the file could not be read (None when it was)."""


def read_lease_file(path: str, now: float) -> LeaseParse:
    """Read at most MAX_LEASE_FILE_SIZE + 1 bytes (so that a larger file is told apart) and parse them."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_LEASE_FILE_SIZE + 1)
    return parse_leases(data, now)


class LeaseFiles:
    """Polls `paths` and hands each new parse to `on_leases(path, parse)` on the event loop."""

    def __init__(
        self,
        paths: Sequence[str],
        on_leases: OnLeases,
        interval: float = 5.0,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_leases = on_leases
        self.interval = interval
        self.wall = wall
        self.clock = clock
        self.files = {path: LeaseFileState(path) for path in dict.fromkeys(paths)}
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        """Read every file that changed (or was read more than REREAD_AFTER ago)."""
        for state in self.files.values():
            signature = file_signature(state.path)
            now = self.clock()
            if state.read_at and signature == state.signature and now - state.read_at < REREAD_AFTER:
                continue
            state.signature, state.read_at = signature, now
            try:
                parse = await asyncio.to_thread(read_lease_file, state.path, self.wall())
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if state.error != reason:
                    log.warning("lease file %s: %s; its names are not used", state.path, reason)
                state.error, state.leases, state.errors, state.format = reason, 0, 0, None
                self.on_leases(state.path, LeaseParse(None))
                continue
            if parse.errors and (state.error is not None or parse.errors != state.errors):
                log.info(
                    "lease file %s: %d entries not read, e.g. %s",
                    state.path,
                    parse.errors,
                    "; ".join(parse.examples),
                )
            state.error, state.leases, state.errors = None, len(parse.leases), parse.errors
            state.format = parse.format
            self.on_leases(state.path, parse)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in a callback must not end the names for good
                log.error("reading lease files failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(self.interval)

    def cancel(self) -> None:
        """Stop polling without waiting (a reload swapping in another set of files)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
