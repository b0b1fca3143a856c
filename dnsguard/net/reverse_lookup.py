"""Reverse lookups (PTR) of client addresses, asked of the LAN's own resolver over UDP.

The LAN's resolver (a router running dnsmasq, say) knows the names its own DHCP server handed out;
dnsguard's upstreams do not, and dnsguard's own special-use rules answer private reverse zones with
NXDOMAIN, so these questions go straight to the configured address and nowhere else. Each lookup is
one datagram and one answer, matched by ID and question; anything else is counted and ignored. This
is far off the answer path (a few questions a minute), so dnslib builds and parses the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import socket
from typing import Final

from dnslib import QTYPE, RCODE, DNSError, DNSRecord

from dnsguard.errors import NetworkError

TIMEOUT: Final = 2.0
"""Seconds to wait for the answer: a resolver on the LAN answers in milliseconds or not at all."""
MAX_ANSWER: Final = 4096


def reverse_pointer(address: str) -> str:
    """The PTR owner of an address: 2.0.192.in-addr.arpa style (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return ipaddress.ip_address(address).reverse_pointer


def ptr_query(address: str, message_id: int) -> bytes:
    record = DNSRecord.question(reverse_pointer(address), "PTR")
    record.header.id = message_id
    return bytes(record.pack())


def parse_ptr_answer(data: bytes, address: str, message_id: int) -> tuple[str | None, int] | None:
    """(name or None for no name, TTL) from an answer to `ptr_query`; None when it is not one."""
    try:
        reply = DNSRecord.parse(data)
    except (DNSError, ValueError, IndexError, UnicodeError):
        return None
    owner = reverse_pointer(address).lower()
    if (
        reply.header.id != message_id
        or not reply.header.qr
        or len(reply.questions) != 1
        or str(reply.questions[0].qname).rstrip(".").lower() != owner
    ):
        return None
    if reply.header.rcode != RCODE.NOERROR:
        return None, 0
    for record in reply.rr:
        if record.rtype == QTYPE.PTR and str(record.rname).rstrip(".").lower() == owner:
            return str(record.rdata), int(record.ttl)
    return None, 0


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, address: str, message_id: int) -> None:
        self.address = address
        self.message_id = message_id
        self.answer: asyncio.Future[tuple[str | None, int]] = asyncio.get_running_loop().create_future()
        self.ignored = 0

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        parsed = parse_ptr_answer(data[:MAX_ANSWER], self.address, self.message_id)
        if parsed is None:
            self.ignored += 1
        elif not self.answer.done():
            self.answer.set_result(parsed)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(NetworkError(f"reverse lookup: {exc}"))


async def lookup_ptr(
    server: str, address: str, port: int = 53, timeout: float = TIMEOUT
) -> tuple[str | None, int]:
    """(the PTR name or None, its TTL) for `address` from `server`; NetworkError on no answer."""
    message_id = secrets.randbelow(1 << 16)
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Exchange(address, message_id), remote_addr=(server, port), family=family
        )
    except OSError as exc:
        raise NetworkError(f"reverse lookup via {server}: {exc.strerror or exc}") from None
    try:
        transport.sendto(ptr_query(address, message_id))
        async with asyncio.timeout(timeout):
            return await protocol.answer
    except TimeoutError:
        raise NetworkError(f"reverse lookup via {server}: no answer in {timeout:g} s") from None
    finally:
        with contextlib.suppress(Exception):
            transport.close()
