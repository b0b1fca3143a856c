"""IPv4/IPv6 classification of packets read from the TUN, and IP header builders.

The data path calls `dns_port_hit` for every packet. It answers with one index and one `struct` call
(about 130 ns above the cost of the call itself, bench/packet_classify.py) and never raises. Only packets
it flags, and the rare IPv4 packets with options or IPv6 packets with extension headers, get the full
`classify`, which walks IPv6 extension headers and validates lengths.

Malformed packets: `classify` raises `FormError` (with the reason) rather than returning a sentinel.
In CPython 3.11 a `try` block costs nothing until something is raised, malformed packets from the local
kernel are rare, and a sentinel would put an `is None` test and an optional type on every caller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from dnsguard.errors import FormError
from dnsguard.packet.checksum import Buffer, checksum_from_sum

# IANA protocol numbers ("Assigned Internet Protocol Numbers"); own constants because the socket module's
# set differs between platforms.
IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_MOBILITY = 135
IPPROTO_HIP = 139
IPPROTO_SHIM6 = 140

NO_PORT = -1
"""`PacketInfo.sport`/`dport` when the packet has no ports (not TCP/UDP, or a later fragment)."""

NOT_FRAGMENT = 0
FIRST_FRAGMENT = 1
"""The fragment at offset 0: it carries the transport header, but not the whole datagram."""
LATER_FRAGMENT = 2
"""A fragment at a non-zero offset: no transport header, so no ports (RFC 791, RFC 8200 4.5)."""

DNS_PORTS = frozenset({53, 853})
"""DNS (53, UDP and TCP), DNS over TLS (TCP 853, RFC 7858) and DNS over QUIC (UDP 853, RFC 9250)."""

IPV4_HEADER_LENGTH = 20
IPV6_HEADER_LENGTH = 40
UDP_HEADER_LENGTH = 8
TCP_HEADER_LENGTH = 20
ICMP_HEADER_LENGTH = 8

# Extension headers in the RFC 6564 uniform format: next header, length in 8-octet units not counting the
# first 8. The Fragment and Authentication headers have their own layouts and are handled separately.
_UNIFORM_EXTENSION_HEADERS = frozenset(
    {IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_MOBILITY, IPPROTO_HIP, IPPROTO_SHIM6}
)
_PORTED_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP})
_ICMP_PROTOCOLS = frozenset({IPPROTO_ICMP, IPPROTO_ICMPV6})
IPV6_EXTENSION_HEADERS = _UNIFORM_EXTENSION_HEADERS | {IPPROTO_FRAGMENT, IPPROTO_AH}
"""Next-header values that `classify` walks past to find the upper-layer protocol."""

# The fast test reads, from an IPv4 packet without options: flags + fragment offset, protocol, and the two
# ports that TCP and UDP both keep in the first 4 bytes of their header; from IPv6: next header and ports.
_FAST_IPV4 = struct.Struct("!6xHxB10xHH").unpack_from
_FAST_IPV6 = struct.Struct("!6xB33xHH").unpack_from
_IPV4_FIELDS = struct.Struct("!2xH2xHxB2x4s4s").unpack_from
_IPV6_FIELDS = struct.Struct("!4xHBx16s16s").unpack_from
_UDP_FIELDS = struct.Struct("!HHH").unpack_from
_TCP_FIELDS = struct.Struct("!HH8xB").unpack_from
_EXTENSION_FIELDS = struct.Struct("!BB").unpack_from
_FRAGMENT_FIELDS = struct.Struct("!BxH").unpack_from
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s").pack
_IPV6_HEADER = struct.Struct("!IHBB16s16s").pack

_IPV4_MORE_FRAGMENTS = 0x2000
_IPV4_DONT_FRAGMENT = 0x4000
_IPV4_FRAGMENT_OFFSET = 0x1FFF


class PacketInfo(NamedTuple):
    """What the dispatch needs to know about one IP packet; offsets index the buffer that was classified."""

    version: int
    """4 or 6."""
    protocol: int
    """Upper-layer protocol after IPv6 extension headers; for a later fragment, the Fragment header's."""
    src: bytes
    """Source address, 4 or 16 bytes."""
    dst: bytes
    """Destination address, 4 or 16 bytes."""
    sport: int
    """TCP/UDP source port, or NO_PORT."""
    dport: int
    """TCP/UDP destination port, or NO_PORT."""
    l4_offset: int
    """Where the transport header starts: IPv4 header with options, or IPv6 header plus extension headers."""
    payload_offset: int
    """Where the transport payload starts (after the UDP, TCP or ICMP header); l4_offset for others."""
    fragment: int
    """NOT_FRAGMENT, FIRST_FRAGMENT or LATER_FRAGMENT. A fragmented DNS query cannot be answered from one
    packet; the caller must not let it through unfiltered either."""


