"""UDP datagram builders: DNS replies written back into the TUN."""

from __future__ import annotations

import struct

from dnsguard.packet.checksum import Buffer, checksum_from_sum, pseudo_header_sum
from dnsguard.packet.ip import (
    IPPROTO_UDP,
    NO_PORT,
    UDP_HEADER_LENGTH,
    PacketInfo,
    check_address_pair,
    ip_header,
)

_UDP_HEADER = struct.Struct("!HHHH").pack


def udp_packet(src: bytes, dst: bytes, sport: int, dport: int, payload: Buffer, *, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 UDP packet (by address length) with IP and UDP checksums filled in."""
    check_address_pair(src, dst)
    udp_length = UDP_HEADER_LENGTH + len(payload)
    ip = ip_header(src, dst, IPPROTO_UDP, udp_length, ttl=ttl)
    payload_value = int.from_bytes(payload, "big")
    if len(payload) & 1:
        payload_value <<= 8
    # The UDP header's words are sport, dport, length and a zero checksum; summing them as integers saves
    # packing the header twice.
    word_sum = (
        pseudo_header_sum(src, dst, IPPROTO_UDP, udp_length) + sport + dport + udp_length + payload_value
    )
    # RFC 768: a computed checksum of zero is sent as all ones, zero meaning "no checksum" (IPv4 only;
    # RFC 8200 8.1 makes the checksum mandatory for IPv6, and all ones is still the way to send zero).
    udp_checksum = checksum_from_sum(word_sum) or 0xFFFF
    return b"".join((ip, _UDP_HEADER(sport, dport, udp_length, udp_checksum), payload))


def udp_reply(query: PacketInfo, payload: Buffer, *, ttl: int = 64) -> bytes:
    """A UDP packet answering `query`: its destination becomes the source, ports swapped."""
    if query.protocol != IPPROTO_UDP or query.sport == NO_PORT:
        raise ValueError("udp_reply needs the PacketInfo of a UDP packet with ports")
    return udp_packet(query.dst, query.src, query.dport, query.sport, payload, ttl=ttl)
