"""DNS listeners: UDP and TCP sockets in front of a resolver (the LAN DNS of a gateway).

The resolver answers most queries synchronously (blocked, cached, local) and only some need an
upstream round trip; the listeners call the synchronous path inline, so a blocked or cached
answer costs one receive, one lookup and one send, and start a task only for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from dnsguard.config.addresses import parse_hostport
from dnsguard.dns.resolver import LATER, _Later

log = logging.getLogger("dnsguard.dns")

MAX_TCP_CONNECTIONS = 256
MAX_TCP_PIPELINE = 32
TCP_IDLE_TIMEOUT = 30.0
MAX_PENDING_UDP = 4096


class Answerer(Protocol):
    """What the listeners need from a resolver (see dnsguard.dns.resolver.Resolver)."""

    def answer_now(self, data: bytes, client: str) -> bytes | _Later | None:
        """The reply if it can be given without waiting, LATER to go async, None to drop."""

    def answer_later(self, data: bytes, client: str, tcp: bool) -> Awaitable[bytes | None]:
        """The reply after upstream work (or None to drop)."""


@dataclass
class ListenerStats:
    udp_queries: int = 0
    tcp_queries: int = 0
    dropped_busy: int = 0
    tcp_connections: int = 0


class UdpListener:
    """One UDP socket read with add_reader, drained until EAGAIN on every wake-up.

    A datagram protocol costs a callback and a transport hop per query; draining the socket in
    one callback answers a burst of blocked or cached queries with a recvfrom and a sendto each.
    """

    def __init__(self, sock: socket.socket, answerer: Answerer, stats: ListenerStats) -> None:
        self.sock = sock
        self.answerer = answerer
        self.stats = stats
        self.pending: set[asyncio.Task[None]] = set()
        sock.setblocking(False)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        answer_now = self.answerer.answer_now
        count = 0
        for _ in range(256):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            count += 1
            reply = answer_now(data, addr[0])
            if reply is LATER:
                if len(self.pending) >= MAX_PENDING_UDP:
                    self.stats.dropped_busy += 1
                    continue
                task = self.loop.create_task(self._later(data, addr))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            elif reply is not None:
                # A try block costs nothing until it raises; a suppress() context manager costs a call.
                try:  # noqa: SIM105
                    sendto(reply, addr)  # type: ignore[arg-type]
                except OSError:
                    pass
        self.stats.udp_queries += count

    async def _later(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.answerer.answer_later(data, addr[0], False)
        if reply is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                self.sock.sendto(reply, addr)


async def _serve_tcp(
    answerer: Answerer, stats: ListenerStats, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """RFC 7766: length-prefixed messages, pipelined, answered in any order, bounded."""
    peer = writer.get_extra_info("peername")
    client = peer[0] if peer else ""
    in_flight = asyncio.Semaphore(MAX_TCP_PIPELINE)
    tasks: set[asyncio.Task[None]] = set()
    write_lock = asyncio.Lock()

    async def send(reply: bytes) -> None:
        async with write_lock:
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()

    async def later(data: bytes) -> None:
        try:
            reply = await answerer.answer_later(data, client, True)
            if reply is not None:
                await send(reply)
        finally:
            in_flight.release()

    stats.tcp_connections += 1
    try:
        while True:
            try:
                header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                data = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", header)[0]), TCP_IDLE_TIMEOUT
                )
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                break
            stats.tcp_queries += 1
            reply = answerer.answer_now(data, client)
            if reply is LATER:
                await in_flight.acquire()
                task = asyncio.ensure_future(later(data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif isinstance(reply, bytes):
                await send(reply)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
    except ConnectionError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        stats.tcp_connections -= 1
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class DnsListeners:
    """UDP and TCP listeners on every configured address."""

    answerer: Answerer
    addresses: list[str]
    stats: ListenerStats = field(default_factory=ListenerStats)
    socket_setup: Callable[[socket.socket], None] | None = None

    def __post_init__(self) -> None:
        self._udp: list[UdpListener] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._connections = asyncio.Semaphore(MAX_TCP_CONNECTIONS)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for text in self.addresses:
            host, port = parse_hostport(text, 53)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.socket_setup is not None:
                self.socket_setup(udp)
            udp.bind((host, port))
            listener = UdpListener(udp, self.answerer, self.stats)
            listener.start(loop)
            self._udp.append(listener)

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if self._connections.locked():
                    writer.close()
                    return
                async with self._connections:
                    await _serve_tcp(self.answerer, self.stats, reader, writer)

            server = await asyncio.start_server(handle, host, port, reuse_address=True, backlog=128)
            self._servers.append(server)
            log.info("DNS listening on %s port %d (UDP and TCP)", host, port)

    async def close(self) -> None:
        for listener in self._udp:
            listener.close()
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
