"""The asyncio shell of an upstream group: runs the attempts the selection core plans, races, coalesces.

Which upstreams to ask, in what order, how a reply is judged and what an outcome does to health are decided
in dnsguard/dns/upstream_select.py and upstream_health.py; this module only waits: one task per attempt, a
deadline per query, and one shared task per distinct query in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dnsguard.dns.upstream_errors import (
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUsageError,
)
from dnsguard.dns.upstream_health import HealthPolicy, Outcome, UpstreamStats, outcome_of_reply
from dnsguard.dns.upstream_match import flight_key, personalise, question_end
from dnsguard.dns.upstream_select import (
    Admission,
    FlightTable,
    ReplyCollector,
    Strategy,
    UpstreamSelection,
    attempt_budget,
    parse_strategy,
)
from dnsguard.errors import ConfigError, ProtocolError
from dnsguard.lifecycle.clock import boottime
from dnsguard.net.upstream.base import Upstream
from dnsguard.net.upstream.create import create_upstream
from dnsguard.net.upstream.options import TransportOptions

__all__ = ["AttemptHook", "UpstreamGroup"]

log = logging.getLogger(__name__)

AttemptHook = Callable[[str, float, Outcome], None]
"""Called after each upstream attempt with (upstream name, seconds, outcome); e.g. feeds a histogram."""


class _Flight:
    """One upstream resolution shared by every identical query that arrives while it runs."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[bytes]) -> None:
        self.task = task
        self.waiters = 0


