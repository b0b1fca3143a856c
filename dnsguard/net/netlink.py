"""pyroute2's asyncio netlink sockets on any event loop, uvloop's included.

pyroute2 reads a netlink socket through the loop's create_datagram_endpoint, which uvloop refuses for
AF_NETLINK ("invalid family 16"). On a loop that is not asyncio's own, route_socket() hands pyroute2 a
view of the running loop whose create_datagram_endpoint reads the socket with add_reader instead: the
rest of the loop is the running one's, so futures, tasks and timers are the same as everyone else's.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pyroute2 import AsyncIPRoute

RECEIVE_SIZE = 256 * 1024
"""Bytes read per datagram, as asyncio's own datagram transport reads: a dump's message fits whole."""
READS_PER_WAKEUP = 16
"""Netlink datagrams read per wake-up at most (here and in net/neighbours.py): a storm of route or
neighbour events takes turns with the packets and queries on the same loop."""


def route_socket() -> AsyncIPRoute:
    """An AsyncIPRoute for the running loop (use in `async with`)."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.BaseEventLoop):
        return AsyncIPRoute()
    return AsyncIPRoute(use_event_loop=_ReaderLoop(loop))


class _ReaderLoop:
    """The running loop, but with a create_datagram_endpoint that works for any socket family."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(
        self, protocol_factory: Any, *, sock: socket.socket, **_: Any
    ) -> tuple[ReaderTransport, asyncio.DatagramProtocol]:
        protocol = protocol_factory()
        transport = ReaderTransport(self._loop, sock, protocol)
        return transport, protocol


class ReaderTransport(asyncio.DatagramTransport):
    """A datagram transport over add_reader: each datagram to protocol.datagram_received."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._fd = sock.fileno()
        self._closing = False
        sock.setblocking(False)
        # As asyncio's own transports: the protocol hears of the connection before any datagram.
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)

    def _start_reading(self) -> None:
        if not self._closing:
            self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            if self._closing:
                return
            try:
                data, address = self._sock.recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: the kernel dropped messages for this socket
                self._protocol.error_received(exc)
                return
            self._protocol.datagram_received(data, address)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if addr is None:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)  # False if reading had not started: nothing to undo
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()
