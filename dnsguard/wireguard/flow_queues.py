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


class FlowQueues:
    """FQ-CoDel's scheduler over runs of packets."""

    def __init__(
        self, flows: int = FLOWS, quantum: int = QUANTUM, target: float = TARGET, interval: float = INTERVAL
    ) -> None:
        if flows < 1 or quantum < 1:
            raise ValueError("flow queues need at least one flow and a positive quantum")
        self.quantum = quantum
        self.target = target
        self.interval = interval
        self._flows: list[_Flow | None] = [None] * flows
        self._new: deque[_Flow] = deque()
        self._old: deque[_Flow] = deque()
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
            self._new.append(flow)

    def dequeue(self, now: float, limit: int) -> list[bytes]:
        """Up to `limit` packets to send now, new flows' first; CoDel's drops are counted in `drops`."""
        out: list[bytes] = []
        new, old = self._new, self._old
        quantum = self.quantum
        while len(out) < limit:
            if new:
                flows = new
            elif old:
                flows = old
            else:
                break
            flow = flows[0]
            if flow.deficit <= 0:
                flow.deficit += quantum
                flows.popleft()
                old.append(flow)
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
                    flow.deficit -= size
                else:
                    flow.deficit -= self._decide(codel, taken, now, sojourn, flow.bytes + size, out)
                if runs:
                    continue
            flows.popleft()
            if flows is new:
                old.append(flow)  # a new flow that empties goes last among the old (RFC 8290 4.2)
            else:
                flow.listed = False
            flow.codel.emptied()
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
