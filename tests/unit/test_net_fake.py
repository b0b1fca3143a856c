"""The in-memory edges (net/fake.py) keep the real edges' contract, so tests on them say something true.

The real `TunDevice` runs here on an AF_UNIX datagram socket pair instead of /dev/net/tun (no root): the
same calls on a descriptor that keeps packet boundaries, fills up and can be shut.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from dnsguard.net.fake import FakeNetwork, FakeTun, FakeUdpEndpoint
from dnsguard.net.tun import TunDevice


class KernelSide:
    """What the kernel does to a TUN under test: route packets in, take packets out, fill up, go down."""

    def __init__(self, tun: TunDevice | FakeTun, peer: socket.socket | None) -> None:
        self.tun = tun
        self.peer = peer

    def route(self, *packets: bytes) -> None:
        if isinstance(self.tun, FakeTun):
            self.tun.route(*packets)
        else:
            assert self.peer is not None
            for packet in packets:
                self.peer.send(packet)

    def take_written(self) -> list[bytes]:
        if isinstance(self.tun, FakeTun):
            return self.tun.take_written()
        assert self.peer is not None
        packets = []
        while True:
            try:
                packets.append(self.peer.recv(65535))
            except BlockingIOError:
                return packets

    def fill(self) -> None:
        """The queue towards the kernel is full: the next write finds no room."""
        if isinstance(self.tun, FakeTun):
            self.tun.write_capacity = len(self.tun.written)
            return
        filler = b"\0" * 1024
        while True:
            try:
                os.write(self.tun.fd, filler)
            except BlockingIOError:
                return

    def go_down(self) -> None:
        """The kernel refuses writes (the link goes away)."""
        if isinstance(self.tun, FakeTun):
            self.tun.refuse_writes = True
        else:
            assert self.peer is not None
            socket.socket(fileno=os.dup(self.tun.fd)).shutdown(socket.SHUT_WR)


@contextmanager
def real_tun() -> Iterator[KernelSide]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    tun = TunDevice(ours.detach(), "dg0")  # the descriptor without /dev/net/tun's ioctl
    try:
        yield KernelSide(tun, theirs)
    finally:
        tun.close()
        theirs.close()


@contextmanager
def fake_tun() -> Iterator[KernelSide]:
    tun = FakeTun("dg0")
    try:
        yield KernelSide(tun, None)
    finally:
        tun.close()


MakeTun = Callable[[], AbstractContextManager[KernelSide]]
TUNS = pytest.mark.parametrize("make_tun", [real_tun, fake_tun], ids=["TunDevice", "FakeTun"])


@TUNS
def test_a_tun_read_returns_whole_packets_in_order_up_to_the_limit(make_tun: MakeTun) -> None:
    with make_tun() as kernel:
        packets = [bytes([n]) * (20 + n) for n in range(5)]
        kernel.route(*packets)
        assert kernel.tun.read_batch(3) == packets[:3]
        assert kernel.tun.read_batch(3) == packets[3:]
        assert kernel.tun.read_batch(3) == []


@TUNS
def test_a_tun_write_into_a_full_queue_is_dropped_and_counted_as_queue_full(make_tun: MakeTun) -> None:
    with make_tun() as kernel:
        kernel.tun.write(b"first")
        assert kernel.take_written() == [b"first"]
        kernel.fill()
        kernel.tun.write(b"dropped")
        assert (kernel.tun.queue_full, kernel.tun.write_errors) == (1, 0)


@TUNS
def test_a_tun_write_the_kernel_refuses_is_dropped_and_counted_as_a_write_error(make_tun: MakeTun) -> None:
    with make_tun() as kernel:
        kernel.go_down()
        kernel.tun.write(b"refused")
        kernel.tun.write(b"refused again")
        assert (kernel.tun.queue_full, kernel.tun.write_errors) == (0, 2)
        assert kernel.take_written() == []


def test_a_fake_socket_receives_until_it_would_block_as_a_non_blocking_socket_does() -> None:
    endpoint = FakeUdpEndpoint(("192.0.2.2", 40000))
    endpoint.inject(b"one", ("198.51.100.1", 51820))
    (sock,) = endpoint.sockets.values()
    assert sock.recvfrom(65535) == (b"one", ("198.51.100.1", 51820))
    with pytest.raises(BlockingIOError) as raised:
        sock.recvfrom(65535)
    assert raised.value.errno in (None, errno.EAGAIN)
    endpoint.close()


def test_a_fake_rebind_closes_the_old_socket_and_loses_what_was_queued_on_it() -> None:
    network = FakeNetwork()
    endpoint = FakeUdpEndpoint(("192.0.2.2", 40000), network)
    peer = FakeUdpEndpoint(("198.51.100.1", 51820), network)
    (old,) = endpoint.sockets.values()
    assert peer.sendto(b"queued", ("192.0.2.2", 40000))
    endpoint.next_address = ("192.0.2.77", 40000)
    endpoint.rebind()
    (new,) = endpoint.sockets.values()
    assert new is not old and new.fileno() != old.fileno()
    with pytest.raises(BlockingIOError):
        new.recvfrom(65535)
    # As with UDP, a send to an address nobody holds any more succeeds and is lost on the way.
    assert peer.sendto(b"gone", ("192.0.2.2", 40000))
    assert network.dropped == 1
    assert peer.sendto(b"found", ("192.0.2.77", 40000))
    assert new.recvfrom(65535) == (b"found", ("198.51.100.1", 51820))
    for each in (endpoint, peer):
        each.close()
