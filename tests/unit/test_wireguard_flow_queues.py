"""The tunnel's send queues: a queue per flow, served in turn, each held short by CoDel (RFC 8290)."""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from packet_builders import ipv4_header_valid, reference_sum

from dnsguard.wireguard.codel import INTERVAL, TARGET
from dnsguard.wireguard.flow_queues import QUANTUM, FlowQueues, congestion_experienced


def ipv4(
    source: str = "100.64.0.2",
    destination: str = "100.64.0.1",
    protocol: int = 6,
    ports: tuple[int, int] = (40000, 5201),
    payload: bytes = b"",
    fragment: int = 0x4000,
) -> bytes:
    """An IPv4 packet with a TCP or UDP header's ports (or any protocol's first bytes)."""
    body = struct.pack("!HH", *ports) + bytes(16) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        0,
        fragment,
        64,
        protocol,
        0,
        ipaddress.ip_address(source).packed,
        ipaddress.ip_address(destination).packed,
    )
    return header + body


def ipv6(
    source: str = "fd00::2", destination: str = "fd00::1", next_header: int = 17, port: int = 40000
) -> bytes:
    body = struct.pack("!HH", port, 53) + bytes(12)
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        next_header,
        64,
        ipaddress.ip_address(source).packed,
        ipaddress.ip_address(destination).packed,
    )
    return header + body


def echo(sequence: int) -> bytes:
    """An ICMP echo request: its checksum and sequence change from one to the next."""
    return ipv4(protocol=1, ports=(0x0800, sequence), payload=sequence.to_bytes(4, "big"))


def bulk(count: int, port: int = 40000, size: int = 1400, destination: str = "100.64.0.1") -> list[bytes]:
    return [
        ipv4(destination=destination, ports=(port, 5201), payload=index.to_bytes(4, "big") + bytes(size))
        for index in range(count)
    ]


def drain(queues: FlowQueues, now: float, limit: int = 128) -> list[bytes]:
    out: list[bytes] = []
    while queues.packets:
        out.extend(queues.dequeue(now, limit))
    return out


def test_a_sparse_flows_packet_goes_ahead_of_a_bulk_flows_backlog() -> None:
    queues = FlowQueues()
    upload = bulk(2000)
    queues.enqueue(upload, 0.0)
    first = queues.dequeue(0.0, 128)
    assert first == upload[:128]
    ping = echo(1)
    queues.enqueue([ping], 0.0)

    assert queues.dequeue(0.0, 128)[0] == ping


def test_two_bulk_flows_share_the_sends_by_their_bytes() -> None:
    queues = FlowQueues()
    one, two = bulk(1000, port=1), bulk(1000, port=2)
    queues.enqueue(one + two, 0.0)
    first_half = []
    while len(first_half) < 1000:
        first_half.extend(queues.dequeue(0.0, 128))
    counts = Counter(packet[20:22] for packet in first_half[:1000])
    share = QUANTUM // len(one[0]) + 1
    assert abs(counts[one[0][20:22]] - counts[two[0][20:22]]) <= 2 * share


def test_a_bulk_flow_whose_queue_stands_loses_packets_and_a_sparse_flow_beside_it_none() -> None:
    queues = FlowQueues()
    now, pings, sent = 0.0, [], []
    for step in range(400):  # 1 ms a step: 40 packets in, 20 out; a ping every 10 ms
        queues.enqueue(bulk(40, size=1000), now)
        if step % 10 == 0:
            pings.append(echo(step))
            queues.enqueue([pings[-1]], now)
        sent.extend(queues.dequeue(now, 20))
        now += 0.001

    assert queues.drops > 0
    assert [packet for packet in sent if packet in pings] == pings[: len([p for p in sent if p in pings])]
    assert all(ping in sent for ping in pings[:-1])  # every ping but the last went out, in its turn


