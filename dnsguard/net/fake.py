"""In-memory TUN and UDP endpoints: the tunnel shell and the client tested without root or a network.

`FakeTun` stands for `TunDevice` and `FakeUdpEndpoint` for `UdpEndpoint` (the `PacketDevice` and
`DatagramEndpoint` interfaces): a TUN is two queues, the packets the kernel routed into the interface
for the shell to read and the packets the shell wrote back; an endpoint records what it sent and
receives what the test injects or what a `FakeNetwork` carries from another endpoint. They count drops
exactly where the real ones do (`queue_full`, `write_errors`; `sendto` returning False).

The one OS object is a pipe per queue, readable exactly while the queue holds something, so that the
shell runs on a real asyncio loop (its `add_reader` and timers unchanged), `VirtualClockLoop` included:
nothing is mocked inside the shell.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FakeNetwork", "FakeSocket", "FakeTun", "FakeUdpEndpoint", "SentDatagram"]

Address = tuple[str, int]


class _Doorbell:
    """A non-blocking pipe whose read end is readable exactly while it is rung."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._rung = False

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        if not self._rung and self._write >= 0:
            os.write(self._write, b"\0")
            self._rung = True

    def clear(self) -> None:
        if self._rung:
            os.read(self._read, 1)
            self._rung = False

    def close(self) -> None:
        if self._read >= 0:
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1


class FakeTun:
    """A TUN as two queues: `route(packet)` is the kernel sending into the tunnel, `written` what came out.

    `write_capacity` bounds the packets written and not yet taken (`take_written`), as the kernel's queue
    is bounded: beyond it a write is dropped and counted in `queue_full`, as `TunDevice.write` counts
    EAGAIN. With `refuse_writes` set, every write is dropped and counted in `write_errors` (the kernel
    refusing a packet while the link goes down).
    """

    def __init__(self, name: str = "dg0", *, write_capacity: int | None = None) -> None:
        self.name = name
        self.write_capacity = write_capacity
        self.refuse_writes = False
        self.queue_full = 0
        self.write_errors = 0
        self.closed = False
        self.to_read: deque[bytes] = deque()
        """Packets the kernel routed into the interface, not yet read by the shell."""
        self.written: deque[bytes] = deque()
        """Packets the shell wrote, not yet taken by the test."""
        self._doorbell = _Doorbell()

    # -- the kernel's side (the test) ---------------------------------------------------------------

    def route(self, *packets: bytes) -> None:
        """The kernel routes packets into the interface: the shell's reader wakes up."""
        if self.closed:
            raise ValueError(f"{self.name} is closed")
        self.to_read.extend(packets)
        if self.to_read:
            self._doorbell.ring()

    def take_written(self) -> list[bytes]:
        """Every packet the shell wrote since the last call, oldest first."""
        packets = list(self.written)
        self.written.clear()
        return packets

    # -- the shell's side (PacketDevice) --------------------------------------------------------------

    def fileno(self) -> int:
        return self._doorbell.fileno()

    def read_batch(self, limit: int = 128, ends: list[int] | None = None) -> list[bytes]:
        packets = [self.to_read.popleft() for _ in range(min(limit, len(self.to_read)))]
        if not self.to_read:
            self._doorbell.clear()
        if ends is not None:
            ends.extend(range(1, len(packets) + 1))  # a packet a read
        return packets

    def write(self, packet: bytes) -> None:
        if self.refuse_writes:
            self.write_errors += 1
        elif self.write_capacity is not None and len(self.written) >= self.write_capacity:
            self.queue_full += 1
        else:
            self.written.append(packet)

    def write_batch(self, packets: list[bytes]) -> None:
        for packet in packets:
            self.write(packet)

    def close(self) -> None:
        self.closed = True
        self._doorbell.close()


