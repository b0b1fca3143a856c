"""DNS over HTTPS (RFC 8484) with aiohttp; aiohttp's and the socket layer's exceptions end here."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from dnsguard.dns.upstream_errors import (
    UpstreamBusyError,
    UpstreamError,
    UpstreamReplyError,
    UpstreamTimeoutError,
)
from dnsguard.dns.upstream_match import HEADER_SIZE, MAX_MESSAGE, is_reply_to, question_end, question_key
from dnsguard.dns.upstream_spec import UpstreamSpecError
from dnsguard.net.upstream.base import TransportCounters, Upstream
from dnsguard.net.upstream.options import DEFAULT_OPTIONS, TransportOptions, family_of

__all__ = ["HttpsUpstream"]


class _PinnedResolver(AbstractResolver):
    """Hands aiohttp the pinned addresses for the DoH host, so no DNS lookup precedes DNS (bootstrap)."""

    def __init__(self, host: str, addresses: Sequence[str]) -> None:
        self._host = host.lower().rstrip(".")
        self._addresses = tuple(addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self._host:
            raise OSError(f"no pinned address for {host}")
        results: list[ResolveResult] = []
        for address in self._addresses:
            address_family = family_of(address)
            if family in (socket.AF_UNSPEC, address_family):
                results.append(
                    {
                        "hostname": host,
                        "host": address,
                        "port": port,
                        "family": address_family,
                        "proto": 0,
                        "flags": socket.AI_NUMERICHOST,
                    }
                )
        if not results:
            raise OSError(f"no pinned address of family {family!r} for {host}")
        return results

    async def close(self) -> None:
        return None


_DNS_MESSAGE = "application/dns-message"


class HttpsUpstream(Upstream):
    """DNS over HTTPS (RFC 8484) with aiohttp: HTTP/1.1 keep-alive, a bounded pool, POST by default."""

    def __init__(
        self,
        url: str,
        *,
        addresses: Sequence[str] = (),
        name: str | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        parsed = urlsplit(url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise UpstreamSpecError(f"DoH upstream needs an https:// URL, not {url!r}")
        self.url = url
        self.name = name or url
        self.counters = TransportCounters()
        self._host = parsed.hostname
        self._options = options or DEFAULT_OPTIONS
        self._addresses = tuple(addresses)
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0

    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The reply from one HTTP exchange; the ID is 0 on the wire (RFC 8484 §4.1) and restored here."""
        end = question_end(wire)
        if self._in_flight >= self._options.max_in_flight:
            raise UpstreamBusyError(self.name, f"{self._in_flight} queries already in flight")
        # RFC 8484 §4.1: ID 0 makes identical queries identical HTTP requests, friendlier to HTTP caches.
        message = b"\x00\x00" + wire[2:]
        self._in_flight += 1
        try:
            async with asyncio.timeout(timeout):
                reply = await self._exchange(message)
        except TimeoutError:
            raise UpstreamTimeoutError(self.name, f"no reply within {timeout:.3g} s") from None
        except aiohttp.ClientError as error:
            raise UpstreamError(self.name, f"HTTP request failed: {error!r}") from error
        except OSError as error:
            raise UpstreamError(self.name, f"HTTP request failed: {error}") from error
        finally:
            self._in_flight -= 1
        if not is_reply_to(reply, question_key(wire, end), end, allow_no_question=True):
            raise UpstreamReplyError(self.name, "reply does not answer our question")
        return wire[:2] + reply[2:]

    async def _exchange(self, message: bytes) -> bytes:
        session = self._session if self._session is not None and not self._session.closed else self._open()
        if self._options.doh_method == "GET":
            encoded = base64.urlsafe_b64encode(message).rstrip(b"=").decode("ascii")
            separator = "&" if "?" in self.url else "?"
            request = session.get(
                f"{self.url}{separator}dns={encoded}", headers={"Accept": _DNS_MESSAGE}, allow_redirects=False
            )
        else:
            request = session.post(
                self.url,
                data=message,
                allow_redirects=False,
                headers={"Accept": _DNS_MESSAGE, "Content-Type": _DNS_MESSAGE},
            )
        async with request as response:
            if response.status != 200:
                raise UpstreamReplyError(self.name, f"HTTP status {response.status}")
            if response.content_type != _DNS_MESSAGE:
                raise UpstreamReplyError(self.name, f"unexpected content type {response.content_type!r}")
            return await self._read_body(response)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > MAX_MESSAGE:
            raise UpstreamReplyError(self.name, "reply larger than a DNS message can be")
        body = bytearray()
        while True:
            chunk = await response.content.read(MAX_MESSAGE + 1 - len(body))
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_MESSAGE:
                raise UpstreamReplyError(self.name, "reply larger than a DNS message can be")
        if len(body) < HEADER_SIZE:
            raise UpstreamReplyError(self.name, f"reply of {len(body)} bytes is too short")
        return bytes(body)

    def _open(self) -> aiohttp.ClientSession:
        options = self._options

        def socket_factory(info: tuple[Any, ...]) -> socket.socket:
            family, kind, proto = info[0], info[1], info[2]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                if options.socket_setup is not None:
                    options.socket_setup(sock)
            except BaseException:
                sock.close()
                raise
            self.counters.connections += 1
            return sock

        connector = aiohttp.TCPConnector(
            limit=options.max_connections,
            ssl=options.tls_context(),
            resolver=_PinnedResolver(self._host, self._addresses) if self._addresses else None,
            local_addr=options.local_addr,
            socket_factory=socket_factory,
            keepalive_timeout=options.idle_timeout,
        )
        # RFC 8484 §8: send as little that identifies the client as possible: no cookies, no User-Agent.
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
        )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None
