"""Classification of hand-made packets, the fast DNS port test, and what counts as malformed.

The golden packets below were written field by field; their checksums were checked with `tcpdump -vv`.
"""

from __future__ import annotations

import ipaddress

import pytest

from dnsguard.errors import FormError
from dnsguard.packet import (
    FIRST_FRAGMENT,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LATER_FRAGMENT,
    NO_PORT,
    NOT_FRAGMENT,
    PacketInfo,
    TcpFlags,
    classify,
    dns_port_hit,
    icmp_echo,
    port_hit_test,
    tcp_options,
    tcp_segment,
    udp_packet,
)

CLIENT_V4 = ipaddress.IPv4Address("192.168.1.100").packed
RESOLVER_V4 = ipaddress.IPv4Address("1.1.1.1").packed
CLIENT_V6 = ipaddress.IPv6Address("2001:db8::100").packed
RESOLVER_V6 = ipaddress.IPv6Address("2001:db8::53").packed

# id 0x1234, recursion desired, one question: example.com A IN.
DNS_QUERY = bytes.fromhex("1234 0100 0001 0000 0000 0000 07 6578616d706c65 03 636f6d 00 0001 0001")

IPV4_UDP_DNS_QUERY = (
    bytes.fromhex(
        "4500 0039 0000 4000 4011 76a6 c0a80164 01010101"  # IPv4, IHL 5, 57 bytes, DF, TTL 64, UDP
        "d431 0035 0025 858d"  # UDP 54321 -> 53, length 37
    )
    + DNS_QUERY
)

IPV6_UDP_DNS_QUERY = (
    bytes.fromhex(
        "6000 0000 0025 11 40"  # IPv6, payload 37, next header UDP, hop limit 64
        "20010db8000000000000000000000100 20010db8000000000000000000000053"
        "d431 0035 0025 ecd6"  # UDP 54321 -> 53, length 37
    )
    + DNS_QUERY
)

IPV4_TCP_SYN_TO_DOT = bytes.fromhex(
    "4500 003c 1c46 4000 4006 5a68 c0a80164 01010101"  # IPv4, 60 bytes, id 0x1c46, DF, TCP
    "c350 0355 1c46a3e1 00000000 a0 02 faf0 1ff2 0000"  # 50000 -> 853, seq, data offset 10, SYN, win 64240
    "020405b4 0402 080a 0001e240 00000000 01 030307"  # MSS 1460, SACK ok, TS 123456/0, NOP, WS 7
)

IPV6_EXTENSION_HEADERS_DNS = (
    bytes.fromhex(
        "6000 0000 003d 00 40"  # payload 61, next header Hop-by-Hop
        "20010db8000000000000000000000100 20010db8000000000000000000000053"
        "2b 00 0104 00000000"  # Hop-by-Hop, next Routing, PadN
        "3c 00 fd 00 00000000"  # Routing type 253 (RFC 4727), segments left 0, next Dest. Options
        "11 00 0104 00000000"  # Destination Options, next UDP, PadN
        "d431 0035 0025 ecd6"  # UDP 54321 -> 53
    )
    + DNS_QUERY
)

IPV6_FIRST_FRAGMENT = (
    bytes.fromhex(
        "6000 0000 002d 2c 40"  # payload 45, next header Fragment
        "20010db8000000000000000000000100 20010db8000000000000000000000053"
        "11 00 0001 deadbeef"  # Fragment: next UDP, offset 0, M=1, id 0xdeadbeef
        "d431 0035 0514 0000"  # UDP 54321 -> 53, length 1300: the whole datagram, not this packet
    )
    + DNS_QUERY
)

IPV6_LATER_FRAGMENT = bytes.fromhex(
    "6000 0000 0018 2c 40"
    "20010db8000000000000000000000100 20010db8000000000000000000000053"
    "11 00 04d0 deadbeef"  # Fragment: next UDP, offset 1232 (154 units), M=0
    "000102030405060708090a0b0c0d0e0f"
)

IPV4_FIRST_FRAGMENT = (
    bytes.fromhex(
        "4500 0039 abcd 2000 4011 ead8 c0a80164 01010101"  # MF set, offset 0
        "d431 0035 05dc 0000"  # UDP length 1500: the whole datagram
    )
    + DNS_QUERY
)