def test_a_queue_that_waits_under_the_target_loses_nothing() -> None:
    queues = FlowQueues()
    upload = bulk(3000)
    queues.enqueue(upload, 0.0)
    sent = []
    while queues.packets:
        sent.extend(queues.dequeue(TARGET / 2, 128))
    assert sent == upload
    assert queues.drops == 0


def test_a_wait_above_target_for_less_than_an_interval_loses_nothing() -> None:
    queues = FlowQueues()
    queues.enqueue(bulk(3000), 0.0)
    now = 0.0
    while queues.packets:
        queues.dequeue(TARGET * 2 + now, 64)
        now += INTERVAL / 100
    assert queues.drops == 0


def test_the_packets_of_one_read_go_by_the_first_ones_flow() -> None:
    """A super-packet's segments: only the first is looked at, and the read stays together, in order."""
    queues = FlowQueues()
    segments = [ipv4(ports=(40000, 5201))] + [bytes([0x45]) + bytes(range(1, 60)) for _ in range(5)]
    queues.enqueue(segments, 0.0, ends=[6])
    assert queues.dequeue(0.0, 128) == segments


def test_echo_requests_of_one_ping_are_one_flow_and_keep_their_order() -> None:
    queues = FlowQueues()
    pings = [echo(sequence) for sequence in range(200)]
    queues.enqueue(pings, 0.0)
    assert drain(queues, 0.0, limit=7) == pings


def test_fragments_go_by_their_addresses_and_keep_their_order() -> None:
    queues = FlowQueues()
    fragments = [ipv4(protocol=17, ports=(index, index), fragment=0x2000 | index) for index in range(50)]
    queues.enqueue(fragments, 0.0)
    assert drain(queues, 0.0, limit=3) == fragments


def test_ipv6_flows_are_told_apart_by_their_ports() -> None:
    queues = FlowQueues()
    one = [ipv6(port=1) for _ in range(1000)]
    queues.enqueue(one, 0.0)
    queues.dequeue(0.0, 400)  # more than a quantum: the flow is an old one now
    other = ipv6(port=2)
    queues.enqueue([other], 0.0)
    assert queues.dequeue(0.0, 10)[0] == other


def test_packets_too_short_to_be_ip_pass_through_for_the_device_to_count() -> None:
    queues = FlowQueues()
    junk = [b"", b"\x45", bytes(19), b"\xff" * 30, bytes(7)]
    queues.enqueue(junk, 0.0)
    assert sorted(drain(queues, 0.0)) == sorted(junk)
    assert (queues.packets, queues.bytes) == (0, 0)


# Per-destination fairness (a server's peers)

BUSY, OTHER, QUIET = "100.64.1.10", "100.64.1.11", "100.64.1.12"
FEW_COLLISIONS = 1 << 20
"""Queues for the fairness tests: two flows hashed onto one queue share its turns (and the first one's
destination), which with the default 1,024 would happen to a few of the tests' runs."""


def shares(by_destination: bool) -> Counter[bytes]:
    """Packets per destination among the first 2,000 sent, one destination with 8 bulk flows queued and
    another with 1, all read at once."""
    queues = FlowQueues(FEW_COLLISIONS, by_destination=by_destination)
    many = [packet for port in range(8) for packet in bulk(1000, port=port, destination=BUSY)]
    queues.enqueue(many + bulk(1000, port=99, destination=OTHER), 0.0)
    sent: list[bytes] = []
    while len(sent) < 2000:
        sent.extend(queues.dequeue(0.0, 128))
    return Counter(packet[16:20] for packet in sent[:2000])


def test_destinations_share_the_sends_equally_whatever_their_number_of_flows() -> None:
    busy, other = ipaddress.ip_address(BUSY).packed, ipaddress.ip_address(OTHER).packed
    fair = shares(by_destination=True)
    # A turn takes up to a dequeue's limit (128) of one flow's run: shares even out turn by turn.
    assert abs(fair[busy] - fair[other]) <= 128
    by_flow = shares(by_destination=False)  # flows alone: the one with 8 flows takes 8 of 9 turns
    assert by_flow[other] <= 2000 // 9 + 128


