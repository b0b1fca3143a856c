"""What the device tells its shell: events (drained with Device.next_event) and drop counters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dnsguard.wireguard.keys import PublicKey

Address = tuple[Any, ...]
"""A UDP socket address as the shell's socket gives it: (host, port) or the IPv6 4-tuple."""


@dataclass(frozen=True, slots=True)
class HandshakeInitiationSent:
    """We sent a handshake initiation to the peer; `attempt` counts from 1 within one handshake."""

    public_key: PublicKey
    attempt: int


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    """A new session is usable: on the initiator when the response arrives, on the responder at key
    confirmation (the first transport packet under the new keys)."""

    public_key: PublicKey
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class HandshakeGaveUp:
    """No response after `attempts` initiations (about 90 s); queued packets were dropped."""

    public_key: PublicKey
    attempts: int


@dataclass(frozen=True, slots=True)
class PeerEndpointChanged:
    """An authenticated packet came from a new address and the peer now lives there (roaming)."""

    public_key: PublicKey
    old: Address | None
    new: Address


@dataclass(frozen=True, slots=True)
class KeysZeroed:
    """No new session for 540 s: every key of the peer was erased."""

    public_key: PublicKey


Event = HandshakeInitiationSent | HandshakeCompleted | HandshakeGaveUp | PeerEndpointChanged | KeysZeroed


@dataclass(slots=True)
class DropCounters:
    """Why datagrams and packets were dropped; the device never raises on bad input, it counts."""

    malformed: int = 0
    mac1_invalid: int = 0
    cookie_replies_sent: int = 0
    rate_limited: int = 0
    handshake_invalid: int = 0
    handshake_unknown_peer: int = 0
    handshake_replayed: int = 0
    handshake_flood: int = 0
    response_unexpected: int = 0
    cookie_reply_invalid: int = 0
    unknown_receiver: int = 0
    key_expired: int = 0
    decrypt_failed: int = 0
    replayed: int = 0
    inner_malformed: int = 0
    source_not_allowed: int = 0
    no_route: int = 0
    no_endpoint: int = 0
    staged_overflow: int = 0
    staged_flushed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name, for metrics."""
        return dataclasses.asdict(self)
