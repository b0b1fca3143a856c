"""Choosing upstreams for a query: strategies, the order of attempts, judging replies, in-flight bounds.

The asyncio group runner (dnsguard/net/upstream/group.py) is a shell around this: it asks `rounds(now)` for
the attempts to make, runs each round's attempts at once, feeds every result to a `ReplyCollector`, and
reports outcomes to `record`. Everything here takes `now` and an injected random source, so the choice of
upstreams, failover and health are tested on a fake clock.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Generic, TypeVar

from dnsguard.dns.upstream_errors import AllUpstreamsFailedError, UpstreamBusyError, UpstreamError
from dnsguard.dns.upstream_health import HealthPolicy, Outcome, UpstreamHealth, UpstreamStats
from dnsguard.dns.upstream_match import RCODE_REFUSED, RCODE_SERVFAIL, rcode
from dnsguard.errors import ConfigError

__all__ = [
    "MIN_ATTEMPT_BUDGET",
    "RACE_WIDTH",
    "Admission",
    "FlightTable",
    "ReplyCollector",
    "Strategy",
    "UpstreamSelection",
    "attempt_budget",
    "parse_strategy",
]

MIN_ATTEMPT_BUDGET = 0.001
"""Seconds: with less time left before the group's deadline, an attempt is not started at all."""

RACE_WIDTH = 2
"""Upstreams parallel_best asks at once: two halves the tail latency of one, more only adds load."""


class Strategy(enum.StrEnum):
    """How a group picks upstreams for a query (names as in blocky)."""

    STRICT = "strict"  # in configured order, next one on failure
    RANDOM = "random"  # weighted random order, next one on failure
    PARALLEL_BEST = "parallel_best"  # race two weighted-random picks, first good answer wins


def parse_strategy(value: Strategy | str) -> Strategy:
    """The strategy named ``value``; a ConfigError naming the choices otherwise."""
    try:
        return Strategy(value)
    except ValueError:
        choices = ", ".join(strategy.value for strategy in Strategy)
        raise ConfigError(f"unknown strategy {value!r} (expected {choices})", key="strategy") from None


def attempt_budget(deadline: float, now: float, attempt_timeout: float) -> float | None:
    """Seconds one attempt may take at ``now``, or None when the group's deadline leaves too little."""
    remaining = deadline - now
    if remaining <= MIN_ATTEMPT_BUDGET:
        return None
    return min(attempt_timeout, remaining)


class UpstreamSelection:
    """The health of a group's upstreams and the order in which a query tries them.

    Upstreams are named by their index in configured order.
    """

    def __init__(
        self,
        names: Sequence[str],
        strategy: Strategy,
        policy: HealthPolicy,
        rng: random.Random,
    ) -> None:
        if not names:
            raise ConfigError("an upstream group needs at least one upstream", key="upstreams")
        self.strategy = strategy
        self.policy = policy
        self.health = [UpstreamHealth(name, policy) for name in names]
        self._rng = rng

    def stats(self) -> list[UpstreamStats]:
        """A snapshot of every upstream's counters and health, in configured order."""
        return [health.snapshot() for health in self.health]

    def rounds(self, now: float) -> list[tuple[int, ...]]:
        """The attempts for one query: a first round (a race of two for parallel_best), then one at a time.

        The first round draws only from upstreams not backing off, so parallel_best does not probe a resting
        upstream with every query; resting ones come after, soonest back first, as a last resort.
        """
        ready, resting = self.plan(now)
        width = RACE_WIDTH if self.strategy is Strategy.PARALLEL_BEST else 1
        first = tuple(ready[:width] or resting[:width])
        return [first, *((index,) for index in ready + resting if index not in first)]

    def plan(self, now: float) -> tuple[list[int], list[int]]:
        """Upstreams not backing off, in the strategy's order, and those backing off, soonest back first."""
        ready = [index for index, health in enumerate(self.health) if not health.resting(now)]
        resting = sorted(
            (index for index, health in enumerate(self.health) if health.resting(now)),
            key=lambda index: self.health[index].stats.backoff_until,
        )
        if self.strategy is not Strategy.STRICT:
            ready = self._weighted_order(ready, now)
        return ready, resting

    def _weighted_order(self, indices: list[int], now: float) -> list[int]:
        # An upstream not measured yet is assumed as fast as the best one known, so that it gets tried and
        # measured rather than starved by the ones that already have a good latency.
        known = [h.stats.latency_ewma for h in self.health if h.stats.latency_ewma is not None]
        unknown_latency = min(known) if known else self.policy.default_latency
        # Weighted random order without replacement (Efraimidis-Spirakis): sort by u ** (1 / weight).
        keyed = [
            (self._rng.random() ** (1.0 / self.health[index].weight(now, unknown_latency)), index)
            for index in indices
        ]
        keyed.sort(key=lambda pair: pair[0], reverse=True)
        return [index for _, index in keyed]

    def attempt_started(self, index: int) -> None:
        """Count a query sent to upstream ``index``."""
        self.health[index].attempt_started()

    def record(
        self, index: int, outcome: Outcome, duration: float, now: float, error: str | None = None
    ) -> None:
        """Take in the outcome of one attempt at upstream ``index``."""
        self.health[index].record(outcome, duration, now, error)