def test_within_a_destination_its_flows_share_its_turns() -> None:
    queues = FlowQueues(FEW_COLLISIONS, by_destination=True)
    one, two = bulk(1000, port=1, destination=BUSY), bulk(1000, port=2, destination=BUSY)
    queues.enqueue(one + two + bulk(1000, port=3, destination=OTHER), 0.0)
    sent: list[bytes] = []
    while len(sent) < 1500:
        sent.extend(queues.dequeue(0.0, 128))
    counts = Counter(packet[20:22] for packet in sent[:1500])
    quantum_packets = QUANTUM // 1440 + 1
    assert abs(counts[one[0][20:22]] - counts[two[0][20:22]]) <= 2 * quantum_packets
    assert abs(counts[one[0][20:22]] + counts[two[0][20:22]] - 750) <= 2 * quantum_packets


def test_a_quiet_destinations_packet_goes_ahead_of_the_busy_destinations_backlogs() -> None:
    queues = FlowQueues(FEW_COLLISIONS, by_destination=True)
    queues.enqueue(bulk(2000, port=1, destination=BUSY) + bulk(2000, port=2, destination=OTHER), 0.0)
    for _ in range(10):  # both busy destinations have had turns: they are old ones now
        queues.dequeue(0.0, 128)
    ping = ipv4(destination=QUIET, protocol=1, ports=(0x0800, 1))
    queues.enqueue([ping], 0.0)

    assert queues.dequeue(0.0, 128)[0] == ping


def test_a_destination_that_empties_on_its_first_turn_waits_its_turn_after_it() -> None:
    """As a new flow that empties goes last among the old (RFC 8290 4.2), so does a new destination:
    one that refills as soon as it is served does not keep going ahead of a backlogged one."""
    queues = FlowQueues(FEW_COLLISIONS, by_destination=True)
    queues.enqueue(bulk(3000, port=1, destination=BUSY), 0.0)
    # Two packets a turn, fewer than a quantum's bytes: the busy destination spends its quantum over
    # several turns, and is an old one after it.
    for _ in range(QUANTUM // 1444 // 2 + 1):
        queues.dequeue(0.0, 2)
    firsts = []
    for sequence in range(10):
        ping = ipv4(destination=QUIET, protocol=1, ports=(0x0800, sequence))
        queues.enqueue([ping], 0.0)
        firsts.append(queues.dequeue(0.0, 2)[0] == ping)
    assert firsts[0]
    assert not all(firsts[1:])


def test_a_destination_is_held_only_while_it_has_packets_queued() -> None:
    """Destinations come from the packets' headers: any number of them costs memory only while queued
    (a destination whose flows all left is forgotten at its next turn, as an emptied new flow is)."""
    queues = FlowQueues(by_destination=True)
    for round_number in range(20):
        queues.enqueue([ipv4(destination=f"198.51.{round_number}.{index}") for index in range(250)], 0.0)
        assert 0 < len(queues._hosts) <= 250  # flows that share a queue share the first one's turns
        drain(queues, 0.0, limit=round_number + 1)
        assert queues.dequeue(0.0, 128) == []
        assert queues._hosts == {}


flows = st.sampled_from(
    [ipv4(ports=(port, 5201), destination=f"100.64.1.{port % 2}") for port in range(4)]
    + [echo(1), ipv6(port=7), ipv6(next_header=58), ipv6(destination="fd00::9"), b"\x45"]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(flows, max_size=40), st.integers(0, 60), st.sampled_from([0.0, 0.001, 0.02, 0.2])),
        max_size=60,
    ),
    st.booleans(),
)
def test_every_packet_leaves_once_or_is_counted_dropped_and_each_flow_keeps_its_order(
    steps: list[tuple[list[bytes], int, float]], by_destination: bool
) -> None:
    queues = FlowQueues(by_destination=by_destination)
    now, sequence = 0.0, 0
    queued: list[bytes] = []
    sent: list[bytes] = []
    for templates, limit, elapsed in steps:
        # Each packet made unique by a sequence number after its headers (keys are unchanged).
        packets = [
            template + sequence.to_bytes(4, "big") for sequence, template in enumerate(templates, sequence)
        ]
        sequence += len(packets)
        queues.enqueue(packets, now)
        queued.extend(packets)
        now += elapsed
        out = queues.dequeue(now, limit)
        assert len(out) <= limit
        sent.extend(out)
    sent.extend(drain(queues, now))

    assert len(sent) + queues.drops == len(queued)
    assert len(set(sent)) == len(sent)
    assert (queues.packets, queues.bytes) == (0, 0)
    assert queues.dequeue(now, 128) == []
    assert queues._hosts == {}
    for template in {packet[:-4] for packet in queued}:
        of_flow = [packet for packet in queued if packet[:-4] == template]
        left = [packet for packet in sent if packet[:-4] == template]
        position = {packet: index for index, packet in enumerate(of_flow)}
        assert [position[packet] for packet in left] == sorted(position[packet] for packet in left)


