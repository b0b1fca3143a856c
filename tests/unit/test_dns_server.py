"""The UDP listener's drain loop and its recvmmsg and sendmmsg batches, on loopback sockets (no root)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

from dnsguard.dns.admission import AdmissionSettings, ClientAdmission
from dnsguard.dns.resolver import Forward
from dnsguard.net import dns_listeners
from dnsguard.net.dns_listeners import QUIET_GAP, DnsListeners, ListenerStats, TcpSettings, UdpListener
from dnsguard.net.mmsg import (
    BATCH_SLOT_SIZE,
    BATCH_SLOTS,
    QUERY_SLOT_SIZE,
    RECVMMSG,
    SENDER_TABLE_SIZE,
    SENDMMSG,
    QueryBatch,
    ReplyBatch,
    SenderReplies,
)


@contextlib.contextmanager
def closed_after(server: socket.socket, clients: list[socket.socket]) -> Iterator[None]:
    """Close udp_pair's sockets when the block ends, however it ends."""
    try:
        yield
    finally:
        server.close()
        for client in clients:
            client.close()


def udp_pair(family: socket.AddressFamily, host: str) -> tuple[socket.socket, list[socket.socket]]:
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    clients = []
    for _ in range(3):
        client = socket.socket(family, socket.SOCK_DGRAM)
        client.bind((host, 0))
        client.settimeout(2)
        clients.append(client)
    return server, clients


def families() -> Iterator[tuple[socket.AddressFamily, str]]:
    yield socket.AF_INET, "127.0.0.1"
    if socket.has_ipv6:
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
        except OSError:
            return
        yield socket.AF_INET6, "::1"


def query_batch(
    family: socket.AddressFamily, host: str
) -> tuple[socket.socket, list[socket.socket], QueryBatch]:
    """A non-blocking server socket, its three clients and the server's QueryBatch."""
    server, clients = udp_pair(family, host)
    server.setblocking(False)
    batch = QueryBatch.for_socket(server)
    assert batch is not None
    return server, clients, batch


@pytest.mark.parametrize(("family", "host"), list(families()))
def test_a_batch_delivers_every_reply_to_its_client_in_order(family: socket.AddressFamily, host: str) -> None:
    server, clients = udp_pair(family, host)
    batch = ReplyBatch.for_socket(server)
    assert batch is not None
    count = BATCH_SLOTS * 2 + 5  # two full batches sent on the way, five left for flush
    for i in range(count):
        assert batch.add(b"reply %d " % i + bytes(i), clients[i % 3].getsockname())
    assert batch.count == 5
    batch.flush()
    assert batch.count == 0
    for i in range(count):
        assert clients[i % 3].recv(4096) == b"reply %d " % i + bytes(i)


def test_a_reply_bigger_than_a_slot_is_left_to_the_caller() -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    batch = ReplyBatch.for_socket(server)
    assert batch is not None
    assert not batch.add(bytes(BATCH_SLOT_SIZE + 1), clients[0].getsockname())
    assert batch.add(bytes(BATCH_SLOT_SIZE), clients[0].getsockname()) and batch.count == 1


@pytest.mark.parametrize(("family", "host"), list(families()))
def test_a_query_batch_reads_what_recvfrom_would(family: socket.AddressFamily, host: str) -> None:
    server, clients, batch = query_batch(family, host)
    with pytest.raises(BlockingIOError):
        batch.receive()
    sent = [(clients[i % 3], b"query %d " % i + bytes(i)) for i in range(BATCH_SLOTS + 7)]
    for client, message in sent:
        client.sendto(message, server.getsockname())
    received = []
    while len(received) < len(sent):
        batch.receive()
        received += [(*datagram, batch.sender(slot)) for slot, datagram in enumerate(batch.datagrams())]
    assert [data for data, _, _ in received] == [message for _, message in sent]
    assert [sender for _, _, sender in received] == [client.getsockname() for client, _ in sent]
    assert [host for _, host, _ in received] == [host] * len(sent)
    # recvfrom's own view of a sender, field by field (the IPv6 form has flow info and scope too)
    clients[0].sendto(b"one more", server.getsockname())
    assert batch.receive() == 1
    clients[0].sendto(b"one more", server.getsockname())
    data, sender = server.recvfrom(4096)
    assert batch.datagrams() == [(data, sender[0])] and batch.sender(0) == sender


