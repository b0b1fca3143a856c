"""Upstream resolvers: DNS over UDP, TCP, TLS and HTTPS, and a group that chooses among them.

Every transport takes a query as raw DNS message bytes and returns the raw reply with the caller's ID
restored, so the resolver never needs dnslib on this path. The few header fields we need (ID, QR, TC, RCODE,
the question) are read with byte indexing here rather than imported from the wire module, keeping this edge
self-contained.

Spec syntax: dnsguard/dns/upstream_spec.py, shared with configuration checking.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import enum
import functools
import ipaddress
import logging
import random
import secrets
import socket
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from dnsguard.config.addresses import is_ip
from dnsguard.dns.upstream_spec import (
    DEFAULT_PORTS,
    Scheme,
    UpstreamSpec,
    UpstreamSpecError,
    parse_upstream,
)
from dnsguard.errors import ConfigError, FormError, NetworkError, ProtocolError

__all__ = [
    "DEFAULT_PORTS",
    "AllUpstreamsFailedError",
    "HealthPolicy",
    "HttpsUpstream",
    "Outcome",
    "QueryHook",
    "Scheme",
    "Strategy",
    "TcpUpstream",
    "TlsUpstream",
    "TransportCounters",
    "TransportOptions",
    "UdpUpstream",
    "Upstream",
    "UpstreamBusyError",
    "UpstreamError",
    "UpstreamGroup",
    "UpstreamReplyError",
    "UpstreamSpec",
    "UpstreamSpecError",
    "UpstreamStats",
    "UpstreamTimeoutError",
    "create_upstream",
    "parse_upstream",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------
# Errors


class UpstreamError(NetworkError):
    """An upstream resolver did not deliver a usable reply."""

    def __init__(self, upstream: str, message: str) -> None:
        self.upstream = upstream
        self.message = message
        super().__init__(f"{upstream}: {message}")


class UpstreamTimeoutError(UpstreamError):
    """An upstream did not answer within the time given."""


class UpstreamBusyError(UpstreamError):
    """The local in-flight limit for an upstream (or group) is reached; the upstream itself may be fine."""


class UpstreamReplyError(UpstreamError):
    """An upstream answered with something that is not a reply to our query (HTTP error, wrong question)."""


class AllUpstreamsFailedError(UpstreamError):
    """Every upstream tried for a query failed (or the group's deadline passed); carries each failure."""

    def __init__(self, group: str, errors: Sequence[UpstreamError]) -> None:
        self.errors = tuple(errors)
        detail = "; ".join(str(error) for error in self.errors) or "no upstream could be tried in time"
        super().__init__(group, f"all upstreams failed: {detail}")


class _ConnectionClosedError(UpstreamError):
    """A TCP/TLS connection closed before our reply arrived (RFC 7766 §6.2.1 says: retry on a new one)."""


# ------------------------------------------------------------------------------------------------------------
# The few wire-format facts this module needs (RFC 1035 §4.1)

_HEADER_SIZE = 12
_QR = 0x80  # in byte 2
_TC = 0x02  # in byte 2
_RD = 0x01  # in byte 2
_CD = 0x10  # in byte 3
_RCODE_MASK = 0x0F  # in byte 3
_ONE_QUESTION = b"\x00\x01"
_TYPE_OPT = b"\x00\x29"
_MAX_MESSAGE = 65535
_UDP_DRAIN_LIMIT = 64  # datagrams read per wake-up of a UDP socket
RCODE_SERVFAIL = 2
RCODE_REFUSED = 5


def _question_end(message: bytes) -> int:
    """Offset just past the single question of a DNS message; FormError when there is not exactly one."""
    size = len(message)
    if size < _HEADER_SIZE + 5 or message[4:6] != _ONE_QUESTION:
        raise FormError("a DNS query must carry exactly one question")
    offset = _HEADER_SIZE
    while True:
        if offset >= size:
            raise FormError("question name runs past the end of the message")
        length = message[offset]
        if length == 0:
            break
        if length > 63:
            # The question holds the first name of a message: a compression pointer has nothing to point to.
            raise FormError("question name has a compression pointer or an invalid label length")
        offset += 1 + length
    if offset - _HEADER_SIZE + 1 > 255:
        raise FormError("question name is longer than 255 octets")
    end = offset + 5
    if end > size:
        raise FormError("question is truncated")
    return end


def _question_key(message: bytes, end: int) -> bytes:
    """The question (name, type, class) with the name lower-cased: DNS names compare case-insensitively."""
    return message[_HEADER_SIZE : end - 4].lower() + message[end - 4 : end]


def _is_reply_to(reply: bytes, key: bytes, end: int, *, allow_no_question: bool) -> bool:
    """Whether a message is a response carrying our question (RFC 5452: match the ID *and* the question)."""
    if len(reply) < _HEADER_SIZE or not reply[2] & _QR:
        return False
    if allow_no_question and reply[4:6] == b"\x00\x00":
        # Some servers drop the question from FORMERR/NOTIMP replies; on a connection of our own, the ID
        # suffices.
        return True
    return reply[4:6] == _ONE_QUESTION and len(reply) >= end and _question_key(reply, end) == key


def _rcode(reply: bytes) -> int:
    return reply[3] & _RCODE_MASK


def _with_id(query_id: int, message: bytes) -> bytes:
    return query_id.to_bytes(2, "big") + message[2:]


def _flight_key(wire: bytes, end: int) -> bytes:
    """What makes two queries answerable by one reply: question, RD and CD bits, EDNS presence and DO."""
    flags = bytes((wire[2] & _RD, wire[3] & _CD))
    rest = wire[end:]
    if wire[6:12] == b"\x00\x00\x00\x00\x00\x00":
        edns = b"-"  # RFC 6891 §7: a query without OPT must not get a reply with one
    elif wire[6:12] == b"\x00\x00\x00\x00\x00\x01" and rest[:3] == b"\x00" + _TYPE_OPT and len(rest) >= 11:
        edns = b"D" if rest[7] & 0x80 else b"E"  # RFC 6891 §6.1.3, RFC 3225: DO asks for DNSSEC records
    else:
        edns = rest  # anything unusual (TSIG, several records): only byte-identical queries share a reply
    return _question_key(wire, end) + flags + edns


def _personalise(reply: bytes, wire: bytes, end: int) -> bytes:
    """The reply with the asker's ID and, when the names match, the asker's spelling of the question name.

    Coalesced askers may differ in letter case, and stubs that randomise it (draft-vixie-dnsext-dns0x20)
    check that the reply echoes theirs.
    """
    if (
        reply[4:6] == _ONE_QUESTION
        and len(reply) >= end
        and _question_key(reply, end) == _question_key(wire, end)
    ):
        return wire[:2] + reply[2:_HEADER_SIZE] + wire[_HEADER_SIZE : end - 4] + reply[end - 4 :]
    return wire[:2] + reply[2:]


def _family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


# ------------------------------------------------------------------------------------------------------------
# Transport options and socket creation

SocketSetup = Callable[[socket.socket], None]


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """How upstream sockets are made and bounded; shared by every upstream of a group.

    ``socket_setup`` runs on every new socket before it binds or connects, so the daemon can set SO_MARK or
    SO_BINDTODEVICE and route upstream queries through (or around) its tunnel; ``local_addr`` binds the
    source.
    """

    local_addr: tuple[str, int] | None = None
    socket_setup: SocketSetup | None = None
    ca_file: str | None = None  # None: the system's CA store
    ssl_context: ssl.SSLContext | None = None  # overrides ca_file when given
    idle_timeout: float = 10.0  # RFC 7766 §6.2.3: close idle connections rather than leave them to the server
    max_in_flight: int = 512  # per UDP socket, TCP/TLS connection, or DoH upstream
    udp_rotate_after: int = 10_000  # queries per UDP socket before a fresh source port (RFC 5452)
    max_connections: int = 4  # DoH connection pool size per upstream (HTTP/1.1: one request per connection)
    doh_method: Literal["GET", "POST"] = "POST"

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight <= 32_768:
            # Half the ID space at most, so picking a free random ID takes two tries on average at worst.
            raise ValueError("max_in_flight must be between 1 and 32768")
        if self.idle_timeout <= 0 or self.udp_rotate_after < 1 or self.max_connections < 1:
            raise ValueError("idle_timeout, udp_rotate_after and max_connections must be positive")
        if self.doh_method not in ("GET", "POST"):
            raise ValueError("doh_method must be GET or POST")

    def tls_context(self) -> ssl.SSLContext:
        """The TLS client context: verification on, TLS 1.2 at least (RFC 8310, RFC 8484)."""
        if self.ssl_context is not None:
            return self.ssl_context
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def new_socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A non-blocking socket with the setup hook applied and bound to ``local_addr`` if one is set."""
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if self.socket_setup is not None:
                self.socket_setup(sock)
            if self.local_addr is not None:
                sock.bind(self.local_addr)
        except BaseException:
            sock.close()
            raise
        return sock


DEFAULT_OPTIONS = TransportOptions()


# ------------------------------------------------------------------------------------------------------------
# The transport interface


@dataclass(slots=True)
class TransportCounters:
    """Transport-level events worth a metric: each one hints at loss, spoofing or a misbehaving server."""

    unmatched_replies: int = 0  # wrong ID or question, late, or not a response: dropped (RFC 5452)
    retransmits: int = 0  # UDP queries sent a second time after half their timeout
    truncated_retries: int = 0  # UDP replies with TC=1 asked again over TCP
    connections: int = 0  # sockets or connections opened


class Upstream(ABC):
    """One upstream resolver: ``query`` takes raw query bytes and returns raw reply bytes with our ID."""

    name: str
    counters: TransportCounters

    @abstractmethod
    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The upstream's reply to ``wire`` within ``timeout`` seconds, or an UpstreamError."""

    @abstractmethod
    async def close(self) -> None:
        """Close sockets and connections; a later query opens new ones."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _Pending:
    """A query waiting for its reply: the future, and the question the reply must echo."""

    __slots__ = ("end", "future", "key", "timer")

    def __init__(self, future: asyncio.Future[bytes], key: bytes, end: int) -> None:
        self.future = future
        self.key = key
        self.end = end
        self.timer: asyncio.TimerHandle | None = None  # UDP: the pending resend or expiry


def _free_id(pending: dict[int, _Pending]) -> int:
    # RFC 5452: unpredictable IDs; the in-flight cap keeps this loop short.
    while True:
        query_id = secrets.randbits(16)
        if query_id not in pending:
            return query_id


def _fail_all(pending: dict[int, _Pending], error: UpstreamError) -> None:
    for entry in pending.values():
        if not entry.future.done():
            entry.future.set_exception(error)
            # Retrieved here so a query that already gave up does not log "exception never retrieved".
            entry.future.exception()


# ------------------------------------------------------------------------------------------------------------
# UDP


class _UdpEndpoint:
    """One connected UDP socket towards an upstream, with its own ID space of pending queries.

    It reads the socket itself (``add_reader``) rather than through a datagram transport, so that one wake-up
    drains every reply that has arrived instead of one datagram per event-loop iteration.
    """

    def __init__(self, sock: socket.socket, name: str, counters: TransportCounters) -> None:
        self.name = name
        self.counters = counters
        self.pending: dict[int, _Pending] = {}
        self.started = 0
        self.closed = False
        self.retiring = False
        self._sock = sock
        self._buffer = bytearray(_MAX_MESSAGE)
        self._view = memoryview(self._buffer)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recv_into = self._sock.recv_into
        view = self._view
        for _ in range(_UDP_DRAIN_LIMIT):  # bounded, so a flood cannot keep the loop from other work
            try:
                size = recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._socket_error(error)
                return
            self._deliver(bytes(view[:size]))

    def _deliver(self, data: bytes) -> None:
        # The socket is connected, so the kernel already dropped datagrams from any other address and port;
        # what is left to check is the ID and the question (RFC 5452).
        entry = self.pending.get((data[0] << 8) | data[1]) if len(data) >= _HEADER_SIZE else None
        if (
            entry is None
            or entry.future.done()
            or not _is_reply_to(data, entry.key, entry.end, allow_no_question=False)
        ):
            self.counters.unmatched_replies += 1
            return
        entry.future.set_result(data)

    def _socket_error(self, error: OSError) -> None:
        # ICMP errors (port unreachable, RFC 1122 §4.1.3.3) surface per socket, not per datagram; all our
        # datagrams go to the same address, so every pending query shares the fate: fail fast, fail over.
        _fail_all(self.pending, UpstreamError(self.name, f"UDP error: {error}"))

    def send(self, datagram: bytes) -> None:
        if self.closed:
            return
        try:
            self._sock.send(datagram)
        except (BlockingIOError, InterruptedError):
            pass  # send buffer full: the datagram is lost like any other, and the retransmission covers it
        except OSError as error:
            self._socket_error(error)

    def release(self, query_id: int) -> None:
        self.pending.pop(query_id, None)
        if self.retiring and not self.pending:
            self.close()

    def retire(self) -> None:
        """Take no new queries; close once the pending ones are done."""
        self.retiring = True
        if not self.pending:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        _fail_all(self.pending, UpstreamError(self.name, "UDP socket closed"))


class UdpUpstream(Upstream):
    """Plain DNS over UDP (RFC 1035 §4.2.1), retried over TCP when the reply is truncated (RFC 7766 §5)."""

    def __init__(
        self,
        host: str,
        port: int = 53,
        *,
        name: str | None = None,
        options: TransportOptions | None = None,
        tcp_fallback: bool = True,
    ) -> None:
        if not is_ip(host):
            raise UpstreamSpecError(f"UDP upstream needs an IP address, not {host!r}")
        self.host = host
        self.port = port
        self.name = name or UpstreamSpec(Scheme.UDP, host, port).name
        self.counters = TransportCounters()
        self._options = options or DEFAULT_OPTIONS
        self._family = _family_of(host)
        self._tcp_fallback = tcp_fallback
        self._tcp: TcpUpstream | None = None
        self._endpoint: _UdpEndpoint | None = None

    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The reply over UDP, resent once at half the timeout, asked over TCP if it comes back truncated."""
        end = _question_end(wire)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        endpoint = self._endpoint
        if endpoint is None or endpoint.closed or endpoint.started >= self._options.udp_rotate_after:
            endpoint = self._fresh_endpoint()
        reply = await self._exchange(endpoint, wire, end, timeout)
        if reply[2] & _TC and self._tcp_fallback:
            # RFC 7766 §5 and RFC 1035 §4.2.1: a truncated reply means ask again over TCP, with the time left.
            self.counters.truncated_retries += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamTimeoutError(self.name, "truncated reply and no time left for TCP")
            return await self._tcp_upstream().query(wire, remaining)
        return wire[:2] + reply[2:]

    async def _exchange(self, endpoint: _UdpEndpoint, wire: bytes, end: int, timeout: float) -> bytes:
        if len(endpoint.pending) >= self._options.max_in_flight:
            raise UpstreamBusyError(self.name, f"{len(endpoint.pending)} queries already in flight")
        loop = asyncio.get_running_loop()
        query_id = _free_id(endpoint.pending)
        entry = _Pending(loop.create_future(), _question_key(wire, end), end)
        endpoint.pending[query_id] = entry
        endpoint.started += 1
        datagram = _with_id(query_id, wire)
        endpoint.send(datagram)
        # One timer per query at a time, cheaper on the hot path than asyncio.timeout plus a resend timer:
        # at half the timeout it resends (same ID, so a late reply to the first datagram still counts) and
        # arms the final expiry.
        entry.timer = loop.call_later(timeout / 2, self._resend, endpoint, entry, datagram, timeout)
        try:
            return await entry.future
        finally:
            if entry.timer is not None:
                entry.timer.cancel()
            endpoint.release(query_id)

    def _resend(self, endpoint: _UdpEndpoint, entry: _Pending, datagram: bytes, timeout: float) -> None:
        if entry.future.done():
            return
        self.counters.retransmits += 1
        endpoint.send(datagram)
        entry.timer = asyncio.get_running_loop().call_later(timeout / 2, self._expire, entry, timeout)

    def _expire(self, entry: _Pending, timeout: float) -> None:
        if not entry.future.done():
            entry.future.set_exception(UpstreamTimeoutError(self.name, f"no reply within {timeout:.3g} s"))

    def _fresh_endpoint(self) -> _UdpEndpoint:
        endpoint = self._open_endpoint()
        if self._endpoint is not None:
            self._endpoint.retire()  # its pending queries finish on the old socket and port
        self._endpoint = endpoint
        return endpoint

    def _open_endpoint(self) -> _UdpEndpoint:
        try:
            sock = self._options.new_socket(self._family, socket.SOCK_DGRAM)
        except OSError as error:
            raise UpstreamError(self.name, f"cannot create UDP socket: {error}") from error
        try:
            # Connected, so the kernel filters replies by source address and port for us.
            sock.connect((self.host, self.port))
            endpoint = _UdpEndpoint(sock, self.name, self.counters)
        except OSError as error:
            sock.close()
            raise UpstreamError(self.name, f"cannot open UDP socket: {error}") from error
        except BaseException:
            sock.close()
            raise
        self.counters.connections += 1
        return endpoint

    def _tcp_upstream(self) -> TcpUpstream:
        if self._tcp is None:
            self._tcp = TcpUpstream(self.host, self.port, name=self.name, options=self._options)
            self._tcp.counters = self.counters
        return self._tcp

    async def close(self) -> None:
        """Close the UDP socket and the TCP fallback connection."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self._tcp is not None:
            await self._tcp.close()


# ------------------------------------------------------------------------------------------------------------
# TCP and TLS


class _StreamConnection(asyncio.Protocol):
    """A TCP or TLS connection of pipelined queries; replies match by ID in any order (RFC 7766 §6.2.1.1)."""

    def __init__(self, name: str, counters: TransportCounters, options: TransportOptions) -> None:
        self.name = name
        self.counters = counters
        self.options = options
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, _Pending] = {}
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
        entry = self._pending.get((reply[0] << 8) | reply[1]) if len(reply) >= _HEADER_SIZE else None
        if (
            entry is None
            or entry.future.done()
            or not _is_reply_to(reply, entry.key, entry.end, allow_no_question=True)
        ):
            self.counters.unmatched_replies += 1
            return
        entry.future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_idle_timer()
        reason = f"connection closed: {exc}" if exc else "connection closed by the server"
        _fail_all(self._pending, _ConnectionClosedError(self.name, reason))

    async def exchange(self, wire: bytes, end: int) -> bytes:
        """Send one query on this connection (pipelined with others) and wait for its reply."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise _ConnectionClosedError(self.name, "connection closed")
        if len(self._pending) >= self.options.max_in_flight:
            raise UpstreamBusyError(self.name, f"{len(self._pending)} queries already in flight")
        self._cancel_idle_timer()
        query_id = _free_id(self._pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[query_id] = _Pending(future, _question_key(wire, end), end)
        # RFC 1035 §4.2.2 / RFC 7766 §8: two-byte length prefix, written in one call so the frame leaves in
        # one segment where it fits.
        self._transport.write(len(wire).to_bytes(2, "big") + _with_id(query_id, wire))
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
        end = _question_end(wire)
        if len(wire) > _MAX_MESSAGE:
            raise FormError("query longer than 65535 bytes cannot be framed for TCP")
        started = asyncio.get_running_loop().time()
        connection: _StreamConnection | None = None
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(2):
                    connection = await self._connected()
                    try:
                        reply = await connection.exchange(wire, end)
                    except _ConnectionClosedError:
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
                sock = self._options.new_socket(_family_of(address), socket.SOCK_STREAM)
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


# ------------------------------------------------------------------------------------------------------------
# DNS over HTTPS


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
            address_family = _family_of(address)
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
        end = _question_end(wire)
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
        if not _is_reply_to(reply, _question_key(wire, end), end, allow_no_question=True):
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
        if response.content_length is not None and response.content_length > _MAX_MESSAGE:
            raise UpstreamReplyError(self.name, "reply larger than a DNS message can be")
        body = bytearray()
        while True:
            chunk = await response.content.read(_MAX_MESSAGE + 1 - len(body))
            if not chunk:
                break
            body += chunk
            if len(body) > _MAX_MESSAGE:
                raise UpstreamReplyError(self.name, "reply larger than a DNS message can be")
        if len(body) < _HEADER_SIZE:
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


# ------------------------------------------------------------------------------------------------------------
# Construction from specs


def create_upstream(spec: UpstreamSpec | str, options: TransportOptions | None = None) -> Upstream:
    """The transport for a spec (a parsed UpstreamSpec or a spec string)."""
    if isinstance(spec, str):
        spec = parse_upstream(spec)
    options = options or DEFAULT_OPTIONS
    if spec.scheme is Scheme.UDP:
        return UdpUpstream(spec.host, spec.port, name=spec.name, options=options)
    if spec.scheme is Scheme.TCP:
        return TcpUpstream(spec.host, spec.port, name=spec.name, options=options)
    if spec.scheme is Scheme.TLS:
        return TlsUpstream(spec.host, spec.port, addresses=spec.addresses, name=spec.name, options=options)
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return HttpsUpstream(
        f"https://{host}:{spec.port}{spec.path}", addresses=spec.addresses, name=spec.name, options=options
    )


# ------------------------------------------------------------------------------------------------------------
# Groups: strategies, health, coalescing


class Strategy(enum.StrEnum):
    """How a group picks upstreams for a query (names as in blocky)."""

    STRICT = "strict"  # in configured order, next one on failure
    RANDOM = "random"  # weighted random order, next one on failure
    PARALLEL_BEST = "parallel_best"  # race two weighted-random picks, first good answer wins


class Outcome(enum.StrEnum):
    """The result of one upstream attempt, as reported to the query hook."""

    OK = "ok"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"
    BUSY = "busy"


_RCODE_OUTCOMES = {RCODE_SERVFAIL: Outcome.SERVFAIL, RCODE_REFUSED: Outcome.REFUSED}

QueryHook = Callable[[str, float, Outcome], None]
"""Called after each upstream attempt with (upstream name, seconds, outcome); e.g. feeds a histogram."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How failures take an upstream out of rotation and how latency and failures weigh random picks."""

    backoff_initial: float = 1.0  # seconds out of rotation after the first failure
    backoff_max: float = 60.0
    latency_alpha: float = 0.3  # EWMA weight of the newest latency sample
    # Weights are 1 / (latency + latency_offset): the offset keeps a 0.3 ms upstream from starving a 3 ms one.
    latency_offset: float = 0.010
    default_latency: float = 0.05  # assumed before any upstream of the group has answered
    failure_memory: float = 60.0  # a failure this recent divides the weight by failure_penalty
    failure_penalty: float = 10.0


@dataclass(slots=True)
class UpstreamStats:
    """Per-upstream counters and health for metrics; ``UpstreamGroup.stats()`` returns copies."""

    name: str
    queries: int = 0
    failures: int = 0  # every outcome but OK and BUSY
    timeouts: int = 0
    servfails: int = 0  # SERVFAIL and REFUSED replies
    busy: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None  # group clock; only failures that count against health
    latency_ewma: float | None = None  # seconds
    last_latency: float | None = None
    backoff_until: float = 0.0  # group clock


class _Member:
    """An upstream in a group, with its health."""

    __slots__ = ("backoff_level", "stats", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.stats = UpstreamStats(upstream.name)
        self.backoff_level = 0  # backoffs since the last success: the exponent of the next one


class _Flight:
    """One upstream resolution shared by every identical query that arrives while it runs."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[bytes]) -> None:
        self.task = task
        self.waiters = 0


class _Collected:
    """Failures of the attempts for one query, and the first SERVFAIL/REFUSED reply as a last resort."""

    __slots__ = ("errors", "fallback_reply")

    def __init__(self) -> None:
        self.errors: list[UpstreamError] = []
        self.fallback_reply: bytes | None = None


def _boottime() -> float:
    # CLOCK_BOOTTIME keeps counting during suspend, so backoffs expire across a laptop's sleep (DESIGN.md).
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


class UpstreamGroup:
    """Upstreams behind one strategy, with health tracking, a total deadline per query, and coalescing."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        strategy: Strategy | str = Strategy.PARALLEL_BEST,
        timeout: float = 2.0,
        attempt_timeout: float | None = None,
        coalesce: bool = True,
        max_in_flight: int = 4096,
        health: HealthPolicy | None = None,
        on_query: QueryHook | None = None,
        clock: Callable[[], float] = _boottime,
        rng: random.Random | None = None,
        name: str = "upstreams",
    ) -> None:
        if not upstreams:
            raise ConfigError("an upstream group needs at least one upstream", key="upstreams")
        try:
            self.strategy = Strategy(strategy)
        except ValueError:
            choices = ", ".join(s.value for s in Strategy)
            raise ConfigError(f"unknown strategy {strategy!r} (expected {choices})", key="strategy") from None
        if timeout <= 0 or (attempt_timeout is not None and attempt_timeout <= 0) or max_in_flight < 1:
            raise ValueError("timeout, attempt_timeout and max_in_flight must be positive")
        self.name = name
        self.timeout = timeout
        # Failover needs time left after a dead upstream: by default one attempt may use half the budget.
        self.attempt_timeout = min(attempt_timeout or timeout / 2, timeout)
        self.coalesce = coalesce
        self.max_in_flight = max_in_flight
        self.health = health or HealthPolicy()
        self.on_query = on_query
        self._members = [_Member(upstream) for upstream in upstreams]
        self._clock = clock
        self._rng = rng or random.Random()
        self._flights: dict[bytes, _Flight] = {}
        self._resolving = 0

    @classmethod
    def from_specs(
        cls, specs: Iterable[str], *, options: TransportOptions | None = None, **kwargs: Any
    ) -> UpstreamGroup:
        """A group of upstreams built from spec strings; keyword arguments go to the constructor."""
        return cls([create_upstream(spec, options) for spec in specs], **kwargs)

    @property
    def upstreams(self) -> list[Upstream]:
        """The upstreams in configured order."""
        return [member.upstream for member in self._members]

    def stats(self) -> list[UpstreamStats]:
        """A snapshot of every upstream's counters and health, in configured order."""
        return [dataclasses.replace(member.stats) for member in self._members]

    async def query(self, wire: bytes) -> bytes:
        """The best reply the group can get for ``wire`` within its timeout, with the caller's ID.

        Raises FormError for a malformed query, UpstreamBusyError when too many distinct queries are in
        flight, and AllUpstreamsFailedError when no upstream answered and none replied SERVFAIL/REFUSED.
        """
        end = _question_end(wire)
        if not self.coalesce:
            if self._resolving >= self.max_in_flight:
                raise UpstreamBusyError(self.name, f"{self._resolving} queries in flight")
            self._resolving += 1
            try:
                return _personalise(await self._resolve(wire), wire, end)
            finally:
                self._resolving -= 1
        key = _flight_key(wire, end)
        flight = self._flights.get(key)
        if flight is None:
            if len(self._flights) >= self.max_in_flight:
                raise UpstreamBusyError(self.name, f"{len(self._flights)} distinct queries in flight")
            flight = _Flight(asyncio.get_running_loop().create_task(self._resolve(wire)))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._land, key, flight))
        flight.waiters += 1
        try:
            # Shielded: one asker giving up must not cancel the answer the others wait for.
            reply = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0:
                # Nobody waits any more: stop asking, and let a later identical query start afresh rather than
                # join a flight that is being cancelled.
                flight.task.cancel()
                self._land(key, flight)
            raise
        flight.waiters -= 1
        return _personalise(reply, wire, end)

    def _land(self, key: bytes, flight: _Flight, _task: asyncio.Task[bytes] | None = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def close(self) -> None:
        """Cancel queries in flight and close every upstream."""
        for flight in list(self._flights.values()):
            flight.task.cancel()
        self._flights.clear()
        for member in self._members:
            await member.upstream.close()

    async def __aenter__(self) -> UpstreamGroup:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- one resolution

    async def _resolve(self, wire: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        ready, resting = self._plan(self._clock())
        width = 2 if self.strategy is Strategy.PARALLEL_BEST else 1
        # The race (or the single first try) draws only from upstreams not backing off, so parallel_best does
        # not probe a resting upstream with every query; resting ones come after, as a last resort.
        first = ready[:width] or resting[:width]
        collected = _Collected()
        reply = await self._race(first, wire, deadline, collected)
        for member in [member for member in ready + resting if member not in first]:
            if reply is not None:
                break
            reply = await self._race([member], wire, deadline, collected)
        if reply is not None:
            return reply
        if collected.fallback_reply is not None:
            # Every upstream said SERVFAIL/REFUSED (or failed): their verdict is still an answer to pass on.
            return collected.fallback_reply
        raise AllUpstreamsFailedError(self.name, collected.errors)

    def _plan(self, now: float) -> tuple[list[_Member], list[_Member]]:
        """Upstreams not backing off, in the strategy's order, and those backing off, soonest back first."""
        ready = [member for member in self._members if member.stats.backoff_until <= now]
        resting = sorted(
            (member for member in self._members if member.stats.backoff_until > now),
            key=lambda member: member.stats.backoff_until,
        )
        if self.strategy is not Strategy.STRICT:
            ready = self._weighted_order(ready, now)
        return ready, resting

    def _weighted_order(self, members: list[_Member], now: float) -> list[_Member]:
        # An upstream not measured yet is assumed as fast as the best one known, so that it gets tried and
        # measured rather than starved by the ones that already have a good latency.
        known = [m.stats.latency_ewma for m in self._members if m.stats.latency_ewma is not None]
        unknown_latency = min(known) if known else self.health.default_latency
        # Weighted random order without replacement (Efraimidis-Spirakis): sort by u ** (1 / weight).
        keyed = [
            (self._rng.random() ** (1.0 / self._weight(member.stats, now, unknown_latency)), member)
            for member in members
        ]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [member for _, member in keyed]

    def _weight(self, stats: UpstreamStats, now: float, unknown_latency: float) -> float:
        latency = stats.latency_ewma if stats.latency_ewma is not None else unknown_latency
        weight = 1.0 / (latency + self.health.latency_offset)
        if stats.last_failure_at is not None and now - stats.last_failure_at < self.health.failure_memory:
            weight /= self.health.failure_penalty
        return weight

    async def _race(
        self, members: list[_Member], wire: bytes, deadline: float, collected: _Collected
    ) -> bytes | None:
        """The first good reply among ``members`` queried at once, or None after all of them failed."""
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0.001 or not members:
            return None
        budget = min(self.attempt_timeout, remaining)
        if len(members) == 1:
            return self._judge(await self._attempt(members[0], wire, budget), collected)
        tasks = [loop.create_task(self._attempt(member, wire, budget)) for member in members]
        try:
            waiting: set[asyncio.Task[bytes | UpstreamError]] = set(tasks)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    reply = self._judge(task.result(), collected)
                    if reply is not None:
                        return reply
            return None
        finally:
            # The loser is abandoned; its transport frees the query ID when the cancellation lands.
            for task in tasks:
                task.cancel()

    @staticmethod
    def _judge(result: bytes | UpstreamError, collected: _Collected) -> bytes | None:
        if isinstance(result, UpstreamError):
            collected.errors.append(result)
            return None
        if _rcode(result) in (RCODE_SERVFAIL, RCODE_REFUSED):
            if collected.fallback_reply is None:
                collected.fallback_reply = result
            return None
        return result

    async def _attempt(self, member: _Member, wire: bytes, timeout: float) -> bytes | UpstreamError:
        """Ask one upstream; record the outcome in its stats and the hook; return the reply or the error."""
        stats = member.stats
        stats.queries += 1
        started = time.perf_counter()
        result: bytes | UpstreamError
        try:
            result = await member.upstream.query(wire, timeout)
        except UpstreamBusyError as error:
            result, outcome = error, Outcome.BUSY
        except UpstreamTimeoutError as error:
            result, outcome = error, Outcome.TIMEOUT
        except UpstreamError as error:
            result, outcome = error, Outcome.ERROR
        except (OSError, ProtocolError) as error:
            result, outcome = (
                UpstreamError(member.upstream.name, f"{type(error).__name__}: {error}"),
                Outcome.ERROR,
            )
        else:
            outcome = _RCODE_OUTCOMES.get(_rcode(result), Outcome.OK)
        duration = time.perf_counter() - started
        self._record(member, outcome, duration, result)
        if self.on_query is not None:
            try:
                self.on_query(member.upstream.name, duration, outcome)
            except Exception:
                log.exception("upstream query hook failed")  # metrics must never break resolution
        return result

    def _record(
        self, member: _Member, outcome: Outcome, duration: float, result: bytes | UpstreamError
    ) -> None:
        stats = member.stats
        now = self._clock()
        if outcome is Outcome.BUSY:
            # Our own limit, not the upstream's health.
            stats.busy += 1
            return
        if outcome in (Outcome.OK, Outcome.SERVFAIL, Outcome.REFUSED):
            stats.last_latency = duration
            alpha = self.health.latency_alpha
            previous = stats.latency_ewma
            stats.latency_ewma = duration if previous is None else alpha * duration + (1 - alpha) * previous
        if outcome is Outcome.OK:
            stats.consecutive_failures = 0
            member.backoff_level = 0
            return
        stats.failures += 1
        if outcome is Outcome.TIMEOUT:
            stats.timeouts += 1
        if isinstance(result, UpstreamError):
            stats.last_error = result.message
        else:
            stats.servfails += 1
            stats.last_error = outcome.value
        if outcome is Outcome.SERVFAIL:
            # A SERVFAIL is usually about the name (a broken zone), not the upstream: fail over, but do not
            # take a healthy upstream out of rotation for everyone. REFUSED means it will not serve us: that
            # is about its health.
            return
        stats.last_failure_at = now
        stats.consecutive_failures += 1
        if stats.backoff_until <= now:
            # Only a failure seen outside a backoff extends it, so a burst of queries already in flight when
            # the upstream died does not push the backoff to its maximum at once.
            backoff = self.health.backoff_initial * 2.0 ** min(member.backoff_level, 30)
            stats.backoff_until = now + min(backoff, self.health.backoff_max)
            member.backoff_level += 1
