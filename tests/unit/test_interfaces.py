"""Reading the host's addresses from a netlink dump: the parser on crafted and arbitrary messages."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import NetworkError
from dnsguard.net.interfaces import (
    IFA_ADDRESS,
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWADDR,
    parse_address_messages,
)


def attribute(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + bytes(-len(raw) % 4)


def message(kind: int, body: bytes) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0) + body
    return raw + bytes(-len(raw) % 4)


def address(family: int, prefix: int, index: int, *attributes: bytes) -> bytes:
    return message(RTM_NEWADDR, struct.pack("=BBBBI", family, prefix, 0, 0, index) + b"".join(attributes))


DONE = message(NLMSG_DONE, struct.pack("=i", 0))


def test_a_dump_gives_each_address_with_its_prefix_then_the_end() -> None:
    v4 = address(socket.AF_INET, 24, 2, attribute(IFA_ADDRESS, bytes([192, 0, 2, 1])))
    # A point-to-point link: IFA_ADDRESS is the peer, IFA_LOCAL our own address.
    p2p = address(
        socket.AF_INET6,
        128,
        3,
        attribute(IFA_ADDRESS, ipaddress.ip_address("fd00::1").packed),
        attribute(IFA_LOCAL, ipaddress.ip_address("fd00::2").packed),
    )
    items = list(parse_address_messages(v4 + p2p + DONE))
    assert items == [
        (2, ipaddress.ip_interface("192.0.2.1/24")),
        (3, ipaddress.ip_interface("fd00::2/128")),
        None,
    ]


def test_a_dump_split_across_reads_ends_only_at_done() -> None:
    v4 = address(socket.AF_INET, 8, 1, attribute(IFA_ADDRESS, bytes([127, 0, 0, 1])))
    assert list(parse_address_messages(v4)) == [(1, ipaddress.ip_interface("127.0.0.1/8"))]


def test_a_netlink_error_and_a_truncated_message_are_network_errors() -> None:
    with pytest.raises(NetworkError, match=r"Operation not permitted"):
        list(parse_address_messages(message(NLMSG_ERROR, struct.pack("=i", -1))))
    whole = address(socket.AF_INET, 24, 2, attribute(IFA_ADDRESS, bytes(4)))
    with pytest.raises(NetworkError):
        list(parse_address_messages(whole[:-4]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_addresses_or_a_network_error(data: bytes) -> None:
    try:
        for item in parse_address_messages(data):
            assert item is None or isinstance(item[1], ipaddress.IPv4Interface | ipaddress.IPv6Interface)
    except NetworkError:
        pass
