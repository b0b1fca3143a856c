"""IP, TCP and UDP packets built for offload tests, and RFC 1071's word-by-word checksum as the reference."""

from __future__ import annotations

import struct

from dnsguard.net.offload import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, VnetHeader

SOURCE4, DESTINATION4 = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1])
SOURCE6 = bytes.fromhex("fd000000000000000000000000000002")
DESTINATION6 = bytes.fromhex("fd000000000000000000000000000001")


def reference_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for index in range(0, len(data), 2):
        total += (data[index] << 8) | data[index + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ipv4_header_valid(packet: bytes) -> bool:
    return reference_sum(packet[:20]) == 0xFFFF


def reference_l4_valid(packet: bytes, l4_start: int, protocol: int) -> bool:
    segment = packet[l4_start:]
    if packet[0] >> 4 == 4:
        pseudo = packet[12:20] + struct.pack("!BBH", 0, protocol, len(segment))
    else:
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(segment), protocol)
    return reference_sum(pseudo + segment) == 0xFFFF


def ip_header(version: int, protocol: int, payload_length: int, identifier: int = 7) -> bytes:
    if version == 4:
        header = bytearray(
            struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_length, identifier, 0x4000, 64, protocol, 0,
                        SOURCE4, DESTINATION4)
        )  # fmt: skip
        header[10:12] = struct.pack("!H", 0xFFFF - reference_sum(bytes(header)) % 0xFFFF)
        return bytes(header)
    return struct.pack("!IHBB16s16s", 6 << 28, payload_length, protocol, 64, SOURCE6, DESTINATION6)


def tcp_packet(
    version: int,
    payload: bytes,
    sequence: int = 1000,
    *,
    flags: int = 0x10,
    ack: int = 55,
    options: bytes = b"",
    checksum: bool = True,
    identifier: int = 7,
) -> bytes:
    header = struct.pack(
        "!HHIIBBHHH", 40000, 5201, sequence, ack, (5 + len(options) // 4) << 4, flags, 501, 0, 0
    )
    segment = bytearray(header + options + payload)
    packet = bytearray(ip_header(version, 6, len(segment), identifier) + segment)
    return with_tcp_checksum(packet) if checksum else bytes(packet)


def with_tcp_checksum(packet: bytes | bytearray) -> bytes:
    """The TCP packet with its checksum set right for its bytes (after a change to them, say)."""
    packet = bytearray(packet)
    version = packet[0] >> 4
    l4_start = 20 if version == 4 else 40
    segment = packet[l4_start:]
    segment[16:18] = b"\0\0"
    pseudo_ok = packet[12:20] if version == 4 else packet[8:40]
    pseudo = pseudo_ok + (
        struct.pack("!BBH", 0, 6, len(segment)) if version == 4 else struct.pack("!IxxxB", len(segment), 6)
    )
    packet[l4_start + 16 : l4_start + 18] = struct.pack(
        "!H", 0xFFFF - reference_sum(bytes(pseudo + segment)) % 0xFFFF
    )
    return bytes(packet)


def super_packet(version: int, payload: bytes, mss: int, flags: int = 0x18) -> bytes:
    """What a TUN with TSO hands over: NEEDS_CSUM with the pseudo-header sum in the field."""
    packet = bytearray(tcp_packet(version, payload, flags=flags, checksum=False))
    l4_start = 20 if version == 4 else 40
    gso = GSO_TCPV4 if version == 4 else GSO_TCPV6
    vnet = VnetHeader(NEEDS_CSUM, gso, l4_start + 20, mss, l4_start, 16).pack()
    return vnet + bytes(packet)
