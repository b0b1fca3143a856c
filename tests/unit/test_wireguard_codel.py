"""CoDel packet by packet, against RFC 8289's pseudo-code run as the reference."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.wireguard.codel import INTERVAL, MAX_PACKET, TARGET, ArrivalCoDel, CoDel
from dnsguard.wireguard.constants import (
    KEEPALIVE_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)


@dataclass
class ReferenceCoDel:
    """RFC 8289 section 5, its dequeue loop as written, over a queue of (arrival, size, id)."""

    queue: deque[tuple[float, int, int]] = field(default_factory=deque)
    first_above_time: float = 0.0
    drop_next: float = 0.0
    count: int = 0
    lastcount: int = 0
    dropping: bool = False
    dropped: list[int] = field(default_factory=list)

    def bytes(self) -> int:
        return sum(size for _, size, _ in self.queue)

    def dodequeue(self, now: float) -> tuple[tuple[float, int, int] | None, bool]:
        if not self.queue:
            self.first_above_time = 0.0
            return None, False
        packet = self.queue.popleft()
        sojourn_time = now - packet[0]
        ok_to_drop = False
        if sojourn_time < TARGET or self.bytes() <= MAX_PACKET:
            self.first_above_time = 0.0
        elif self.first_above_time == 0.0:
            self.first_above_time = now + INTERVAL
        elif now >= self.first_above_time:
            ok_to_drop = True
        return packet, ok_to_drop

    def control_law(self, t: float) -> float:
        return t + INTERVAL / math.sqrt(self.count)

    def dequeue(self, now: float) -> int | None:
        packet, ok_to_drop = self.dodequeue(now)
        if self.dropping:
            if not ok_to_drop:
                self.dropping = False
            while now >= self.drop_next and self.dropping:
                assert packet is not None
                self.dropped.append(packet[2])
                self.count += 1
                packet, ok_to_drop = self.dodequeue(now)
                if not ok_to_drop:
                    self.dropping = False
                else:
                    self.drop_next = self.control_law(self.drop_next)
        elif ok_to_drop:
            assert packet is not None
            self.dropped.append(packet[2])
            packet, ok_to_drop = self.dodequeue(now)
            self.dropping = True
            delta = self.count - self.lastcount
            self.count = 1
            if delta > 1 and now - self.drop_next < 16 * INTERVAL:
                self.count = delta
            self.drop_next = self.control_law(now)
            self.lastcount = self.count
        return None if packet is None else packet[2]


@dataclass
class PacketQueue:
    """The way the tunnel shell uses CoDel: its own queue, one `dequeued` call per packet taken."""

    codel: CoDel = field(default_factory=CoDel)
    queue: deque[tuple[float, int, int]] = field(default_factory=deque)
    dropped: list[int] = field(default_factory=list)

    def dequeue(self, now: float) -> int | None:
        while self.queue:
            arrival, _size, ident = self.queue.popleft()
            if not self.codel.dequeued(now, now - arrival, sum(size for _, size, _ in self.queue)):
                return ident
            self.dropped.append(ident)
        self.codel.emptied()
        return None


# A trace: steps of (arrivals before the dequeue, dequeues, time passing, packet size).
# Pauses from none to well past 16 intervals reach every branch: first drops, the dropping loop,
# leaving it on a short wait or a small backlog, and coming back soon or late.
steps = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.integers(0, 5),
        st.sampled_from([0.0, 0.0005, 0.002, 0.01, 0.03, 0.08, 0.3, 1.0, 2.0]),
        st.sampled_from([60, 1500, 9000]),
    ),
    min_size=1,
    max_size=600,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_packet_by_packet_drops_exactly_what_the_rfc_pseudo_code_drops(
    trace: list[tuple[int, int, float, int]],
) -> None:
    reference, ours = ReferenceCoDel(), PacketQueue()
    now, ident = 1000.0, 0
    for arrivals, dequeues, elapsed, size in trace:
        for _ in range(arrivals):
            reference.queue.append((now, size, ident))
            ours.queue.append((now, size, ident))
            ident += 1
        now += elapsed
        for _ in range(dequeues):
            assert ours.dequeue(now) == reference.dequeue(now)
        assert ours.dropped == reference.dropped
        assert (ours.codel.dropping, ours.codel.count) == (reference.dropping, reference.count)
    assert ours.codel.drops == len(reference.dropped)


def standing_queue(
    codel: CoDel, start: float, seconds: float, wait: float, step: float = 0.001
) -> list[float]:
    """Dequeue a packet every `step` seconds from a queue whose head always waited `wait`; drop times."""
    drops, now = [], start
    while now < start + seconds:
        if codel.dequeued(now, wait, 64_000):
            drops.append(now)
        now += step
    return drops


def test_a_queue_below_target_never_loses_a_packet() -> None:
    assert standing_queue(CoDel(), 0.0, 5.0, TARGET * 0.9) == []


def test_a_standing_queue_loses_its_first_packet_after_one_interval_above_target() -> None:
    drops = standing_queue(CoDel(), 0.0, 0.3, 0.020)
    assert drops
    assert drops[0] == pytest.approx(INTERVAL, abs=0.002)


def test_drops_come_ever_closer_while_the_queue_stands() -> None:
    codel = CoDel()
    drops = standing_queue(codel, 0.0, 3.0, 0.020)
    assert len(drops) > 10
    gaps = [later - earlier for earlier, later in itertools.pairwise(drops)]
    for count, gap in enumerate(gaps, start=1):  # the control law: INTERVAL / sqrt(count)
        assert gap == pytest.approx(INTERVAL / math.sqrt(count), abs=0.0011)  # a dequeue each ms
    assert codel.dropping and codel.count == len(drops)


def test_the_wait_falling_below_target_ends_the_dropping_state() -> None:
    codel = CoDel()
    standing_queue(codel, 0.0, 0.5, 0.020)
    assert codel.dropping
    assert not codel.dequeued(0.5, TARGET / 2, 64_000)
    assert not codel.dropping and codel.passes(TARGET / 2)


def test_one_packet_of_backlog_is_never_dropped_from() -> None:
    codel = CoDel()
    now, drops = 0.0, 0
    while now < 1.0:
        drops += codel.dequeued(now, 0.050, MAX_PACKET)
        now += 0.001
    assert drops == 0


def test_coming_back_soon_resumes_the_last_drop_rate() -> None:
    codel = CoDel()
    standing_queue(codel, 0.0, 2.0, 0.020)
    count = codel.count
    codel.dequeued(2.0, 0.0, 64_000)  # below target: out of the dropping state
    drops = standing_queue(codel, 2.001, 0.2, 0.020)
    assert drops and codel.count >= count - codel.last_count  # not back to 1
    assert codel.last_count > 1


def test_an_empty_queue_ends_the_dropping_state() -> None:
    codel = CoDel()
    standing_queue(codel, 0.0, 0.5, 0.020)
    codel.emptied()
    assert codel.passes(TARGET / 2)
    assert standing_queue(codel, 0.5, INTERVAL * 0.9, 0.020) == []  # a new interval must pass first


def test_target_must_lie_below_interval() -> None:
    with pytest.raises(ValueError, match="target < interval"):
        CoDel(target=0.2, interval=0.1)


def test_marking_instead_of_dropping_keeps_the_same_schedule() -> None:
    """Each condemned packet is marked CE and leaves: the next comes as ever closer as drops would."""
    codel, now, marks = CoDel(), 0.0, []
    while now < 3.0:
        if codel.dequeued(now, 0.020, 64_000):
            codel.marked()
            marks.append(now)
        now += 0.001
    assert len(marks) > 10
    for count, gap in enumerate((later - earlier for earlier, later in itertools.pairwise(marks)), start=1):
        assert gap == pytest.approx(INTERVAL / math.sqrt(count), abs=0.0011)
    assert codel.dropping and codel.count == len(marks)


def test_a_marked_packet_ends_the_dequeue_so_the_next_one_is_judged_afresh() -> None:
    """As Linux's codel: after a mark, a packet that waited under TARGET ends the dropping state."""
    codel, now = CoDel(), 0.0
    while not codel.dequeued(now, 0.020, 64_000):
        now += 0.001
    codel.marked()
    assert not codel.dequeued(now, TARGET / 2, 64_000)
    assert not codel.dropping


