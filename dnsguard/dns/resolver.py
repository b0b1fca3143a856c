"""The resolver: policy, cache and upstreams put together for one query at a time.

`answer_now` is synchronous and covers what needs no network: malformed queries, blocked
names, local answers, cache hits. It returns LATER for the rest, which `answer_later` resolves
through the upstreams, checks for CNAME cloaking, caches, and fits to the client's size limit.
Both take the raw query bytes and return raw reply bytes: the same code answers the UDP and TCP
listeners and the DNS packets intercepted from the tunnel.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dnsguard.dns import wire
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.upstream import AllUpstreamsFailedError, UpstreamError, UpstreamGroup
from dnsguard.dns.wire import Query, QueryError
from dnsguard.errors import FormError
from dnsguard.lifecycle.clock import boottime
from dnsguard.policy.engine import Decision, Kind, Policy

log = logging.getLogger("dnsguard.resolver")


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


LATER: Final = _Later()
"""answer_now's way of saying: this query needs answer_later."""

QTYPE_A, QTYPE_AAAA = 1, 28
EDE_BLOCKED, EDE_FILTERED = 15, 17
RESULTS = ("blocked", "allowed", "cached", "rewritten", "refused", "failed", "stale")


@dataclass(frozen=True, slots=True)
class LogEntry:
    time: float
    client: str
    name: str
    qtype: int
    result: str
    group: str
    reason: str
    elapsed_ms: float


@dataclass
class ResolverStats:
    queries: dict[tuple[str, str], int] = field(default_factory=dict)
    """(result, group) -> count."""
    blocked_by_list: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    cname_blocked: int = 0

    def count(self, result: str, group: str) -> None:
        key = (result, group)
        self.queries[key] = self.queries.get(key, 0) + 1


QueryHook = Callable[[str, str, float], None]
"""(result, group, seconds) after each answered query (metrics)."""


