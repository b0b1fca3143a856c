"""Upstream health: latency averages, failure counts and exponential backoff, all on the caller's clock.

Each upstream of a group has an `UpstreamHealth`. The group reports every attempt as an `Outcome` with its
duration and `now` (the daemon feeds CLOCK_BOOTTIME, so a backoff expires across a laptop's sleep); health
answers whether the upstream is resting and how much weight it gets in a random pick. No I/O, no clock of
its own.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from dnsguard.dns.upstream_match import RCODE_REFUSED, RCODE_SERVFAIL, rcode

__all__ = ["HealthPolicy", "Outcome", "UpstreamHealth", "UpstreamStats", "outcome_of_reply"]


class Outcome(enum.StrEnum):
    """The result of one upstream attempt, as reported to the query hook."""

    OK = "ok"
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"
    BUSY = "busy"


_RCODE_OUTCOMES = {RCODE_SERVFAIL: Outcome.SERVFAIL, RCODE_REFUSED: Outcome.REFUSED}


def outcome_of_reply(reply: bytes) -> Outcome:
    """OK for any reply but SERVFAIL and REFUSED, which say the upstream could not or would not answer."""
    return _RCODE_OUTCOMES.get(rcode(reply), Outcome.OK)


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How failures take an upstream out of rotation and how latency and failures weigh random picks."""

    backoff_initial: float = 1.0  # seconds out of rotation after the first failure
    backoff_max: float = 60.0
    latency_alpha: float = 0.3  # EWMA weight of the newest latency sample
    # Weights are 1 / (latency + latency_offset): the offset keeps a 0.3 ms upstream from starving a 3 ms one.
    latency_offset: float = 0.010
    default_latency: float = 0.05  # assumed before any upstream of the group has answered
    failure_memory: float = 60.0  # a failure this recent divides the weight by failure_penalty
    failure_penalty: float = 10.0


@dataclass(slots=True)
class UpstreamStats:
    """Per-upstream counters and health for metrics; ``UpstreamGroup.stats()`` returns copies."""

    name: str
    queries: int = 0
    failures: int = 0  # every outcome but OK and BUSY
    timeouts: int = 0
    servfails: int = 0  # SERVFAIL and REFUSED replies
    busy: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    last_failure_at: float | None = None  # group clock; only failures that count against health
    latency_ewma: float | None = None  # seconds
    last_latency: float | None = None
    backoff_until: float = 0.0  # group clock


class UpstreamHealth:
    """One upstream's record: what `record` was told, and what follows from it at a given `now`."""

    __slots__ = ("backoff_level", "policy", "stats")

    def __init__(self, name: str, policy: HealthPolicy) -> None:
        self.policy = policy
        self.stats = UpstreamStats(name)
        self.backoff_level = 0  # backoffs since the last success: the exponent of the next one

    def snapshot(self) -> UpstreamStats:
        """A copy of the counters, safe to hand to metrics."""
        return dataclasses.replace(self.stats)

    def resting(self, now: float) -> bool:
        """Whether the upstream is backing off at ``now``."""
        return self.stats.backoff_until > now

    def attempt_started(self) -> None:
        """Count a query sent; its outcome follows through `record` (a query in flight is counted already)."""
        self.stats.queries += 1

    def record(self, outcome: Outcome, duration: float, now: float, error: str | None = None) -> None:
        """Take in one attempt's outcome: ``error`` is the failure's message, None when a reply came back."""
        stats = self.stats
        if outcome is Outcome.BUSY:
            # Our own limit, not the upstream's health.
            stats.busy += 1
            return
        if outcome in (Outcome.OK, Outcome.SERVFAIL, Outcome.REFUSED):
            stats.last_latency = duration
            alpha = self.policy.latency_alpha
            previous = stats.latency_ewma
            stats.latency_ewma = duration if previous is None else alpha * duration + (1 - alpha) * previous
        if outcome is Outcome.OK:
            stats.consecutive_failures = 0
            self.backoff_level = 0
            return
        stats.failures += 1
        if outcome is Outcome.TIMEOUT:
            stats.timeouts += 1
        if error is not None:
            stats.last_error = error
        else:
            stats.servfails += 1
            stats.last_error = outcome.value
        if outcome is Outcome.SERVFAIL:
            # A SERVFAIL is usually about the name (a broken zone), not the upstream: fail over, but do not
            # take a healthy upstream out of rotation for everyone. REFUSED means it will not serve us: that
            # is about its health.
            return
        stats.last_failure_at = now
        stats.consecutive_failures += 1
        if stats.backoff_until <= now:
            # Only a failure seen outside a backoff extends it, so a burst of queries already in flight when
            # the upstream died does not push the backoff to its maximum at once.
            backoff = self.policy.backoff_initial * 2.0 ** min(self.backoff_level, 30)
            stats.backoff_until = now + min(backoff, self.policy.backoff_max)
            self.backoff_level += 1

    def weight(self, now: float, unknown_latency: float) -> float:
        """The weight of a random pick: inverse latency, divided by the penalty after a recent failure.

        ``unknown_latency`` stands in for an upstream not measured yet.
        """
        stats = self.stats
        latency = stats.latency_ewma if stats.latency_ewma is not None else unknown_latency
        weight = 1.0 / (latency + self.policy.latency_offset)
        if stats.last_failure_at is not None and now - stats.last_failure_at < self.policy.failure_memory:
            weight /= self.policy.failure_penalty
        return weight