def test_the_sender_table_is_emptied_when_full_and_still_names_every_sender() -> None:
    server, clients, batch = query_batch(socket.AF_INET, "127.0.0.1")
    batch._hosts.update((bytes([198, 18, i >> 8, i & 255]), "198.18.x.x") for i in range(SENDER_TABLE_SIZE))
    clients[0].sendto(b"q", server.getsockname())
    assert batch.receive() == 1
    assert batch.datagrams() == [(b"q", "127.0.0.1")]
    assert batch._hosts == {b"\x7f\x00\x00\x01": "127.0.0.1"}  # emptied, then this sender kept


@pytest.mark.parametrize(("family", "host"), list(families()))
def test_replies_to_senders_reach_each_sender_of_their_slot(family: socket.AddressFamily, host: str) -> None:
    server, clients, queries = query_batch(family, host)
    replies = SenderReplies.for_queries(server, queries)
    assert replies is not None
    for i in range(5):
        clients[i % 3].sendto(b"query %d" % i, server.getsockname())
    assert queries.receive() == 5
    for slot in (4, 0, 2):  # any slots, in any order: each reply goes to its own query's sender
        assert replies.reply(b"reply %d" % slot, slot)
    assert not replies.reply(bytes(BATCH_SLOT_SIZE + 1), 1)  # too big for a slot: the caller sends it
    replies.flush()
    assert clients[1].recv(4096) == b"reply 4"
    assert clients[0].recv(4096) == b"reply 0"
    assert clients[2].recv(4096) == b"reply 2"
    with pytest.raises(TypeError):
        replies.add(b"reply", clients[0].getsockname())


def test_replies_to_a_full_batch_of_senders_leave_when_the_last_slot_fills() -> None:
    server, clients, queries = query_batch(socket.AF_INET, "127.0.0.1")
    replies = SenderReplies.for_queries(server, queries)
    assert replies is not None
    for i in range(BATCH_SLOTS):
        clients[i % 3].sendto(b"query %d" % i, server.getsockname())
    assert queries.receive() == BATCH_SLOTS
    for slot in range(BATCH_SLOTS):
        assert replies.reply(b"reply %d " % slot + bytes(slot), slot)
    assert replies.count == 0  # sent with the last one, no flush needed
    for slot in range(BATCH_SLOTS):
        assert clients[slot % 3].recv(4096) == b"reply %d " % slot + bytes(slot)


def test_a_query_longer_than_a_slot_arrives_cut() -> None:
    server, clients, batch = query_batch(socket.AF_INET, "127.0.0.1")
    clients[0].sendto(bytes(range(256)) * 20, server.getsockname())
    clients[1].sendto(b"next", server.getsockname())
    assert batch.receive() == 2
    first, second = batch.datagrams()
    assert first[0] == (bytes(range(256)) * 20)[:QUERY_SLOT_SIZE]
    assert second == (b"next", "127.0.0.1")
    assert batch.sender(1) == clients[1].getsockname()


class Later(NamedTuple):
    """The fake's forward plan: the listener only carries it back to answer_later."""

    data: bytes


