"""Counters that the data path feeds per event and the metrics read at scrape time.

Everything here is plain attribute arithmetic: a query or a handshake pays a dict update and a bisect,
never a lock or a label lookup in a client library.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dnsguard.wireguard.events import Event

BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the duration histograms; one more bucket above holds the rest (+Inf)."""

# The upstream outcomes that are replies (their duration is observed); timeouts and errors are not.
REPLY_OUTCOMES = frozenset({"ok", "servfail", "refused"})
UPSTREAM_ERROR_REASONS = ("timeout", "servfail", "refused", "error", "busy")


class DurationHistogram:
    """A cumulative-on-export histogram over BUCKETS."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left puts a value equal to a bound in that bound's bucket: Prometheus buckets are `le`.
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def add_instant(self, count: int) -> None:
        """`count` observations of 0 seconds (answers given at once, counted elsewhere)."""
        self.counts[0] += count

    def add(self, other: DurationHistogram) -> None:
        """Fold another histogram's observations into this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs in the exposition's order, ending with +Inf."""
        pairs = []
        running = 0
        for bound, count in zip((*(repr(b) for b in BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


@dataclass
class DnsObserver:
    """Per-query figures the resolver and the upstream group report through their hooks."""

    response_duration: dict[str, DurationHistogram] = field(default_factory=dict)
    upstream_queries: dict[str, int] = field(default_factory=dict)
    upstream_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_duration: dict[str, DurationHistogram] = field(default_factory=dict)

    def on_query(self, result: str, group: str, seconds: float) -> None:
        """Resolver hook: one answered query."""
        histogram = self.response_duration.get(result)
        if histogram is None:
            histogram = self.response_duration[result] = DurationHistogram()
        histogram.observe(seconds)

    def on_upstream(self, upstream: str, seconds: float, outcome: str) -> None:
        """Upstream-group hook: one attempt at one upstream (`outcome`: an upstream_health.Outcome)."""
        if outcome != "busy":  # a busy attempt was never sent
            self.upstream_queries[upstream] = self.upstream_queries.get(upstream, 0) + 1
        if outcome in REPLY_OUTCOMES:
            histogram = self.upstream_duration.get(upstream)
            if histogram is None:
                histogram = self.upstream_duration[upstream] = DurationHistogram()
            histogram.observe(seconds)
        if outcome != "ok":
            key = (upstream, str(outcome))
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def know_upstreams(self, names: list[str]) -> None:
        """Create the zero series of configured upstreams, so that the first failure is an increase."""
        for name in names:
            self.upstream_queries.setdefault(name, 0)
            self.upstream_duration.setdefault(name, DurationHistogram())
            for reason in UPSTREAM_ERROR_REASONS:
                self.upstream_errors.setdefault((name, reason), 0)


@dataclass
class TunnelObserver:
    """Handshake outcomes, counted from the device's events."""

    handshakes: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})

    def on_event(self, event: Event) -> None:
        # Imported here: `dnsguard resolve` has no tunnel, and the WireGuard package loads the crypto
        # library (about 8 MB of resident memory) that a resolver has no use for.
        from dnsguard.wireguard.events import HandshakeCompleted, HandshakeGaveUp, HandshakeInitiationSent

        if isinstance(event, HandshakeCompleted):
            self.handshakes["success"] += 1
        elif isinstance(event, HandshakeInitiationSent) and event.attempt > 1:
            # A retry means the previous initiation got no valid response in time.
            self.handshakes["failure"] += 1
        elif isinstance(event, HandshakeGaveUp):
            self.handshakes["failure"] += 1


@dataclass
class ReloadCounter:
    """Configuration reloads of one daemon (SIGHUP, file change or API)."""

    success: int = 0
    failure: int = 0
    last_error: str | None = None
    last_at: float | None = None
    """Wall-clock time of the last reload attempt."""

    def succeeded(self) -> None:
        self.success += 1
        self.last_error = None
        self.last_at = time.time()

    def failed(self, error: str) -> None:
        self.failure += 1
        self.last_error = error
        self.last_at = time.time()
