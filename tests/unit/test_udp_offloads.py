"""The tunnel's UDP endpoint (net/udp.py) on loopback: GSO trains, GRO receive, and every fallback."""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dnsguard.net import udp
from dnsguard.net.mmsg import ReplyBatch
from dnsguard.net.udp import PLAIN_SLOTS, TunnelSocket, UdpEndpoint

TRAIN = [bytes([n]) * 1000 for n in range(10)] + [b"z" * 400]


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def drain(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


def receive_all(endpoint: UdpEndpoint, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    received: list[tuple[bytes, tuple[str, int]]] = []
    deadline = time.monotonic() + 2
    while len(received) < count and time.monotonic() < deadline:
        received += endpoint.sockets[socket.AF_INET].receive(128)
    return received


def test_a_train_to_one_address_leaves_in_one_gso_send_and_arrives_as_datagrams(
    receiver: socket.socket,
) -> None:
    endpoint = UdpEndpoint(0)
    try:
        assert endpoint.gso
        address = receiver.getsockname()
        sent, failed = endpoint.send_batch([(data, address) for data in TRAIN])
        assert (sent, failed) == (sum(map(len, TRAIN)), 0)
        assert endpoint.gso_sends == 1
        assert drain(receiver, len(TRAIN)) == TRAIN
    finally:
        endpoint.close()


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvmsg"])
def test_gro_receive_splits_a_train_by_its_segment_size(batched: bool) -> None:
    sender, target = UdpEndpoint(0), UdpEndpoint(0)
    try:
        assert target.sockets[socket.AF_INET].gro
        if not batched:
            target.sockets[socket.AF_INET]._batch = None  # libc without recvmmsg
        sender.send_batch([(data, ("127.0.0.1", target.port)) for data in TRAIN])
        received = receive_all(target, len(TRAIN))
        assert [data for data, _ in received] == TRAIN
        assert {source for _, source in received} == {("127.0.0.1", sender.port)}
    finally:
        sender.close()
        target.close()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_with_offloads_off_sends_and_receives_go_through_sendmmsg_and_recvmmsg(
    how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if how == "environment":
        monkeypatch.setenv("DNSGUARD_OFFLOADS", "off")
    caplog.set_level(logging.INFO, logger="dnsguard.net.udp")
    sender = UdpEndpoint(0, offloads=how != "argument")
    target = UdpEndpoint(0, offloads=how != "argument")
    try:
        assert not sender.gso and not target.sockets[socket.AF_INET].gro
        assert sender.sockets[socket.AF_INET].replies is not None
        datagrams = [(data, ("127.0.0.1", target.port)) for data in TRAIN]
        assert sender.send_batch(datagrams) == (sum(map(len, TRAIN)), 0)
        assert sender.gso_sends == 0
        assert [data for data, _ in receive_all(target, len(TRAIN))] == TRAIN
        if how == "environment":
            assert "DNSGUARD_OFFLOADS=off" in caplog.text
    finally:
        sender.close()
        target.close()


class RefusesGso:
    """A socket whose kernel refuses UDP_SEGMENT sends with EIO (a device without checksum offload)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refused = 0

    def sendmsg(self, *args: Any) -> int:
        self.refused += 1
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_kernel_refusing_gso_on_send_turns_it_off_once_and_the_train_still_arrives(
    receiver: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dnsguard.net.udp")
    endpoint = UdpEndpoint(0)
    try:
        tunnel_socket = endpoint.sockets[socket.AF_INET]
        refusing = RefusesGso(tunnel_socket.sock)
        tunnel_socket.sock = refusing  # type: ignore[assignment]
        address = receiver.getsockname()
        for _ in range(2):
            assert endpoint.send_batch([(data, address) for data in TRAIN]) == (sum(map(len, TRAIN)), 0)
            assert drain(receiver, len(TRAIN)) == TRAIN
        assert not endpoint.gso
        assert refusing.refused == 1
        assert caplog.text.count("UDP_SEGMENT refused") == 1
    finally:
        endpoint.close()


def test_datagrams_to_different_addresses_keep_their_order_and_destinations() -> None:
    first, second = (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
    )
    endpoint = UdpEndpoint(0)
    try:
        for sock in (first, second):
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2)
        a, b = first.getsockname(), second.getsockname()
        batch = [(b"1" * 500, a), (b"2" * 500, a), (b"3" * 500, b), (b"4" * 500, a), (b"5" * 700, a)]
        assert endpoint.send_batch(batch) == (2700, 0)
        assert drain(first, 4) == [b"1" * 500, b"2" * 500, b"4" * 500, b"5" * 700]
        assert drain(second, 1) == [b"3" * 500]
    finally:
        endpoint.close()
        first.close()
        second.close()


def test_gro_receive_batches_plain_datagrams_from_many_senders_with_their_sources() -> None:
    target = UdpEndpoint(0)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        expected = []
        for number, sender in enumerate(senders):
            sender.bind(("127.0.0.1", 0))
            for index in range(5):
                data = bytes([number, index]) * 50
                sender.sendto(data, ("127.0.0.1", target.port))
                expected.append((data, sender.getsockname()))
        received = receive_all(target, len(expected))
        assert sorted(received) == sorted(expected)
    finally:
        target.close()
        for sender in senders:
            sender.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
def test_a_jumbo_tunnel_datagram_arrives_whole(offloads: bool) -> None:
    """MTU 8920 plus WireGuard's 80 bytes: the receive slots hold it with and without GRO."""
    sender, target = UdpEndpoint(0, offloads=offloads), UdpEndpoint(0, offloads=offloads)
    try:
        jumbo = bytes(range(200)) * 45
        assert sender.send_batch([(jumbo, ("127.0.0.1", target.port))]) == (9000, 0)
        assert [data for data, _ in receive_all(target, 1)] == [jumbo]
    finally:
        sender.close()
        target.close()


class CountingReceive:
    """recvmmsg with a count of its calls."""

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self.calls = 0

    def __call__(self, *args: Any) -> int:
        self.calls += 1
        return int(self._receive(*args))


def counted_receive(endpoint: UdpEndpoint) -> CountingReceive:
    batch = endpoint.sockets[socket.AF_INET]._batch
    assert batch is not None
    counter = CountingReceive(batch._receive)
    batch._receive = counter
    return counter


def send_plain(count: int, port: int) -> list[bytes]:
    """`count` datagrams from a plain socket (loopback queues them before sendto returns)."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sent = [count.to_bytes(2, "big") + index.to_bytes(2, "big") * 100 for index in range(count)]
        for data in sent:
            sender.sendto(data, ("127.0.0.1", port))
        return sent
    finally:
        sender.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
def test_a_receive_that_leaves_slots_empty_stops_without_a_second_call(offloads: bool) -> None:
    target = UdpEndpoint(0, offloads=offloads)
    try:
        counter = counted_receive(target)
        sent = send_plain(3, target.port)
        assert [data for data, _ in target.sockets[socket.AF_INET].receive(128)] == sent
        assert counter.calls == 1
        # Nothing waits now: the next receive is one call that finds nothing.
        assert target.sockets[socket.AF_INET].receive(128) == []
        assert counter.calls == 2
    finally:
        target.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "plain"])
def test_a_receive_of_one_is_one_message_without_recvmmsg(offloads: bool) -> None:
    sender, target = UdpEndpoint(0), UdpEndpoint(0, offloads=offloads)
    try:
        counter = counted_receive(target)
        sender.send_batch([(data, ("127.0.0.1", target.port)) for data in TRAIN])  # one GSO train
        after = send_plain(2, target.port)
        tunnel_socket = target.sockets[socket.AF_INET]
        first = [data for data, _ in tunnel_socket.receive(1)]
        # With GRO the whole train is one message; without, its first datagram.
        assert first == (TRAIN if offloads else TRAIN[:1])
        assert counter.calls == 0
        rest = [data for data, _ in tunnel_socket.receive(128)]
        assert first + rest == TRAIN + after
        assert counter.calls == 1
    finally:
        sender.close()
        target.close()


@pytest.mark.source_only
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_each_datagram_of_a_batch_carries_its_own_senders_address(
    family: socket.AddressFamily, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A table of two for four senders: it is emptied and refilled while the batches are read.
    monkeypatch.setattr(udp, "SENDER_TABLE_SIZE", 2)
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    target = UdpEndpoint(0)
    sender = UdpEndpoint(0)
    plain = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for sock in plain:
            sock.bind((host, 0))
        tunnel_socket = target.sockets[family]
        expected: list[tuple[bytes, tuple[str, int]]] = []
        for round_number in range(4):
            for index, sock in enumerate(plain):
                data = bytes([round_number, index]) * 50
                sock.sendto(data, (host, target.port))
                expected.append((data, sock.getsockname()[:2]))
        # A GRO train between single datagrams, from a fourth sender.
        sender.send_batch([(data, (host, target.port)) for data in TRAIN])
        expected += [(data, (host, sender.port)) for data in TRAIN]
        plain[0].sendto(b"last", (host, target.port))
        expected.append((b"last", plain[0].getsockname()[:2]))
        received: list[tuple[bytes, tuple[str, int]]] = []
        deadline = time.monotonic() + 2
        while len(received) < len(expected) and time.monotonic() < deadline:
            received += tunnel_socket.receive(128)
        assert received == expected
        batch = tunnel_socket._batch
        assert batch is not None and len(batch._sources) <= 2
    finally:
        for sock in plain:
            sock.close()
        sender.close()
        target.close()


def test_a_receive_that_fills_every_slot_reads_on_until_the_queue_is_drained() -> None:
    target = UdpEndpoint(0, offloads=False)
    try:
        counter = counted_receive(target)
        sent = send_plain(PLAIN_SLOTS + 6, target.port)
        assert [data for data, _ in target.sockets[socket.AF_INET].receive(128)] == sent
        assert counter.calls == 2
    finally:
        target.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gso", "sendmmsg"])
def test_a_lone_datagram_leaves_by_one_sendto(receiver: socket.socket, offloads: bool) -> None:
    endpoint = UdpEndpoint(0, offloads=offloads)
    try:
        tunnel_socket = endpoint.sockets[socket.AF_INET]
        batched: list[tuple[int, ...]] = []  # the sendmmsg calls of a batch that must stay unused
        tunnel_socket.replies = ReplyBatch(tunnel_socket.sock, lambda *call: batched.append(call) or 1)
        assert endpoint.send_batch([(b"ping" * 20, receiver.getsockname())]) == (80, 0)
        assert batched == []
        assert drain(receiver, 1) == [b"ping" * 20]
        assert endpoint.gso_sends == 0
        # An address the kernel refuses at once is counted as failed, as in a batch.
        assert endpoint.send_batch([(b"x", ("127.0.0.1", 0))]) == (0, 1)
    finally:
        endpoint.close()


def until_stamped_on_arrival(tunnel_socket: TunnelSocket, port: int) -> None:
    """Wait until the kernel stamps datagrams as they arrive. It turns arrival stamps on for the first
    socket that asks through a work queue (net_enable_timestamp), a moment later: a datagram that
    comes before is stamped as it is read, and reads as one that did not wait."""
    for _ in range(200):
        send_plain(1, port)
        time.sleep(0.005)
        tunnel_socket.receive(128)
        if tunnel_socket.waited is not None and tunnel_socket.waited >= 0.004:
            return
    raise AssertionError("the kernel never stamped a datagram on arrival")


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
def test_a_batch_says_how_long_its_first_datagram_waited_in_the_socket(offloads: bool) -> None:
    sender, target = UdpEndpoint(0), UdpEndpoint(0, offloads=offloads)
    try:
        tunnel_socket = target.sockets[socket.AF_INET]
        assert not tunnel_socket.stamped  # off until asked
        assert tunnel_socket.measure_waits(True)
        until_stamped_on_arrival(tunnel_socket, target.port)
        first = send_plain(1, target.port)
        time.sleep(0.05)
        sender.send_batch([(data, ("127.0.0.1", target.port)) for data in TRAIN])  # a GSO train
        received = [data for data, _ in tunnel_socket.receive(128)]
        assert received == first + TRAIN  # trains still split by their GRO size beside the timestamps
        assert tunnel_socket.waited is not None
        assert 0.05 <= tunnel_socket.waited < 5  # the first datagram's wait, not the train's
        assert not tunnel_socket.more_waiting
        # A receive of one is an idle socket's: not judged, so not measured.
        send_plain(1, target.port)
        assert len(tunnel_socket.receive(1)) == 1
        assert tunnel_socket.waited is None
        # Stopped: the datagrams carry no stamp, and a batch says nothing of its wait.
        assert not tunnel_socket.measure_waits(False)
        sender.send_batch([(data, ("127.0.0.1", target.port)) for data in TRAIN])
        assert [data for data, _ in tunnel_socket.receive(128)] == TRAIN
        assert tunnel_socket.waited is None
    finally:
        sender.close()
        target.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
def test_a_train_queued_before_the_stamps_began_is_read_stamped_and_split(offloads: bool) -> None:
    sender, target = UdpEndpoint(0), UdpEndpoint(0, offloads=offloads)
    try:
        tunnel_socket = target.sockets[socket.AF_INET]
        sender.send_batch([(data, ("127.0.0.1", target.port)) for data in TRAIN])  # queued unstamped
        assert tunnel_socket.measure_waits(True)
        after = send_plain(2, target.port)
        received = tunnel_socket.receive(128)
        assert [data for data, _ in received] == TRAIN + after
        assert tunnel_socket.waited is not None  # the kernel stamps it as it is read
    finally:
        sender.close()
        target.close()


@pytest.mark.parametrize("offloads", [True, False], ids=["gro", "recvmmsg"])
def test_a_receive_stopped_at_its_limit_says_more_may_wait(offloads: bool) -> None:
    target = UdpEndpoint(0, offloads=offloads)
    try:
        tunnel_socket = target.sockets[socket.AF_INET]
        sent = send_plain(200, target.port)
        first = tunnel_socket.receive(PLAIN_SLOTS)
        assert len(first) == PLAIN_SLOTS
        assert tunnel_socket.more_waiting
        rest = receive_all(target, 200 - PLAIN_SLOTS)
        assert [data for data, _ in first + rest] == sent
        assert not tunnel_socket.more_waiting
    finally:
        target.close()


@pytest.mark.source_only
def test_a_kernel_refusing_timestamps_leaves_receives_unjudged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(udp, "SO_TIMESTAMPNS", 0x7FFF)  # an option no kernel has: ENOPROTOOPT
    caplog.set_level(logging.INFO, logger="dnsguard.net.udp")
    target = UdpEndpoint(0)
    try:
        tunnel_socket = target.sockets[socket.AF_INET]
        assert not tunnel_socket.measure_waits(True)
        assert not tunnel_socket.stamped
        assert "SO_TIMESTAMPNS refused" in caplog.text
        sent = send_plain(3, target.port)
        assert [data for data, _ in tunnel_socket.receive(128)] == sent
        assert tunnel_socket.waited is None
    finally:
        target.close()