def port_hit_test(ports: frozenset[int]) -> Callable[[Buffer], bool]:
    """A fast per-packet test: False only if the packet surely is not TCP/UDP with a port in `ports`."""

    def port_hit(buf: Buffer) -> bool:
        # False means "no port of interest, forward as is" and is exact for IPv4 without options and for IPv6
        # without extension headers. True means "call classify": a port matched, or the packet is unusual
        # (IPv4 options, IPv6 extension headers, too short, unknown version) and needs the full parse.
        # Nothing here validates lengths: a malformed packet that answers False is forwarded and dropped by
        # the far end's stack, as it would be without the tunnel.
        try:
            # Branching on the first byte before unpacking costs IPv4 one index (~7 ns here) and saves IPv6 a
            # wasted IPv4-shaped unpack (~60 ns), measured with bench/packet_classify.py.
            first = buf[0]
            if first == 0x45:
                fragment_field, protocol, sport, dport = _FAST_IPV4(buf)
                if protocol in _PORTED_PROTOCOLS and not fragment_field & _IPV4_FRAGMENT_OFFSET:
                    return sport in ports or dport in ports
                return False
            if first >> 4 == 6:
                next_header, sport, dport = _FAST_IPV6(buf)
                if next_header in _PORTED_PROTOCOLS:
                    return sport in ports or dport in ports
                return next_header in IPV6_EXTENSION_HEADERS
        except (IndexError, struct.error):
            pass
        return True

    return port_hit


dns_port_hit = port_hit_test(DNS_PORTS)
"""`port_hit_test(DNS_PORTS)`: the data path's "is this possibly DNS, DoT or DoQ?" test."""


def classify(buf: Buffer) -> PacketInfo:
    """Parse the IP and transport headers of one packet; raise FormError if it is malformed."""
    length = len(buf)
    if length < IPV4_HEADER_LENGTH:
        raise FormError(f"packet of {length} bytes is shorter than any IP header")
    first = buf[0]
    version = first >> 4
    fragment = NOT_FRAGMENT
    if version == 4:
        total_length, fragment_field, protocol, src, dst = _IPV4_FIELDS(buf)
        l4_offset = (first & 0x0F) << 2
        if l4_offset < IPV4_HEADER_LENGTH:
            raise FormError(f"IPv4 IHL {l4_offset >> 2} is below the minimum of 5")
        if total_length != length:
            raise FormError(f"IPv4 total length {total_length} but {length} bytes read")
        if l4_offset > length:
            raise FormError(f"IPv4 header of {l4_offset} bytes in a {length}-byte packet")
        if fragment_field & _IPV4_FRAGMENT_OFFSET:
            return PacketInfo(4, protocol, src, dst, NO_PORT, NO_PORT, l4_offset, l4_offset, LATER_FRAGMENT)
        if fragment_field & _IPV4_MORE_FRAGMENTS:
            fragment = FIRST_FRAGMENT
    elif version == 6:
        if length < IPV6_HEADER_LENGTH:
            raise FormError(f"packet of {length} bytes is shorter than the IPv6 header")
        payload_length, protocol, src, dst = _IPV6_FIELDS(buf)
        if payload_length + IPV6_HEADER_LENGTH != length:
            # This also refuses jumbograms (payload length 0, RFC 2675), which no TUN MTU allows.
            raise FormError(f"IPv6 payload length {payload_length} but {length} bytes read")
        l4_offset = IPV6_HEADER_LENGTH
        if protocol in IPV6_EXTENSION_HEADERS:
            protocol, l4_offset, fragment = _walk_extension_headers(buf, protocol)
            if fragment == LATER_FRAGMENT:
                return PacketInfo(6, protocol, src, dst, NO_PORT, NO_PORT, l4_offset, l4_offset, fragment)
    else:
        raise FormError(f"IP version {version} is neither 4 nor 6")

    if protocol == IPPROTO_UDP:
        if l4_offset + UDP_HEADER_LENGTH > length:
            raise FormError("UDP header truncated")
        sport, dport, udp_length = _UDP_FIELDS(buf, l4_offset)
        # The UDP length of a first fragment counts the whole datagram, which this packet does not hold.
        if not fragment and udp_length != length - l4_offset:
            raise FormError(f"UDP length {udp_length} but {length - l4_offset} bytes after the IP header")
        return PacketInfo(
            version, protocol, src, dst, sport, dport, l4_offset, l4_offset + UDP_HEADER_LENGTH, fragment
        )
    if protocol == IPPROTO_TCP:
        if l4_offset + TCP_HEADER_LENGTH > length:
            # RFC 1858: a first fragment too short for the TCP header is an attack, not a packet to parse.
            raise FormError("TCP header truncated")
        sport, dport, data_offset_field = _TCP_FIELDS(buf, l4_offset)
        tcp_header_length = (data_offset_field >> 4) << 2
        if tcp_header_length < TCP_HEADER_LENGTH or l4_offset + tcp_header_length > length:
            raise FormError(f"TCP data offset {tcp_header_length >> 2} does not fit the segment")
        return PacketInfo(
            version, protocol, src, dst, sport, dport, l4_offset, l4_offset + tcp_header_length, fragment
        )
    if protocol in _ICMP_PROTOCOLS:
        if l4_offset + ICMP_HEADER_LENGTH > length:
            raise FormError("ICMP header truncated")
        return PacketInfo(
            version, protocol, src, dst, NO_PORT, NO_PORT, l4_offset, l4_offset + ICMP_HEADER_LENGTH, fragment
        )
    return PacketInfo(version, protocol, src, dst, NO_PORT, NO_PORT, l4_offset, l4_offset, fragment)


