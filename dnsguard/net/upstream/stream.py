"""DNS over TCP (RFC 7766) and over TLS (RFC 7858): one reused connection, pipelined queries."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import cast

from dnsguard.config.addresses import is_ip
from dnsguard.dns.upstream_errors import UpstreamBusyError, UpstreamError, UpstreamTimeoutError
from dnsguard.dns.upstream_match import (
    HEADER_SIZE,
    MAX_MESSAGE,
    free_id,
    is_reply_to,
    question_end,
    question_key,
    with_id,
)
from dnsguard.dns.upstream_spec import Scheme, UpstreamSpec, UpstreamSpecError
from dnsguard.errors import FormError
from dnsguard.net.upstream.base import Pending, TransportCounters, Upstream, fail_all
from dnsguard.net.upstream.options import DEFAULT_OPTIONS, TransportOptions, family_of

__all__ = ["ConnectionClosedError", "TcpUpstream", "TlsUpstream"]


class ConnectionClosedError(UpstreamError):
    """A TCP/TLS connection closed before our reply arrived (RFC 7766 §6.2.1 says: retry on a new one)."""


class _StreamConnection(asyncio.Protocol):
    """A TCP or TLS connection of pipelined queries; replies match by ID in any order (RFC 7766 §6.2.1.1)."""

    def __init__(self, name: str, counters: TransportCounters, options: TransportOptions) -> None:
        self.name = name
        self.counters = counters
        self.options = options
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, Pending] = {}
        self._idle_timer: asyncio.TimerHandle | None = None
        self.last_received = 0.0  # loop time of the last byte from the server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        # Whole frames are handed out as soon as they are complete, so the buffer never holds more than one
        # partial frame (at most 2 + 65535 bytes) beyond what a single read delivered.
        self.last_received = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        offset = 0
        available = len(buffer)
        while available - offset >= 2:
            size = (buffer[offset] << 8) | buffer[offset + 1]
            if available - offset - 2 < size:
                break
            self._deliver(bytes(buffer[offset + 2 : offset + 2 + size]))
            offset += 2 + size
        if offset:
            del buffer[:offset]

    def _deliver(self, reply: bytes) -> None:
        entry = self._pending.get((reply[0] << 8) | reply[1]) if len(reply) >= HEADER_SIZE else None
        if (
            entry is None
            or entry.future.done()
            or not is_reply_to(reply, entry.key, entry.end, allow_no_question=True)
        ):
            self.counters.unmatched_replies += 1
            return
        entry.future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle_timer()
        reason = f"connection closed: {exc}" if exc else "connection closed by the server"
        fail_all(self._pending, ConnectionClosedError(self.name, reason))

    async def exchange(self, wire: bytes, end: int) -> bytes:
        """Send one query on this connection (pipelined with others) and wait for its reply."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ConnectionClosedError(self.name, "connection closed")
        if len(self._pending) >= self.options.max_in_flight:
            raise UpstreamBusyError(self.name, f"{len(self._pending)} queries already in flight")
        self._cancel_idle_timer()
        query_id = free_id(self._pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[query_id] = Pending(future, question_key(wire, end), end)
        # RFC 1035 §4.2.2 / RFC 7766 §8: two-byte length prefix, written in one call so the frame leaves in
        # one segment where it fits.
        self._transport.write(len(wire).to_bytes(2, "big") + with_id(query_id, wire))
        try:
            return await future
        finally:
            self._pending.pop(query_id, None)
            if not self._pending:
                self._arm_idle_timer()

    def close(self) -> None:
        self.closed = True
        self._cancel_idle_timer()
        if self._transport is not None:
            self._transport.close()

    def _arm_idle_timer(self) -> None:
        if not self.closed and self._idle_timer is None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self.options.idle_timeout, self.close)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None