class FakeSocket:
    """One bound socket of a `FakeUdpEndpoint`: datagrams queued for `recvfrom`.

    With a `clock`, each datagram is stamped when it arrives, as the kernel's SO_TIMESTAMPNS does, and
    once `measure_waits` is on a receive of more than one says how long its first waited (`waited`).
    """

    def __init__(self, address: Address, clock: Callable[[], float] | None = None) -> None:
        self.address = address
        self.inbox: deque[tuple[bytes, Address]] = deque()
        self.closed = False
        self.clock = clock
        self.waited: float | None = None
        self.more_waiting = False
        self.measuring = False
        self._arrived: deque[float] = deque()
        self._doorbell = _Doorbell()

    def deliver(self, data: bytes, source: Address) -> None:
        if self.closed:
            return
        self.inbox.append((data, source))
        self._arrived.append(self.clock() if self.clock is not None else 0.0)
        self._doorbell.ring()

    def fileno(self) -> int:
        return self._doorbell.fileno()

    def recvfrom(self, bufsize: int, /) -> tuple[bytes, Any]:
        if not self.inbox:
            self._doorbell.clear()
            raise BlockingIOError
        data, source = self.inbox.popleft()
        self._arrived.popleft()
        return data[:bufsize], source

    def receive(self, limit: int) -> list[tuple[bytes, Address]]:
        """Up to `limit` queued datagrams, as `TunnelSocket.receive` returns them."""
        first = self._arrived[0] if self._arrived else None
        batch = []
        for _ in range(limit):
            try:
                batch.append(self.recvfrom(65535))
            except BlockingIOError:
                break
        clock = self.clock
        self.waited = None
        if self.measuring and limit > 1 and clock is not None and first is not None:
            self.waited = clock() - first
        self.more_waiting = limit > 1 and len(batch) == limit
        return batch

    def measure_waits(self, on: bool) -> bool:
        self.measuring = on and self.clock is not None
        return self.measuring

    def close(self) -> None:
        self.closed = True
        self.inbox.clear()
        self._arrived.clear()
        self._doorbell.close()


@dataclass(frozen=True, slots=True)
class SentDatagram:
    time: float | None
    """The endpoint's clock when sent (None without a clock)."""
    source: Address
    destination: Address
    data: bytes


class FakeNetwork:
    """Carries datagrams between endpoints instantly, by address; `blocked` hosts neither send nor receive."""

    def __init__(self) -> None:
        self.endpoints: dict[Address, FakeUdpEndpoint] = {}
        self.blocked: set[str] = set()
        self.dropped = 0

    def carry(self, source: Address, destination: Address, data: bytes) -> None:
        target = self.endpoints.get(destination)
        if target is None or source[0] in self.blocked or destination[0] in self.blocked:
            self.dropped += 1
            return
        target.inject(data, source)


class FakeUdpEndpoint:
    """The tunnel's encrypted side in memory: one socket at `address`, every send recorded in `sent`.

    `rebind()` replaces the socket as `UdpEndpoint.rebind` does (the old one is closed, datagrams queued
    on it are lost); with `next_address` set, the new socket has that address, as a path change gives a
    new source address. With `refuse_sends` set, `sendto` fails as a send into an unreachable network
    does (returns False).
    """

    def __init__(
        self,
        address: Address,
        network: FakeNetwork | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.address = address
        self.network = network
        self.clock = clock
        self.refuse_sends = False
        self.next_address: Address | None = None
        self.rebinds = 0
        self.sent: list[SentDatagram] = []
        self._socket = FakeSocket(address, clock)
        if network is not None:
            network.endpoints[address] = self

    @property
    def sockets(self) -> dict[int, FakeSocket]:
        return {} if self._socket.closed else {socket.AF_INET: self._socket}

    def inject(self, data: bytes, source: Address) -> None:
        """A datagram arrives from `source`."""
        self._socket.deliver(data, source)

    def rebind(self) -> None:
        self._socket.close()
        if self.next_address is not None:
            if self.network is not None:
                self.network.endpoints.pop(self.address, None)
                self.network.endpoints[self.next_address] = self
            self.address, self.next_address = self.next_address, None
        self._socket = FakeSocket(self.address, self.clock)
        self.rebinds += 1

    def sendto(self, data: bytes, address: Address) -> bool:
        if self.refuse_sends or self._socket.closed:
            return False
        now = self.clock() if self.clock is not None else None
        self.sent.append(SentDatagram(now, self.address, address, data))
        if self.network is not None:
            self.network.carry(self.address, address, data)
        return True

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> tuple[int, int]:
        """`sendto` for each: (bytes sent, datagrams that failed), as `UdpEndpoint.send_batch` returns."""
        sent = failed = 0
        for data, address in datagrams:
            if self.sendto(data, address):
                sent += len(data)
            else:
                failed += 1
        return sent, failed

    def close(self) -> None:
        self._socket.close()
        if self.network is not None and self.network.endpoints.get(self.address) is self:
            del self.network.endpoints[self.address]
