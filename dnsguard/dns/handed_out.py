"""The addresses DNS answers handed out, and until when: what the firewall fed by DNS lets clients reach.

The kernel holds the truth (an nftables set whose elements time out); this is the resolver's side of
it, pure: answers come in as packed A/AAAA RDATA with their TTL, and out come batches of elements to
add or refresh, each with its timeout (TTL + grace). An address already in the set is only sent again
when the new answer extends its life by more than REFRESH_SLACK of its timeout, so a popular name
answered from the cache a thousand times a second costs one dictionary look-up per answer and no
kernel work. Time is passed in (`now`, seconds on the daemon's clock).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

REFRESH_SLACK: Final = 0.25
"""An element is refreshed when a new answer would extend its expiry by more than this share of its
timeout: the set stays within 25% of the exact expiry at a fraction of the updates."""
MAX_TIMEOUT: Final = 7 * 86400
"""Elements live at most a week whatever the TTL says (RFC 2181 allows 68 years)."""
MAX_PENDING: Final = 65536
"""Elements waiting for the next batch; beyond this an answer's addresses are counted as dropped."""
MAX_TRACKED: Final = 1 << 20
"""Addresses remembered at once; expired ones are pruned first, then the oldest half is forgotten
(which only costs a redundant refresh of the forgotten addresses later)."""


@dataclass(frozen=True, slots=True)
class Element:
    """One set element to add or refresh: the address (text, as nft reads it) and its timeout."""

    address: str
    version: int
    timeout: int


@dataclass
class HandedOut:
    """Address -> expiry of what DNS answers handed out, with the pending batch for the kernel."""

    grace: int
    expires: dict[bytes, float] = field(default_factory=dict)
    pending: dict[bytes, int] = field(default_factory=dict)
    """Packed address -> timeout in seconds, the elements of the next batch."""
    dropped: int = 0
    """Addresses not queued because the pending batch was full."""
    answers: int = 0
    """Answers whose addresses were taken in."""

    def add(self, addresses: tuple[bytes, ...], ttl: int, now: float) -> None:
        """Take in the A/AAAA RDATA of one answer handed out with `ttl`."""
        self.answers += 1
        timeout = ttl + self.grace
        if timeout > MAX_TIMEOUT:
            timeout = MAX_TIMEOUT
        if timeout <= 0:
            return
        expiry = now + timeout
        slack = timeout * REFRESH_SLACK
        expires, pending = self.expires, self.pending
        for address in addresses:
            known = expires.get(address)
            if known is not None and expiry - known <= slack:
                continue
            if len(address) not in (4, 16):
                continue
            if len(pending) >= MAX_PENDING and address not in pending:
                self.dropped += 1
                continue
            expires[address] = expiry
            pending[address] = timeout
        if len(expires) > MAX_TRACKED:
            self.prune(now)

    def take(self) -> list[Element]:
        """The elements to send to the kernel now (the pending batch is emptied)."""
        if not self.pending:
            return []
        batch, self.pending = self.pending, {}
        return [
            Element(str(ipaddress.ip_address(packed)), 4 if len(packed) == 4 else 6, timeout)
            for packed, timeout in batch.items()
        ]

    def forget(self, elements: list[Element]) -> None:
        """Elements the kernel did not take: the next answer that hands them out sends them again."""
        for element in elements:
            self.expires.pop(ipaddress.ip_address(element.address).packed, None)

    def requeue(self, now: float) -> None:
        """After the kernel's set was rebuilt: queue every live element again with its remaining time."""
        for address, expiry in self.expires.items():
            remaining = int(expiry - now)
            if remaining > 0 and len(self.pending) < MAX_PENDING:
                self.pending[address] = remaining

    def prune(self, now: float) -> None:
        """Forget expired addresses; if that is not enough, forget the oldest half."""
        self.expires = {a: e for a, e in self.expires.items() if e > now}
        if len(self.expires) > MAX_TRACKED:
            keep = sorted(self.expires.items(), key=lambda item: item[1])[len(self.expires) // 2 :]
            self.expires = dict(keep)

    def expiry_of(self, address: str, now: float) -> float | None:
        """When `address` stops being allowed (None: not handed out, or expired)."""
        expiry = self.expires.get(ipaddress.ip_address(address).packed)
        return expiry if expiry is not None and expiry > now else None
