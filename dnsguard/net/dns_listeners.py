"""DNS listeners: UDP and TCP sockets in front of a resolver (the LAN DNS of a gateway).

The resolver answers most queries synchronously (blocked, cached, local) and only some need an
upstream round trip; the listeners call the synchronous path inline, so a blocked or cached
answer costs one receive, one lookup and one send, and start a task only for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dnsguard.config.addresses import parse_hostport
from dnsguard.config.model import CLIENT_NETWORK_KEYWORDS, ResolverConfig
from dnsguard.dns import wire
from dnsguard.dns.admission import AdmissionSettings, ClientAdmission
from dnsguard.dns.resolver import Forward
from dnsguard.net.bind import bind_socket, listening_socket, open_socket, socket_error
from dnsguard.net.mmsg import QUERY_SLOT_SIZE, QueryBatch, SenderReplies, SingleDatagram
from dnsguard.net.readers import stop_reading

log = logging.getLogger("dnsguard.dns")

ioctl = fcntl.ioctl
FIONREAD: Final = termios.FIONREAD
_NOTHING_WAITING: Final = bytes(4)
SocketAddress = tuple[Any, ...]
"""A UDP sender as recvfrom names it: (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6."""

MAX_TCP_PIPELINE = 32
"""Queries of one TCP connection waiting for an upstream at once (RFC 7766 6.2.1.1 pipelining)."""
MAX_PENDING_UDP = 4096
INTERNAL_ERROR_LOG_INTERVAL: Final = 60.0
"""Seconds between log lines about queries that raised inside the resolver (each is counted)."""
DRAIN_LIMIT: Final = 256
"""Datagrams read per wake-up before the event loop gets a turn (timers, TCP, upstream replies)."""
QUIET_GAP: Final = 0.001
"""Seconds from the end of one wake-up of a UDP listener to the start of the next, at or beyond which,
if that one read a single datagram, the socket counts as quiet: the wake-up reads one datagram with
recvfrom, answers it with sendto and returns. Below a few hundred queries a second (a home network's
DNS) almost every query meets a quiet socket; at 10,000 a second almost none does, and a wake-up there
reads its first two queries the same way, then drains in batches whatever else waits (with a gap of 20 us,
58% of the wake-ups there were quiet ones, and the p99 was no better than with every wake-up
draining, in most rounds a little worse)."""


class Answerer(Protocol):
    """What the listeners need: the resolver core's answer_now and the forwarder's answer_later (see
    dnsguard.net.forwarding.Forwarder)."""

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | Forward | None:
        """The reply if it can be given without waiting, a plan to forward, or None to drop."""

    def answer_later(self, plan: Forward) -> Awaitable[bytes | None]:
        """The reply once the upstreams answered the plan (or None to drop)."""


@dataclass
class TcpSettings:
    """DNS over TCP limits (config `resolver.tcp`); the per-client cap lives in ClientAdmission."""

    max_connections: int = 256
    idle_timeout: float = 10.0
    """Seconds a connection may take to deliver its next whole message (a slow sender gains nothing)."""
    max_lifetime: float = 120.0


@dataclass
class ListenerStats:
    udp_queries: int = 0
    tcp_queries: int = 0
    dropped_busy: int = 0
    tcp_connections: int = 0
    """TCP connections open now."""
    tcp_timeouts: int = 0
    """Connections closed because a whole message did not arrive within the idle timeout, or aged out."""
    tcp_bad_frames: int = 0
    """Connections closed mid-message (a length prefix whose message never came)."""
    internal_errors: int = 0
    """Queries whose handling raised; each got FORMERR or nothing, and the listener carried on."""
    _last_error_log: float = field(default=float("-inf"), repr=False)

    def internal_error(self, exc: BaseException, now: float) -> None:
        """Count a query that raised and log it at a bounded rate, one line, no traceback."""
        self.internal_errors += 1
        if now - self._last_error_log >= INTERNAL_ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.error(
                "a query could not be handled (%s: %s); %d so far, answered FORMERR or dropped",
                type(exc).__name__,
                str(exc)[:200],
                self.internal_errors,
            )


def _error_reply(data: bytes) -> bytes | None:
    """FORMERR for a query that broke the resolver, if it has an ID to answer."""
    try:
        return wire.formerr(data)
    except Exception:
        return None


class UdpListener:
    """One UDP socket read with add_reader, drained until EAGAIN on a busy socket's wake-ups.

    A datagram protocol costs a callback and a transport hop per query; draining the socket in
    one callback answers a burst of blocked or cached queries with one recvmmsg and one sendmmsg per
    64 (net/mmsg.py), or a recvfrom and a sendto each where libc lacks them (`batch=False` too).
    Every wake-up reads its first query with recvfrom and answers it with sendto, which through the
    socket module cost less than a batch of one through ctypes. On a quiet socket's wake-up
    (QUIET_GAP) that is all: no further read looks for a second (readiness is level-triggered: one
    that waits wakes the loop again at once). Any other wake-up then asks the kernel whether another
    datagram waits (FIONREAD, a system call that raises nothing), reads that one the same way, asks
    again and drains in batches only if a third waits: at 10,000 queries a second most wake-ups find
    one query or two, and a batch of one after a lone read costs more than a second lone read.
    Every datagram passes admission first (allowed source, rate, upstream slots of its client), and
    nothing a datagram holds can end the drain loop: a query that raises is counted and answered
    FORMERR.
    """

    def __init__(
        self,
        sock: socket.socket,
        answerer: Answerer,
        stats: ListenerStats,
        *,
        batch: bool = True,
        admission: ClientAdmission | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sock = sock
        self.answerer = answerer
        self.stats = stats
        self.admission = admission
        self.clock = clock
        self.pending: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        self.queries: QueryBatch | SingleDatagram = (
            QueryBatch.for_socket(sock) if batch else None
        ) or SingleDatagram(sock)
        self.batch = (
            SenderReplies.for_queries(sock, self.queries) if isinstance(self.queries, QueryBatch) else None
        )
        self._recvfrom = sock.recvfrom
        """The reader of a wake-up's first datagram, and of a busy one's second (_one)."""
        self._fileno = sock.fileno()
        self._waiting = bytearray(4)
        """FIONREAD's answer: the length of the next datagram waiting, 0 for none."""
        self._got = 0
        """Datagrams the last wake-up read."""
        self._done = -QUIET_GAP
        """When the last wake-up ended (the clock's reading)."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a loop already closed
            stop_reading(self.loop, self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        now = self.clock()
        quiet = self._got < 2 and now - self._done >= QUIET_GAP
        count = 0
        try:
            if quiet or self.batch is not None:
                count = self._one(now)
                if quiet or not count or not self._more_waiting():
                    return
                count += self._one(now)  # a pair costs less this way than with a batch of one
                if not self._more_waiting():
                    return
            count += self._drain(now)
        except Exception as exc:  # a fault outside a query's own handling: counted, the socket stays read
            self.stats.internal_error(exc, now)
        finally:
            self.stats.udp_queries += count
            self._got = count
            self._done = self.clock()

    def _more_waiting(self) -> bool:
        """Whether another datagram waits in the socket (FIONREAD gives the next one's length; one of
        0 bytes reads as none, and the level-triggered readiness brings it at once)."""
        try:
            ioctl(self._fileno, FIONREAD, self._waiting)
        except OSError:
            return True  # let the drain find out
        return self._waiting != _NOTHING_WAITING

    def _drain(self, now: float) -> int:
        """Read what waits in batches (DRAIN_LIMIT a wake-up) and answer it; returns the datagrams read."""
        queries = self.queries
        batch = self.batch
        reply_to: Callable[[bytes, int], bool | None] = self._send_one if batch is None else batch.reply
        reads = DRAIN_LIMIT // queries.slots
        slots = queries.slots
        answer_now = self.answerer.answer_now
        admit = self.admission.admit if self.admission is not None else None
        count = 0
        try:
            for _ in range(reads):
                if batch is not None and batch.count:
                    batch.flush()  # the replies point at the senders' addresses, which receive() rewrites
                try:
                    received = queries.receive()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue
                count += received
                for slot, (data, client) in enumerate(queries.datagrams()):
                    key = ""
                    if admit is not None:
                        admitted = admit(client, now)
                        if admitted is None:
                            continue
                        key = admitted
                    # A try block costs nothing until it raises; a suppress() context manager costs a call.
                    try:
                        reply = answer_now(data, client)
                    except Exception as exc:
                        self.stats.internal_error(exc, now)
                        reply = _error_reply(data)
                    if reply.__class__ is bytes:
                        try:
                            if reply_to(reply, slot) is False:
                                self._send_one(reply, slot)
                        except OSError:
                            pass
                    elif reply is not None:
                        try:
                            self._go_later(reply, data, queries.sender(slot), key)  # type: ignore[arg-type]
                        except Exception as exc:
                            self.stats.internal_error(exc, now)
                if received < slots:
                    break  # the socket is drained
        finally:
            if batch is not None and batch.count:
                batch.flush()
        return count

    def _send_one(self, reply: bytes, slot: int) -> None:
        """Send `reply` to the sender of the `slot`th datagram of the last receive, on its own."""
        self.sock.sendto(reply, self.queries.sender(slot))

    def _one(self, now: float) -> int:
        """One datagram (a wake-up's first, a busy one's second), read with recvfrom and answered with
        sendto on the drain's terms (the same cut, admission, FORMERR for a query that raises,
        forwarding), in the fewest steps: at a low rate every query costs this. Returns the datagrams
        read (0 or 1)."""
        try:
            data, sender = self._recvfrom(QUERY_SLOT_SIZE)
        except OSError:  # nothing waiting (BlockingIOError), a signal, or an ICMP error reported
            return 0
        client = sender[0]
        key = ""
        admission = self.admission
        if admission is not None:
            admitted = admission.admit(client, now)
            if admitted is None:
                return 1
            key = admitted
        try:
            reply = self.answerer.answer_now(data, client)
        except Exception as exc:
            self.stats.internal_error(exc, now)
            reply = _error_reply(data)
        if reply.__class__ is bytes:
            try:  # a try, not suppress(): it costs nothing until it raises  # noqa: SIM105
                self.sock.sendto(reply, sender)
            except OSError:
                pass
        elif reply is not None:
            try:
                self._go_later(reply, data, sender, key)  # type: ignore[arg-type]
            except Exception as exc:
                self.stats.internal_error(exc, now)
        return 1

    def _go_later(self, plan: Forward, data: bytes, addr: SocketAddress, key: str) -> None:
        if len(self.pending) >= MAX_PENDING_UDP:
            self.stats.dropped_busy += 1
            return
        admission = self.admission
        if admission is not None and not admission.begin_upstream(key):
            return
        task = self.loop.create_task(self._later(plan, data, addr, key))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _later(self, plan: Forward, data: bytes, addr: SocketAddress, key: str) -> None:
        try:
            reply = await self.answerer.answer_later(plan)
        except Exception as exc:
            self.stats.internal_error(exc, self.clock())
            reply = _error_reply(data)
        finally:
            if self.admission is not None:
                self.admission.end_upstream(key)
        if reply is not None:
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                self.sock.sendto(reply, addr)


async def _serve_tcp(
    answerer: Answerer,
    stats: ListenerStats,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    settings: TcpSettings,
    admission: ClientAdmission | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """RFC 7766: length-prefixed messages, pipelined, answered in any order, bounded.

    Each whole message (length and body) must arrive within `idle_timeout` of the previous one, so a
    client that trickles a byte at a time holds its slot no longer than one that sends nothing; a
    connection lives at most `max_lifetime`.
    """
    peer = writer.get_extra_info("peername")
    client = peer[0] if peer else ""
    in_flight = asyncio.Semaphore(MAX_TCP_PIPELINE)
    tasks: set[asyncio.Task[None]] = set()
    write_lock = asyncio.Lock()
    closes_at = clock() + settings.max_lifetime

    async def send(reply: bytes) -> None:
        async with write_lock:
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()

    async def later(plan: Forward, data: bytes, key: str) -> None:
        try:
            try:
                reply = await answerer.answer_later(plan)
            except Exception as exc:
                stats.internal_error(exc, clock())
                reply = _error_reply(data)
            if reply is not None:
                with contextlib.suppress(OSError):  # the client went away: nothing to answer
                    await send(reply)
        finally:
            in_flight.release()
            if admission is not None:
                admission.end_upstream(key)

    try:
        while True:
            now = clock()
            wait = min(settings.idle_timeout, closes_at - now)
            if wait <= 0:
                stats.tcp_timeouts += 1
                break
            got_header = False
            try:
                async with asyncio.timeout(wait):
                    header = await reader.readexactly(2)
                    got_header = True
                    data = await reader.readexactly(struct.unpack("!H", header)[0])
            except TimeoutError:
                stats.tcp_timeouts += 1
                break
            except asyncio.IncompleteReadError:
                if got_header:
                    stats.tcp_bad_frames += 1
                break
            except ConnectionError:
                break
            stats.tcp_queries += 1
            key = ""
            if admission is not None:
                admitted = admission.admit(client, clock())
                if admitted is None:
                    continue
                key = admitted
            try:
                reply = answerer.answer_now(data, client, True)
            except Exception as exc:
                stats.internal_error(exc, clock())
                reply = _error_reply(data)
            if isinstance(reply, bytes):
                await send(reply)
            elif reply is not None:
                if admission is not None and not admission.begin_upstream(key):
                    continue
                await in_flight.acquire()
                task = asyncio.ensure_future(later(reply, data, key))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
    except ConnectionError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def allowed_local_networks(
    config: ResolverConfig, local_networks: Sequence[str], tunnel_networks: Sequence[str]
) -> list[str]:
    """The networks `resolver.allow-clients` answers per address: its keywords spelled out.

    `local_networks` is what `local-networks` means for this daemon, `tunnel_networks` what `tunnel`
    means.
    """
    allow = config.allow_clients
    chosen: list[str] = []
    if "loopback" in allow:
        chosen += LOOPBACK_NETWORKS
    if "local-networks" in allow:
        chosen += local_networks
    if "tunnel" in allow:
        chosen += tunnel_networks
    return list(dict.fromkeys(chosen))


def admission_for(config: ResolverConfig, local: Sequence[str]) -> ClientAdmission:
    """The admission policy of `resolver`: `local` from allowed_local_networks; the CIDRs of
    `allow-clients` are remote networks, rate-limited per prefix."""
    rate = config.rate_limit
    settings = AdmissionSettings(
        queries_per_second=rate.queries_per_second,
        burst=rate.burst,
        remote_ipv4_prefix=rate.remote_ipv4_prefix,
        remote_ipv6_prefix=rate.remote_ipv6_prefix,
        max_upstream_per_client=config.max_upstream_per_client,
        max_tcp_per_client=config.tcp.max_per_client,
    )
    remote = [item for item in config.allow_clients if item not in CLIENT_NETWORK_KEYWORDS]
    return ClientAdmission(settings, local, remote, rate.exempt)


def tcp_settings(config: ResolverConfig) -> TcpSettings:
    tcp = config.tcp
    return TcpSettings(
        max_connections=tcp.max_connections,
        idle_timeout=float(tcp.idle_timeout),
        max_lifetime=float(tcp.max_lifetime),
    )


LOOPBACK_NETWORKS: Final = ["127.0.0.0/8", "::1/128"]

ClientNetworks = Callable[[], Awaitable[Sequence[str]]]
"""Reads the networks of `allow-clients` answered per address (allowed_local_networks), as CIDRs."""
NETWORK_REFRESH_INTERVAL: Final = 30.0
"""Seconds between re-reads of the local networks (a DHCP lease or a new LAN address)."""


@dataclass
class DnsListeners:
    """UDP and TCP listeners on every configured address, in front of one admission policy."""

    answerer: Answerer
    addresses: list[str]
    stats: ListenerStats = field(default_factory=ListenerStats)
    socket_setup: Callable[[socket.socket], None] | None = None
    admission: ClientAdmission | None = None
    tcp: TcpSettings = field(default_factory=TcpSettings)
    local_networks: ClientNetworks | None = None
    """When set, re-read every NETWORK_REFRESH_INTERVAL into the admission's local networks."""

    def __post_init__(self) -> None:
        self._udp: list[UdpListener] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for text in self.addresses:
            host, port = parse_hostport(text, 53)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            udp = open_socket(family, socket.SOCK_DGRAM, host, port, "DNS")
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            try:
                if family == socket.AF_INET6:
                    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if self.socket_setup is not None:
                    self.socket_setup(udp)  # e.g. SO_MARK, which needs CAP_NET_ADMIN
            except OSError as exc:
                udp.close()
                raise socket_error(exc, host, port, "DNS") from None
            # No SO_REUSEADDR on UDP: a second daemon on the same port must fail, not share it.
            bind_socket(udp, host, port, "DNS")
            listener = UdpListener(udp, self.answerer, self.stats, admission=self.admission)
            listener.start(loop)
            self._udp.append(listener)
            tcp = listening_socket(host, port, socket.SOCK_STREAM, "DNS over TCP", backlog=128)
            server = await asyncio.start_server(self._handle_tcp, sock=tcp)
            self._servers.append(server)
            log.info("DNS listening on %s port %d (UDP and TCP)", host, port)
        if self.local_networks is not None and self.admission is not None:
            self._refresher = asyncio.create_task(self._refresh_networks())

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats, admission = self.stats, self.admission
        peer = writer.get_extra_info("peername")
        key: str | None = ""
        if admission is not None:
            key = admission.key_of(peer[0]) if peer else None
            if key is None:
                admission.stats.outside += 1
            elif not admission.open_tcp(key):
                key = None
        elif stats.tcp_connections >= self.tcp.max_connections:
            key = None
        if key is not None and stats.tcp_connections >= self.tcp.max_connections:
            if admission is not None:
                admission.stats.tcp_full += 1
                admission.close_tcp(key)
            key = None
        if key is None:
            writer.transport.abort()
            return
        stats.tcp_connections += 1
        try:
            await _serve_tcp(self.answerer, stats, reader, writer, self.tcp, admission)
        finally:
            stats.tcp_connections -= 1
            if admission is not None:
                admission.close_tcp(key)

    def set_admission(self, admission: ClientAdmission, tcp: TcpSettings) -> None:
        """Apply new limits (a reload); connections already open keep the caps they were counted under."""
        self.admission = admission
        self.tcp = tcp
        for listener in self._udp:
            listener.admission = admission

    async def _refresh_networks(self) -> None:
        while True:
            await asyncio.sleep(NETWORK_REFRESH_INTERVAL)
            if self.local_networks is None or self.admission is None:
                continue
            try:
                networks = await self.local_networks()
            except Exception as exc:
                log.warning("could not read the local networks, keeping the last ones: %s", exc)
                continue
            if {str(ipaddress.ip_network(n, strict=False)) for n in networks} != {
                str(n) for n in self.admission.networks[0]
            }:
                log.info("clients allowed from the local networks: %s", ", ".join(networks))
                self.admission.set_networks(networks)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for listener in self._udp:
            listener.close()
        for server in self._servers:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
