"""Matching replies to queries on the upstream path, with byte indexing only (RFC 1035 §4.1).

Every transport takes a query as raw DNS message bytes and returns the raw reply with the caller's ID
restored, so the resolver never needs dnslib on this path. The few header fields needed here (ID, QR, TC,
RCODE, the question) are read by offset. Pure: bytes in, bytes and keys out; the only randomness (query IDs)
is injected.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container

from dnsguard.dns.wire import question_end

__all__ = [
    "HEADER_SIZE",
    "MAX_MESSAGE",
    "RCODE_REFUSED",
    "RCODE_SERVFAIL",
    "flight_key",
    "free_id",
    "is_reply_to",
    "is_truncated",
    "personalise",
    "question_end",
    "question_key",
    "rcode",
    "with_id",
]

HEADER_SIZE = 12
MAX_MESSAGE = 65535
RCODE_SERVFAIL = 2
RCODE_REFUSED = 5

_QR = 0x80  # in byte 2
_TC = 0x02  # in byte 2
_RD = 0x01  # in byte 2
_CD = 0x10  # in byte 3
_RCODE_MASK = 0x0F  # in byte 3
_ONE_QUESTION = b"\x00\x01"
_TYPE_OPT = b"\x00\x29"


def question_key(message: bytes, end: int) -> bytes:
    """The question (name, type, class) with the name lower-cased: DNS names compare case-insensitively."""
    return message[HEADER_SIZE : end - 4].lower() + message[end - 4 : end]


def is_reply_to(reply: bytes, key: bytes, end: int, *, allow_no_question: bool) -> bool:
    """Whether a message is a response carrying our question (RFC 5452: match the ID *and* the question)."""
    if len(reply) < HEADER_SIZE or not reply[2] & _QR:
        return False
    if allow_no_question and reply[4:6] == b"\x00\x00":
        # Some servers drop the question from FORMERR/NOTIMP replies; on a connection of our own, the ID
        # suffices.
        return True
    return reply[4:6] == _ONE_QUESTION and len(reply) >= end and question_key(reply, end) == key


def rcode(reply: bytes) -> int:
    """The reply's RCODE (the low four bits; extended RCODEs live in OPT and are not needed here)."""
    return reply[3] & _RCODE_MASK


def is_truncated(reply: bytes) -> bool:
    """Whether the TC bit is set: the answer did not fit (RFC 1035 §4.1.1)."""
    return bool(reply[2] & _TC)


def with_id(query_id: int, message: bytes) -> bytes:
    """The message with another ID."""
    return query_id.to_bytes(2, "big") + message[2:]


def free_id(taken: Container[int], randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A query ID not in ``taken``; callers cap what is taken at half the ID space, so this loop is short."""
    # RFC 5452: unpredictable IDs, hence the secrets module by default.
    while True:
        query_id = randbits(16)
        if query_id not in taken:
            return query_id


def flight_key(wire: bytes, end: int) -> bytes:
    """What makes two queries answerable by one reply: question, RD and CD bits, EDNS presence and DO."""
    flags = bytes((wire[2] & _RD, wire[3] & _CD))
    rest = wire[end:]
    if wire[6:12] == b"\x00\x00\x00\x00\x00\x00":
        edns = b"-"  # RFC 6891 §7: a query without OPT must not get a reply with one
    elif wire[6:12] == b"\x00\x00\x00\x00\x00\x01" and rest[:3] == b"\x00" + _TYPE_OPT and len(rest) >= 11:
        edns = b"D" if rest[7] & 0x80 else b"E"  # RFC 6891 §6.1.3, RFC 3225: DO asks for DNSSEC records
    else:
        edns = rest  # anything unusual (TSIG, several records): only byte-identical queries share a reply
    return question_key(wire, end) + flags + edns


def personalise(reply: bytes, wire: bytes, end: int) -> bytes:
    """The reply with the asker's ID and, when the names match, the asker's spelling of the question name.

    Coalesced askers may differ in letter case, and stubs that randomise it (draft-vixie-dnsext-dns0x20)
    check that the reply echoes theirs.
    """
    if (
        reply[4:6] == _ONE_QUESTION
        and len(reply) >= end
        and question_key(reply, end) == question_key(wire, end)
    ):
        return wire[:2] + reply[2:HEADER_SIZE] + wire[HEADER_SIZE : end - 4] + reply[end - 4 :]
    return wire[:2] + reply[2:]
