"""TUN offloads (net/offload.py): checksums against RFC 1071's word loop, segmentation and coalescing
round trips, and what must never be merged."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packet_builders import (
    DESTINATION4,
    SOURCE4,
    ip_header,
    ipv4_header_valid,
    reference_l4_valid,
    reference_sum,
    super_packet,
    tcp_packet,
    with_tcp_checksum,
)

from dnsguard.net import offload
from dnsguard.net.offload import (
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    PLAIN_HEADER,
    MalformedSuperPacket,
    VnetHeader,
    coalesce,
    finish,
    l4_checksum_valid,
    ones_sum,
    piece_sums,
    split,
)


@contextlib.contextmanager
def patched(name: str, value: object) -> Iterator[None]:
    """The offload module with `name` set to `value` for the block (hypothesis tests cannot take
    pytest's function-scoped monkeypatch)."""
    saved = getattr(offload, name)
    setattr(offload, name, value)
    try:
        yield
    finally:
        setattr(offload, name, saved)


def without_numpy() -> contextlib.AbstractContextManager[None]:
    """The module as it runs without the `fast` extra: big-integer sums only."""
    return patched("numpy", None)


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_the_big_integer_sum_equals_rfc_1071s_word_loop(data: bytes, initial: int) -> None:
    with without_numpy():
        assert ones_sum(data, initial) == (reference_sum(data) + initial) % 0xFFFF
    assert finish(ones_sum(data)) != 0


def test_the_fast_extra_installs_numpy_for_the_vector_sums() -> None:
    # The suite runs with the `fast` extra (deploy/install.sh --test): the numpy paths are the ones
    # the tests below compare with the word loop, beside the big-integer ones.
    assert offload.numpy is not None


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 9000), st.integers(0, 0xFFFF), st.integers(1, 3000), st.integers(0, 255))
def test_vector_and_piece_sums_equal_the_word_loop_with_and_without_numpy(
    length: int, initial: int, size: int, salt: int
) -> None:
    data = bytes((b * 7 + salt) & 0xFF for b in range(length))
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    expected = [reference_sum(piece) % 0xFFFF for piece in pieces]
    assert ones_sum(data, initial) == (reference_sum(data) + initial) % 0xFFFF
    assert piece_sums(data, size) == expected
    assert piece_sums(memoryview(data), size) == expected
    with without_numpy():
        assert ones_sum(data, initial) == (reference_sum(data) + initial) % 0xFFFF
        assert piece_sums(data, size) == expected


