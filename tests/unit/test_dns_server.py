"""The UDP listener's drain loop and its sendmmsg batch, on real loopback sockets (no root needed)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from dnsguard.daemon.dns_server import BATCH_SLOT_SIZE, BATCH_SLOTS, ListenerStats, ReplyBatch, UdpListener
from dnsguard.dns.resolver import LATER, _Later


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


class EchoAnswerer:
    """Answers b"now:..." at once, b"later:..." through answer_later, drops everything else."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | _Later | None:
        self.clients.append(client)
        if data.startswith(b"now:"):
            return b"answer " + data
        if data.startswith(b"later:"):
            return LATER
        return None

    async def answer_later(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        await asyncio.sleep(0)
        return b"answer " + data


@pytest.mark.parametrize("batch", [True, False])
async def test_the_listener_answers_now_later_and_drops(batch: bool) -> None:
    server, clients = udp_pair(socket.AF_INET, "127.0.0.1")
    answerer = EchoAnswerer()
    stats = ListenerStats()
    listener = UdpListener(server, answerer, stats, batch=batch)
    assert (listener.batch is not None) == batch
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
        assert set(answerer.clients) == {"127.0.0.1"}
    finally:
        listener.close()
        for client in clients:
            client.close()
