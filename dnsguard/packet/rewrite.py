"""NAT-style rewriting of addresses and ports in place, with incremental checksum updates (RFC 1624).

Used to steer TCP/53 flows to a local listener and to rewrite the listener's replies back. Updating the
checksums incrementally costs the same for any packet size, and it stays correct for a first fragment, whose
transport checksum covers bytes this packet does not hold.
"""

from __future__ import annotations

import struct

from dnsguard.packet.checksum import checksum_update
from dnsguard.packet.ip import (
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LATER_FRAGMENT,
    NO_PORT,
    PacketInfo,
)

_WORD = struct.Struct("!H")
_PORTS = struct.Struct("!HH")
_IPV4_CHECKSUM_OFFSET = 10
# Where each transport keeps its checksum, from the start of its header.
_TRANSPORT_CHECKSUM_OFFSETS = {IPPROTO_TCP: 16, IPPROTO_UDP: 6, IPPROTO_ICMPV6: 2}


def rewrite_endpoints(
    packet: bytearray,
    info: PacketInfo,
    *,
    src: bytes | None = None,
    sport: int | None = None,
    dst: bytes | None = None,
    dport: int | None = None,
) -> PacketInfo:
    """Replace the given addresses/ports in `packet`, fix its checksums incrementally, return the new info."""
    # `info` must describe `packet` as it is now: classify's answer, or what the previous rewrite returned.
    # Not covered: a transport checksum over an IPv6 Routing header's final destination (RFC 8200 8.1),
    # and the packet quoted inside an ICMP error, which a full NAT would rewrite as well.
    address_length = 4 if info.version == 4 else 16
    for address in (src, dst):
        if address is not None and len(address) != address_length:
            raise ValueError(f"IPv{info.version} address must be {address_length} bytes, got {len(address)}")
    if (sport is not None or dport is not None) and info.sport == NO_PORT:
        raise ValueError("the packet has no ports to rewrite")
    new_src = info.src if src is None else src
    new_dst = info.dst if dst is None else dst
    new_sport = info.sport if sport is None else sport
    new_dport = info.dport if dport is None else dport

    # The addresses as one run of words, old and new; the IPv4 header and the pseudo-header both cover them.
    old_addresses = info.src + info.dst
    new_addresses = new_src + new_dst
    src_offset = 12 if info.version == 4 else 8

    # ICMPv4 has no pseudo-header, so only TCP, UDP and ICMPv6 checksums see the addresses. A later fragment
    # does not hold the transport checksum: the first fragment's update covers the whole datagram.
    checksum_offset = _TRANSPORT_CHECKSUM_OFFSETS.get(info.protocol)
    if info.fragment == LATER_FRAGMENT or (info.protocol == IPPROTO_ICMPV6 and info.version == 4):
        checksum_offset = None
    if checksum_offset is not None:
        checksum_position = info.l4_offset + checksum_offset
        (old_checksum,) = _WORD.unpack_from(packet, checksum_position)
        # RFC 768: a zero UDP checksum over IPv4 means "none computed", and stays so.
        if not (info.protocol == IPPROTO_UDP and info.version == 4 and old_checksum == 0):
            old_words = old_addresses
            new_words = new_addresses
            if info.sport != NO_PORT:
                old_words += _PORTS.pack(info.sport, info.dport)
                new_words += _PORTS.pack(new_sport, new_dport)
            new_checksum = checksum_update(old_checksum, old_words, new_words)
            if info.protocol == IPPROTO_UDP and new_checksum == 0:
                new_checksum = 0xFFFF
            _WORD.pack_into(packet, checksum_position, new_checksum)
    if info.version == 4 and new_addresses != old_addresses:
        (old_header_checksum,) = _WORD.unpack_from(packet, _IPV4_CHECKSUM_OFFSET)
        _WORD.pack_into(
            packet, _IPV4_CHECKSUM_OFFSET, checksum_update(old_header_checksum, old_addresses, new_addresses)
        )
    packet[src_offset : src_offset + 2 * address_length] = new_addresses
    if info.sport != NO_PORT:
        _PORTS.pack_into(packet, info.l4_offset, new_sport, new_dport)
    return PacketInfo(
        info.version,
        info.protocol,
        new_src,
        new_dst,
        new_sport,
        new_dport,
        info.l4_offset,
        info.payload_offset,
        info.fragment,
    )
