"""DNS listeners: UDP and TCP sockets in front of a resolver (the LAN DNS of a gateway).

The resolver answers most queries synchronously (blocked, cached, local) and only some need an
upstream round trip; the listeners call the synchronous path inline, so a blocked or cached
answer costs one receive, one lookup and one send, and start a task only for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from dnsguard.config.addresses import parse_hostport
from dnsguard.dns.resolver import LATER, _Later
from dnsguard.net.bind import bind_socket, listening_socket

log = logging.getLogger("dnsguard.dns")

MAX_TCP_CONNECTIONS = 256
MAX_TCP_PIPELINE = 32
TCP_IDLE_TIMEOUT = 30.0
MAX_PENDING_UDP = 4096
DRAIN_LIMIT: Final = 256
"""Datagrams read per wake-up before the event loop gets a turn (timers, TCP, upstream replies)."""
BATCH_SLOTS: Final = 64
BATCH_SLOT_SIZE: Final = 2048
"""Replies larger than this (rare: big cached answers to EDNS clients) are sent on their own."""


class Answerer(Protocol):
    """What the listeners need from a resolver (see dnsguard.dns.resolver.Resolver)."""

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | _Later | None:
        """The reply if it can be given without waiting, LATER to go async, None to drop."""

    def answer_later(self, data: bytes, client: str, tcp: bool) -> Awaitable[bytes | None]:
        """The reply after upstream work (or None to drop)."""


@dataclass
class ListenerStats:
    udp_queries: int = 0
    tcp_queries: int = 0
    dropped_busy: int = 0
    tcp_connections: int = 0


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


def _libc_sendmmsg() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_SENDMMSG: Final = _libc_sendmmsg()
_IOVEC_SIZE: Final = ctypes.sizeof(_Iovec)
_IOVEC_LEN_OFFSET: Final = _Iovec.iov_len.offset
_SOCKADDR_SIZE: Final = 28  # sockaddr_in6; a sockaddr_in uses the first 16 bytes
_pack_size = struct.Struct("@N").pack_into
_pack_port_ipv4 = struct.Struct(">H4s").pack_into
_pack_port_ipv6 = struct.Struct(">HI16s").pack_into
_pack_scope = struct.Struct("@I").pack_into
_inet_aton = socket.inet_aton


class ReplyBatch:
    """UDP replies gathered while draining the socket, handed to the kernel with one sendmmsg(2).

    A sendto per reply costs a system call and, when the client sleeps between replies, a wake-up of
    the client each time (an inter-processor interrupt, expensive in a VM); a batch pays both once.
    The replies are copied into fixed slots that the prebuilt message headers point at, so adding a
    reply costs two `pack_into` calls and one copy.
    """

    def __init__(self, sock: socket.socket, send: Callable[[int, int, int, int], int]) -> None:
        self._fileno = sock.fileno()
        self._send = send
        self._ipv6 = sock.family == socket.AF_INET6
        self.count = 0
        self._headers = (_Mmsghdr * BATCH_SLOTS)()
        self._iovecs = (_Iovec * BATCH_SLOTS)()
        self._names = (ctypes.c_char * (_SOCKADDR_SIZE * BATCH_SLOTS))()
        self._data = (ctypes.c_char * (BATCH_SLOT_SIZE * BATCH_SLOTS))()
        self._iovec_bytes = memoryview(self._iovecs).cast("B")
        self._name_bytes = memoryview(self._names).cast("B")
        self._data_bytes = memoryview(self._data).cast("B")
        self._header_size = ctypes.sizeof(_Mmsghdr)
        self._headers_address = ctypes.addressof(self._headers)
        names_address = ctypes.addressof(self._names)
        data_address = ctypes.addressof(self._data)
        family = struct.pack("@H", sock.family)
        for slot in range(BATCH_SLOTS):
            self._iovecs[slot].iov_base = data_address + slot * BATCH_SLOT_SIZE
            name = slot * _SOCKADDR_SIZE
            self._name_bytes[name : name + 2] = family
            header = self._headers[slot].msg_hdr
            header.msg_name = names_address + name
            header.msg_namelen = _SOCKADDR_SIZE if self._ipv6 else 16
            header.msg_iov = ctypes.addressof(self._iovecs[slot])
            header.msg_iovlen = 1

    @classmethod
    def for_socket(cls, sock: socket.socket) -> ReplyBatch | None:
        """A batch for an AF_INET or AF_INET6 datagram socket; None where sendmmsg is missing."""
        if _SENDMMSG is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, _SENDMMSG)

    def add(self, reply: bytes, addr: tuple[str, int]) -> bool:
        """Queue `reply` for `addr` (sending the batch when full); False: send it some other way."""
        size = len(reply)
        if size > BATCH_SLOT_SIZE:
            return False
        slot = self.count
        try:
            if self._ipv6:
                address = socket.inet_pton(socket.AF_INET6, addr[0])
                name = slot * _SOCKADDR_SIZE
                _pack_port_ipv6(self._name_bytes, name + 2, addr[1], addr[2], address)  # type: ignore[misc]
                _pack_scope(self._name_bytes, name + 24, addr[3])  # type: ignore[misc]
            else:
                _pack_port_ipv4(self._name_bytes, slot * _SOCKADDR_SIZE + 2, addr[1], _inet_aton(addr[0]))
        except (OSError, ValueError, IndexError, struct.error):
            return False  # e.g. a link-local IPv6 source with a zone: sendto knows how to handle it
        _pack_size(self._iovec_bytes, slot * _IOVEC_SIZE + _IOVEC_LEN_OFFSET, size)
        start = slot * BATCH_SLOT_SIZE
        self._data_bytes[start : start + size] = reply
        self.count = slot + 1
        if slot + 1 == BATCH_SLOTS:
            self.flush()
        return True

    def flush(self) -> None:
        """Send the queued replies; one that the kernel refuses is dropped, as a failed sendto would be."""
        count = self.count
        self.count = 0
        sent = 0
        while sent < count:
            result = self._send(
                self._fileno, self._headers_address + sent * self._header_size, count - sent, 0
            )
            sent += result if result > 0 else 1


class UdpListener:
    """One UDP socket read with add_reader, drained until EAGAIN on every wake-up.

    A datagram protocol costs a callback and a transport hop per query; draining the socket in
    one callback answers a burst of blocked or cached queries with a recvfrom and a sendto each.
    """

    def __init__(
        self, sock: socket.socket, answerer: Answerer, stats: ListenerStats, *, batch: bool = True
    ) -> None:
        self.sock = sock
        self.answerer = answerer
        self.stats = stats
        self.pending: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.batch = ReplyBatch.for_socket(sock) if batch else None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        recvfrom = self.sock.recvfrom
        answer_now = self.answerer.answer_now
        batch = self.batch
        send = self.sock.sendto if batch is None else batch.add
        sendto = self.sock.sendto
        count = 0
        try:
            for _ in range(DRAIN_LIMIT):
                try:
                    data, addr = recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                count += 1
                reply = answer_now(data, addr[0])
                if reply is LATER:
                    self._go_later(data, addr)
                elif reply is not None:
                    # A try block costs nothing until it raises; a suppress() context manager costs a call.
                    try:
                        if send(reply, addr) is False:  # type: ignore[arg-type]
                            sendto(reply, addr)  # type: ignore[arg-type]
                    except OSError:
                        pass
        finally:
            if batch is not None and batch.count:
                batch.flush()
            self.stats.udp_queries += count

    def _go_later(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self.pending) >= MAX_PENDING_UDP:
            self.stats.dropped_busy += 1
            return
        task = self.loop.create_task(self._later(data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

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
            reply = answerer.answer_now(data, client, True)
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
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.socket_setup is not None:
                self.socket_setup(udp)
            # No SO_REUSEADDR on UDP: a second daemon on the same port must fail, not share it.
            bind_socket(udp, host, port, "DNS")
            listener = UdpListener(udp, self.answerer, self.stats)
            listener.start(loop)
            self._udp.append(listener)

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                if self._connections.locked():
                    writer.close()
                    return
                async with self._connections:
                    await _serve_tcp(self.answerer, self.stats, reader, writer)

            tcp = listening_socket(host, port, socket.SOCK_STREAM, "DNS over TCP", backlog=128)
            server = await asyncio.start_server(handle, sock=tcp)
            self._servers.append(server)
            log.info("DNS listening on %s port %d (UDP and TCP)", host, port)

    async def close(self) -> None:
        for listener in self._udp:
            listener.close()
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