class EchoAnswerer:
    """Answers b"now:..." at once, b"later:..." through answer_later, drops everything else."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | Forward | None:
        self.clients.append(client)
        if data.startswith(b"now:"):
            return b"answer " + data
        if data.startswith(b"later:"):
            return Later(data)  # type: ignore[return-value]
        return None

    async def answer_later(self, plan: Forward) -> bytes | None:
        await asyncio.sleep(0)
        return b"answer " + plan[0]


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize(("family", "host"), list(families()))
async def test_the_listener_answers_now_later_and_drops(
    batch: bool, family: socket.AddressFamily, host: str
) -> None:
    # IPv6 too: a sender's address is then (host, port, flowinfo, scope_id), which the forward carries.
    server, clients = udp_pair(family, host)
    answerer = EchoAnswerer()
    stats = ListenerStats()
    listener = UdpListener(server, answerer, stats, batch=batch)
    assert (listener.batch is not None) == batch
    assert isinstance(listener.queries, QueryBatch) == batch
    listener.start(asyncio.get_running_loop())
    try:
        address = server.getsockname()
        messages = [b"now:%d" % i for i in range(150)] + [b"drop", b"later:1"]  # more than a batch
        for i, message in enumerate(messages):
            clients[i % 3].sendto(message, address)
        expected: dict[int, list[bytes]] = {i: [] for i in range(3)}
        for i, message in enumerate(messages):
            if message != b"drop":
                expected[i % 3].append(b"answer " + message)
        loop = asyncio.get_running_loop()
        for index, client in enumerate(clients):
            client.setblocking(False)
            for want in expected[index]:
                got = await asyncio.wait_for(loop.sock_recv(client, 4096), 2)
                assert got == want
        assert stats.udp_queries == len(messages)
        assert stats.internal_errors == 0
        assert set(answerer.clients) == {host}
    finally:
        listener.close()
        for client in clients:
            client.close()


class Clock:
    """The listener's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replies_waiting(client: socket.socket) -> list[bytes]:
    """The replies that reached `client` so far."""
    got = []
    client.setblocking(False)
    try:
        while True:
            got.append(client.recv(65535))
    except BlockingIOError:
        pass
    return got