class _StreamUpstream(Upstream):
    """DNS over a reused, pipelined TCP connection, optionally inside TLS; reconnects when it closes."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str,
        options: TransportOptions,
        tls: ssl.SSLContext | None,
        addresses: Sequence[str],
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.counters = TransportCounters()
        self._options = options
        self._tls = tls
        self._addresses = tuple(addresses) or ((host,) if is_ip(host) else ())
        self._connection: _StreamConnection | None = None
        self._connecting = asyncio.Lock()

    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The reply over the shared connection; one retry on a new connection if the old one closed."""
        end = question_end(wire)
        if len(wire) > MAX_MESSAGE:
            raise FormError("query longer than 65535 bytes cannot be framed for TCP")
        started = asyncio.get_running_loop().time()
        connection: _StreamConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(2):
                    connection = await self._connected()
                    try:
                        reply = await connection.exchange(wire, end)
                    except ConnectionClosedError:
                        # RFC 7766 §6.2.1: servers may close idle or busy connections at any time; the query
                        # was not answered, so it is safe to ask again on a fresh connection.
                        if attempt == 1:
                            raise
                        continue
                    return wire[:2] + reply[2:]
        except TimeoutError:
            if connection is not None and connection.last_received < started:
                # Nothing at all came back while we waited: the connection may be wedged (a middlebox dropped
                # it silently). Later queries get a fresh one instead of queueing behind it.
                connection.close()
            raise UpstreamTimeoutError(self.name, f"no reply within {timeout:.3g} s") from None
        raise AssertionError("unreachable")

    async def _connected(self) -> _StreamConnection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.closed:
                connection = await self._connect()
                self._connection = connection
            return connection

    async def _connect(self) -> _StreamConnection:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        for address in await self._resolve():
            try:
                sock = self._options.new_socket(family_of(address), socket.SOCK_STREAM)
            except OSError as error:
                raise UpstreamError(self.name, f"cannot create TCP socket: {error}") from error
            try:
                await loop.sock_connect(sock, (address, self.port))
                connection = await self._handshake(sock)
            except OSError as error:  # ssl.SSLError is an OSError too
                sock.close()
                errors.append(f"{address}: {error}")
                continue
            except BaseException:
                sock.close()
                raise
            self.counters.connections += 1
            return connection
        raise UpstreamError(self.name, "cannot connect: " + "; ".join(errors or ["no address"]))

    async def _handshake(self, sock: socket.socket) -> _StreamConnection:
        connection = _StreamConnection(self.name, self.counters, self._options)
        await asyncio.get_running_loop().create_connection(
            lambda: connection,
            sock=sock,
            ssl=self._tls,
            server_hostname=self.host if self._tls is not None else None,
        )
        return connection

    async def _resolve(self) -> Sequence[str]:
        if self._addresses:
            return self._addresses
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise UpstreamError(self.name, f"cannot resolve {self.host}: {error}") from error
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def close(self) -> None:
        """Close the connection; the next query reconnects."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class TcpUpstream(_StreamUpstream):
    """Plain DNS over TCP (RFC 7766): one reused connection, pipelined queries, out-of-order replies."""

    def __init__(
        self, host: str, port: int = 53, *, name: str | None = None, options: TransportOptions | None = None
    ) -> None:
        if not is_ip(host):
            raise UpstreamSpecError(f"TCP upstream needs an IP address, not {host!r}")
        super().__init__(
            host,
            port,
            name=name or UpstreamSpec(Scheme.TCP, host, port).name,
            options=options or DEFAULT_OPTIONS,
            tls=None,
            addresses=(),
        )


class TlsUpstream(_StreamUpstream):
    """DNS over TLS (RFC 7858): TCP framing inside TLS, the certificate checked against ``server_name``."""

    def __init__(
        self,
        server_name: str,
        port: int = 853,
        *,
        addresses: Sequence[str] = (),
        name: str | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        options = options or DEFAULT_OPTIONS
        spec_name = name or UpstreamSpec(Scheme.TLS, server_name, port).name
        super().__init__(
            server_name, port, name=spec_name, options=options, tls=options.tls_context(), addresses=addresses
        )
