"""Fuzzing the parser: classify raises FormError or nothing else, and the fast test never raises."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import FormError
from dnsguard.packet import (
    DNS_PORTS,
    IPPROTO_TCP,
    IPPROTO_UDP,
    NO_PORT,
    PacketInfo,
    TcpFlags,
    classify,
    dns_port_hit,
    icmp_echo,
    tcp_options,
    tcp_segment,
    udp_packet,
)

CLIENT_V4 = ipaddress.IPv4Address("10.13.0.2").packed
SERVER_V4 = ipaddress.IPv4Address("9.9.9.9").packed
CLIENT_V6 = ipaddress.IPv6Address("fd00:13::2").packed
SERVER_V6 = ipaddress.IPv6Address("2620:fe::fe").packed


def ipv6_with_extension_headers() -> bytes:
    """A UDP/53 packet behind Hop-by-Hop, Fragment (atomic) and Destination Options headers."""
    plain = udp_packet(CLIENT_V6, SERVER_V6, 40000, 53, b"query")
    chain = (
        bytes([44, 0, 1, 4, 0, 0, 0, 0]) + bytes([60, 0, 0, 0, 0, 0, 0, 1]) + bytes([17, 0, 1, 4, 0, 0, 0, 0])
    )
    return (
        plain[:4]
        + (len(plain) - 40 + len(chain)).to_bytes(2, "big")
        + b"\x00"
        + plain[7:40]
        + chain
        + plain[40:]
    )


SEEDS = [
    udp_packet(CLIENT_V4, SERVER_V4, 40000, 53, b"query"),
    udp_packet(CLIENT_V6, SERVER_V6, 40000, 53, b"query"),
    tcp_segment(CLIENT_V4, SERVER_V4, 40000, 853, 1, 0, TcpFlags.SYN, options=tcp_options(mss=1460)),
    tcp_segment(CLIENT_V6, SERVER_V6, 40000, 443, 1, 1, TcpFlags.ACK, payload=b"data"),
    icmp_echo(CLIENT_V4, SERVER_V4, 1, 1, b"ping"),
    icmp_echo(CLIENT_V6, SERVER_V6, 1, 1, b"ping"),
    ipv6_with_extension_headers(),
]


def check_invariants(packet: bytes) -> None:
    """The contract of classify and dns_port_hit for any input."""
    hit = dns_port_hit(packet)
    assert hit is True or hit is False
    assert dns_port_hit(memoryview(packet)) is hit
    try:
        info = classify(packet)
    except FormError:
        return
    assert isinstance(info, PacketInfo)
    assert info.version in (4, 6)
    assert len(info.src) == len(info.dst) == (4 if info.version == 4 else 16)
    assert 0 < info.l4_offset <= info.payload_offset <= len(packet)
    if info.sport != NO_PORT:
        assert info.protocol in (IPPROTO_TCP, IPPROTO_UDP)
        # The fast test may say "look closer" needlessly, but must never skip a DNS port.
        if info.sport in DNS_PORTS or info.dport in DNS_PORTS:
            assert hit
    assert classify(memoryview(packet)) == info


@settings(deadline=None, max_examples=500)
@given(st.binary(max_size=120))
def test_random_bytes(packet: bytes) -> None:
    check_invariants(packet)


@settings(deadline=None, max_examples=200)
@given(st.sampled_from([4, 6]), st.binary(max_size=100))
def test_random_bytes_behind_a_plausible_first_byte(version: int, rest: bytes) -> None:
    first_byte = 0x45 if version == 4 else 0x60
    check_invariants(bytes([first_byte]) + rest)


@settings(deadline=None, max_examples=500)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 200)),
)
def test_mutated_valid_packets(seed: bytes, byte_changes: list[tuple[int, int]], cut: int | None) -> None:
    packet = bytearray(seed)
    for position, value in byte_changes:
        if position < len(packet):
            packet[position] = value
    if cut is not None:
        del packet[cut:]
    check_invariants(bytes(packet))


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        classify(seed)