@settings(max_examples=30, deadline=None)
@given(version=st.sampled_from([4, 6]), length=st.integers(1, 64000), mss=st.integers(200, 1460))
def test_segmentation_and_coalescing_give_the_same_bytes_with_and_without_numpy(
    version: int, length: int, mss: int
) -> None:
    payload = bytes(range(7, 256)) * (length // 249 + 1)
    buffer = super_packet(version, payload[:length], mss)
    segments = split(buffer)
    with without_numpy():
        assert split(buffer) == segments
        plain = coalesce(segments)
    assert coalesce(segments) == plain
    for segment in segments:
        assert reference_l4_valid(segment, 20 if version == 4 else 40, 6)


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    length=st.integers(1, 20000),
    mss=st.integers(200, 1460),
)
def test_a_tcp_super_packet_is_cut_into_valid_segments_and_coalesces_back(
    version: int, length: int, mss: int
) -> None:
    payload = bytes(range(256)) * (length // 256 + 1)
    buffer = super_packet(version, payload[:length], mss)
    segments = split(buffer)
    l4_start = 20 if version == 4 else 40
    assert len(segments) == -(-length // mss)
    assert b"".join(s[l4_start + 20 :] for s in segments) == payload[:length]
    for index, segment in enumerate(segments):
        assert reference_l4_valid(segment, l4_start, 6)
        assert l4_checksum_valid(segment, l4_start, 6)
        assert struct.unpack_from("!I", segment, l4_start + 4)[0] == 1000 + index * mss
        last = index == len(segments) - 1
        assert bool(segment[l4_start + 13] & 0x08) == last  # PSH only on the last
        if version == 4:
            assert ipv4_header_valid(segment)
            assert struct.unpack_from("!H", segment, 4)[0] == 7 + index
    written = coalesce(segments)
    if len(segments) == 1:
        assert written == [(PLAIN_HEADER, segments[0])]
        return
    assert len(written) == 1
    vnet, packet = written[0]
    header = VnetHeader.parse(vnet)
    assert (header.gso_type, header.gso_size, header.checksum_start) == (
        GSO_TCPV4 if version == 4 else GSO_TCPV6,
        mss,
        l4_start,
    )
    assert split(vnet + packet) == segments


def reference_segments(packet: bytes, l4_start: int, mss: int) -> list[bytes]:
    """TSO as RFC 793 and RFC 3168 say, field by field, with RFC 1071's word loop for every checksum."""
    header_length = l4_start + (packet[l4_start + 12] >> 4) * 4
    payload = packet[header_length:]
    (sequence,) = struct.unpack_from("!I", packet, l4_start + 4)
    (identifier,) = struct.unpack_from("!H", packet, 4)
    pieces = [payload[at : at + mss] for at in range(0, len(payload), mss)] or [b""]
    segments = []
    for index, piece in enumerate(pieces):
        header = bytearray(packet[:header_length])
        flags = header[l4_start + 13]
        if index < len(pieces) - 1:
            flags &= ~0x09  # FIN and PSH only on the last segment
        if index > 0:
            flags &= ~0x80  # CWR only on the first
        header[l4_start + 13] = flags
        struct.pack_into("!I", header, l4_start + 4, (sequence + index * mss) & 0xFFFFFFFF)
        struct.pack_into("!H", header, l4_start + 16, 0)
        if l4_start == 20:
            struct.pack_into("!HH", header, 2, header_length + len(piece), (identifier + index) & 0xFFFF)
            struct.pack_into("!H", header, 10, 0)
            struct.pack_into("!H", header, 10, 0xFFFF - reference_sum(bytes(header[:20])) % 0xFFFF)
            pseudo = bytes(header[12:20]) + struct.pack("!BBH", 0, 6, header_length - 20 + len(piece))
        else:
            struct.pack_into("!H", header, 4, header_length - 40 + len(piece))
            pseudo = bytes(header[8:40]) + struct.pack("!IxxxB", header_length - 40 + len(piece), 6)
        value = 0xFFFF - reference_sum(pseudo + bytes(header[l4_start:]) + piece) % 0xFFFF
        struct.pack_into("!H", header, l4_start + 16, value)
        segments.append(bytes(header) + piece)
    return segments


@settings(max_examples=80, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    length=st.integers(0, 12000),
    mss=st.integers(100, 1460),
    flags=st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x98, 0x99, 0x11]),
    options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(range(8))]),
    sequence=st.sampled_from([1000, 0xFFFFF000]),
    identifier=st.sampled_from([7, 0xFFF0]),
)
def test_segments_are_what_tso_makes_field_by_field(
    version: int, length: int, mss: int, flags: int, options: bytes, sequence: int, identifier: int
) -> None:
    payload = bytes(range(3, 256)) * (length // 253 + 1)
    packet = tcp_packet(
        version,
        payload[:length],
        sequence,
        flags=flags,
        options=options,
        checksum=False,
        identifier=identifier,
    )
    l4_start = 20 if version == 4 else 40
    assert offload.segment_tcp(packet, l4_start, mss) == reference_segments(packet, l4_start, mss)


@settings(max_examples=40, deadline=None)
@given(version=st.sampled_from([4, 6]), length=st.integers(1, 9000), size=st.integers(100, 1400))
def test_a_udp_super_packet_is_cut_into_checksummed_datagrams(version: int, length: int, size: int) -> None:
    l4_start = 20 if version == 4 else 40
    payload = bytes(range(251)) * (length // 251 + 1)
    udp = struct.pack("!HHHH", 5000, 6000, 8 + length, 0) + payload[:length]
    vnet = VnetHeader(NEEDS_CSUM, GSO_UDP_L4, l4_start + 8, size, l4_start, 6).pack()
    datagrams = split(vnet + ip_header(version, 17, len(udp)) + udp)
    assert len(datagrams) == -(-length // size)
    assert b"".join(d[l4_start + 8 :] for d in datagrams) == payload[:length]
    for datagram in datagrams:
        assert reference_l4_valid(datagram, l4_start, 17)
        assert struct.unpack_from("!H", datagram, l4_start + 4)[0] == len(datagram) - l4_start


def test_a_packet_that_needs_its_checksum_finished_gets_a_valid_one() -> None:
    packet = bytearray(tcp_packet(4, b"hello", checksum=False))
    pseudo = (int.from_bytes(SOURCE4 + DESTINATION4, "big") + 6 + 25) % 0xFFFF
    packet[36:38] = struct.pack("!H", pseudo)
    vnet = VnetHeader(NEEDS_CSUM, 0, 0, 0, 20, 16).pack()
    (finished,) = split(vnet + bytes(packet))
    assert reference_l4_valid(finished, 20, 6)


@pytest.mark.parametrize(
    "vnet",
    [
        VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 0, 20, 16),  # no segment size
        VnetHeader(0, GSO_TCPV4, 40, 100, 20, 16),  # GSO without NEEDS_CSUM
        VnetHeader(NEEDS_CSUM, GSO_TCPV4, 40, 100, 24, 16),  # transport offset is not the IPv4 header length
        VnetHeader(NEEDS_CSUM, 3, 40, 100, 20, 6),  # UFO, never offered
        VnetHeader(NEEDS_CSUM, 0, 0, 0, 20, 4000),  # checksum field beyond the packet
    ],
)
def test_a_header_that_does_not_describe_its_packet_is_refused(vnet: VnetHeader) -> None:
    with pytest.raises(MalformedSuperPacket):
        split(vnet.pack() + tcp_packet(4, b"x" * 300))


def test_segments_of_two_flows_interleaved_coalesce_per_flow_in_order() -> None:
    a = [tcp_packet(4, b"a" * 100, 1000 + 100 * i, identifier=7 + i) for i in range(3)]
    b = [tcp_packet(6, b"b" * 100, 5000 + 100 * i) for i in range(3)]
    written = coalesce([a[0], b[0], a[1], b[1], a[2], b[2]])
    assert len(written) == 2
    assert split(written[0][0] + written[0][1]) == a
    assert split(written[1][0] + written[1][1]) == b


@pytest.mark.parametrize(
    "second",
    [
        tcp_packet(4, b"a" * 100, 1200),  # a gap in sequence
        tcp_packet(4, b"a" * 100, 1100, ack=56),  # another acknowledgement
        tcp_packet(4, b"a" * 100, 1100, flags=0x11),  # FIN
        tcp_packet(4, b"a" * 100, 1100, options=b"\x01\x01\x08\x0a" + b"\0" * 8),  # other options
        tcp_packet(4, b"a" * 200, 1100),  # larger than the first
        tcp_packet(4, b"", 1100),  # no data
        tcp_packet(4, b"a" * 100, 1100, checksum=False),  # a checksum that fails
    ],
    ids=["gap", "ack", "fin", "options", "larger", "empty", "bad-checksum"],
)
def test_segments_that_may_not_merge_are_written_as_they_came(second: bytes) -> None:
    first = tcp_packet(4, b"a" * 100, 1000)
    assert coalesce([first, second]) == [(PLAIN_HEADER, first), (PLAIN_HEADER, second)]


def test_a_push_or_a_short_segment_ends_a_run() -> None:
    packets = [
        tcp_packet(4, b"a" * 100, 1000),
        tcp_packet(4, b"a" * 50, 1100, identifier=8),
        tcp_packet(4, b"a" * 50, 1150, identifier=9),
    ]
    written = coalesce(packets)
    assert len(written) == 2
    assert split(written[0][0] + written[0][1]) == packets[:2]
    assert written[1] == (PLAIN_HEADER, packets[2])


def test_non_tcp_packets_pass_through_untouched() -> None:
    udp = ip_header(4, 17, 12) + struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"
    assert coalesce([udp, b"\x60" + b"\0" * 10]) == [
        (PLAIN_HEADER, udp),
        (PLAIN_HEADER, b"\x60" + b"\0" * 10),
    ]


@pytest.mark.parametrize("size", [100, 101], ids=["even", "odd"])
def test_a_run_with_one_bad_checksum_is_written_segment_by_segment(size: int) -> None:
    packets = [tcp_packet(4, b"q" * size, 1000 + size * i, identifier=7 + i) for i in range(4)]
    good = coalesce(packets)
    assert len(good) == 1 and split(good[0][0] + bytes(good[0][1])) == packets
    corrupt = bytearray(packets[2])
    corrupt[-1] ^= 0x01
    packets[2] = bytes(corrupt)
    assert coalesce(packets) == [(PLAIN_HEADER, packet) for packet in packets]


def test_a_bad_checksum_in_a_later_segments_tcp_header_keeps_the_run_apart() -> None:
    # The urgent pointer is not compared when segments merge: only the checksum can tell.
    packets = [tcp_packet(4, b"q" * 100, 1000 + 100 * i, identifier=7 + i) for i in range(4)]
    corrupt = bytearray(packets[2])
    corrupt[20 + 19] ^= 0x01
    packets[2] = bytes(corrupt)
    assert coalesce(packets) == [(PLAIN_HEADER, packet) for packet in packets]


def without_continuation() -> contextlib.AbstractContextManager[None]:
    """coalesce with _tcp_key's checks on every segment (no masked comparison with the previous run)."""
    return patched("CONTINUE_RUNS", False)


@settings(max_examples=500, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["next", "next", "next", "short", "push", "gap", "other flow", "byte", "flag"]),
            st.integers(0, 63),  # which header byte "byte" changes
            st.integers(1, 255),  # and how (XOR)
        ),
        min_size=1,
        max_size=24,
    ),
)
def test_joining_the_previous_run_by_masked_headers_decides_as_the_full_checks_do(
    version: int, steps: list[tuple[str, int, int]]
) -> None:
    # A train of one flow with its irregularities: short and PSH segments, gaps, another flow in
    # between, and any header byte changed (lengths, IDs, checksums, sequence, flags, ports,
    # options...). Whatever joins a run by the masked comparison must be what the checks of every
    # segment would have joined.
    packets = []
    sequence = 1000
    for number, (step, index, xor) in enumerate(steps):
        size = 100
        flags = 0x10
        if step == "short":
            size = 60
        elif step == "push":
            flags = 0x18
        elif step == "gap":
            sequence += 7
        if step == "other flow":
            packets.append(tcp_packet(4 if version == 6 else 6, b"o" * size, 9000 + number * size))
            continue
        packet = bytearray(
            tcp_packet(
                version, b"p" * size, sequence, flags=flags, identifier=number, options=b"\x01\x01\x01\x01"
            )
        )
        if step == "byte":  # a changed field, in a segment that is valid otherwise
            packet[index % (len(packet) - size)] ^= xor  # a byte of the IP or TCP header
            packet = bytearray(with_tcp_checksum(packet))
        elif step == "flag":  # FIN, SYN, RST, URG, ECE or CWR beside ACK
            packet[(20 if version == 4 else 40) + 13] |= (0x01, 0x02, 0x04, 0x20, 0x40, 0x80)[xor % 6]
            packet = bytearray(with_tcp_checksum(packet))
        packets.append(bytes(packet))
        sequence += size
    joined = coalesce(packets)
    with without_continuation():
        assert coalesce(packets) == joined


