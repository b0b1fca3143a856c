"""Active queue management for the tunnel's queues: CoDel (RFC 8289), packet by packet. The send
queues use it per flow; `ArrivalCoDel` judges what waits in the tunnel socket's receive queue.

Why the tunnel needs it: a bulk TCP upload through the tunnel queues in front of the daemon that
encrypts it. With a loss-based congestion control (cubic, the default of most systems) that queue
only stops growing where something drops: measured with `bench/tunnel.py --congestion cubic`, the
round trip under load was 18.4 ms through dnsguard against 2.2 ms through wireguard-go, whose small
socket buffer drops early, at a third of the throughput. CoDel drops from the head of a queue whose
packets have waited above TARGET for a whole INTERVAL, then ever more often (INTERVAL / sqrt(count))
until the wait falls below TARGET: the sender backs off and the queue keeps a few milliseconds. A
kernel qdisc cannot do it here: the queue a TUN reader builds is the TUN's ring, which no qdisc sees.

Pure: the caller owns the queue (wireguard/flow_queues.py: one CoDel per flow), stamps each packet
when it takes it from the kernel, and asks `dequeued` for each packet it takes from its head, in
order; `emptied` when a dequeue finds nothing. Called that way it decides exactly as RFC 8289's
pseudo-code (section 5), which the tests run beside it as the reference. `passes` lets a run of
packets that waited less than TARGET go with one call.
"""

from __future__ import annotations

import math
from typing import Any, Final

from dnsguard.wireguard.constants import KEEPALIVE_SIZE, MESSAGE_TRANSPORT

TARGET: Final = 0.005
"""Seconds of waiting a queue may keep standing (RFC 8289 section 4.4: 5 ms)."""
INTERVAL: Final = 0.100
"""Seconds the wait must stay above TARGET before the first drop (RFC 8289 section 4.3: 100 ms)."""
MAX_PACKET: Final = 1500
"""A backlog of at most this many bytes is never dropped from: one packet is not a standing queue."""
_REENTRY_WINDOW: Final = 16
"""Re-entering the dropping state within this many intervals resumes the last drop rate (section 5.5)."""


class CoDel:
    """The drop decisions for one queue. Times are seconds on any one clock."""

    __slots__ = (
        "_after_drop",
        "_after_first_drop",
        "_first_above",
        "count",
        "drop_next",
        "dropping",
        "drops",
        "interval",
        "last_count",
        "max_packet",
        "target",
    )

    def __init__(
        self, target: float = TARGET, interval: float = INTERVAL, max_packet: int = MAX_PACKET
    ) -> None:
        if not 0 < target < interval:
            raise ValueError(f"CoDel needs 0 < target < interval (target {target}, interval {interval})")
        self.target = target
        self.interval = interval
        self.max_packet = max_packet
        self.dropping = False
        """The queue has stood above TARGET for an INTERVAL and has not yet fallen below it."""
        self.count = 0
        """The control law's count: drops since the dropping state was entered, or, when it is entered
        again soon after it was left, the drops of the last stay."""
        self.last_count = 0
        self.drop_next = 0.0
        self.drops = 0
        """Packets `dequeued` condemned in all (the caller dropped them, or marked them CE)."""
        self._first_above: float | None = None
        # The RFC's dequeue drops in a loop and then returns the next packet; called packet by packet,
        # the call after a drop continues that loop.
        self._after_drop = False
        self._after_first_drop = False

    def passes(self, sojourn: float) -> bool:
        """Whether a packet that waited `sojourn` passes on its wait alone, as `dequeued` would let it.

        When it does, so does every packet behind it that waited no longer: a caller can let a run
        of them go with this one call. When it does not, ask `dequeued` for each packet.
        """
        if sojourn < self.target and not (self.dropping or self._after_drop or self._after_first_drop):
            self._first_above = None
            return True
        return False

    def dequeued(self, now: float, sojourn: float, backlog: int) -> bool:
        """Whether the packet just taken from the head, which waited `sojourn` seconds, is condemned.

        `backlog` is the bytes still queued behind it. A condemned packet is dropped, or, if it is
        ECN-capable, marked CE by the caller, who then says so with `marked`.
        """
        if self.passes(sojourn):
            return False
        ok_to_drop = self._ok_to_drop(now, sojourn, backlog)
        if self._after_first_drop:  # the RFC returns the packet after a first drop as it is
            self._after_first_drop = False
            return False
        if self._after_drop:
            self._after_drop = False
            if not ok_to_drop:
                self.dropping = False
                return False
            self.drop_next = self._control_law(self.drop_next)
            return self._drop_again(now)
        if self.dropping:
            if not ok_to_drop:
                self.dropping = False
                return False
            return self._drop_again(now)
        if not ok_to_drop:
            return False
        self.dropping = True
        delta = self.count - self.last_count
        self.count = 1
        if delta > 1 and now - self.drop_next < _REENTRY_WINDOW * self.interval:
            self.count = delta
        self.drop_next = self._control_law(now)
        self.last_count = self.count
        self._after_first_drop = True
        self.drops += 1
        return True

    def marked(self) -> None:
        """The packet `dequeued` condemned was marked CE instead (RFC 3168): it leaves, and this dequeue
        ends there, as in Linux's codel (the next drop is scheduled now, and the next packet is
        judged afresh)."""
        if self._after_drop:
            self._after_drop = False
            self.drop_next = self._control_law(self.drop_next)
        self._after_first_drop = False

    def emptied(self) -> None:
        """A dequeue found the queue empty: whatever stood has drained."""
        self._first_above = None
        self.dropping = False
        self._after_drop = False
        self._after_first_drop = False

    def _drop_again(self, now: float) -> bool:
        if now < self.drop_next:
            return False
        self.count += 1
        self._after_drop = True
        self.drops += 1
        return True

    def _ok_to_drop(self, now: float, sojourn: float, backlog: int) -> bool:
        if sojourn < self.target or backlog <= self.max_packet:
            self._first_above = None
            return False
        if self._first_above is None:
            self._first_above = now + self.interval
            return False
        return now >= self._first_above

    def _control_law(self, start: float) -> float:
        return start + self.interval / math.sqrt(self.count)


