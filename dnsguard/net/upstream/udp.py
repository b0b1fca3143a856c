"""DNS over UDP (RFC 1035 §4.2.1): a connected socket per upstream, retransmission, TCP on truncation."""

from __future__ import annotations

import asyncio
import socket

from dnsguard.config.addresses import is_ip
from dnsguard.dns.upstream_errors import UpstreamBusyError, UpstreamError, UpstreamTimeoutError
from dnsguard.dns.upstream_match import (
    HEADER_SIZE,
    MAX_MESSAGE,
    free_id,
    is_reply_to,
    is_truncated,
    question_end,
    question_key,
    with_id,
)
from dnsguard.dns.upstream_spec import Scheme, UpstreamSpec, UpstreamSpecError
from dnsguard.net.upstream.base import Pending, TransportCounters, Upstream, fail_all
from dnsguard.net.upstream.options import DEFAULT_OPTIONS, TransportOptions, family_of
from dnsguard.net.upstream.stream import TcpUpstream

__all__ = ["UdpUpstream"]

_UDP_DRAIN_LIMIT = 64  # datagrams read per wake-up of a UDP socket


class _UdpEndpoint:
    """One connected UDP socket towards an upstream, with its own ID space of pending queries.

    It reads the socket itself (``add_reader``) rather than through a datagram transport, so that one wake-up
    drains every reply that has arrived instead of one datagram per event-loop iteration.
    """

    def __init__(self, sock: socket.socket, name: str, counters: TransportCounters) -> None:
        self.name = name
        self.counters = counters
        self.pending: dict[int, Pending] = {}
        self.started = 0
        self.closed = False
        self.retiring = False
        self._sock = sock
        self._buffer = bytearray(MAX_MESSAGE)
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
        entry = self.pending.get((data[0] << 8) | data[1]) if len(data) >= HEADER_SIZE else None
        if (
            entry is None
            or entry.future.done()
            or not is_reply_to(data, entry.key, entry.end, allow_no_question=False)
        ):
            self.counters.unmatched_replies += 1
            return
        entry.future.set_result(data)

    def _socket_error(self, error: OSError) -> None:
        # ICMP errors (port unreachable, RFC 1122 §4.1.3.3) surface per socket, not per datagram; all our
        # datagrams go to the same address, so every pending query shares the fate: fail fast, fail over.
        fail_all(self.pending, UpstreamError(self.name, f"UDP error: {error}"))

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
        fail_all(self.pending, UpstreamError(self.name, "UDP socket closed"))


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
        self._family = family_of(host)
        self._tcp_fallback = tcp_fallback
        self._tcp: TcpUpstream | None = None
        self._endpoint: _UdpEndpoint | None = None

    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The reply over UDP, resent once at half the timeout, asked over TCP if it comes back truncated."""
        end = question_end(wire)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        endpoint = self._endpoint
        if endpoint is None or endpoint.closed or endpoint.started >= self._options.udp_rotate_after:
            endpoint = self._fresh_endpoint()
        reply = await self._exchange(endpoint, wire, end, timeout)
        if is_truncated(reply) and self._tcp_fallback:
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
        query_id = free_id(endpoint.pending)
        entry = Pending(loop.create_future(), question_key(wire, end), end)
        endpoint.pending[query_id] = entry
        endpoint.started += 1
        datagram = with_id(query_id, wire)
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

    def _resend(self, endpoint: _UdpEndpoint, entry: Pending, datagram: bytes, timeout: float) -> None:
        if entry.future.done():
            return
        self.counters.retransmits += 1
        endpoint.send(datagram)
        entry.timer = asyncio.get_running_loop().call_later(timeout / 2, self._expire, entry, timeout)

    def _expire(self, entry: Pending, timeout: float) -> None:
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