@pytest.mark.source_only
def test_the_log_says_how_checksums_are_summed() -> None:
    assert offload.sums_by().startswith("numpy ")
    with without_numpy():
        assert offload.sums_by().startswith("big integers (")


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "a", "a", "b", "b", "again", "cut", "flip", "lie", "junk"]),
            st.integers(0, 2000),  # where "cut" ends, which byte "flip" changes, how far "lie" is off
            st.integers(1, 255),  # how "flip" changes it (XOR)
            st.binary(max_size=90),  # "junk"
        ),
        max_size=30,
    )
)
def test_whatever_a_peer_sends_is_written_once_and_each_flow_in_order(
    steps: list[tuple[str, int, int, bytes]],
) -> None:
    # A peer's decrypted packets are not to be trusted: trains of two flows (IPv4, IPv6) mixed with
    # retransmissions, and copies of a flow's next segment cut short, with a byte its TCP checksum
    # covers changed, or with an IP length field that lies (every checksum right for its bytes), and
    # bytes that are no packet at all. coalesce must not raise, and the packets it writes, with each
    # GSO packet cut as the kernel cuts it, must be the packets that came, each once, as they came,
    # every flow's in its order.
    packets: list[bytes] = []
    flows: dict[str, list[bytes]] = {"a": [], "b": []}

    def segment(kind: str) -> bytes:
        number = len(flows[kind])
        version = 4 if kind == "a" else 6
        return tcp_packet(version, bytes([number % 256]) * 100, 1000 + 100 * number, identifier=number)

    for kind, where, xor, junk in steps:
        if kind in ("a", "b"):
            packet = segment(kind)
            flows[kind].append(packet)
        elif kind == "again" and packets:
            packet = packets[-1]
        elif kind == "cut":
            whole = segment("a")
            packet = whole[: where % len(whole)]
        elif kind == "flip":
            changed = bytearray(segment("a"))
            changed[20 + where % (len(changed) - 20)] ^= xor
            packet = bytes(changed)
        elif kind == "lie":
            flow = "a" if xor & 1 else "b"
            changed = bytearray(segment(flow))
            at = 2 if flow == "a" else 4
            claimed = struct.unpack_from("!H", changed, at)[0]
            struct.pack_into("!H", changed, at, (claimed + 1 + where % 200) & 0xFFFF)
            if flow == "a":
                struct.pack_into("!H", changed, 10, 0)
                struct.pack_into("!H", changed, 10, 0xFFFF - reference_sum(bytes(changed[:20])) % 0xFFFF)
            packet = with_tcp_checksum(changed)
        else:
            packet = junk
        packets.append(packet)
    written = coalesce(packets)
    out: list[bytes] = []
    for vnet, item in written:
        if vnet == PLAIN_HEADER:
            out.append(bytes(item))
        else:
            out.extend(split(vnet + bytes(item)))
    assert sorted(out) == sorted(packets)
    for train in flows.values():
        members = set(train)
        assert [p for p in out if p in members] == [p for p in packets if p in members]