# -- ArrivalCoDel: the socket's receive queue, judged by each receive's first datagram ---------------


def transport(number: int, size: int = 1452) -> tuple[bytes, tuple[str, int]]:
    """A transport datagram (type 4) of `size` bytes, its counter `number`, from one peer."""
    header = bytes([MESSAGE_TRANSPORT, 0, 0, 0]) + b"\x01\0\0\0" + number.to_bytes(8, "little")
    return header + bytes(size - len(header)), ("192.0.2.2", 51820)


def standing(arrivals: ArrivalCoDel, receives: int, waited: float, every: float = 0.001) -> list[list[bytes]]:
    """`receives` receives of 64 datagrams, `every` seconds apart, each first datagram having waited
    `waited`, the queue never emptying: what each receive keeps."""
    kept = []
    for number in range(receives):
        batch = [transport(number * 64 + index) for index in range(64)]
        kept.append([data for data, _ in arrivals.judge(number * every, waited, batch, True)])
    return kept


def test_a_socket_whose_wait_stays_under_the_target_loses_nothing() -> None:
    arrivals = ArrivalCoDel()
    kept = standing(arrivals, 1000, TARGET * 0.9)
    assert all(len(batch) == 64 for batch in kept)
    assert arrivals.drops == 0


def test_a_standing_socket_queue_loses_datagrams_after_an_interval_spaced_by_the_control_law() -> None:
    arrivals = ArrivalCoDel()
    kept = standing(arrivals, 1000, 0.02)  # a second of receives, each a millisecond apart
    lost = [64 - len(batch) for batch in kept]
    first = next(number for number, count in enumerate(lost) if count)
    assert INTERVAL / 0.001 - 1 <= first <= INTERVAL / 0.001 + 1  # none before the wait stood an interval
    assert max(lost) == 1  # at most one a receive: drops are spaced in time
    # RFC 8289's control law: the first drop an interval after the wait rose, each next one
    # INTERVAL / sqrt(count) after the one before.
    times, count = [INTERVAL], 1
    while times[-1] + INTERVAL / math.sqrt(count) < 1.0:
        times.append(times[-1] + INTERVAL / math.sqrt(count))
        count += 1
    expected = len(times)
    assert abs(arrivals.drops - expected) <= 2
    assert arrivals.drops == sum(lost)


