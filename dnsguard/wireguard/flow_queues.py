"""The tunnel's send queues: a queue per flow, served in turn, each kept short by CoDel (RFC 8290).

Packets read from the TUN wait here before the device encrypts them. One queue for everything would
put a ping, a DNS query or a voice packet behind whatever a bulk upload keeps standing (CoDel holds
that near its 5 ms TARGET, measured at 9.6 ms of ping round trip under a cubic upload). With a queue
per flow, served in deficit round robin and a flow that was idle served first, a sparse flow's packet
waits only for the packets already being sent, while the bulk flow's own queue is held down by its
own CoDel.

Costs are per run, not per packet: the packets of one TUN read are one flow's (a TSO super-packet's
segments), so a read is named by its first packet, consecutive reads of one flow (a burst of ACKs)
make one run, and a run is queued once and taken whole or in part. Only a packet whose run waited
longer than TARGET, or whose flow is dropping, is decided on by itself. Unlike RFC 8290, which
removes an emptied old flow at its next turn, a flow that empties leaves the round at once (a new one
still goes last among the old): one turn of the loop fewer for every flow that is sent out whole.

Where CoDel would drop an ECN-capable packet, it is marked CE instead (RFC 3168; fq_codel's default):
a sender that negotiated ECN slows down without losing the packet.

A server's queues hold the packets of all its peers, and a queue per flow alone shares the sends by
flows: a peer downloading over 50 connections would get 50 turns for another's one. With
`by_destination` the round robin has two levels, as cake's host isolation does: the destinations (a
server's peers' tunnel addresses) take turns by bytes, and within each destination its flows do, so
every peer with packets waiting gets an equal share of the sends whatever its number of flows. A
destination that had nothing queued is served first, as a new flow is within it, so a quiet peer's
ping does not wait for the busy peers' turns. Without it (a client: every packet goes to the one
server) there is one destination, whose turns are not counted.

Pure: `enqueue(packets, now)` and `dequeue(now, limit)`; times are seconds on any one clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

from dnsguard.wireguard.codel import INTERVAL, TARGET, CoDel

FLOWS: Final = 1024
"""Queues; flows are hashed onto them (RFC 8290's default)."""
QUANTUM: Final = 16384
"""Bytes a flow may send per round before the next flow's turn. RFC 8290 uses one MTU; runs here are
up to 64 KB, so a larger quantum takes fewer rounds per run and keeps fairness at that scale."""

_PORTED: Final = frozenset((6, 17, 132, 136))
"""IP protocols whose first four bytes are ports: TCP, UDP, SCTP, UDP-Lite."""


class _Flow:
    __slots__ = ("bytes", "codel", "deficit", "listed", "runs")

    def __init__(self, target: float, interval: float) -> None:
        self.runs: deque[tuple[float, list[bytes], int]] = deque()
        """(read at, packets, their bytes), oldest first."""
        self.bytes = 0
        self.deficit = 0
        self.listed = False
        self.codel = CoDel(target, interval)


class _Host:
    """A destination's flows with packets waiting: its new flows served first, then its old ones."""

    __slots__ = ("deficit", "key", "listed", "new", "old")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.new: deque[_Flow] = deque()
        self.old: deque[_Flow] = deque()
        self.deficit = 0
        self.listed = False


class FlowQueues:
    """FQ-CoDel's scheduler over runs of packets."""

    def __init__(
        self,
        flows: int = FLOWS,
        quantum: int = QUANTUM,
        target: float = TARGET,
        interval: float = INTERVAL,
        *,
        by_destination: bool = False,
    ) -> None:
        if flows < 1 or quantum < 1:
            raise ValueError("flow queues need at least one flow and a positive quantum")
        self.quantum = quantum
        self.target = target
        self.interval = interval
        self.by_destination = by_destination
        self._flows: list[_Flow | None] = [None] * flows
        self._hosts: dict[bytes, _Host] = {}
        """The destinations with flows listed (by_destination); each leaves when its last flow does."""
        self._only_host = _Host(b"")
        """Every flow's destination without by_destination."""
        self._new: deque[_Host] = deque()
        self._old: deque[_Host] = deque()
        self.bytes = 0
        """Bytes queued."""
        self.packets = 0
        """Packets queued."""
        self.drops = 0
        """Packets CoDel dropped from the heads of the queues."""
        self.marks = 0
        """ECN-capable packets CoDel marked CE where it would have dropped them."""

    def __len__(self) -> int:
        return self.packets

    def enqueue(self, packets: list[bytes], now: float, ends: Iterable[int] | None = None) -> None:
        """Queue packets read at `now`, each behind the earlier packets of its flow.

        `ends`: the index after each read's last packet, where the reads returned runs of one flow
        (a super-packet's segments); the first packet of each read names the read's flow. Without
        it every packet is named on its own.
        """
        run_start, key = 0, None
        start = 0
        for end in range(1, len(packets) + 1) if ends is None else ends:
            packet = packets[start]
            # A flow's name: the addresses and, for TCP, UDP and SCTP, the ports (IPv4 without options,
            # IPv6 without extension headers; otherwise other bytes of the headers that are the same
            # for every packet of the flow). Fragments go by addresses only: only the first has ports.
            if len(packet) < 20:  # not an IP packet: the device counts it as malformed
                packet_key = b""
            elif packet[0] >> 4 == 4:
                if packet[9] in _PORTED and not (packet[6] & 0x3F or packet[7]):
                    packet_key = packet[12:24]
                else:
                    packet_key = packet[12:20]
            else:
                packet_key = packet[8:44] if packet[6] in _PORTED else packet[8:40]
            if packet_key != key:
                if start > run_start:
                    self._add(key, packets[run_start:start], now)
                run_start, key = start, packet_key
            start = end
        if len(packets) > run_start:
            self._add(key, packets[run_start:], now)

    def _add(self, key: bytes | None, run: list[bytes], now: float) -> None:
        flows = self._flows
        slot = hash(key) % len(flows)
        flow = flows[slot]
        if flow is None:
            flow = flows[slot] = _Flow(self.target, self.interval)
        size = sum(map(len, run))
        flow.runs.append((now, run, size))
        flow.bytes += size
        self.bytes += size
        self.packets += len(run)
        if not flow.listed:
            flow.listed = True
            flow.deficit = self.quantum
            host = self._host_of(run[0]) if self.by_destination else self._only_host
            host.new.append(flow)
            if not host.listed:
                host.listed = True
                host.deficit = self.quantum
                self._new.append(host)

    def _host_of(self, packet: bytes) -> _Host:
        """The destination of a flow's packet: its destination address (none for a packet too short)."""
        if len(packet) >= 20 and packet[0] >> 4 == 4:
            key = packet[16:20]
        elif len(packet) >= 40 and packet[0] >> 4 == 6:
            key = packet[24:40]
        else:
            key = b""
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(key)
        return host

    def _unlist(self, host: _Host) -> None:
        host.listed = False
        if host is not self._only_host:
            del self._hosts[host.key]

    def dequeue(self, now: float, limit: int) -> list[bytes]:
        """Up to `limit` packets to send now, new destinations' and new flows' first; CoDel's drops are
        counted in `drops`."""
        out: list[bytes] = []
        new, old = self._new, self._old
        quantum = self.quantum
        charge_hosts = self.by_destination  # one destination has no one to share with
        while len(out) < limit:
            if new:
                hosts = new
            elif old:
                hosts = old
            else:
                break
            host = hosts[0]
            if charge_hosts and host.deficit <= 0:
                host.deficit += quantum
                hosts.popleft()
                old.append(host)
                continue
            flows = host.new if host.new else host.old
            if not flows:  # a new destination whose flows all left: it leaves at this, its next turn
                hosts.popleft()
                self._unlist(host)
                continue
            flow = flows[0]
            if flow.deficit <= 0:
                flow.deficit += quantum
                flows.popleft()
                host.old.append(flow)
                continue
            runs = flow.runs
            if runs:
                read_at, run, size = runs[0]
                room = limit - len(out)
                if len(run) > room:
                    taken = run[:room]
                    taken_size = sum(map(len, taken))
                    runs[0] = (read_at, run[room:], size - taken_size)
                    size = taken_size
                else:
                    taken = run
                    runs.popleft()
                flow.bytes -= size
                self.bytes -= size
                self.packets -= len(taken)
                codel = flow.codel
                sojourn = now - read_at
                if codel.passes(sojourn):
                    out.extend(taken)
                    sent = size
                else:
                    sent = self._decide(codel, taken, now, sojourn, flow.bytes + size, out)
                flow.deficit -= sent
                host.deficit -= sent
                if runs:
                    continue
            flows.popleft()
            if flows is host.new:
                host.old.append(flow)  # a new flow that empties goes last among the old (RFC 8290 4.2)
            else:
                flow.listed = False
            flow.codel.emptied()
            if not host.new and not host.old:
                hosts.popleft()
                if hosts is new:
                    old.append(host)  # as a flow does: a new destination that empties goes last among the old
                else:
                    self._unlist(host)
        return out

    def _decide(
        self, codel: CoDel, packets: list[bytes], now: float, sojourn: float, backlog: int, out: list[bytes]
    ) -> int:
        """CoDel's verdict on each packet of a run that waited long: the kept go to `out`; their bytes."""
        kept = 0
        for packet in packets:
            backlog -= len(packet)
            if codel.dequeued(now, sojourn, backlog):
                marked = congestion_experienced(packet)
                if marked is None:
                    self.drops += 1
                    continue
                codel.marked()
                self.marks += 1
                packet = marked
            out.append(packet)
            kept += len(packet)
        return kept


def congestion_experienced(packet: bytes) -> bytes | None:
    """The packet marked CE if it is ECN-capable (RFC 3168), else None (it must be dropped).

    IPv4's header checksum is updated for the changed word (RFC 1624); IPv6 has none. A packet
    already marked CE comes back as it is.
    """
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        tos = packet[1]
        if not tos & 3:
            return None
        old_word = packet[0] << 8 | tos
        folded = (~int.from_bytes(packet[10:12], "big") & 0xFFFF) + (~old_word & 0xFFFF) + (old_word | 3)
        folded = (folded & 0xFFFF) + (folded >> 16)
        folded = (folded & 0xFFFF) + (folded >> 16)
        checksum = (~folded & 0xFFFF).to_bytes(2, "big")
        return packet[:1] + bytes((tos | 3,)) + packet[2:10] + checksum + packet[12:]
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        traffic = packet[1]  # the traffic class's low four bits, ECN the lowest two of them
        if not traffic & 0x30:
            return None
        return packet[:1] + bytes((traffic | 0x30,)) + packet[2:]
    return None
