"""net/netlink.py: pyroute2's datagram endpoint on a loop whose own refuses AF_NETLINK (uvloop's)."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

import pytest

from dnsguard.net.netlink import READS_PER_WAKEUP, ReaderTransport, _ReaderLoop, route_socket


class Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.events.append(data)

    def error_received(self, exc: Exception) -> None:
        self.events.append(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(None)


def loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    factories: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
    try:
        import uvloop
    except ImportError:
        return factories
    return [*factories, uvloop.new_event_loop]


@pytest.mark.parametrize("new_loop", loops())
def test_each_datagram_reaches_the_protocol_in_order_until_close(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def exchange() -> list[Any]:
        loop = asyncio.get_running_loop()
        view = _ReaderLoop(loop)
        transport, protocol = await view.create_datagram_endpoint(Protocol, sock=right)
        assert isinstance(protocol, Protocol) and transport.get_extra_info("socket") is right
        for index in range(READS_PER_WAKEUP + 4):  # more than one wake-up reads: the rest come next turn
            left.send(b"%d" % index)
        while len(protocol.events) < READS_PER_WAKEUP + 5:
            await asyncio.sleep(0.001)
        transport.sendto(b"back")
        assert left.recv(16) == b"back"
        transport.close()
        transport.close()  # a second close (pyroute2 aborts, then closes) is harmless
        assert transport.is_closing()
        left.send(b"after close")
        await protocol.lost
        await asyncio.sleep(0.01)
        # The rest of the loop is the running one's: a future made through the view is its.
        assert view.create_future().get_loop() is loop
        return protocol.events

    loop = new_loop()
    try:
        events = loop.run_until_complete(exchange())
    finally:
        loop.close()
        left.close()
        right.close()
    assert events == ["made", *(b"%d" % index for index in range(READS_PER_WAKEUP + 4)), ("lost", None)]


class Refusing:
    """A socket whose reads fail as a netlink socket's do when the kernel dropped messages."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real

    def fileno(self) -> int:
        return self.real.fileno()

    def setblocking(self, flag: bool) -> None:
        self.real.setblocking(flag)

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        self.real.recv(size)
        raise OSError(errno.ENOBUFS, "No buffer space available")


async def test_a_failed_read_is_the_protocols_error_and_the_transport_goes_on_reading() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        protocol = Protocol()
        transport = ReaderTransport(asyncio.get_running_loop(), Refusing(right), protocol)  # type: ignore[arg-type]
        left.send(b"x")
        while len(protocol.events) < 2:
            await asyncio.sleep(0.001)
        assert protocol.events[0] == "made"
        assert isinstance(protocol.events[1], OSError) and protocol.events[1].errno == errno.ENOBUFS
        left.send(b"y")
        while len(protocol.events) < 3:
            await asyncio.sleep(0.001)
        assert isinstance(protocol.events[2], OSError)
        transport.abort()
        await protocol.lost
    finally:
        left.close()
        right.close()


def test_route_socket_reads_through_the_view_only_where_the_loop_is_not_asyncios() -> None:
    """Made and closed without a request (no socket opens): the loop it ran on is left running."""
    seen: list[object] = []

    async def make() -> None:
        route = route_socket()
        seen.append(route.use_event_loop)
        route.close()
        await asyncio.sleep(0)
        seen.append(asyncio.get_running_loop().is_closed())

    asyncio.run(make())
    assert seen == [None, False]
    uvloop = pytest.importorskip("uvloop")
    seen.clear()
    uvloop.run(make())
    assert isinstance(seen[0], _ReaderLoop) and seen[1] is False


async def test_one_wake_up_reads_a_bounded_number_of_datagrams() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        protocol = Protocol()
        transport = ReaderTransport(asyncio.get_running_loop(), right, protocol)
        for index in range(READS_PER_WAKEUP + 3):
            left.send(b"%d" % index)
        transport._readable()  # one wake-up, the reader's callback called once
        assert len([event for event in protocol.events if isinstance(event, bytes)]) == READS_PER_WAKEUP
        transport.close()
        await protocol.lost
    finally:
        left.close()
        right.close()