IPV4_LATER_FRAGMENT = bytes.fromhex(
    "4500 002c abcd 00b9 4011 0a2d c0a80164 01010101"  # offset 185 units = 1480 bytes, MF clear
    "000102030405060708090a0b0c0d0e0f1011121314151617"
)

IPV4_WITH_ROUTER_ALERT = (
    bytes.fromhex(
        "4600 003d 0000 4000 4011 e19d c0a80164 01010101 94040000"  # IHL 6: Router Alert option (RFC 2113)
        "d431 0035 0025 858d"
    )
    + DNS_QUERY
)

IPV4_ICMP_ECHO = (
    bytes.fromhex(
        "4500 0020 0000 4000 4001 76cf c0a80164 01010101"
        "08 00 1927 0007 0001"  # echo request, id 7, sequence 1
    )
    + b"ping"
)


GOLDEN = {
    "ipv4 udp dns": (
        IPV4_UDP_DNS_QUERY,
        PacketInfo(4, IPPROTO_UDP, CLIENT_V4, RESOLVER_V4, 54321, 53, 20, 28, NOT_FRAGMENT),
    ),
    "ipv6 udp dns": (
        IPV6_UDP_DNS_QUERY,
        PacketInfo(6, IPPROTO_UDP, CLIENT_V6, RESOLVER_V6, 54321, 53, 40, 48, NOT_FRAGMENT),
    ),
    "ipv4 tcp syn to 853": (
        IPV4_TCP_SYN_TO_DOT,
        PacketInfo(4, IPPROTO_TCP, CLIENT_V4, RESOLVER_V4, 50000, 853, 20, 60, NOT_FRAGMENT),
    ),
    "ipv6 extension headers": (
        IPV6_EXTENSION_HEADERS_DNS,
        PacketInfo(6, IPPROTO_UDP, CLIENT_V6, RESOLVER_V6, 54321, 53, 64, 72, NOT_FRAGMENT),
    ),
    "ipv6 first fragment": (
        IPV6_FIRST_FRAGMENT,
        PacketInfo(6, IPPROTO_UDP, CLIENT_V6, RESOLVER_V6, 54321, 53, 48, 56, FIRST_FRAGMENT),
    ),
    "ipv6 later fragment": (
        IPV6_LATER_FRAGMENT,
        PacketInfo(6, IPPROTO_UDP, CLIENT_V6, RESOLVER_V6, NO_PORT, NO_PORT, 48, 48, LATER_FRAGMENT),
    ),
    "ipv4 first fragment": (
        IPV4_FIRST_FRAGMENT,
        PacketInfo(4, IPPROTO_UDP, CLIENT_V4, RESOLVER_V4, 54321, 53, 20, 28, FIRST_FRAGMENT),
    ),
    "ipv4 later fragment": (
        IPV4_LATER_FRAGMENT,
        PacketInfo(4, IPPROTO_UDP, CLIENT_V4, RESOLVER_V4, NO_PORT, NO_PORT, 20, 20, LATER_FRAGMENT),
    ),
    "ipv4 with options": (
        IPV4_WITH_ROUTER_ALERT,
        PacketInfo(4, IPPROTO_UDP, CLIENT_V4, RESOLVER_V4, 54321, 53, 24, 32, NOT_FRAGMENT),
    ),
    "ipv4 icmp echo": (
        IPV4_ICMP_ECHO,
        PacketInfo(4, IPPROTO_ICMP, CLIENT_V4, RESOLVER_V4, NO_PORT, NO_PORT, 20, 28, NOT_FRAGMENT),
    ),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_packet_classifies_as_written(name: str) -> None:
    packet, expected = GOLDEN[name]
    assert classify(packet) == expected


@pytest.mark.parametrize("name", GOLDEN)
def test_memoryview_classifies_like_bytes_and_addresses_come_back_as_bytes(name: str) -> None:
    packet, expected = GOLDEN[name]
    info = classify(memoryview(packet))
    assert info == expected
    assert type(info.src) is bytes and type(info.dst) is bytes
    assert classify(bytearray(packet)) == expected


def test_payload_offset_points_at_the_dns_message() -> None:
    for packet in (
        IPV4_UDP_DNS_QUERY,
        IPV6_UDP_DNS_QUERY,
        IPV6_EXTENSION_HEADERS_DNS,
        IPV4_WITH_ROUTER_ALERT,
    ):
        assert packet[classify(packet).payload_offset :] == DNS_QUERY


def test_atomic_fragment_is_a_whole_datagram() -> None:
    # RFC 6946: a Fragment header with offset 0 and M clear wraps a complete datagram.
    fragment_header = bytes.fromhex("11 00 0000 00000001")
    packet = (
        IPV6_UDP_DNS_QUERY[:4]
        + (len(IPV6_UDP_DNS_QUERY) - 40 + 8).to_bytes(2, "big")
        + bytes([44, 64])
        + IPV6_UDP_DNS_QUERY[8:40]
        + fragment_header
        + IPV6_UDP_DNS_QUERY[40:]
    )
    info = classify(packet)
    assert (info.protocol, info.dport, info.fragment, info.payload_offset) == (
        IPPROTO_UDP,
        53,
        NOT_FRAGMENT,
        56,
    )


# What the builders send is exactly what was written by hand above.
def test_udp_builder_reproduces_golden_ipv4_query() -> None:
    assert udp_packet(CLIENT_V4, RESOLVER_V4, 54321, 53, DNS_QUERY) == IPV4_UDP_DNS_QUERY


def test_udp_builder_reproduces_golden_ipv6_query() -> None:
    assert udp_packet(CLIENT_V6, RESOLVER_V6, 54321, 53, DNS_QUERY) == IPV6_UDP_DNS_QUERY


def test_tcp_builder_reproduces_golden_syn_segment() -> None:
    options = tcp_options(mss=1460, sack_permitted=True, timestamps=(123456, 0), window_scale=7)
    syn = tcp_segment(
        CLIENT_V4, RESOLVER_V4, 50000, 853, 0x1C46A3E1, 0, TcpFlags.SYN, window=64240, options=options
    )
    # The builder's IPv4 ID is 0 (RFC 6864, atomic datagram); the TCP segment is byte for byte the same.
    assert syn[20:] == IPV4_TCP_SYN_TO_DOT[20:]


def test_icmp_echo_builder_reproduces_golden_echo() -> None:
    assert icmp_echo(CLIENT_V4, RESOLVER_V4, 7, 1, b"ping") == IPV4_ICMP_ECHO


# The fast test: False must be exact (it skips classify), True may be "look closer".
FAST_TEST_EXPECTATIONS = {
    "ipv4 udp dns": True,
    "ipv6 udp dns": True,
    "ipv4 tcp syn to 853": True,
    "ipv6 extension headers": True,  # unsure without the walk: classify decides
    "ipv6 first fragment": True,
    "ipv6 later fragment": True,  # a Fragment header is an extension header
    "ipv4 first fragment": True,
    "ipv4 later fragment": False,  # no ports to match
    "ipv4 with options": True,  # unusual: classify decides
    "ipv4 icmp echo": False,
}


@pytest.mark.parametrize("name", GOLDEN)
def test_dns_port_hit_on_golden_packets(name: str) -> None:
    packet, _ = GOLDEN[name]
    assert dns_port_hit(packet) is FAST_TEST_EXPECTATIONS[name]
    assert dns_port_hit(memoryview(packet)) is FAST_TEST_EXPECTATIONS[name]


@pytest.mark.parametrize(
    ("src", "dst"), [(CLIENT_V4, ipaddress.IPv4Address("93.184.216.34").packed), (CLIENT_V6, RESOLVER_V6)]
)
def test_dns_port_hit_lets_ordinary_traffic_through(src: bytes, dst: bytes) -> None:
    https = tcp_segment(src, dst, 40000, 443, 1, 1, TcpFlags.ACK, payload=bytes(1200))
    quic = udp_packet(src, dst, 40000, 443, bytes(1200))
    ping = icmp_echo(src, dst, 1, 1)
    assert not dns_port_hit(https)
    assert not dns_port_hit(quic)
    assert not dns_port_hit(ping)


def test_dns_port_hit_matches_either_port() -> None:
    # A reply from port 53 (e.g. from a local listener a TCP/53 flow was steered to) is a hit too.
    reply = udp_packet(RESOLVER_V4, CLIENT_V4, 53, 54321, b"")
    assert dns_port_hit(reply)
    dns_over_quic = udp_packet(CLIENT_V6, RESOLVER_V6, 50000, 853, b"")
    assert dns_port_hit(dns_over_quic)


def test_port_hit_test_uses_the_given_ports() -> None:
    listener_hit = port_hit_test(frozenset({5353}))
    assert listener_hit(udp_packet(CLIENT_V4, RESOLVER_V4, 40000, 5353, b""))
    assert not listener_hit(IPV4_UDP_DNS_QUERY)


@pytest.mark.parametrize("packet", [b"", b"\x45", bytes(19), b"\x60" + bytes(30), b"\x70" + bytes(50)])
def test_dns_port_hit_sends_short_and_unknown_packets_to_classify(packet: bytes) -> None:
    assert dns_port_hit(packet) is True
    with pytest.raises(FormError):
        classify(packet)


def with_bytes(packet: bytes, offset: int, replacement: str) -> bytes:
    """The packet with the hex `replacement` written at `offset`."""
    patch = bytes.fromhex(replacement)
    return packet[:offset] + patch + packet[offset + len(patch) :]


IPV4_ICMP_HEADER_ONLY_4_BYTES = with_bytes(IPV4_ICMP_ECHO[:24], 2, "0018")

# name: (packet, what the FormError says)
MALFORMED = {
    "empty": (b"", "shorter than any IP header"),
    "shorter than an IPv4 header": (IPV4_UDP_DNS_QUERY[:19], "shorter than any IP header"),
    "version 5": (with_bytes(IPV4_UDP_DNS_QUERY, 0, "55"), "version 5"),
    "version 0": (bytes(40), "version 0"),
    "IHL 4": (with_bytes(IPV4_UDP_DNS_QUERY, 0, "44"), "IHL 4"),
    "IHL beyond the packet": (with_bytes(IPV4_ICMP_ECHO, 0, "4f"), "header of 60 bytes in a 32-byte packet"),
    "IPv4 total length too long": (with_bytes(IPV4_UDP_DNS_QUERY, 2, "003a"), "total length 58"),
    "IPv4 total length too short": (with_bytes(IPV4_UDP_DNS_QUERY, 2, "0038"), "total length 56"),
    "IPv4 truncated after the header": (IPV4_UDP_DNS_QUERY[:40], "total length 57 but 40"),
    "IPv6 shorter than its header": (IPV6_UDP_DNS_QUERY[:39], "shorter than the IPv6 header"),
    "IPv6 payload length mismatch": (with_bytes(IPV6_UDP_DNS_QUERY, 4, "0026"), "payload length 38"),
    "IPv6 jumbogram": (with_bytes(IPV6_UDP_DNS_QUERY, 4, "0000"), "payload length 0"),
    "UDP header truncated": (with_bytes(IPV4_ICMP_HEADER_ONLY_4_BYTES, 9, "11"), "UDP header truncated"),
    "UDP length mismatch": (with_bytes(IPV4_UDP_DNS_QUERY, 24, "0024"), "UDP length 36"),
    "TCP header truncated": (with_bytes(IPV4_ICMP_ECHO, 9, "06"), "TCP header truncated"),
    "TCP data offset 4": (with_bytes(IPV4_TCP_SYN_TO_DOT, 32, "40"), "data offset 4"),
    "TCP data offset beyond the segment": (with_bytes(IPV4_TCP_SYN_TO_DOT, 32, "f0"), "data offset 15"),
    "ICMP header truncated": (IPV4_ICMP_HEADER_ONLY_4_BYTES, "ICMP header truncated"),
    "IPv6 extension header past the end": (with_bytes(IPV6_EXTENSION_HEADERS_DNS, 41, "ff"), "past the end"),
    "IPv6 Hop-by-Hop not first": (with_bytes(IPV6_EXTENSION_HEADERS_DNS, 48, "00"), "Hop-by-Hop"),
    "IPv6 Fragment header truncated": (
        bytes.fromhex("6000 0000 0004 2c 40") + CLIENT_V6 + RESOLVER_V6 + bytes.fromhex("1100 0001"),
        "Fragment header truncated",
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_packet_raises_form_error_saying_why(name: str) -> None:
    packet, reason = MALFORMED[name]
    with pytest.raises(FormError, match=reason):
        classify(packet)
    with pytest.raises(FormError, match=reason):
        classify(memoryview(packet))