# ECN: marked, not dropped


def with_checksum(packet: bytes) -> bytes:
    header = packet[:10] + b"\0\0" + packet[12:20]
    return header[:10] + (0xFFFF - reference_sum(header) % 0xFFFF).to_bytes(2, "big") + packet[12:]


def with_tos(packet: bytes, tos: int) -> bytes:
    return with_checksum(packet[:1] + bytes((tos,)) + packet[2:])


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.integers(0, 63), st.sampled_from([1, 2]))
def test_marking_an_ipv4_packet_sets_ce_and_keeps_its_header_checksum_right(
    header: bytes, dscp: int, ect: int
) -> None:
    packet = with_tos(bytes((0x45,)) + header[1:] + b"payload", dscp << 2 | ect)
    marked = congestion_experienced(packet)
    assert marked is not None
    assert marked[1] == dscp << 2 | 3
    assert ipv4_header_valid(marked)  # the header sums to all ones with its checksum
    assert marked[:1] + marked[2:10] + marked[12:] == packet[:1] + packet[2:10] + packet[12:]


def test_only_ecn_capable_packets_are_marked() -> None:
    assert congestion_experienced(with_tos(ipv4(), 0)) is None  # Not-ECT: dropped instead
    already = with_tos(ipv4(), 3)
    assert congestion_experienced(already) == already
    v6 = ipv6()
    ect = v6[:1] + bytes((v6[1] | 0x20,)) + v6[2:]  # ECT(0) in the traffic class
    assert congestion_experienced(v6) is None
    marked = congestion_experienced(ect)
    assert marked is not None and (marked[1] >> 4) & 3 == 3 and marked[2:] == ect[2:]
    assert congestion_experienced(b"\x45\x01") is None
    assert congestion_experienced(bytes(60)) is None


def test_a_standing_ecn_capable_flow_is_marked_and_loses_nothing_while_a_plain_one_loses_packets() -> None:
    queues = FlowQueues()
    now, sent, capable_sent = 0.0, 0, []
    capable_in: list[bytes] = []
    for _ in range(600):  # 1 ms a step: each flow puts in 20 packets, 20 of the 40 go out
        capable = [with_tos(packet, 2) for packet in bulk(20, port=1, size=1000)]
        capable_in.extend(capable)
        queues.enqueue(capable + bulk(20, port=2, size=1000), now)
        out = queues.dequeue(now, 20)
        capable_sent.extend(packet for packet in out if packet[20:22] == b"\0\x01")
        sent += len(out)
        now += 0.001
    capable_sent.extend(packet for packet in drain(queues, now) if packet[20:22] == b"\0\x01")

    assert queues.marks > 0 and queues.drops > 0
    assert len(capable_sent) == len(capable_in)  # marked, never dropped
    assert sum(packet[1] & 3 == 3 for packet in capable_sent) == queues.marks
