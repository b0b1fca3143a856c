"""Blocklist sources from URLs: on-disk cache, conditional requests, and the last good copy kept.

A download replaces the cached copy only when it is complete and plausible: HTTP 200, within
the size limit, not empty, and not much shorter than the copy it replaces (a truncated transfer
or a list host serving an error page would otherwise wipe out a list). Everything else leaves
the last good copy in place and says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from dnsguard.errors import ProtocolError
from dnsguard.net.files import atomic_write

ProgressCallback = Callable[[str, int, int | None], None]
"""(url, bytes received, total bytes or None)"""


@dataclass
class CacheMeta:
    url: str
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: float = 0.0
    checked_at: float = 0.0
    size: int = 0
    lines: int = 0


@dataclass(frozen=True, slots=True)
class FetchResult:
    """What a fetch produced: where the usable copy is and how it was obtained."""

    url: str
    path: Path | None
    status: str
    """'downloaded', 'not-modified', 'cached' (download failed, last good copy used) or 'failed'."""
    error: str | None = None
    size: int = 0

    @property
    def usable(self) -> bool:
        return self.path is not None


def _count_rule_lines(data: bytes) -> int:
    return sum(1 for line in data.splitlines() if line.strip() and not line.lstrip().startswith((b"#", b"!")))


class ListFetcher:
    """Downloads list URLs into a cache directory with ETag / If-Modified-Since."""

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        timeout: float = 30.0,
        max_size: int = 64 << 20,
        min_ratio: float = 0.5,
        progress: ProgressCallback | None = None,
        connector_factory: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.max_size = max_size
        self.min_ratio = min_ratio
        self.progress = progress
        self.connector_factory = connector_factory

    def paths(self, url: str) -> tuple[Path, Path]:
        """The cached copy and its metadata file for a URL."""
        digest = hashlib.sha256(url.encode()).hexdigest()[:20]
        return self.cache_dir / f"{digest}.list", self.cache_dir / f"{digest}.json"

    def cached(self, url: str) -> tuple[Path | None, CacheMeta | None]:
        """The last good copy of a URL, if any."""
        data_path, meta_path = self.paths(url)
        if not data_path.exists():
            return None, None
        try:
            meta = CacheMeta(**json.loads(meta_path.read_text()))
        except (OSError, ValueError, TypeError):
            meta = CacheMeta(url=url, size=data_path.stat().st_size)
        return data_path, meta

    async def fetch(self, url: str, session: aiohttp.ClientSession | None = None) -> FetchResult:
        """Download `url` if it changed; on any failure fall back to the cached copy."""
        cached_path, meta = self.cached(url)
        try:
            if session is None:
                connector = self.connector_factory() if self.connector_factory else None
                async with aiohttp.ClientSession(connector=connector) as own_session:
                    return await self._download(own_session, url, cached_path, meta)
            return await self._download(session, url, cached_path, meta)
        except (aiohttp.ClientError, TimeoutError, OSError, _Rejected) as exc:
            reason = str(exc) or type(exc).__name__
            if cached_path is not None:
                return FetchResult(url, cached_path, "cached", error=reason, size=meta.size if meta else 0)
            return FetchResult(url, None, "failed", error=reason)

    async def _download(
        self, session: aiohttp.ClientSession, url: str, cached_path: Path | None, meta: CacheMeta | None
    ) -> FetchResult:
        headers = {}
        if cached_path is not None and meta is not None:
            if meta.etag:
                headers["If-None-Match"] = meta.etag
            if meta.last_modified:
                headers["If-Modified-Since"] = meta.last_modified
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with session.get(url, headers=headers, timeout=timeout) as response:
            if response.status == 304 and cached_path is not None and meta is not None:
                meta.checked_at = time.time()
                self._write_meta(url, meta)
                return FetchResult(url, cached_path, "not-modified", size=meta.size)
            if response.status != 200:
                raise _Rejected(f"HTTP {response.status} {response.reason or ''}".strip())
            total = response.content_length
            if total is not None and total > self.max_size:
                raise _Rejected(f"{total} bytes is over the {self.max_size}-byte limit")
            chunks = []
            received = 0
            last_report = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
                if received > self.max_size:
                    raise _Rejected(f"over the {self.max_size}-byte limit")
                chunks.append(chunk)
                if self.progress and received - last_report >= 1 << 20:
                    last_report = received
                    self.progress(url, received, total)
            if total is not None and received < total:
                raise _Rejected(f"truncated: {received} of {total} bytes")
            data = b"".join(chunks)
            lines = _count_rule_lines(data)
            if lines == 0:
                raise _Rejected("the download has no rules (empty list)")
            if meta is not None and meta.lines and lines < meta.lines * self.min_ratio:
                raise _Rejected(
                    f"the download has {lines} rules, the last good copy {meta.lines}: treated as truncated"
                )
            new_meta = CacheMeta(
                url=url,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
                fetched_at=time.time(),
                checked_at=time.time(),
                size=received,
                lines=lines,
            )
        data_path, _ = self.paths(url)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(data_path, [data])
        self._write_meta(url, new_meta)
        if self.progress:
            self.progress(url, received, total)
        return FetchResult(url, data_path, "downloaded", size=received)

    def _write_meta(self, url: str, meta: CacheMeta) -> None:
        _, meta_path = self.paths(url)
        atomic_write(meta_path, [json.dumps(asdict(meta)).encode()])

    async def fetch_all(self, urls: list[str], concurrency: int = 4) -> dict[str, FetchResult]:
        """Fetch several URLs with bounded concurrency over one session."""
        semaphore = asyncio.Semaphore(concurrency)
        connector = self.connector_factory() if self.connector_factory else None
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(url: str) -> tuple[str, FetchResult]:
                async with semaphore:
                    return url, await self.fetch(url, session)

            return dict(await asyncio.gather(*(one(url) for url in urls)))


class _Rejected(ProtocolError):
    """A response that must not replace the cached copy (the server's fault: status, size, content)."""
