"""Carries the resolver's forward plans to the upstream transports and their replies back to it.

The resolver core (dnsguard.dns.resolver) decides; this shell only waits. `answer_later` takes a
`Forward` plan from `answer_now`, sends its message to the upstream group for its name (the
longest `upstreams.conditional` zone that holds it, else the default group) and gives the reply,
or the reason there is none, to the core. Popular cache entries are refreshed here too, in one
background task at a time, when the core says they are due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from dnsguard.dns.resolver import Forward, Resolver
from dnsguard.dns.upstream_errors import AllUpstreamsFailedError, UpstreamError
from dnsguard.errors import FormError
from dnsguard.net.upstream import UpstreamGroup

log = logging.getLogger("dnsguard.resolver")

PREFETCH_CONCURRENCY: Final = 4
"""Upstream refreshes of popular cache entries in flight at once."""


class Forwarder:
    """The resolver core plus the upstream groups: what the DNS listeners answer with."""

    def __init__(
        self,
        resolver: Resolver,
        upstreams: UpstreamGroup | None,
        conditional: dict[str, UpstreamGroup] | None = None,
    ) -> None:
        self.resolver = resolver
        self.answer_now = resolver.answer_now
        """The core's synchronous path, bound once: the listeners call it for every datagram."""
        self.upstreams = upstreams
        self.conditional = conditional or {}
        """Zone -> the upstreams for names in it (longest zone wins; "." is every single-label name)."""
        self._prefetcher: asyncio.Task[None] | None = None
        resolver.on_prefetch = self._start_prefetch
        self.before_answer: Callable[[], Awaitable[None] | None] | None = None
        """What an upstream answer waits for before it goes out, if anything: the firewall fed by DNS
        returns its next kernel update while that answer's new addresses are not yet in its sets."""

    def upstreams_for(self, name: str) -> UpstreamGroup | None:
        """The conditional upstreams of the longest zone that holds `name`, else the default ones."""
        conditional = self.conditional
        if conditional:
            candidate = name
            while True:
                group = conditional.get(candidate)
                if group is not None:
                    return group
                dot = candidate.find(".")
                if dot < 0:
                    break
                candidate = candidate[dot + 1 :]
            if "." not in name and name:
                group = conditional.get(".")
                if group is not None:
                    return group
        return self.upstreams

    async def answer_later(self, plan: Forward) -> bytes | None:
        """The answer to a forwarded query once the upstreams replied or gave up."""
        resolver = self.resolver
        group = self.upstreams_for(plan.name)
        if group is None:
            return resolver.no_upstream(plan)
        if not plan.message:
            return resolver.complete(plan, None, "nothing to ask")
        try:
            reply = await group.query(plan.message)
        except (AllUpstreamsFailedError, UpstreamError) as exc:
            return resolver.complete(plan, None, str(exc))
        except FormError:
            return resolver.upstream_refused_query(plan)
        answer = resolver.complete(plan, reply)
        gate = self.before_answer
        if gate is not None:
            waiter = gate()
            if waiter is not None:
                await waiter
        return answer

    # -- prefetch -----------------------------------------------------------------------------

    def _start_prefetch(self) -> None:
        """Refresh the entries the cache flagged, in one background task at a time."""
        if self._prefetcher is not None and not self._prefetcher.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a caller without an event loop: the flagged queries wait for the next cache hit
        self._prefetcher = loop.create_task(self._prefetch_flagged())

    async def _prefetch_flagged(self) -> None:
        while True:
            due = self.resolver.take_prefetch()
            if not due:
                return
            for start in range(0, len(due), PREFETCH_CONCURRENCY):
                batch = due[start : start + PREFETCH_CONCURRENCY]
                results = await asyncio.gather(
                    *(self.answer_later(plan) for plan in batch), return_exceptions=True
                )
                for plan, result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        log.warning("prefetch of %s failed: %r", plan.name, result)

    async def close(self) -> None:
        """Stop a prefetch in progress and close every upstream group."""
        task, self._prefetcher = self._prefetcher, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        groups = [self.upstreams, *self.conditional.values()]
        for group in groups:
            if group is not None:
                await group.close()
