"""NAT-style rewriting: incremental checksum updates must equal building the packet from scratch."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.packet import (
    IPPROTO_UDP,
    LATER_FRAGMENT,
    TcpFlags,
    classify,
    icmp_echo,
    internet_checksum,
    pseudo_header_sum,
    rewrite_endpoints,
    tcp_options,
    tcp_segment,
    udp_packet,
    verify_checksum,
)

Builder = Callable[[bytes, bytes, int, int], bytes]
"""Builds the same packet for any (src, dst, sport, dport)."""

CLIENT_V4 = ipaddress.IPv4Address("10.13.0.2").packed
RESOLVER_V4 = ipaddress.IPv4Address("8.8.8.8").packed
LISTENER_V4 = ipaddress.IPv4Address("127.0.0.53").packed
CLIENT_V6 = ipaddress.IPv6Address("fd00:13::2").packed
RESOLVER_V6 = ipaddress.IPv6Address("2001:4860:4860::8888").packed
LISTENER_V6 = ipaddress.IPv6Address("fd00:13::53").packed


@st.composite
def flows(draw: st.DrawFn) -> tuple[int, bool, Builder]:
    """(address length, has ports, builder) for a random UDP, TCP or ICMP packet."""
    address_length = draw(st.sampled_from([4, 16]))
    kind = draw(st.sampled_from(["udp", "tcp", "icmp"]))
    payload = draw(st.binary(max_size=300))
    if kind == "udp":
        return (
            address_length,
            True,
            lambda src, dst, sport, dport: udp_packet(src, dst, sport, dport, payload),
        )
    if kind == "tcp":
        seq, ack = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
        flags = draw(st.sampled_from([TcpFlags.SYN, TcpFlags.ACK, TcpFlags.ACK | TcpFlags.PSH, TcpFlags.FIN]))
        options = tcp_options(mss=1460, window_scale=7) if flags == TcpFlags.SYN else b""

        def tcp(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
            return tcp_segment(src, dst, sport, dport, seq, ack, flags, options=options, payload=payload)

        return address_length, True, tcp
    identifier, sequence = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
    return (
        address_length,
        False,
        lambda src, dst, sport, dport: icmp_echo(src, dst, identifier, sequence, payload),
    )


@settings(deadline=None, max_examples=300)
@given(flows(), st.data())
def test_rewrite_equals_building_the_rewritten_packet(
    flow: tuple[int, bool, Builder], data: st.DataObject
) -> None:
    address_length, has_ports, build = flow
    addresses = st.binary(min_size=address_length, max_size=address_length)
    ports = st.integers(0, 0xFFFF)
    src, dst = data.draw(addresses, label="src"), data.draw(addresses, label="dst")
    sport, dport = data.draw(ports, label="sport"), data.draw(ports, label="dport")
    new_src = data.draw(st.none() | addresses, label="new src")
    new_dst = data.draw(st.none() | addresses, label="new dst")
    new_sport = data.draw(st.none() | ports, label="new sport") if has_ports else None
    new_dport = data.draw(st.none() | ports, label="new dport") if has_ports else None

    packet = bytearray(build(src, dst, sport, dport))
    new_info = rewrite_endpoints(
        packet, classify(packet), src=new_src, dst=new_dst, sport=new_sport, dport=new_dport
    )

    expected = build(
        src if new_src is None else new_src,
        dst if new_dst is None else new_dst,
        sport if new_sport is None else new_sport,
        dport if new_dport is None else new_dport,
    )
    assert bytes(packet) == expected
    assert new_info == classify(expected)


@pytest.mark.parametrize(
    ("client", "resolver", "listener"),
    [(CLIENT_V4, RESOLVER_V4, LISTENER_V4), (CLIENT_V6, RESOLVER_V6, LISTENER_V6)],
)
def test_tcp53_redirect_and_back(client: bytes, resolver: bytes, listener: bytes) -> None:
    # The TCP/53 steering: the client's SYN goes to a local listener, the listener's answer is made to look
    # as if it came from the resolver the client asked.
    syn = bytearray(
        tcp_segment(client, resolver, 40000, 53, 1, 0, TcpFlags.SYN, options=tcp_options(mss=1400))
    )
    rewrite_endpoints(syn, classify(syn), dst=listener, dport=5353)
    assert syn == tcp_segment(
        client, listener, 40000, 5353, 1, 0, TcpFlags.SYN, options=tcp_options(mss=1400)
    )

    syn_ack = bytearray(tcp_segment(listener, client, 5353, 40000, 99, 2, TcpFlags.SYN | TcpFlags.ACK))
    rewrite_endpoints(syn_ack, classify(syn_ack), src=resolver, sport=53)
    assert syn_ack == tcp_segment(resolver, client, 53, 40000, 99, 2, TcpFlags.SYN | TcpFlags.ACK)


def test_ipv4_udp_without_checksum_keeps_none() -> None:
    # RFC 768: zero means the sender computed no checksum; an update must not invent one.
    packet = bytearray(udp_packet(CLIENT_V4, RESOLVER_V4, 40000, 53, b"query"))
    packet[26:28] = b"\x00\x00"
    rewrite_endpoints(packet, classify(packet), dst=LISTENER_V4, dport=5353)
    assert packet[26:28] == b"\x00\x00"
    assert verify_checksum(packet[:20])
    assert (
        bytes(packet) == udp_packet(CLIENT_V4, LISTENER_V4, 40000, 5353, b"query")[:26] + bytes(2) + b"query"
    )


@pytest.mark.parametrize(("src", "dst"), [(CLIENT_V4, RESOLVER_V4), (CLIENT_V6, RESOLVER_V6)])
def test_udp_checksum_stays_all_ones_when_it_updates_to_zero(src: bytes, dst: bytes) -> None:
    # Rewrite a port so that the new sum is negative zero: the UDP field must read 0xFFFF, not 0x0000.
    target = udp_packet(src, dst, 40000, 53, b"\x00\x00")
    (zero_payload_checksum,) = struct.unpack_from("!H", target, len(target) - 4)
    payload = zero_payload_checksum.to_bytes(2, "big")
    assert udp_packet(src, dst, 40000, 53, payload)[-4:-2] == b"\xff\xff"
    packet = bytearray(udp_packet(src, dst, 40000, 5353, payload))
    rewrite_endpoints(packet, classify(packet), dport=53)
    assert packet[-4:-2] == b"\xff\xff"
    assert bytes(packet) == udp_packet(src, dst, 40000, 53, payload)


def fragment_udp(packet: bytes, first_fragment_data: int) -> tuple[bytearray, bytearray]:
    """Split a whole UDP packet in two fragments, the first holding `first_fragment_data` bytes of UDP."""
    info = classify(packet)
    datagram = packet[info.l4_offset :]
    head, tail = datagram[:first_fragment_data], datagram[first_fragment_data:]
    if info.version == 4:
        header = bytearray(packet[:20])

        def ipv4_fragment(offset_and_flags: int, body: bytes) -> bytearray:
            fragment = bytearray(header)
            struct.pack_into("!HHH", fragment, 2, 20 + len(body), 0x4242, offset_and_flags)
            struct.pack_into("!H", fragment, 10, 0)
            struct.pack_into("!H", fragment, 10, internet_checksum(fragment))
            return fragment + body

        return ipv4_fragment(0x2000, head), ipv4_fragment(first_fragment_data >> 3, tail)

    def ipv6_fragment(offset_and_flags: int, body: bytes) -> bytearray:
        fragment_header = struct.pack("!BxHI", IPPROTO_UDP, offset_and_flags, 0x42424242)
        ipv6 = packet[:4] + struct.pack("!HBB", 8 + len(body), 44, packet[7]) + packet[8:40]
        return bytearray(ipv6 + fragment_header + body)

    return ipv6_fragment(1, head), ipv6_fragment(first_fragment_data, tail)


@pytest.mark.parametrize(
    ("client", "resolver", "listener"),
    [(CLIENT_V4, RESOLVER_V4, LISTENER_V4), (CLIENT_V6, RESOLVER_V6, LISTENER_V6)],
)
def test_rewriting_each_fragment_keeps_the_reassembled_datagram_valid(
    client: bytes, resolver: bytes, listener: bytes
) -> None:
    # The UDP checksum lives in the first fragment but covers the whole datagram: an incremental update
    # fixes it without the other fragments, which a recomputation could not.
    payload = bytes(range(200))
    first, later = fragment_udp(udp_packet(client, resolver, 40000, 53, payload), 8 + 96)
    first_info, later_info = classify(first), classify(later)
    assert later_info.fragment == LATER_FRAGMENT
    rewrite_endpoints(first, first_info, dst=listener, dport=5353)
    rewrite_endpoints(later, later_info, dst=listener)
    with pytest.raises(ValueError):
        rewrite_endpoints(later, later_info, dport=5353)

    datagram = first[first_info.l4_offset :] + later[later_info.l4_offset :]
    assert verify_checksum(datagram, pseudo_header_sum(client, listener, IPPROTO_UDP, len(datagram)))
    unfragmented = udp_packet(client, listener, 40000, 5353, payload)
    assert datagram == unfragmented[classify(unfragmented).l4_offset :]
    if len(client) == 4:
        assert verify_checksum(first[:20]) and verify_checksum(later[:20])


def test_rewrite_refuses_ports_on_icmp_and_mismatched_addresses() -> None:
    ping = bytearray(icmp_echo(CLIENT_V4, RESOLVER_V4, 1, 1))
    with pytest.raises(ValueError):
        rewrite_endpoints(ping, classify(ping), dport=53)
    with pytest.raises(ValueError):
        rewrite_endpoints(ping, classify(ping), dst=LISTENER_V6)
