"""TCP segment parsing and building: resets that refuse DoT, and what a small userspace TCP needs."""

from __future__ import annotations

import struct
from enum import IntFlag
from typing import NamedTuple

from dnsguard.errors import FormError
from dnsguard.packet.checksum import Buffer, internet_checksum, pseudo_header_sum
from dnsguard.packet.ip import (
    IPPROTO_TCP,
    NO_PORT,
    TCP_HEADER_LENGTH,
    PacketInfo,
    check_address_pair,
    ip_header,
)

# RFC 9293 3.2 option kinds, plus the ones RFC 7323 (window scale, timestamps) and RFC 2018 (SACK) define.
TCP_OPTION_END = 0
TCP_OPTION_NOP = 1
TCP_OPTION_MSS = 2
TCP_OPTION_WINDOW_SCALE = 3
TCP_OPTION_SACK_PERMITTED = 4
TCP_OPTION_SACK = 5
TCP_OPTION_TIMESTAMPS = 8

TCP_MAX_OPTIONS_LENGTH = 40
"""The data offset field counts 15 words at most: 60 bytes of header, 20 of them fixed."""

_TCP_HEADER = struct.Struct("!HHIIBBHHH")
_TCP_FIELDS = struct.Struct("!4xIIxBH2xH").unpack_from
_CHECKSUM = struct.Struct("!H")
_TCP_CHECKSUM_OFFSET = 16
_SEQUENCE_MASK = 0xFFFFFFFF


class TcpFlags(IntFlag):
    """The control bits of the TCP header (RFC 9293 3.1, RFC 3168 for ECE and CWR)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class TcpHeader(NamedTuple):
    """The TCP header fields that classify() does not return."""

    seq: int
    ack: int
    flags: int
    """TcpFlags bits."""
    window: int
    urgent: int
    options: bytes
    """Raw options, padding included; see parse_tcp_options."""


def tcp_header(packet: Buffer, info: PacketInfo) -> TcpHeader:
    """Sequence numbers, flags, window and options of a TCP packet that classify() described."""
    if info.protocol != IPPROTO_TCP or info.sport == NO_PORT:
        raise ValueError("tcp_header needs the PacketInfo of a TCP packet with its header")
    seq, ack, flags, window, urgent = _TCP_FIELDS(packet, info.l4_offset)
    options = bytes(packet[info.l4_offset + TCP_HEADER_LENGTH : info.payload_offset])
    return TcpHeader(seq, ack, flags, window, urgent, options)


def tcp_options(
    *,
    mss: int | None = None,
    window_scale: int | None = None,
    sack_permitted: bool = False,
    timestamps: tuple[int, int] | None = None,
) -> bytes:
    """Encoded SYN options, each 4-byte aligned with NOPs as RFC 7323 Appendix A suggests."""
    encoded = bytearray()
    if mss is not None:
        encoded += struct.pack("!BBH", TCP_OPTION_MSS, 4, mss)
    sack_permitted_option = bytes([TCP_OPTION_SACK_PERMITTED, 2])
    two_nops = bytes([TCP_OPTION_NOP, TCP_OPTION_NOP])
    if timestamps is not None:
        # The 10-byte timestamps option is preceded by 2 bytes to align it; SACK-permitted is exactly 2 bytes.
        encoded += sack_permitted_option if sack_permitted else two_nops
        encoded += struct.pack("!BBII", TCP_OPTION_TIMESTAMPS, 10, *timestamps)
    elif sack_permitted:
        encoded += two_nops + sack_permitted_option
    if window_scale is not None:
        encoded += bytes([TCP_OPTION_NOP, TCP_OPTION_WINDOW_SCALE, 3, window_scale])
    return bytes(encoded)


def parse_tcp_options(options: Buffer) -> list[tuple[int, bytes]]:
    """(kind, data) for every option up to End of Option List; NOPs are skipped; FormError if malformed."""
    parsed: list[tuple[int, bytes]] = []
    offset = 0
    length = len(options)
    while offset < length:
        kind = options[offset]
        if kind == TCP_OPTION_END:
            break
        if kind == TCP_OPTION_NOP:
            offset += 1
            continue
        if offset + 1 >= length:
            raise FormError(f"TCP option {kind} has no length byte")
        option_length = options[offset + 1]
        if option_length < 2 or offset + option_length > length:
            raise FormError(f"TCP option {kind} has length {option_length} at offset {offset} of {length}")
        parsed.append((kind, bytes(options[offset + 2 : offset + option_length])))
        offset += option_length
    return parsed


def tcp_segment(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    *,
    window: int = 65535,
    options: Buffer = b"",
    payload: Buffer = b"",
    urgent: int = 0,
    ttl: int = 64,
) -> bytes:
    """An IPv4 or IPv6 TCP packet (by address length) with options zero-padded and checksums filled in."""
    check_address_pair(src, dst)
    if len(options) > TCP_MAX_OPTIONS_LENGTH:
        raise ValueError(f"{len(options)} bytes of TCP options exceed {TCP_MAX_OPTIONS_LENGTH}")
    # RFC 9293 3.1: the header ends on a 32-bit boundary and the padding is zeros (End of Option List).
    padding = bytes(-len(options) % 4)
    header_length = TCP_HEADER_LENGTH + len(options) + len(padding)
    segment = bytearray(
        _TCP_HEADER.pack(
            sport,
            dport,
            seq & _SEQUENCE_MASK,
            ack & _SEQUENCE_MASK,
            (header_length >> 2) << 4,
            flags,
            window,
            0,
            urgent,
        )
    )
    segment += options
    segment += padding
    segment += payload
    ip = ip_header(src, dst, IPPROTO_TCP, len(segment), ttl=ttl)
    segment_checksum = internet_checksum(segment, pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment)))
    _CHECKSUM.pack_into(segment, _TCP_CHECKSUM_OFFSET, segment_checksum)
    return ip + segment


def tcp_reset_reply(packet: Buffer, info: PacketInfo, *, ttl: int = 64) -> bytes | None:
    """The RST a closed port sends for this segment (RFC 9293 3.10.7.1); None for a RST or a fragment."""
    header = tcp_header(packet, info)
    # Never answer a RST with a RST. A fragment does not hold the whole segment, so its length, which the
    # reset's ACK must cover, is unknown.
    if header.flags & TcpFlags.RST or info.fragment:
        return None
    if header.flags & TcpFlags.ACK:
        return tcp_segment(
            info.dst, info.src, info.dport, info.sport, header.ack, 0, TcpFlags.RST, window=0, ttl=ttl
        )
    # SYN and FIN each occupy one sequence number, so they count in the segment length being acknowledged.
    segment_length = len(packet) - info.payload_offset
    segment_length += (header.flags & TcpFlags.SYN) >> 1
    segment_length += header.flags & TcpFlags.FIN
    return tcp_segment(
        info.dst,
        info.src,
        info.dport,
        info.sport,
        0,
        header.seq + segment_length,
        TcpFlags.RST | TcpFlags.ACK,
        window=0,
        ttl=ttl,
    )