class Resolver:
    """Answers DNS queries under a policy."""

    def __init__(
        self,
        policy: Policy,
        cache: AnswerCache | None,
        upstreams: UpstreamGroup | None,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = boottime,
        query_log_size: int = 1000,
        extended_errors: bool = False,
        cname_check: bool = True,
        serve_stale: bool = True,
    ) -> None:
        self.policy = policy
        self.cache = cache
        self.upstreams = upstreams
        self.wall_clock = wall_clock
        self.clock = clock
        self.extended_errors = extended_errors
        self.cname_check = cname_check
        self.serve_stale = serve_stale
        self.stats = ResolverStats()
        self.query_log: deque[tuple[float, str, str, int, str, str, str, float]] = deque(
            maxlen=query_log_size
        )
        self.on_query: QueryHook | None = None
        self._ede: dict[str, bytes] = {}

    # -- the synchronous path -----------------------------------------------------------

    def answer_now(self, data: bytes, client: str) -> bytes | _Later | None:
        """The reply when no upstream is needed, LATER when one is, None to drop the query."""
        try:
            query = wire.parse_query(data)
        except QueryError as exc:
            self.stats.malformed += 1
            return wire.error_reply(data, exc.rcode) if exc.rcode is not None else None
        except FormError:
            self.stats.malformed += 1
            return None
        decision = self.policy.decide(query.qname, client, self.wall_clock())
        kind = decision.kind
        if kind is Kind.FORWARD:
            cache = self.cache
            if cache is not None:
                reply = cache.get(query, self.clock())
                if reply is not None:
                    self._record(query, client, "cached", decision)
                    return reply
            return LATER
        if kind is Kind.BLOCK:
            return self._blocked(query, client, decision)
        if kind is Kind.REWRITE and not decision.target:
            reply = wire.answer_addresses(query, wire.pack_addresses(decision.addresses), decision.ttl)
            self._record(query, client, "rewritten", decision)
            return reply
        if kind is Kind.NXDOMAIN:
            self._record(query, client, "blocked", decision)
            return wire.nxdomain(query, negative_ttl=decision.ttl)
        return LATER  # a CNAME rewrite or safe search: the target's addresses come from upstream

    def _blocked(self, query: Query, client: str, decision: Decision) -> bytes:
        self._record(query, client, "blocked", decision)
        return self._block_reply(query, decision)

    def _block_reply(self, query: Query, decision: Decision) -> bytes:
        """The blocked answer in the decision's mode (counted per list; recording is the caller's)."""
        list_name = decision.reason
        self.stats.blocked_by_list[list_name] = self.stats.blocked_by_list.get(list_name, 0) + 1
        ede = b""
        if self.extended_errors:
            ede = self._ede.get(list_name) or self._ede.setdefault(
                list_name, wire.ede_option(EDE_BLOCKED, f"blocked by {list_name}")
            )
        mode, ttl = decision.block_mode, decision.ttl
        if mode == "null_ip":
            return wire.null_ip(query, ttl, ede)
        if mode == "nxdomain":
            return wire.nxdomain(query, negative_ttl=ttl, ede=ede)
        if mode == "nodata":
            return wire.nodata(query, negative_ttl=ttl, ede=ede)
        if mode == "refused":
            return wire.refused(query, ede=ede)
        blocking = self.policy.config.blocking
        addresses = wire.pack_addresses([blocking.custom_ipv4, blocking.custom_ipv6])
        return wire.answer_addresses(query, addresses, ttl, ede)

    # -- the upstream path --------------------------------------------------------------

    async def answer_later(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        """Resolve through the upstreams (after answer_now returned LATER)."""
        started = self.clock()
        try:
            query = wire.parse_query(data)
        except FormError:
            return None
        decision = self.policy.decide(query.qname, client, self.wall_clock())
        reply: bytes | None
        if decision.target:
            reply = await self._answer_with_target(query, decision)
            result = "rewritten"
        else:
            reply, result, decision = await self._forward(query, client, decision)
        if reply is None:
            return None
        if not tcp and len(reply) > query.udp_limit:
            reply = wire.truncated(query)
        self._record(query, client, result, decision, started)
        return reply

    async def _forward(
        self, query: Query, client: str, decision: Decision
    ) -> tuple[bytes | None, str, Decision]:
        """The upstream reply, its result label, and the decision it was recorded under.

        A CNAME-cloaked answer comes back blocked under the decision of the blocked target, so the
        query log and the per-list counters name the list that caught it.
        """
        reply, result = await self._forward_reply(query, client, decision)
        if isinstance(reply, Decision):
            self.stats.cname_blocked += 1
            return self._block_reply(query, reply), "blocked", reply
        return reply, result, decision

    async def _forward_reply(
        self, query: Query, client: str, decision: Decision
    ) -> tuple[bytes | Decision | None, str]:
        if self.upstreams is None:
            return wire.refused(query), "refused"
        try:
            reply = await self.upstreams.query(query.data)
        except (AllUpstreamsFailedError, UpstreamError) as exc:
            log.debug("upstreams failed for %s: %s", query.qname, exc)
            if self.serve_stale and self.cache is not None:
                stale = self.cache.get_stale(query, self.clock())
                if stale is not None:
                    return stale, "stale"
            return wire.servfail(query), "failed"
        except FormError:
            return wire.formerr(query.data), "failed"
        try:
            meta = wire.parse_response_meta(reply)
        except FormError:
            return wire.servfail(query), "failed"
        if self.cname_check and meta.targets:
            group = self.policy.group_for(client)
            now = self.wall_clock()
            for target in meta.targets:
                target_decision = self.policy.decide_for_group(target, group, now)
                if target_decision.kind is Kind.BLOCK:
                    return target_decision, "blocked"
        if self.cache is not None:
            self.cache.put(query, reply, self.clock(), meta)
        return reply, "allowed"

    async def _answer_with_target(self, query: Query, decision: Decision) -> bytes:
        """A CNAME answer to decision.target plus the target's addresses of the asked family."""
        addresses: tuple[bytes, ...] = ()
        if query.qtype in (QTYPE_A, QTYPE_AAAA) and self.upstreams is not None:
            probe = _query_for(decision.target, query.qtype)
            try:
                reply = await self.upstreams.query(probe)
                addresses = tuple(
                    a
                    for a in wire.parse_response_meta(reply).addresses
                    if len(a) == (4 if query.qtype == QTYPE_A else 16)
                )
            except (AllUpstreamsFailedError, UpstreamError, FormError) as exc:
                log.debug("could not resolve %s: %s", decision.target, exc)
        return wire.answer_cname(query, decision.target, decision.ttl, addresses)

    # -- bookkeeping ------------------------------------------------------------------------

    def _record(
        self, query: Query, client: str, result: str, decision: Decision, started: float | None = None
    ) -> None:
        group = decision.group
        queries = self.stats.queries
        key = (result, group)
        queries[key] = queries.get(key, 0) + 1
        elapsed = (self.clock() - started) if started is not None else 0.0
        # A plain tuple: this runs for every query, and the log is read rarely (API, tests).
        self.query_log.append(
            (
                self.wall_clock(),
                client,
                query.qname,
                query.qtype,
                result,
                group,
                decision.reason,
                elapsed * 1000,
            )
        )
        if self.on_query is not None:
            self.on_query(result, group, elapsed)

    def recent_queries(self) -> list[LogEntry]:
        """The query log, oldest first."""
        return [LogEntry(*entry) for entry in self.query_log]


def _query_for(name: str, qtype: int) -> bytes:
    """A minimal recursive query for `name` (RD set)."""
    header = struct.pack("!HHHHHH", int.from_bytes(os.urandom(2), "big"), 0x0100, 1, 0, 0, 0)
    return header + wire.encode_name(name) + struct.pack("!HH", qtype, 1)
