"""Builders: every packet they make parses back to what was asked for and carries valid checksums."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import FormError
from dnsguard.packet import (
    ICMP_DESTINATION_UNREACHABLE,
    ICMPV6_DESTINATION_UNREACHABLE,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NO_PORT,
    NOT_FRAGMENT,
    PacketInfo,
    TcpFlags,
    Unreachable,
    classify,
    icmp_echo,
    icmp_unreachable,
    ip_header,
    parse_tcp_options,
    pseudo_header_sum,
    tcp_header,
    tcp_options,
    tcp_reset_reply,
    tcp_segment,
    udp_packet,
    udp_reply,
    verify_checksum,
)

CLIENT_V4 = ipaddress.IPv4Address("10.13.0.2").packed
SERVER_V4 = ipaddress.IPv4Address("9.9.9.9").packed
CLIENT_V6 = ipaddress.IPv6Address("fd00:13::2").packed
SERVER_V6 = ipaddress.IPv6Address("2620:fe::fe").packed
ADDRESS_PAIRS = [pytest.param(CLIENT_V4, SERVER_V4, id="ipv4"), pytest.param(CLIENT_V6, SERVER_V6, id="ipv6")]

ipv4_addresses = st.binary(min_size=4, max_size=4)
ipv6_addresses = st.binary(min_size=16, max_size=16)
address_pairs = st.one_of(
    st.tuples(ipv4_addresses, ipv4_addresses), st.tuples(ipv6_addresses, ipv6_addresses)
)
ports = st.integers(0, 0xFFFF)


def assert_checksums_valid(packet: bytes) -> PacketInfo:
    """Classify the packet and check its IPv4 header checksum and its transport checksum."""
    info = classify(packet)
    segment = packet[info.l4_offset :]
    if info.version == 4:
        assert verify_checksum(packet[: info.l4_offset]), "IPv4 header checksum"
    if info.protocol == IPPROTO_ICMP:
        assert verify_checksum(segment), "ICMP checksum"
    else:
        pseudo = pseudo_header_sum(info.src, info.dst, info.protocol, len(segment))
        assert verify_checksum(segment, pseudo), "transport checksum"
    return info


@settings(deadline=None)
@given(address_pairs, ports, ports, st.binary(max_size=1400), st.integers(1, 255))
def test_udp_packet_round_trips(
    addresses: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, ttl: int
) -> None:
    src, dst = addresses
    packet = udp_packet(src, dst, sport, dport, payload, ttl=ttl)
    info = assert_checksums_valid(packet)
    header_length = 20 if len(src) == 4 else 40
    assert info == PacketInfo(
        4 if len(src) == 4 else 6,
        IPPROTO_UDP,
        src,
        dst,
        sport,
        dport,
        header_length,
        header_length + 8,
        NOT_FRAGMENT,
    )
    assert packet[info.payload_offset :] == payload
    assert packet[8 if len(src) == 4 else 7] == ttl


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
def test_udp_checksum_that_computes_to_zero_is_sent_as_all_ones(src: bytes, dst: bytes) -> None:
    # RFC 768 / RFC 8200 8.1: zero means "no checksum", so a computed zero goes out as 0xFFFF. A payload word
    # equal to the checksum of the zero payload makes the sum negative zero.
    with_zero_word = udp_packet(src, dst, 1000, 53, b"\x00\x00")
    (checksum_of_zero_payload,) = struct.unpack_from("!H", with_zero_word, len(with_zero_word) - 4)
    packet = udp_packet(src, dst, 1000, 53, checksum_of_zero_payload.to_bytes(2, "big"))
    assert packet[-4:-2] == b"\xff\xff"
    assert_checksums_valid(packet)


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
def test_udp_reply_comes_from_the_address_the_query_went_to(src: bytes, dst: bytes) -> None:
    query = classify(udp_packet(src, dst, 43210, 53, b"query"))
    reply = udp_reply(query, b"answer")
    info = assert_checksums_valid(reply)
    assert (info.src, info.dst, info.sport, info.dport) == (dst, src, 53, 43210)
    assert reply[info.payload_offset :] == b"answer"


def test_udp_reply_refuses_a_non_udp_packet() -> None:
    with pytest.raises(ValueError):
        udp_reply(classify(icmp_echo(CLIENT_V4, SERVER_V4, 1, 1)), b"")


def test_builders_refuse_mixed_or_odd_addresses() -> None:
    with pytest.raises(ValueError):
        udp_packet(CLIENT_V4, SERVER_V6, 1, 2, b"")
    with pytest.raises(ValueError):
        tcp_segment(b"\x01\x02\x03", b"\x01\x02\x03", 1, 2, 0, 0, TcpFlags.SYN)
    with pytest.raises(ValueError):
        icmp_echo(CLIENT_V6, SERVER_V4, 1, 1)


def test_builders_refuse_packets_beyond_65535_bytes() -> None:
    with pytest.raises(ValueError):
        udp_packet(CLIENT_V4, SERVER_V4, 1, 2, bytes(65535 - 28 + 1))
    assert len(udp_packet(CLIENT_V4, SERVER_V4, 1, 2, bytes(65535 - 28))) == 65535
    with pytest.raises(ValueError):
        ip_header(CLIENT_V6, SERVER_V6, IPPROTO_UDP, 65536)


@settings(deadline=None)
@given(
    address_pairs,
    ports,
    ports,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFF),
    st.binary(max_size=40),
    st.binary(max_size=1200),
)
def test_tcp_segment_round_trips(
    addresses: tuple[bytes, bytes],
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    options: bytes,
    payload: bytes,
) -> None:
    src, dst = addresses
    packet = tcp_segment(
        src, dst, sport, dport, seq, ack, flags, window=1234, options=options, payload=payload
    )
    info = assert_checksums_valid(packet)
    assert (info.protocol, info.src, info.dst, info.sport, info.dport) == (
        IPPROTO_TCP,
        src,
        dst,
        sport,
        dport,
    )
    header = tcp_header(packet, info)
    assert (header.seq, header.ack, header.flags, header.window) == (seq, ack, flags, 1234)
    # Options are zero-padded to a 32-bit boundary (RFC 9293 3.1).
    assert header.options == options + bytes(-len(options) % 4)
    assert packet[info.payload_offset :] == payload


def test_tcp_sequence_numbers_wrap_modulo_2_to_the_32() -> None:
    packet = tcp_segment(CLIENT_V4, SERVER_V4, 1, 2, 2**32 + 5, -1, TcpFlags.ACK)
    header = tcp_header(packet, classify(packet))
    assert (header.seq, header.ack) == (5, 2**32 - 1)


def test_tcp_options_longer_than_40_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        tcp_segment(CLIENT_V4, SERVER_V4, 1, 2, 0, 0, TcpFlags.SYN, options=bytes(41))


@pytest.mark.parametrize(
    ("options", "expected_hex"),
    [
        ({"mss": 1460}, "020405b4"),
        (
            {"mss": 1460, "sack_permitted": True, "timestamps": (1, 2), "window_scale": 7},
            "020405b4 0402 080a 00000001 00000002 01030307",
        ),
        ({"timestamps": (1, 0)}, "0101 080a 00000001 00000000"),
        ({"sack_permitted": True, "window_scale": 14}, "0101 0402 0103030e"),
    ],
)
def test_tcp_options_are_encoded_4_byte_aligned(options: dict[str, Any], expected_hex: str) -> None:
    encoded = tcp_options(**options)
    assert encoded == bytes.fromhex(expected_hex)
    assert len(encoded) % 4 == 0


def test_parse_tcp_options_reads_what_tcp_options_wrote() -> None:
    encoded = tcp_options(mss=1400, sack_permitted=True, timestamps=(7, 9), window_scale=3)
    assert parse_tcp_options(encoded + b"\x00\x00\x00\x00") == [
        (2, (1400).to_bytes(2, "big")),
        (4, b""),
        (8, (7).to_bytes(4, "big") + (9).to_bytes(4, "big")),
        (3, b"\x03"),
    ]


@pytest.mark.parametrize("options_hex", ["02", "0201", "020805b4", "0400"])
def test_parse_tcp_options_refuses_malformed_options(options_hex: str) -> None:
    with pytest.raises(FormError):
        parse_tcp_options(bytes.fromhex(options_hex))


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
def test_reset_answers_a_syn_by_acknowledging_it(src: bytes, dst: bytes) -> None:
    # RFC 9293 3.10.7.1: no ACK in the offending segment, so <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>,
    # where the SYN counts as one.
    syn = tcp_segment(src, dst, 50000, 853, 1000, 0, TcpFlags.SYN, options=tcp_options(mss=1460))
    reset = tcp_reset_reply(syn, classify(syn))
    assert reset is not None
    info = assert_checksums_valid(reset)
    assert (info.src, info.dst, info.sport, info.dport) == (dst, src, 853, 50000)
    header = tcp_header(reset, info)
    assert (header.seq, header.ack, header.flags) == (0, 1001, TcpFlags.RST | TcpFlags.ACK)


def test_reset_acknowledges_data_and_fin_of_a_segment_without_ack() -> None:
    segment = tcp_segment(CLIENT_V4, SERVER_V4, 50000, 853, 2**32 - 2, 0, TcpFlags.FIN, payload=b"abc")
    reset = tcp_reset_reply(segment, classify(segment))
    assert reset is not None
    assert tcp_header(reset, classify(reset)).ack == (2**32 - 2 + 3 + 1) % 2**32


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
def test_reset_to_a_segment_with_ack_takes_its_sequence_from_that_ack(src: bytes, dst: bytes) -> None:
    # RFC 9293 3.10.7.1: <SEQ=SEG.ACK><CTL=RST>.
    segment = tcp_segment(src, dst, 50000, 853, 5000, 777, TcpFlags.ACK | TcpFlags.PSH, payload=b"hello")
    reset = tcp_reset_reply(segment, classify(segment))
    assert reset is not None
    header = tcp_header(reset, classify(reset))
    assert (header.seq, header.ack, header.flags) == (777, 0, TcpFlags.RST)


def test_no_reset_for_a_reset() -> None:
    reset = tcp_segment(CLIENT_V4, SERVER_V4, 50000, 853, 5, 0, TcpFlags.RST)
    assert tcp_reset_reply(reset, classify(reset)) is None


def test_tcp_header_refuses_a_non_tcp_packet() -> None:
    packet = udp_packet(CLIENT_V4, SERVER_V4, 1, 2, b"")
    with pytest.raises(ValueError):
        tcp_header(packet, classify(packet))


@pytest.mark.parametrize(
    ("src", "dst", "reason", "expected_type", "expected_code"),
    [
        (CLIENT_V4, SERVER_V4, Unreachable.PORT, ICMP_DESTINATION_UNREACHABLE, 3),
        (CLIENT_V4, SERVER_V4, Unreachable.ADMIN_PROHIBITED, ICMP_DESTINATION_UNREACHABLE, 13),
        (CLIENT_V6, SERVER_V6, Unreachable.PORT, ICMPV6_DESTINATION_UNREACHABLE, 4),
        (CLIENT_V6, SERVER_V6, Unreachable.ADMIN_PROHIBITED, ICMPV6_DESTINATION_UNREACHABLE, 1),
    ],
)
def test_unreachable_quotes_the_refused_packet_back_to_its_sender(
    src: bytes, dst: bytes, reason: Unreachable, expected_type: int, expected_code: int
) -> None:
    syn = tcp_segment(src, dst, 50000, 853, 1000, 0, TcpFlags.SYN)
    unreachable = icmp_unreachable(syn, classify(syn), reason)
    assert unreachable is not None
    info = assert_checksums_valid(unreachable)
    assert info.protocol == (IPPROTO_ICMP if len(src) == 4 else IPPROTO_ICMPV6)
    assert (info.src, info.dst) == (dst, src)
    assert unreachable[info.l4_offset : info.l4_offset + 2] == bytes([expected_type, expected_code])
    assert unreachable[info.l4_offset + 4 : info.l4_offset + 8] == bytes(4), "unused word"
    assert unreachable[info.payload_offset :] == syn


@pytest.mark.parametrize(("src", "dst", "limit"), [(CLIENT_V4, SERVER_V4, 576), (CLIENT_V6, SERVER_V6, 1280)])
def test_unreachable_quote_stops_at_the_rfc_size_limit(src: bytes, dst: bytes, limit: int) -> None:
    # RFC 1812 4.3.2.3 (576 bytes for IPv4) and RFC 4443 2.4 (c) (the 1280-byte IPv6 minimum MTU).
    big = udp_packet(src, dst, 40000, 853, bytes(range(256)) * 6)
    unreachable = icmp_unreachable(big, classify(big), Unreachable.PORT)
    assert unreachable is not None
    assert len(unreachable) == limit
    info = assert_checksums_valid(unreachable)
    assert unreachable[info.payload_offset :] == big[: limit - info.payload_offset]


def test_unreachable_from_an_explicit_source() -> None:
    gateway = ipaddress.IPv4Address("10.13.0.1").packed
    syn = tcp_segment(CLIENT_V4, SERVER_V4, 50000, 853, 1, 0, TcpFlags.SYN)
    unreachable = icmp_unreachable(syn, classify(syn), source=gateway)
    assert unreachable is not None
    assert classify(unreachable).src == gateway


def no_error_cases() -> list[object]:
    """Packets that RFC 1122 3.2.2 / RFC 4443 2.4 (e) forbid answering with an ICMP error."""
    multicast_v4 = ipaddress.IPv4Address("224.0.0.251").packed
    broadcast_v4 = ipaddress.IPv4Address("255.255.255.255").packed
    multicast_v6 = ipaddress.IPv6Address("ff02::fb").packed
    syn = tcp_segment(CLIENT_V4, SERVER_V4, 50000, 853, 1, 0, TcpFlags.SYN)
    quoted_error = icmp_unreachable(syn, classify(syn))
    syn6 = tcp_segment(CLIENT_V6, SERVER_V6, 50000, 853, 1, 0, TcpFlags.SYN)
    quoted_error6 = icmp_unreachable(syn6, classify(syn6))
    later_fragment = bytes.fromhex("4500 001c abcd 00b9 4011 0000") + CLIENT_V4 + SERVER_V4 + bytes(8)
    return [
        pytest.param(quoted_error, id="icmpv4 error"),
        pytest.param(quoted_error6, id="icmpv6 error"),
        pytest.param(udp_packet(CLIENT_V4, multicast_v4, 5353, 5353, b""), id="to ipv4 multicast"),
        pytest.param(udp_packet(CLIENT_V4, broadcast_v4, 68, 67, b""), id="to limited broadcast"),
        pytest.param(udp_packet(bytes(4), SERVER_V4, 68, 67, b""), id="from 0.0.0.0"),
        pytest.param(udp_packet(CLIENT_V6, multicast_v6, 5353, 5353, b""), id="to ipv6 multicast"),
        pytest.param(udp_packet(bytes(16), SERVER_V6, 546, 547, b""), id="from ::"),
        pytest.param(later_fragment, id="ipv4 later fragment"),
    ]


@pytest.mark.parametrize("original", no_error_cases())
def test_no_unreachable_where_the_rfcs_forbid_it(original: bytes) -> None:
    assert icmp_unreachable(original, classify(original), Unreachable.PORT) is None


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
def test_unreachable_may_answer_an_echo_request(src: bytes, dst: bytes) -> None:
    ping = icmp_echo(src, dst, 1, 1)
    assert icmp_unreachable(ping, classify(ping)) is not None


@pytest.mark.parametrize(("src", "dst"), ADDRESS_PAIRS)
@pytest.mark.parametrize("reply", [False, True])
def test_icmp_echo_round_trips(src: bytes, dst: bytes, reply: bool) -> None:
    packet = icmp_echo(src, dst, 0xBEEF, 42, b"payload!", reply=reply)
    info = assert_checksums_valid(packet)
    expected_type = {(4, False): 8, (4, True): 0, (16, False): 128, (16, True): 129}[(len(src), reply)]
    assert struct.unpack_from("!BBxxHH", packet, info.l4_offset) == (expected_type, 0, 0xBEEF, 42)
    assert packet[info.payload_offset :] == b"payload!"
    assert (info.sport, info.dport) == (NO_PORT, NO_PORT)