class UpstreamGroup:
    """Upstreams behind one strategy, with health tracking, a total deadline per query, and coalescing.

    ``clock`` is the health clock (backoffs, failure memory): CLOCK_BOOTTIME by default, so a backoff
    expires across a suspend. ``timer`` measures attempt latency. Deadlines and timeouts run on the event
    loop's clock, so a loop with a virtual clock drives all of it in tests.
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        strategy: Strategy | str = Strategy.PARALLEL_BEST,
        timeout: float = 2.0,
        attempt_timeout: float | None = None,
        coalesce: bool = True,
        max_in_flight: int = 4096,
        health: HealthPolicy | None = None,
        on_query: AttemptHook | None = None,
        clock: Callable[[], float] = boottime,
        timer: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
        name: str = "upstreams",
    ) -> None:
        if not upstreams:
            raise ConfigError("an upstream group needs at least one upstream", key="upstreams")
        strategy = parse_strategy(strategy)
        if timeout <= 0 or (attempt_timeout is not None and attempt_timeout <= 0) or max_in_flight < 1:
            raise UpstreamUsageError("timeout, attempt_timeout and max_in_flight must be positive")
        self.name = name
        self.timeout = timeout
        # Failover needs time left after a dead upstream: by default one attempt may use half the budget.
        self.attempt_timeout = min(attempt_timeout or timeout / 2, timeout)
        self.coalesce = coalesce
        self.max_in_flight = max_in_flight
        self.health = health or HealthPolicy()
        self.on_query = on_query
        self._upstreams = list(upstreams)
        self._selection = UpstreamSelection(
            [upstream.name for upstream in upstreams], strategy, self.health, rng or random.Random()
        )
        self._clock = clock
        self._timer = timer
        self._flights: FlightTable[_Flight] = FlightTable(name, max_in_flight)
        self._admission = Admission(name, max_in_flight)

    @classmethod
    def from_specs(
        cls, specs: Iterable[str], *, options: TransportOptions | None = None, **kwargs: Any
    ) -> UpstreamGroup:
        """A group of upstreams built from spec strings; keyword arguments go to the constructor."""
        return cls([create_upstream(spec, options) for spec in specs], **kwargs)

    @property
    def strategy(self) -> Strategy:
        return self._selection.strategy

    @property
    def upstreams(self) -> list[Upstream]:
        """The upstreams in configured order."""
        return list(self._upstreams)

    def stats(self) -> list[UpstreamStats]:
        """A snapshot of every upstream's counters and health, in configured order."""
        return self._selection.stats()

    async def query(self, wire: bytes) -> bytes:
        """The best reply the group can get for ``wire`` within its timeout, with the caller's ID.

        Raises FormError for a malformed query, UpstreamBusyError when too many distinct queries are in
        flight, and AllUpstreamsFailedError when no upstream answered and none replied SERVFAIL/REFUSED.
        """
        end = question_end(wire)
        if not self.coalesce:
            self._admission.enter()
            try:
                return personalise(await self._resolve(wire), wire, end)
            finally:
                self._admission.leave()
        key = flight_key(wire, end)
        flight = self._flights.get(key)
        if flight is None:
            loop = asyncio.get_running_loop()
            flight = self._flights.open(key, lambda: _Flight(loop.create_task(self._resolve(wire))))
            flight.task.add_done_callback(functools.partial(self._land, key, flight))
        flight.waiters += 1
        try:
            # Shielded: one asker giving up must not cancel the answer the others wait for.
            reply = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0:
                # Nobody waits any more: stop asking, and let a later identical query start afresh rather than
                # join a flight that is being cancelled.
                flight.task.cancel()
                self._land(key, flight)
            raise
        flight.waiters -= 1
        return personalise(reply, wire, end)

    def _land(self, key: bytes, flight: _Flight, _task: asyncio.Task[bytes] | None = None) -> None:
        self._flights.land(key, flight)

    async def close(self) -> None:
        """Cancel queries in flight and close every upstream."""
        for flight in self._flights:
            flight.task.cancel()
        self._flights.clear()
        for upstream in self._upstreams:
            await upstream.close()

    async def __aenter__(self) -> UpstreamGroup:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- one resolution

    async def _resolve(self, wire: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        collected = ReplyCollector()
        for round_ in self._selection.rounds(self._clock()):
            budget = attempt_budget(deadline, loop.time(), self.attempt_timeout)
            if budget is None:
                break
            reply = await self._race(round_, wire, budget, collected)
            if reply is not None:
                return reply
        # Every upstream said SERVFAIL/REFUSED (their verdict is still an answer to pass on), or failed.
        return collected.last_resort(self.name)

    async def _race(
        self, indices: tuple[int, ...], wire: bytes, budget: float, collected: ReplyCollector
    ) -> bytes | None:
        """The first good reply among the upstreams ``indices`` asked at once, or None after all failed."""
        if len(indices) == 1:
            return collected.judge(await self._attempt(indices[0], wire, budget))
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._attempt(index, wire, budget)) for index in indices]
        try:
            waiting: set[asyncio.Task[bytes | UpstreamError]] = set(tasks)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    reply = collected.judge(task.result())
                    if reply is not None:
                        return reply
            return None
        finally:
            # The loser is abandoned; its transport frees the query ID when the cancellation lands.
            for task in tasks:
                task.cancel()

    async def _attempt(self, index: int, wire: bytes, timeout: float) -> bytes | UpstreamError:
        """Ask one upstream; record the outcome in its health and the hook; return the reply or the error."""
        upstream = self._upstreams[index]
        self._selection.attempt_started(index)
        started = self._timer()
        result: bytes | UpstreamError
        try:
            result = await upstream.query(wire, timeout)
        except UpstreamBusyError as error:
            result, outcome = error, Outcome.BUSY
        except UpstreamTimeoutError as error:
            result, outcome = error, Outcome.TIMEOUT
        except UpstreamError as error:
            result, outcome = error, Outcome.ERROR
        except (OSError, ProtocolError) as error:
            # Transports map their library's exceptions themselves; this catches what a third-party or
            # future transport lets through, so one upstream's bug costs a failover, not the query.
            result, outcome = UpstreamError(upstream.name, f"{type(error).__name__}: {error}"), Outcome.ERROR
        else:
            outcome = outcome_of_reply(result)
        duration = self._timer() - started
        error_message = result.message if isinstance(result, UpstreamError) else None
        self._selection.record(index, outcome, duration, self._clock(), error_message)
        if self.on_query is not None:
            try:
                self.on_query(upstream.name, duration, outcome)
            except Exception:
                log.exception("upstream query hook failed")  # metrics must never break resolution
        return result