class ArrivalCoDel:
    """CoDel for the queue the kernel keeps in front of the tunnel's socket: the datagrams that came.

    A server's peers' uploads queue in its UDP socket's receive buffer (7 MiB, which the bench's
    uploads never filled), one FIFO for every peer, before any queue of the daemon's; with nothing
    dropped there, loss-based TCP uploads learn nothing of each other, and the bench's kept 20-40 ms
    of round trip with the fastest peer many times the slowest. The socket reports when each
    datagram came (a kernel timestamp); a receive's first datagram waited longest, and all of the
    receive are judged by its wait, as if they had waited that long. Datagrams condemned are
    transport data: a handshake message, a cookie reply or a keepalive is never dropped (CoDel still
    counts it, as if it were). Drops are spaced by the control law, so one receive loses at most a
    datagram or two, and the senders with the most datagrams in the queue lose the most.
    """

    __slots__ = ("codel", "drops")

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.codel = CoDel(target, interval)
        self.drops = 0
        """Datagrams dropped in all."""

    def judge(
        self, now: float, waited: float | None, datagrams: list[tuple[bytes, Any]], more_waiting: bool
    ) -> list[tuple[bytes, Any]]:
        """The datagrams of one receive to open, in their order: all of them unless their wait has
        stood above the target for an interval. `more_waiting`: the receive stopped at its limit.
        Otherwise it emptied the socket, and its last datagram has nothing behind it: as any queue
        of one packet, that is no standing queue, and the wait's interval starts again. A socket
        that every read empties loses nothing, whatever its datagrams waited (a late wake-up)."""
        codel = self.codel
        if waited is None or codel.passes(waited):
            return datagrams
        behind = sum(len(data) for data, _ in datagrams) + (codel.max_packet + 1 if more_waiting else 0)
        kept = []
        for datagram in datagrams:
            data = datagram[0]
            behind -= len(data)
            if (
                codel.dequeued(now, waited, behind)
                and len(data) > KEEPALIVE_SIZE
                and data[0] == MESSAGE_TRANSPORT
            ):
                self.drops += 1
                continue
            kept.append(datagram)
        return kept