def test_each_receive_keeps_its_order_and_loses_only_transport_data() -> None:
    arrivals = ArrivalCoDel()
    others = [
        (bytes([MESSAGE_INITIATION, 0, 0, 0]) + bytes(144), ("192.0.2.3", 51820)),
        (bytes([MESSAGE_RESPONSE, 0, 0, 0]) + bytes(88), ("192.0.2.4", 51820)),
        (bytes([MESSAGE_COOKIE_REPLY, 0, 0, 0]) + bytes(60), ("192.0.2.5", 51820)),
        (transport(7, KEEPALIVE_SIZE)[0], ("192.0.2.6", 51820)),
    ]
    lost = 0
    for number in range(2000):
        # Nothing but what must not be lost: CoDel condemns some of them, none go.
        batch = [others[(number + index) % 4] for index in range(64)]
        kept = arrivals.judge(number * 0.001, 0.05, batch, True)
        assert kept == batch
    assert arrivals.codel.drops > 0 and arrivals.drops == 0
    for number in range(2000, 3000):
        batch = [transport(number * 64 + index) for index in range(60)] + others
        kept = arrivals.judge(number * 0.001, 0.05, batch, True)
        assert kept == [datagram for datagram in batch if datagram in kept]  # in order
        assert all(datagram in kept for datagram in others)
        lost += len(batch) - len(kept)
    assert lost == arrivals.drops > 0


def test_a_receive_that_empties_the_socket_ends_the_dropping_spell() -> None:
    arrivals = ArrivalCoDel()
    standing(arrivals, 300, 0.02)
    assert arrivals.codel.dropping
    batch = [transport(number) for number in range(10)]
    assert arrivals.judge(0.3, 0.02, batch, False) is not None
    assert not arrivals.codel.dropping
    # A socket emptied by every read is not a standing queue, whatever its datagrams waited (the
    # daemon woke late): nothing is lost.
    before = arrivals.drops
    for number in range(1000):
        batch = [transport(number * 8 + index) for index in range(8)]
        assert arrivals.judge(1 + number * 0.001, 0.02, batch, False) == batch
    assert arrivals.drops == before


def test_a_receive_without_a_timestamp_is_not_judged() -> None:
    arrivals = ArrivalCoDel()
    for number in range(1000):
        batch = [transport(number * 64 + index) for index in range(64)]
        assert arrivals.judge(number * 0.001, None, batch, True) == batch
    assert arrivals.drops == 0
