"""The host's addresses and connected prefixes, read with one netlink dump (for the resolver's allow list).

A plain AF_NETLINK socket and `struct` are enough for an RTM_GETADDR dump: the resolver reads its
networks at start and every 30 s, and pyroute2 would cost about 9 MB of resident memory for it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Sequence

from dnsguard.errors import NetworkError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

RTM_NEWADDR = 20
RTM_GETADDR = 22
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_MAX_DUMP_BYTES = 16 << 20
"""A dump bigger than this is not an address table: stop reading rather than grow without bound."""


def _align(length: int) -> int:
    return (length + 3) & ~3


def parse_address_messages(data: bytes) -> Iterator[tuple[int, Interface] | None]:
    """(interface index, address with prefix) per RTM_NEWADDR message in `data`; None at NLMSG_DONE.

    IFA_LOCAL is the interface's own address where it differs from IFA_ADDRESS (the peer of a
    point-to-point link); IFA_ADDRESS otherwise. Malformed messages raise NetworkError.
    """
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetworkError("netlink message truncated")
        body = offset + _HEADER.size
        if kind == NLMSG_DONE:
            yield None
            return
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, body)[0] if length >= _HEADER.size + 4 else 0
            raise NetworkError(f"netlink address dump failed: {os.strerror(-code) if code else 'error'}")
        if kind == RTM_NEWADDR and length >= _HEADER.size + _IFADDRMSG.size:
            family, prefix, _, _, index = _IFADDRMSG.unpack_from(data, body)
            attributes: dict[int, bytes] = {}
            position = body + _IFADDRMSG.size
            end = offset + length
            while position + _RTATTR.size <= end:
                size, attribute = _RTATTR.unpack_from(data, position)
                if size < _RTATTR.size or position + size > end:
                    raise NetworkError("netlink attribute truncated")
                attributes[attribute] = data[position + _RTATTR.size : position + size]
                position += _align(size)
            raw = attributes.get(IFA_LOCAL) or attributes.get(IFA_ADDRESS)
            width = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
            if raw is not None and width and len(raw) == width and prefix <= width * 8:
                yield index, ipaddress.ip_interface((ipaddress.ip_address(raw), prefix))
        offset += _align(length)


def _read_addresses() -> list[tuple[str, Interface]]:
    request = _HEADER.pack(_HEADER.size + 8, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    request += struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
    found: list[tuple[str, Interface]] = []
    names: dict[int, str] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.settimeout(5)
            sock.sendall(request)
            received = 0
            while received < _MAX_DUMP_BYTES:
                data = sock.recv(1 << 16)
                received += len(data)
                for item in parse_address_messages(data):
                    if item is None:
                        return found
                    index, interface = item
                    if index not in names:
                        try:
                            names[index] = socket.if_indextoname(index)
                        except OSError:
                            names[index] = ""
                    found.append((names[index], interface))
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            raise NetworkError("cannot read the interface addresses: no netlink here") from exc
        raise NetworkError(f"cannot read the interface addresses: {exc}") from exc
    raise NetworkError("cannot read the interface addresses: the netlink dump did not end")


async def _addresses() -> list[tuple[str, Interface]]:
    """(interface name, address with prefix) for every address of this network namespace."""
    return await asyncio.to_thread(_read_addresses)


async def connected_networks(interfaces: Sequence[str] | None = None) -> list[str]:
    """The prefixes of the named interfaces' addresses (every interface when None), as CIDRs.

    Link-local prefixes are included: a LAN device's own link-local source is as local as its
    global one.
    """
    seen: dict[str, None] = {}
    for name, interface in await _addresses():
        if interfaces is None or name in interfaces:
            seen[str(interface.network)] = None
    return list(seen)


async def host_addresses() -> list[str]:
    """Every address of the host as a single-address CIDR (its own queries come from one of them)."""
    seen: dict[str, None] = {}
    for _, interface in await _addresses():
        seen[str(ipaddress.ip_network(interface.ip))] = None
    return list(seen)