def _walk_extension_headers(buf: Buffer, next_header: int) -> tuple[int, int, int]:
    """Follow the IPv6 header chain to the upper-layer protocol: (protocol, its offset, fragment kind)."""
    length = len(buf)
    offset = IPV6_HEADER_LENGTH
    fragment = NOT_FRAGMENT
    # Every extension header is at least 8 bytes long, so the walk ends within length / 8 steps.
    while True:
        if next_header in _UNIFORM_EXTENSION_HEADERS:
            if next_header == IPPROTO_HOPOPTS and offset != IPV6_HEADER_LENGTH:
                raise FormError(
                    "IPv6 Hop-by-Hop Options header not right after the IPv6 header (RFC 8200 4.1)"
                )
            if offset + 8 > length:
                raise FormError(f"IPv6 extension header {next_header} truncated")
            next_header, extension_length = _EXTENSION_FIELDS(buf, offset)
            offset += (extension_length + 1) << 3
        elif next_header == IPPROTO_FRAGMENT:
            if offset + 8 > length:
                raise FormError("IPv6 Fragment header truncated")
            next_header, offset_and_flags = _FRAGMENT_FIELDS(buf, offset)
            offset += 8
            if offset_and_flags >> 3:
                # RFC 8200 4.5: the rest is fragment data, not headers; the chain is in the first fragment.
                return next_header, offset, LATER_FRAGMENT
            if offset_and_flags & 1:
                fragment = FIRST_FRAGMENT
            # Offset 0 without M is an atomic fragment (RFC 6946): a whole datagram, parsed as one.
        elif next_header == IPPROTO_AH:
            if offset + 8 > length:
                raise FormError("IPv6 Authentication header truncated")
            next_header, extension_length = _EXTENSION_FIELDS(buf, offset)
            # RFC 4302 2.2: AH counts its length in 4-octet units, minus 2.
            offset += (extension_length + 2) << 2
        else:
            break
        if offset > length:
            raise FormError("IPv6 extension headers run past the end of the packet")
    return next_header, offset, fragment


def ipv4_header(
    src: bytes,
    dst: bytes,
    protocol: int,
    payload_length: int,
    *,
    ttl: int = 64,
    identification: int = 0,
    dont_fragment: bool = True,
    tos: int = 0,
) -> bytes:
    """A 20-byte IPv4 header (no options) with its header checksum filled in."""
    total_length = IPV4_HEADER_LENGTH + payload_length
    if total_length > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total_length} bytes exceeds 65535")
    # RFC 6864 4.1: an atomic datagram (DF set, not fragmented) may carry any ID, so 0 is fine by default.
    flags = _IPV4_DONT_FRAGMENT if dont_fragment else 0
    version_ihl = 0x45
    # The header's 16-bit words summed directly, instead of packing twice; see checksum.py for why a plain
    # integer sum reduced modulo 0xFFFF is the one's complement sum.
    word_sum = ((version_ihl << 8) | tos) + total_length + identification + flags + ((ttl << 8) | protocol)
    word_sum += int.from_bytes(src + dst, "big")
    return _IPV4_HEADER(
        version_ihl,
        tos,
        total_length,
        identification,
        flags,
        ttl,
        protocol,
        checksum_from_sum(word_sum),
        src,
        dst,
    )


def ipv6_header(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_length: int,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> bytes:
    """A 40-byte IPv6 header."""
    if payload_length > 0xFFFF:
        raise ValueError(f"IPv6 payload of {payload_length} bytes exceeds 65535 (jumbograms unsupported)")
    first_word = (6 << 28) | (traffic_class << 20) | flow_label
    return _IPV6_HEADER(first_word, payload_length, next_header, hop_limit, src, dst)


def ip_header(src: bytes, dst: bytes, protocol: int, payload_length: int, *, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 header, chosen by the address length (4 or 16 bytes)."""
    check_address_pair(src, dst)
    if len(src) == 4:
        return ipv4_header(src, dst, protocol, payload_length, ttl=ttl)
    return ipv6_header(src, dst, protocol, payload_length, hop_limit=ttl)


def check_address_pair(src: bytes, dst: bytes) -> None:
    """Raise ValueError unless src and dst are both IPv4 (4 bytes) or both IPv6 (16 bytes)."""
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError(f"addresses of {len(src)} and {len(dst)} bytes are not an IPv4 or IPv6 pair")
