"""In-memory upstreams and a virtual-clock event loop: the group and the resolver tested without a network.

`FakeUpstream` is a scripted upstream server behind the `Upstream` interface: each query takes the next
scripted action (answer after a delay, stay silent until the caller's timeout, fail, or report busy) and is
recorded with the loop time it arrived. It raises exactly what real transports raise, so the layer above
cannot tell it apart.

`VirtualClockLoop` is an asyncio loop whose clock jumps straight to the next timer whenever nothing is ready:
a 2 s timeout takes no wall-clock time and always fires at exactly 2 s, so tests assert the group's timing
(half the budget per attempt, racing, deadlines) to the microsecond and never flake on a loaded machine.
"""

from __future__ import annotations

import asyncio
import ipaddress
import selectors
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dnsguard.dns.upstream_errors import UpstreamBusyError, UpstreamError, UpstreamTimeoutError
from dnsguard.dns.upstream_match import HEADER_SIZE, question_end
from dnsguard.net.upstream.base import TransportCounters, Upstream

__all__ = [
    "Answer",
    "Busy",
    "Failure",
    "FakeQuery",
    "FakeUpstream",
    "Silence",
    "VirtualClockLoop",
    "fake_reply",
    "run_on_virtual_clock",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """Reply after ``delay`` seconds: an A record for ``address`` when ``rcode`` is 0, no records else."""

    address: str = "192.0.2.1"
    rcode: int = 0
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Silence:
    """Never reply: the query fails with UpstreamTimeoutError once the caller's timeout has passed."""


@dataclass(frozen=True, slots=True)
class Failure:
    """Fail after ``delay`` seconds with UpstreamError(``message``), as a refused port or a reset does."""

    message: str = "connection refused"
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Busy:
    """Refuse at once with UpstreamBusyError: the transport's own in-flight limit is reached."""


Action = Answer | Silence | Failure | Busy


@dataclass(frozen=True, slots=True)
class FakeQuery:
    """One query as the fake server saw it."""

    wire: bytes
    timeout: float
    at: float  # loop time of arrival

    @property
    def name(self) -> str:
        """The question name, lower-cased, without the final dot."""
        labels: list[str] = []
        offset = HEADER_SIZE
        while length := self.wire[offset]:
            labels.append(self.wire[offset + 1 : offset + 1 + length].decode("ascii", "replace").lower())
            offset += 1 + length
        return ".".join(labels)


def fake_reply(wire: bytes, action: Answer) -> bytes:
    """A reply to ``wire`` as ``action`` scripts it: header and question echoed, no EDNS, TTL 300."""
    end = question_end(wire)
    answers = 1 if action.rcode == 0 else 0
    # QR, the query's opcode and RD, RA set; the RCODE in the low bits of the fourth byte.
    flags = bytes((0x80 | (wire[2] & 0x79), 0x80 | (action.rcode & 0x0F)))
    header = wire[:2] + flags + b"\x00\x01" + answers.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    reply = header + wire[HEADER_SIZE:end]
    if answers:
        # Name: a compression pointer to the question (offset 12); type A, class IN, TTL 300, 4 bytes.
        address = ipaddress.IPv4Address(action.address).packed
        reply += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04" + address
    return reply


class FakeUpstream(Upstream):
    """A scripted upstream: query n takes the n-th action given, then ``default`` for every later query."""

    def __init__(self, name: str, *script: Action, default: Action | None = None) -> None:
        self.name = name
        self.counters = TransportCounters()
        self.script: deque[Action] = deque(script)
        self.default: Action = default if default is not None else Answer()
        self.queries: list[FakeQuery] = []
        self.cancelled = 0  # queries abandoned by the caller before the action finished (a lost race)
        self.closed = 0

    def then(self, *actions: Action) -> FakeUpstream:
        """Append actions to the script."""
        self.script.extend(actions)
        return self

    async def query(self, wire: bytes, timeout: float) -> bytes:
        question_end(wire)  # a malformed query is the caller's FormError, as with every transport
        loop = asyncio.get_running_loop()
        self.queries.append(FakeQuery(wire, timeout, loop.time()))
        action = self.script.popleft() if self.script else self.default
        try:
            if isinstance(action, Busy):
                raise UpstreamBusyError(self.name, "scripted in-flight limit")
            if isinstance(action, Silence):
                await asyncio.sleep(timeout)
                raise UpstreamTimeoutError(self.name, f"no reply within {timeout:.3g} s")
            if action.delay >= timeout:
                await asyncio.sleep(timeout)
                raise UpstreamTimeoutError(self.name, f"no reply within {timeout:.3g} s")
            await asyncio.sleep(action.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if isinstance(action, Failure):
            raise UpstreamError(self.name, action.message)
        return fake_reply(wire, action)

    async def close(self) -> None:
        self.closed += 1


class _VirtualSelector(selectors.DefaultSelector):
    """Polls without waiting; when nothing is ready, moves the loop's clock to the next timer instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._virtual_loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # No timer and nothing ready: on a real clock the loop would hang here forever.
            raise RuntimeError("virtual clock: every task waits and no timer is due")
        self._virtual_loop.advance(timeout)
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock that starts at ``start`` and moves only to the next due timer.

    Only for code that waits on timers and in-memory futures: a real socket's reply takes wall-clock time,
    which this clock skips.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (never back)."""
        self._now += max(seconds, 0.0)


ResultT = TypeVar("ResultT")


def run_on_virtual_clock(
    main: Callable[[VirtualClockLoop], Awaitable[ResultT]], start: float = 1000.0
) -> ResultT:
    """Run ``main(loop)`` to completion on a fresh VirtualClockLoop, then close the loop."""
    loop = VirtualClockLoop(start)
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
