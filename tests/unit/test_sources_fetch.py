"""List downloads: conditional requests, and a bad download never replaces the last good copy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from dnsguard.net.downloads import ListFetcher

GOOD = "".join(f"0.0.0.0 ads{i}.example\n" for i in range(100))


class ListHost:
    """A list server on loopback whose answer each test scripts."""

    def __init__(self) -> None:
        self.body = GOOD
        self.status = 200
        self.etag = '"v1"'
        self.requests: list[dict[str, str]] = []
        self.truncate = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304)
        if self.truncate:
            response = web.StreamResponse(headers={"Content-Length": str(len(self.body) * 2)})
            response.force_close()
            await response.prepare(request)
            await response.write(self.body.encode())
            # Drop the connection mid-body, as a failing list host or proxy would.
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(status=self.status, text=self.body, headers={"ETag": self.etag})


@pytest.fixture
async def host() -> AsyncIterator[tuple[ListHost, str]]:
    list_host = ListHost()
    app = web.Application()
    app.router.add_get("/list.txt", list_host.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield list_host, str(server.make_url("/list.txt"))
    finally:
        await server.close()


async def test_download_then_not_modified(tmp_path: Path, host: tuple[ListHost, str]) -> None:
    list_host, url = host
    fetcher = ListFetcher(tmp_path)
    first = await fetcher.fetch(url)
    assert first.status == "downloaded" and first.path is not None
    assert first.path.read_text() == GOOD
    second = await fetcher.fetch(url)
    assert second.status == "not-modified"
    assert list_host.requests[-1]["If-None-Match"] == '"v1"'


@pytest.mark.parametrize("failure", ["http-500", "empty", "shrunk", "truncated"])
async def test_bad_download_keeps_last_good_copy(
    tmp_path: Path, host: tuple[ListHost, str], failure: str
) -> None:
    list_host, url = host
    fetcher = ListFetcher(tmp_path)
    await fetcher.fetch(url)
    list_host.etag = '"v2"'
    if failure == "http-500":
        list_host.status = 500
    elif failure == "empty":
        list_host.body = "# nothing here\n"
    elif failure == "shrunk":
        list_host.body = "0.0.0.0 only.example\n"
    else:
        list_host.truncate = True
    result = await fetcher.fetch(url)
    assert result.status == "cached", result
    assert result.error
    assert result.path is not None and result.path.read_text() == GOOD


async def test_unreachable_without_cache_fails_clearly(tmp_path: Path) -> None:
    result = await ListFetcher(tmp_path, timeout=2).fetch("http://127.0.0.1:9/never.txt")
    assert result.status == "failed" and result.path is None and result.error


async def test_size_limit(tmp_path: Path, host: tuple[ListHost, str]) -> None:
    _, url = host
    result = await ListFetcher(tmp_path, max_size=100).fetch(url)
    assert result.status == "failed" and "limit" in (result.error or "")


async def test_progress_is_reported(tmp_path: Path, host: tuple[ListHost, str]) -> None:
    list_host, url = host
    list_host.body = "".join(f"||tracker{i}.example^\n" for i in range(80_000))
    reports: list[tuple[int, int | None]] = []
    fetcher = ListFetcher(tmp_path, progress=lambda _url, got, total: reports.append((got, total)))
    assert (await fetcher.fetch(url)).status == "downloaded"
    assert reports and reports[-1][0] == len(list_host.body)