@pytest.mark.parametrize("batch", [True, False])
def test_a_quiet_sockets_wake_up_answers_one_query_and_a_busy_one_drains(batch: bool) -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    clock = Clock()
    stats = ListenerStats()
    listener = UdpListener(server, EchoAnswerer(), stats, batch=batch, clock=clock)
    client = clients[0]
    with closed_after(server, clients):
        for i in range(3):
            client.sendto(b"now:%d" % i, server.getsockname())
        listener._readable()  # the socket was quiet (nothing read yet): one query, no look for more
        assert replies_waiting(client) == [b"answer now:0"]
        listener._readable()  # at once: the rest is drained
        assert replies_waiting(client) == [b"answer now:1", b"answer now:2"]
        assert stats.udp_queries == 3

        for i in range(3, 6):
            client.sendto(b"now:%d" % i, server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()  # the last wake-up read more than one: drained, however long ago that was
        assert replies_waiting(client) == [b"answer now:3", b"answer now:4", b"answer now:5"]

        client.sendto(b"now:6", server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()  # drained (the last read three): finds one
        client.sendto(b"now:7", server.getsockname())
        client.sendto(b"now:8", server.getsockname())
        clock.now += QUIET_GAP / 2
        listener._readable()  # the last read one, but this comes sooner than QUIET_GAP: drained
        assert replies_waiting(client) == [b"answer now:6", b"answer now:7", b"answer now:8"]

        clock.now += 2 * QUIET_GAP
        listener._readable()  # drained (the last read two): finds none
        client.sendto(b"now:9", server.getsockname())
        client.sendto(b"now:10", server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()  # quiet again: one
        assert replies_waiting(client) == [b"answer now:9"]
        assert stats.udp_queries == 10


class CountedListener(NamedTuple):
    """A listener on loopback whose batches are watched: what each of its sendmmsg and recvmmsg calls
    returned (the replies it sent, the queries it read)."""

    listener: UdpListener
    stats: ListenerStats
    client: socket.socket
    batched: list[int]
    received: list[int]

    def send(self, *messages: bytes) -> None:
        for message in messages:
            self.client.sendto(message, self.listener.sock.getsockname())


def counting(function: Callable[..., int], results: list[int]) -> Callable[..., int]:
    """`function` (libc's recvmmsg or sendmmsg), keeping each answer but a failure's -1 in `results`."""

    def counted(*args: Any) -> int:
        result = function(*args)
        if result >= 0:
            results.append(result)
        return result

    return counted


@contextlib.contextmanager
def counted_listener() -> Iterator[CountedListener]:
    """A CountedListener whose clock stands still (skips where libc lacks recvmmsg and sendmmsg).

    The listener's batches are replaced by ones built on counting libc calls: a compiled build's
    methods cannot be wrapped on an instance, and the calls are what the tests are about."""
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    with closed_after(server, clients):
        if RECVMMSG is None or SENDMMSG is None:
            pytest.skip("no recvmmsg and sendmmsg in this libc")
        stats = ListenerStats()
        listener = UdpListener(server, EchoAnswerer(), stats, clock=Clock())
        batched: list[int] = []
        received: list[int] = []
        queries = QueryBatch(server, counting(RECVMMSG, received))
        listener.queries = queries
        listener.batch = SenderReplies(server, counting(SENDMMSG, batched), queries)
        yield CountedListener(listener, stats, clients[0], batched, received)


def test_a_busy_wake_up_answers_its_first_two_queries_alone_and_batches_only_what_else_waits() -> None:
    with counted_listener() as counted:
        listener, client = counted.listener, counted.client
        counted.send(b"now:0", b"now:1")
        listener._readable()  # quiet: one
        listener._readable()  # at once, not quiet: one, and FIONREAD says nothing else waits
        assert replies_waiting(client) == [b"answer now:0", b"answer now:1"]
        assert counted.batched == [] and counted.received == []  # no recvmmsg, no sendmmsg
        counted.send(b"now:2", b"now:3")
        listener._readable()  # not quiet: one, FIONREAD finds another, that one alone too, then none
        assert replies_waiting(client) == [b"answer now:2", b"answer now:3"]
        assert counted.batched == [] and counted.received == []
        counted.send(*[b"now:%d" % i for i in range(4, 9)])
        listener._readable()  # not quiet: two alone, the three behind them in a batch
        assert replies_waiting(client) == [b"answer now:%d" % i for i in range(4, 9)]
        assert counted.batched == [3]  # one sendmmsg
        assert counted.received == [3]
        assert counted.stats.udp_queries == 9

        counted.send(b"now:9", b"")  # FIONREAD reads an empty datagram as none
        listener._readable()
        assert replies_waiting(client) == [b"answer now:9"]
        listener._readable()  # readiness is level-triggered: the loop comes back for it at once
        assert counted.stats.udp_queries == 11
        counted.send(b"now:10", b"now:11", b"")
        listener._readable()  # two alone, and the second FIONREAD reads the empty one as none too
        assert replies_waiting(client) == [b"answer now:10", b"answer now:11"]
        assert counted.stats.udp_queries == 13
        listener._readable()  # the empty one
        listener._readable()  # nothing left: a wake-up that reads nothing does no harm
        assert counted.stats.udp_queries == 14 and counted.received == [3]


def test_a_busy_wake_up_drains_when_fionread_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_args: object) -> int:
        raise OSError(25, "Inappropriate ioctl for device")

    monkeypatch.setattr(dns_listeners, "ioctl", refused)
    with counted_listener() as counted:
        counted.send(*[b"now:%d" % i for i in range(5)])
        counted.listener._readable()  # quiet: one
        counted.listener._readable()  # not quiet: two alone, then a drain finds the rest
        assert replies_waiting(counted.client) == [b"answer now:%d" % i for i in range(5)]
        assert counted.batched == [2]


async def test_a_quiet_wake_up_cuts_forwards_and_admits_as_a_drain_does() -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    clock = Clock()
    answerer = EchoAnswerer()
    admission = ClientAdmission(AdmissionSettings(), local=["127.0.0.0/8"])
    listener = UdpListener(server, answerer, ListenerStats(), admission=admission, clock=clock)
    listener.start(asyncio.get_running_loop())
    address = server.getsockname()
    loop = asyncio.get_running_loop()
    try:
        long_query = b"now:" + bytes(range(256)) * 20
        clients[0].sendto(long_query, address)
        listener._readable()
        assert clients[0].recv(65535) == b"answer " + long_query[:QUERY_SLOT_SIZE]  # as a batch cuts it
        clock.now += 2 * QUIET_GAP
        clients[1].sendto(b"later:1", address)
        listener._readable()
        clients[1].setblocking(False)
        assert await asyncio.wait_for(loop.sock_recv(clients[1], 4096), 2) == b"answer later:1"
        assert answerer.clients == ["127.0.0.1", "127.0.0.1"]
    finally:
        listener.close()
        for client in clients:
            client.close()

    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    admission = ClientAdmission(AdmissionSettings(), local=["192.0.2.0/24"])
    stats = ListenerStats()
    listener = UdpListener(server, EchoAnswerer(), stats, admission=admission, clock=clock)
    with closed_after(server, clients):
        clients[0].sendto(b"now:1", server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()
        assert replies_waiting(clients[0]) == []
        assert admission.stats.outside == 1 and stats.udp_queries == 1  # read, counted, refused


# --- hostile clients ------------------------------------------------------------------------------


class BrokenAnswerer(EchoAnswerer):
    """Raises on b"boom", as a bug in the resolver would."""

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | Forward | None:
        if data.startswith(b"boom"):
            raise RecursionError("maximum recursion depth exceeded")
        return super().answer_now(data, client, tcp)

    async def answer_later(self, plan: Forward) -> bytes | None:
        if plan[0].endswith(b"boom"):
            raise ValueError("broken")
        return await super().answer_later(plan)


def test_a_quiet_wake_up_answers_a_query_that_raises_formerr_and_survives_an_empty_read() -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    clock = Clock()
    stats = ListenerStats()
    listener = UdpListener(server, BrokenAnswerer(), stats, clock=clock)
    client = clients[0]
    with closed_after(server, clients):
        listener._readable()  # a wake-up with nothing to read (another reader took it): no harm
        assert stats.udp_queries == 0
        client.sendto(b"boom" + bytes(20), server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()  # still quiet: the one query, whose handling raises
        (reply,) = replies_waiting(client)
        assert reply[3] & 0x0F == 1 and stats.internal_errors == 1  # RCODE FORMERR, counted
        client.sendto(b"now:1", server.getsockname())
        clock.now += 2 * QUIET_GAP
        listener._readable()
        assert replies_waiting(client) == [b"answer now:1"]
        assert stats.udp_queries == 2


async def test_a_query_that_raises_gets_formerr_is_counted_and_the_listener_carries_on() -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    stats = ListenerStats()
    listener = UdpListener(server, BrokenAnswerer(), stats)
    listener.start(asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    try:
        client = clients[0]
        client.setblocking(False)
        boom = b"boom" + bytes(20)
        client.sendto(boom, server.getsockname())
        client.sendto(b"later:boom", server.getsockname())
        client.sendto(b"now:1", server.getsockname())
        replies = [await asyncio.wait_for(loop.sock_recv(client, 4096), 2) for _ in range(3)]
        assert b"answer now:1" in replies
        formerrs = [r for r in replies if r != b"answer now:1"]
        assert len(formerrs) == 2 and all(r[3] & 0x0F == 1 for r in formerrs)  # RCODE FORMERR
        assert stats.internal_errors == 2
    finally:
        listener.close()
        for client in clients:
            client.close()


async def test_clients_outside_the_allowed_networks_get_nothing_over_udp() -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    admission = ClientAdmission(AdmissionSettings(), local=["192.0.2.0/24"])
    listener = UdpListener(server, EchoAnswerer(), ListenerStats(), admission=admission)
    listener.start(asyncio.get_running_loop())
    try:
        clients[0].sendto(b"now:1", server.getsockname())
        for _ in range(500):  # polled: on a loaded machine the loop may take a while to get to it
            if admission.stats.outside:
                break
            await asyncio.sleep(0.01)
        assert admission.stats.outside == 1
        clients[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            clients[0].recv(4096)
    finally:
        listener.close()
        for client in clients:
            client.close()


def tcp_message(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


async def start_tcp(
    admission: ClientAdmission | None, settings: TcpSettings
) -> tuple[DnsListeners, tuple[str, int]]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listeners = DnsListeners(EchoAnswerer(), [f"127.0.0.1:{port}"], admission=admission, tcp=settings)
    await listeners.start()
    return listeners, ("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (read returns EOF or the socket is reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionError:
        return True


async def test_a_client_that_trickles_a_message_is_closed_after_the_idle_timeout() -> None:
    listeners, address = await start_tcp(None, TcpSettings(idle_timeout=0.3, max_lifetime=60))
    try:
        reader, writer = await asyncio.open_connection(*address)
        writer.write(tcp_message(b"now:1"))
        assert await asyncio.wait_for(reader.readexactly(2 + len(b"answer now:1")), 2)
        # One byte every 0.1 s: each read restarts nothing, the whole message must arrive in 0.3 s.
        message = tcp_message(b"now:" + bytes(40))
        closed = False
        for byte in message:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            await asyncio.sleep(0.1)
            if reader.at_eof():
                closed = True
                break
        assert closed or await closed_by_server(reader)
        assert listeners.stats.tcp_timeouts == 1
        writer.close()
    finally:
        await listeners.close()


async def test_tcp_connections_are_capped_per_client_and_outsiders_are_closed_at_once() -> None:
    admission = ClientAdmission(AdmissionSettings(max_tcp_per_client=2), local=["127.0.0.0/8"])
    listeners, address = await start_tcp(admission, TcpSettings(idle_timeout=30, max_lifetime=60))
    try:
        held = [await asyncio.open_connection(*address) for _ in range(2)]
        for reader, writer in held:
            writer.write(tcp_message(b"now:1"))
            await asyncio.wait_for(reader.readexactly(2 + len(b"answer now:1")), 2)
        reader, writer = await asyncio.open_connection(*address)
        assert await closed_by_server(reader)
        assert admission.stats.tcp_limit == 1 and listeners.stats.tcp_connections == 2
        writer.close()
        admission.set_networks(["192.0.2.0/24"])  # 127.0.0.1 is no longer allowed
        reader, writer = await asyncio.open_connection(*address)
        assert await closed_by_server(reader)
        assert admission.stats.outside == 1
        writer.close()
        for _, held_writer in held:
            held_writer.close()
    finally:
        await listeners.close()


def test_a_listener_on_uvloop_answers_and_closes_cleanly() -> None:
    # The daemons run on uvloop, whose remove_reader answers None where asyncio's answers a bool (see
    # dnsguard.net.readers): the compiled listener's close must stop reading and close its socket there.
    uvloop = pytest.importorskip("uvloop")
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        listener = UdpListener(server, EchoAnswerer(), ListenerStats())
        listener.start(loop)
        clients[0].sendto(b"now:1", server.getsockname())
        reply = await asyncio.wait_for(loop.run_in_executor(None, clients[0].recv, 512), 2)
        assert reply == b"answer now:1"
        listener.close()
        assert server.fileno() == -1
        await asyncio.sleep(0.01)  # the loop polls once more with the descriptor gone

    with closed_after(server, clients):
        uvloop.run(main())
    assert errors == []
