"""ICMP and ICMPv6 builders: destination unreachable to refuse a flow, echo for tests and the lab."""

from __future__ import annotations

import struct
from enum import Enum

from dnsguard.packet.checksum import Buffer, internet_checksum, pseudo_header_sum
from dnsguard.packet.ip import (
    ICMP_HEADER_LENGTH,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPV4_HEADER_LENGTH,
    IPV6_HEADER_LENGTH,
    LATER_FRAGMENT,
    PacketInfo,
    check_address_pair,
    ip_header,
)

ICMP_ECHO_REPLY = 0
ICMP_DESTINATION_UNREACHABLE = 3
ICMP_ECHO_REQUEST = 8
ICMPV6_DESTINATION_UNREACHABLE = 1
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

# RFC 792 / RFC 1122 3.2.2: the ICMPv4 types that report errors (unreachable, source quench, redirect, time
# exceeded, parameter problem). No error is ever sent about one of these.
_ICMP_ERROR_TYPES = frozenset({3, 4, 5, 11, 12})

# RFC 1812 4.3.2.3: an ICMPv4 error holds as much of the offending datagram as fits in 576 bytes.
# RFC 4443 2.4 (c): an ICMPv6 error holds as much as fits in the minimum IPv6 MTU, 1280 bytes.
IPV4_ICMP_ERROR_LIMIT = 576
IPV6_ICMP_ERROR_LIMIT = 1280

_ICMP_HEADER = struct.Struct("!BBHI").pack
_CHECKSUM = struct.Struct("!H")
_ICMP_CHECKSUM_OFFSET = 2


class Unreachable(Enum):
    """Why a flow is refused; maps to the ICMPv4 and ICMPv6 destination unreachable codes."""

    PORT = "port"
    """ICMPv4 code 3, ICMPv6 code 4: nothing listens there, as a host without the service would say."""
    ADMIN_PROHIBITED = "admin-prohibited"
    """ICMPv4 code 13 (RFC 1812 5.2.7.1), ICMPv6 code 1: a filter said no."""


_ICMPV4_CODES = {Unreachable.PORT: 3, Unreachable.ADMIN_PROHIBITED: 13}
_ICMPV6_CODES = {Unreachable.PORT: 4, Unreachable.ADMIN_PROHIBITED: 1}


def icmp_error_allowed(original: Buffer, info: PacketInfo) -> bool:
    """False where RFC 1122 3.2.2 (IPv4) or RFC 4443 2.4 (e) forbids an ICMP error about this packet."""
    if info.version == 4:
        # Not about a later fragment, an ICMP error, or a datagram to multicast, class E or limited broadcast,
        # nor to a source that is no single host (this network, loopback, multicast, class E).
        if info.fragment == LATER_FRAGMENT:
            return False
        if info.protocol == IPPROTO_ICMP and original[info.l4_offset] in _ICMP_ERROR_TYPES:
            return False
        return info.dst[0] < 224 and info.src[0] not in (0, 127) and info.src[0] < 224
    # ICMPv6 error types are 0-127 (RFC 4443 2.1); a later fragment hides the type, so assume the worst.
    if info.protocol == IPPROTO_ICMPV6 and (
        info.fragment == LATER_FRAGMENT or original[info.l4_offset] < 128
    ):
        return False
    # Not to multicast destinations (the Packet Too Big and Parameter Problem exceptions do not apply to
    # unreachables), nor from the unspecified or a multicast source.
    return info.dst[0] != 0xFF and info.src[0] != 0xFF and any(info.src)


def icmp_unreachable(
    original: Buffer,
    info: PacketInfo,
    reason: Unreachable = Unreachable.ADMIN_PROHIBITED,
    *,
    source: bytes | None = None,
    ttl: int = 64,
) -> bytes | None:
    """A destination unreachable about `original`, to its sender; None where icmp_error_allowed forbids it."""
    if not icmp_error_allowed(original, info):
        return None
    # By default the refusal comes from the address the sender tried to reach, as if that host answered.
    sender = info.dst if source is None else source
    if info.version == 4:
        quote = original[: IPV4_ICMP_ERROR_LIMIT - IPV4_HEADER_LENGTH - ICMP_HEADER_LENGTH]
        return icmp_message(
            sender, info.src, ICMP_DESTINATION_UNREACHABLE, _ICMPV4_CODES[reason], 0, quote, ttl=ttl
        )
    quote = original[: IPV6_ICMP_ERROR_LIMIT - IPV6_HEADER_LENGTH - ICMP_HEADER_LENGTH]
    return icmp_message(
        sender, info.src, ICMPV6_DESTINATION_UNREACHABLE, _ICMPV6_CODES[reason], 0, quote, ttl=ttl
    )


def icmp_echo(
    src: bytes,
    dst: bytes,
    identifier: int,
    sequence: int,
    payload: Buffer = b"",
    *,
    reply: bool = False,
    ttl: int = 64,
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request, or reply if `reply`, by address length."""
    if len(src) == 4:
        message_type = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    else:
        message_type = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    return icmp_message(src, dst, message_type, 0, (identifier << 16) | sequence, payload, ttl=ttl)


def icmp_message(
    src: bytes,
    dst: bytes,
    message_type: int,
    code: int,
    rest_of_header: int,
    body: Buffer,
    *,
    ttl: int = 64,
) -> bytes:
    """Any ICMP/ICMPv6 message (by address length) with its checksum; `rest_of_header` is the 2nd word."""
    check_address_pair(src, dst)
    message = bytearray(_ICMP_HEADER(message_type, code, 0, rest_of_header))
    message += body
    if len(src) == 4:
        protocol = IPPROTO_ICMP
        # ICMPv4's checksum covers the message only (RFC 792).
        message_checksum = internet_checksum(message)
    else:
        protocol = IPPROTO_ICMPV6
        # ICMPv6's covers a pseudo-header too (RFC 4443 2.3).
        message_checksum = internet_checksum(message, pseudo_header_sum(src, dst, protocol, len(message)))
    _CHECKSUM.pack_into(message, _ICMP_CHECKSUM_OFFSET, message_checksum)
    return ip_header(src, dst, protocol, len(message), ttl=ttl) + message