class ReplyCollector:
    """Judges the results of one query's attempts: the first good reply wins.

    SERVFAIL and REFUSED replies mean: try the next upstream, but keep the first one, since it is still an
    answer to pass on when nobody does better. Failures are kept to explain an AllUpstreamsFailedError.
    """

    __slots__ = ("errors", "fallback_reply")

    def __init__(self) -> None:
        self.errors: list[UpstreamError] = []
        self.fallback_reply: bytes | None = None

    def judge(self, result: bytes | UpstreamError) -> bytes | None:
        """The reply to return now, or None to keep trying."""
        if isinstance(result, UpstreamError):
            self.errors.append(result)
            return None
        if rcode(result) in (RCODE_SERVFAIL, RCODE_REFUSED):
            if self.fallback_reply is None:
                self.fallback_reply = result
            return None
        return result

    def last_resort(self, group: str) -> bytes:
        """After every attempt: the SERVFAIL/REFUSED reply kept, or AllUpstreamsFailedError."""
        if self.fallback_reply is not None:
            return self.fallback_reply
        raise AllUpstreamsFailedError(group, self.errors)


FlightT = TypeVar("FlightT")


class FlightTable(Generic[FlightT]):
    """Resolutions in flight by flight key, at most ``limit`` of them (coalescing's bookkeeping)."""

    __slots__ = ("_flights", "group", "limit")

    def __init__(self, group: str, limit: int) -> None:
        self.group = group
        self.limit = limit
        self._flights: dict[Hashable, FlightT] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __iter__(self) -> Iterator[FlightT]:
        return iter(list(self._flights.values()))

    def get(self, key: Hashable) -> FlightT | None:
        """The flight an identical query may join, if one is under way."""
        return self._flights.get(key)

    def open(self, key: Hashable, start: Callable[[], FlightT]) -> FlightT:
        """Start and register a new flight; UpstreamBusyError, with nothing started, when ``limit`` are."""
        if len(self._flights) >= self.limit:
            raise UpstreamBusyError(self.group, f"{len(self._flights)} distinct queries in flight")
        flight = self._flights[key] = start()
        return flight

    def land(self, key: Hashable, flight: FlightT) -> None:
        """Forget ``flight``; a newer flight under the same key (after a cancellation) is left alone."""
        if self._flights.get(key) is flight:
            del self._flights[key]

    def clear(self) -> None:
        self._flights.clear()


class Admission:
    """A count of resolutions under way, at most ``limit`` (the bound when queries are not coalesced)."""

    __slots__ = ("group", "limit", "running")

    def __init__(self, group: str, limit: int) -> None:
        self.group = group
        self.limit = limit
        self.running = 0

    def enter(self) -> None:
        """Admit one resolution; UpstreamBusyError when ``limit`` are under way."""
        if self.running >= self.limit:
            raise UpstreamBusyError(self.group, f"{self.running} queries in flight")
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
