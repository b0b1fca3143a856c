"""The transport interface every upstream implements, and the bookkeeping its implementations share."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass

from dnsguard.dns.upstream_errors import UpstreamError

__all__ = ["Pending", "TransportCounters", "Upstream", "fail_all"]


@dataclass(slots=True)
class TransportCounters:
    """Transport-level events worth a metric: each one hints at loss, spoofing or a misbehaving server."""

    unmatched_replies: int = 0  # wrong ID or question, late, or not a response: dropped (RFC 5452)
    retransmits: int = 0  # UDP queries sent a second time after half their timeout
    truncated_retries: int = 0  # UDP replies with TC=1 asked again over TCP
    connections: int = 0  # sockets or connections opened


class Upstream(ABC):
    """One upstream resolver: ``query`` takes raw query bytes and returns raw reply bytes with our ID.

    Implementations raise only dnsguard's errors: UpstreamError and its kinds for what the upstream (or the
    path to it) did, FormError for a malformed query. Library exceptions are mapped where they arise.
    """

    name: str
    counters: TransportCounters

    @abstractmethod
    async def query(self, wire: bytes, timeout: float) -> bytes:
        """The upstream's reply to ``wire`` within ``timeout`` seconds, or an UpstreamError."""

    @abstractmethod
    async def close(self) -> None:
        """Close sockets and connections; a later query opens new ones."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Pending:
    """A query waiting for its reply: the future, and the question the reply must echo."""

    __slots__ = ("end", "future", "key", "timer")

    def __init__(self, future: asyncio.Future[bytes], key: bytes, end: int) -> None:
        self.future = future
        self.key = key
        self.end = end
        self.timer: asyncio.TimerHandle | None = None  # UDP: the pending resend or expiry


def fail_all(pending: dict[int, Pending], error: UpstreamError) -> None:
    """Fail every query still waiting (the socket or connection they share is gone)."""
    for entry in pending.values():
        if not entry.future.done():
            entry.future.set_exception(error)
            # Retrieved here so a query that already gave up does not log "exception never retrieved".
            entry.future.exception()
