"""Reload on file change: the configuration file and every local list file, polled.

Polling (stat every few seconds) rather than inotify: it needs nothing beyond the standard library, it
sees files replaced by rename (editors, `install`, configuration management) as well as rewritten in
place, and a few stats per interval cost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from dnsguard.app.lists import is_inline, is_url
from dnsguard.config import Config
from dnsguard.net.files import FileSignature, file_signature

log = logging.getLogger("dnsguard.watch")

"""(inode, size, mtime in ns) of a file, None while it does not exist."""

SETTLE = 0.3
"""A changed file must look the same this long before the reload: editors and copies write in steps."""


def watched_files(config_path: str, config: Config) -> list[Path]:
    """The configuration file and the local list sources it names."""
    files = [Path(config_path).resolve()]
    base = Path(config.base_dir)
    for list_config in config.lists.values():
        for source in list_config.sources:
            if not is_url(source) and not is_inline(source):
                files.append((base / source).resolve())
    return list(dict.fromkeys(files))


class FileWatcher:
    """Calls `on_change(paths)` once per settled burst of changes to the files `files()` names."""

    def __init__(
        self,
        files: Callable[[], list[Path]],
        on_change: Callable[[list[str]], Awaitable[object]],
        interval: float = 2.0,
    ) -> None:
        self.files = files
        self.on_change = on_change
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[Path, FileSignature] = {}

    def snapshot(self) -> dict[Path, FileSignature]:
        return {path: file_signature(path) for path in self.files()}

    def start(self) -> None:
        self._seen = self.snapshot()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def check(self) -> list[str]:
        """Compare the files with what was seen last; wait for a change to settle; report it once."""
        current = self.snapshot()
        changed = [str(path) for path, sig in current.items() if self._seen.get(path, sig) != sig]
        if not changed:
            self._seen = current
            return []
        while True:
            await asyncio.sleep(SETTLE)
            settled = self.snapshot()
            if settled == current:
                break
            current = settled
        self._seen = current
        return changed

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                changed = await self.check()
                if changed:
                    await self.on_change(changed)
                    # The reload may have named other list files: watch those from now on.
                    self._seen = {path: self._seen.get(path, file_signature(path)) for path in self.files()}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Reloads report their own failures; this is the watch itself (a stat, a callback bug).
                log.error(
                    "file watch failed (%s: %s); trying again in %.0f s",
                    type(exc).__name__,
                    exc,
                    self.interval,
                )
