"""The resolver core: one query in, a reply or a forward plan out, the upstream's reply in, an answer out.

`answer_now` parses a client's message once and decides under the policy: malformed queries,
blocked names, local answers and cache hits are answered at once; anything that needs an upstream
comes back as a `Forward` plan carrying the parsed query and the decision. The network side (see
dnsguard.net.forwarding) sends `plan.message` to the upstreams for `plan.name` and hands the reply,
or the failure, to `complete`, which checks for CNAME cloaking, caches, fits the answer to the
client's size limit and records the query. Nothing here waits, and nothing is parsed or decided
twice. Time comes from the injected clocks.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, cast

from dnsguard.dns import wire
from dnsguard.dns.cache import AnswerCache, cache_key
from dnsguard.dns.log_sink import LogRecord, LogRow, LogSink
from dnsguard.dns.wire import Query, QueryError
from dnsguard.errors import FormError
from dnsguard.lifecycle.clock import boottime
from dnsguard.policy.engine import Decision, Kind, Policy

log = logging.getLogger("dnsguard.resolver")


class Forward(NamedTuple):
    """A query that needs an upstream: what to send, about which name, and what the answer is for."""

    query: Query  # the client's query, parsed once
    client: str
    tcp: bool  # over TCP the answer may be of any size
    plain: bool  # one question and at most an OPT RR: its answer may be cached and shared
    decision: Decision  # the policy's decision when the query arrived
    started: float  # the resolver clock at arrival (the response duration is measured from it)
    message: bytes  # what to send upstream: the query itself, a probe for a rewrite target, or b""
    name: str  # the name asked upstream (it chooses the conditional upstreams)
    refresh: bool  # a prefetch of a popular cache entry: no client waits


_REFRESH: Final = Decision(Kind.FORWARD, "default", "prefetch")

QTYPE_A, QTYPE_AAAA = 1, 28
EDE_BLOCKED, EDE_FILTERED = 15, 17
_EDE_UNREACHABLE: Final = wire.ede_option(wire.EDE_NO_REACHABLE_AUTHORITY, "no upstream answered")
RESULTS = ("blocked", "allowed", "cached", "rewritten", "refused", "failed", "stale")

# Plans per group: enough for the working set of a busy LAN (and of the 20k-name benchmark); a full memo is
# cleared rather than kept in LRU order, as the other hot-path caches are.
PLAN_MEMO_MAX: Final = 32768
_CLIENT_MEMO_MAX: Final = 4096
PREFETCH_CONCURRENCY: Final = 4
"""Upstream refreshes of popular cache entries in flight at once."""

_PLAN_REPLY, _PLAN_CACHE, _PLAN_FORWARD = 0, 1, 2
_MIN_UDP_LIMIT: Final = 512
MAX_UDP_SIZE: Final = 1232
"""Default cap on UDP replies whatever the client's EDNS size: the DNS Flag Day 2020 value, which avoids
IP fragmentation and bounds what one query can draw (an ANY or TXT answer can be 50-80 times its query)."""
OUTAGE_LOG_INTERVAL: Final = 60.0
"""Seconds between log lines about upstream failures (every failed query is counted)."""


_Plan = tuple[int, bytes, Query | None, Any, str | None, str, int, str, str, str, int, Any]
"""What answer_now does for one exact query message (all but its ID), worked out once.

Everything a reply depends on besides the ID is in those bytes (flags, question with its letter case,
OPT RR), so for as long as the policy's decision for the name holds, a repeat of the message gets the
same reply with its own ID, and the same counters and log line. The fields, in order:

- kind: _PLAN_REPLY: send reply_tail; _PLAN_CACHE: look up query in the cache; _PLAN_FORWARD
- reply_tail: the reply without its ID
- query: only kept for the cache lookup (a plan per distinct message adds up)
- count_key: (result, group) in ResolverStats.queries, shared by all plans (typed Any, so that the
  compiled resolver, dnsguard/native.py, uses the shared tuple as it is rather than a copy)
- blocked_list: the list to count in ResolverStats.blocked_by_list
- qname, qtype, result, group, reason: the query's record
- log_id: the plan's serial number << 4, with the reply's rcode for a _PLAN_REPLY (a cache plan's
  rcode is the cached reply's): OR'ed with the rcode, the key the lasting log's sink counts the plan's
  repeats under (dnsguard.dns.log_sink)
- cache_key: a _PLAN_CACHE's cache_key(query), for AnswerCache.get_planned (None for the others; typed
  Any for the reason count_key is)

A plain tuple, not a NamedTuple: the cyclic garbage collector stops tracking a tuple of exact type whose
items are all untracked (strings, bytes, numbers, None, such tuples) at its first collection, but never
a subclass. The plans of a busy resolver are tens of thousands of objects that live until the policy
changes; tracked, each full collection walked them all while queries waited (about half of a 20 ms
collection, measured with bench/stall_probe.py under bench/dns_latency.py). Only cache plans, which hold
the parsed query, stay tracked.
"""


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
    rcode: int = 0


_plan_log_fields: Final = operator.itemgetter(5, 6, 7, 8, 9)
"""A plan's (qname, qtype, result, group, reason), for the lasting log's sink."""


@dataclass
class ResolverStats:
    queries: dict[tuple[str, str], int] = field(default_factory=dict)
    """(result, group) -> count."""
    blocked_by_list: dict[str, int] = field(default_factory=dict)
    malformed: dict[str, int] = field(default_factory=dict)
    """Queries refused as malformed, by wire.MALFORMED_REASONS."""
    upstream_failures: int = 0
    """Queries answered SERVFAIL because no upstream answered (serve-stale had nothing)."""
    cname_blocked: int = 0
    prefetched: int = 0
    """Cache entries refreshed from upstream before they expired."""

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
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = boottime,
        query_log_size: int = 1000,
        extended_errors: bool = False,
        cname_check: bool = True,
        serve_stale: bool = True,
        prefetch: bool = True,
        max_udp_size: int = MAX_UDP_SIZE,
    ) -> None:
        # Plans (see _Plan) hold replies worked out under the current policy and block settings; the
        # properties below forget them whenever those are replaced.
        self._plans_by_client: dict[str, dict[bytes, _Plan]] = {}
        self._plans_by_group: dict[str, dict[bytes, _Plan]] = {}
        self._count_keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._plan_serials = itertools.count(1)
        self._policy = policy
        self._extended_errors = extended_errors
        self.cache = cache
        self.wall_clock = wall_clock
        self.clock = clock
        self.cname_check = cname_check
        self.serve_stale = serve_stale
        self.prefetch = prefetch
        """Refresh popular cache entries shortly before they expire (the cache says which)."""
        self.max_udp_size = max_udp_size
        """UDP replies larger than min(this, the client's EDNS size) are sent truncated (TC)."""
        self._outage_logged_at = float("-inf")
        self._outage_failures = 0
        self.stats = ResolverStats()
        self.query_log: deque[LogRecord] = deque(maxlen=query_log_size)
        self.log_sink: LogSink | None = None
        """Queries waiting for the lasting query log, folded per distinct query until
        dnsguard/app/querylog.py takes them (see dnsguard.dns.log_sink). None: no lasting log."""
        self.answer_counts: dict[int, int] = {}
        """qtype << 4 | rcode -> queries answered while there is no sink (the lasting log is off), until
        dnsguard/app/querylog.py takes them for the answers metric. An int key and no per-query entry:
        nothing a query leaves here outlives it for the garbage collector to walk."""
        self.on_query: QueryHook | None = None
        """Called with (result, group, seconds) for each answered query but the repeats a plan answers
        at once, which instant_answers counts instead."""
        self.instant_answers: dict[str, int] = {}
        """result -> queries answered from a plan, with no wait: the zero-second observations the response
        duration histogram adds (a hook call each would cost more than the rest of such an answer)."""
        self._ede: dict[str, bytes] = {}
        self.on_prefetch: Callable[[], None] | None = None
        """Called when popular cache entries are due for a refresh (take_prefetch gives their plans)."""
        self.on_addresses: Callable[[tuple[bytes, ...], int], None] | None = None
        """Called with the A/AAAA RDATA of each upstream answer handed out (or cached to be handed out)
        and the longest time a client may use them: the firewall fed by DNS. Cache hits need no call:
        the first answer's timeout covers every copy the cache hands out."""

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        self.forget_plans()

    @property
    def extended_errors(self) -> bool:
        return self._extended_errors

    @extended_errors.setter
    def extended_errors(self, value: bool) -> None:
        self._extended_errors = value
        self.forget_plans()

    def forget_plans(self) -> None:
        """Drop the remembered replies; call after changing the policy object in place."""
        self._plans_by_client = {}
        self._plans_by_group = {}

    # -- the synchronous path -----------------------------------------------------------

    def answer_now(self, data: bytes, client: str, tcp: bool = False) -> bytes | Forward | None:
        """The reply when no upstream is needed, a Forward plan when one is, None to drop the query.

        `tcp`: the query came over TCP, so a cached reply of any size may be sent (over UDP, one larger
        than the client's limit is answered with TC set, RFC 1035 4.2.1 and RFC 6891 6.2.3).
        """
        # The repeat of a message seen before, from a client of the same group: no parsing, no policy
        # walk, no reply building; only the bookkeeping every query gets (counters, log, hook).
        plans = self._plans_by_client.get(client)
        if plans is not None:
            after_id = data[2:]
            # `found`, not `plan`, goes to the log sink: compiled, `plan` is unpacked into a C struct
            # and handing it on would build a new tuple for the collector each time.
            found: object = plans.get(after_id)
            if found is not None:
                plan = cast(_Plan, found)
                now = self.wall_clock()
                # Pausing blocking (the API sets paused_until) turns every block into a forward.
                if now >= self._policy.paused_until:
                    (
                        kind,
                        reply_tail,
                        query,
                        count_key,
                        blocked_list,
                        qname,
                        qtype,
                        result,
                        group,
                        reason,
                        log_id,
                        key,
                    ) = plan
                    if kind == _PLAN_REPLY:
                        reply = data[:2] + reply_tail
                        if blocked_list is not None:
                            by_list = self.stats.blocked_by_list
                            by_list[blocked_list] = by_list.get(blocked_list, 0) + 1
                    elif kind == _PLAN_CACHE:
                        cache = self.cache
                        if cache is None or query is None or key is None:
                            return self._answer_parsed(data, client, tcp)
                        cached = cache.get_planned(key, query, data, after_id, self.clock())
                        if cached is None:
                            return self._answer_parsed(data, client, tcp)
                        reply = cached
                        if len(reply) > _MIN_UDP_LIMIT and not tcp and len(reply) > self._udp_limit(query):
                            reply = data[:2] + wire.truncated(query)[2:]
                        if cache.prefetch_queue and self.prefetch:
                            self._prefetch_due()
                    else:
                        return self._answer_parsed(data, client, tcp)
                    queries = self.stats.queries
                    queries[count_key] = queries.get(count_key, 0) + 1
                    rcode = reply[3] & 15
                    self.query_log.append((now, client, qname, qtype, result, group, reason, 0.0, rcode))
                    sink = self.log_sink
                    if sink is not None:
                        # A repeat is counted here, by int key (see dnsguard.dns.log_sink): this runs
                        # for every query that has a plan, and makes nothing the collector tracks.
                        sink_key = log_id | rcode
                        counts = sink.planned.get(client)
                        if counts is not None and (sunk := counts.get(sink_key)) is not None:
                            counts[sink_key] = sunk + 1
                        else:
                            sink.add_planned(client, sink_key, found, now)
                    else:
                        counts = self.answer_counts
                        answer_key = qtype << 4 | rcode
                        counts[answer_key] = counts.get(answer_key, 0) + 1
                    # Answered at once: counted here, not through on_query (see instant_answers).
                    instant = self.instant_answers
                    instant[result] = instant.get(result, 0) + 1
                    return reply
        return self._answer_parsed(data, client, tcp)

    def _answer_parsed(self, data: bytes, client: str, tcp: bool) -> bytes | Forward | None:
        """answer_now for a message without a plan: parse, decide, answer, and plan for its repeats."""
        try:
            query, plain = _parse(data)
        except QueryError as exc:
            malformed = self.stats.malformed
            malformed[exc.reason] = malformed.get(exc.reason, 0) + 1
            return wire.error_reply(data, exc.rcode) if exc.rcode is not None else None
        except FormError:
            malformed = self.stats.malformed
            malformed["records"] = malformed.get("records", 0) + 1
            return None
        policy = self._policy
        group = policy.group_for(client)
        now = self.wall_clock()
        decision = policy.decide_for_group(query.qname, group, now, query.qtype, client)
        kind = decision.kind
        # A decision that depends on the time (schedules, a pause) is not remembered, nor one for an
        # unusual message (those skip the cache too), nor one that depends on the client (the plans
        # are shared by the group).
        remember = (
            plain and not group.windows and not policy.paused(group.name, now) and not decision.per_client
        )
        plans = self._plans_for(client, group.name) if remember else None
        if kind is Kind.FORWARD and query.qtype == wire.QTYPE_ANY:
            # RFC 8482: a small synthesized answer instead of every record the name has.
            any_reply = wire.answer_any(query)
            if plans is not None:
                self._remember(plans, data, _PLAN_REPLY, any_reply[2:], query, "rewritten", decision, None)
            self._record(query, client, "rewritten", decision, any_reply, now=now)
            return any_reply
        if kind is Kind.FORWARD:
            if plans is not None:
                self._remember(plans, data, _PLAN_CACHE, b"", query, "cached", decision, None)
            cache = self.cache
            if cache is not None and plain:
                reply = cache.get(query, self.clock())
                if reply is not None:
                    if not tcp and len(reply) > self._udp_limit(query):
                        reply = wire.truncated(query)
                    self._record(query, client, "cached", decision, reply, now=now)
                    if cache.prefetch_queue and self.prefetch:
                        self._prefetch_due()
                    return reply
            return self._forward_plan(query, client, tcp, plain, decision)
        blocked_list: str | None = None
        if kind is Kind.BLOCK:
            blocked_list = decision.reason
            result = "blocked"
            reply = self._block_reply(query, decision)
        elif kind is Kind.REWRITE and decision.records is not None:
            result = "rewritten"
            reply = wire.answer_records(query, decision.records, decision.ttl)
            hook = self.on_addresses
            if hook is not None and decision.records and query.qtype in (QTYPE_A, QTYPE_AAAA):
                # A local record's address is handed out like an upstream one (the firewall fed by DNS).
                # Every answer gives the full TTL again, so every answer renews it: no replay plan.
                hook(decision.records, decision.ttl)
                plans = None
        elif kind is Kind.REWRITE and not decision.target:
            result = "rewritten"
            reply = wire.answer_addresses(query, wire.pack_addresses(decision.addresses), decision.ttl)
        elif kind is Kind.RCODE:
            result = "rewritten"
            reply = wire.refused(query) if decision.rcode == wire.RCODE_REFUSED else wire.servfail(query)
        elif kind is Kind.NXDOMAIN:
            # The built-in rules (DoH canary, private relay) count under their own name, as lists do.
            blocked_list = decision.reason
            by_list = self.stats.blocked_by_list
            by_list[blocked_list] = by_list.get(blocked_list, 0) + 1
            result = "blocked"
            reply = wire.nxdomain(query, negative_ttl=decision.ttl)
        else:
            # A CNAME rewrite or safe search: the target's addresses come from upstream.
            if plans is not None:
                self._remember(plans, data, _PLAN_FORWARD, b"", query, "", decision, None)
            return self._forward_plan(query, client, tcp, plain, decision)
        if len(reply) > _MIN_UDP_LIMIT:
            # A local answer of many records (list rules may give a name dozens): over UDP it must fit the
            # client's limit or go truncated (RFC 1035 4.2.1, RFC 6891 6.2.3), which depends on the
            # message, so it is not replayed from a plan.
            plans = None
            if not tcp and len(reply) > self._udp_limit(query):
                reply = wire.truncated(query)
        if plans is not None:
            self._remember(plans, data, _PLAN_REPLY, reply[2:], query, result, decision, blocked_list)
        self._record(query, client, result, decision, reply, now=now)
        return reply

    def _plans_for(self, client: str, group: str) -> dict[bytes, _Plan]:
        plans = self._plans_by_group.get(group)
        if plans is None:
            plans = self._plans_by_group[group] = {}
        if len(self._plans_by_client) >= _CLIENT_MEMO_MAX:
            self._plans_by_client.clear()
        self._plans_by_client[client] = plans
        return plans

    def _remember(
        self,
        plans: dict[bytes, _Plan],
        data: bytes,
        kind: int,
        reply_tail: bytes,
        query: Query,
        result: str,
        decision: Decision,
        blocked_list: str | None,
    ) -> None:
        if len(plans) >= PLAN_MEMO_MAX:
            plans.clear()
        group = decision.group
        count_key = self._count_keys.setdefault((result, group), (result, group))
        log_id = next(self._plan_serials) << 4
        if kind == _PLAN_REPLY:
            log_id |= reply_tail[1] & 15  # reply_tail starts at the reply's third byte: [1] holds the rcode
        plans[data[2:]] = (
            kind,
            reply_tail,
            query if kind == _PLAN_CACHE else None,
            count_key,
            blocked_list,
            query.qname,
            query.qtype,
            result,
            group,
            decision.reason,
            log_id,
            cache_key(query) if kind == _PLAN_CACHE else None,
        )

    def _block_reply(self, query: Query, decision: Decision) -> bytes:
        """The blocked answer in the decision's mode (counted per list; recording is the caller's)."""
        list_name = decision.reason
        self.stats.blocked_by_list[list_name] = self.stats.blocked_by_list.get(list_name, 0) + 1
        ede = b""
        if self._extended_errors:
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
        blocking = self._policy.config.blocking
        addresses = wire.pack_addresses([blocking.custom_ipv4, blocking.custom_ipv6])
        return wire.answer_addresses(query, addresses, ttl, ede)

    # -- the upstream path: plans out, replies in -------------------------------------------

    def _forward_plan(self, query: Query, client: str, tcp: bool, plain: bool, decision: Decision) -> Forward:
        target = decision.target
        if not target:
            return Forward(query, client, tcp, plain, decision, self.clock(), query.data, query.qname, False)
        # A CNAME rewrite or safe search: ask for the target's addresses of the asked family.
        probe = _query_for(target, query.qtype) if query.qtype in (QTYPE_A, QTYPE_AAAA) else b""
        return Forward(query, client, tcp, plain, decision, self.clock(), probe, target, False)

    def complete(self, plan: Forward, reply: bytes | None, failure: str = "") -> bytes | None:
        """The client's answer to a forwarded query: `reply` is the upstream's (with the client's ID), or
        None when no upstream answered (`failure` says why). None for a refresh, which has no client."""
        query = plan.query
        if plan.refresh:
            self._refreshed(query, reply, failure)
            return None
        decision = plan.decision
        if decision.target:
            answer = self._target_answer(query, decision, reply)
            result = "rewritten"
        else:
            answer, result, decision = self._upstream_answer(plan, reply, failure)
        if not plan.tcp and len(answer) > self._udp_limit(query):
            answer = wire.truncated(query)
        self._record(query, plan.client, result, decision, answer, plan.started)
        return answer

    def no_upstream(self, plan: Forward) -> bytes | None:
        """The answer when nothing is configured to forward `plan.name` to: REFUSED (a rewrite target
        gets its CNAME without addresses)."""
        if plan.refresh:
            return None
        if plan.decision.target:
            return self.complete(plan, None)
        refused = wire.refused(plan.query)
        self._record(plan.query, plan.client, "refused", plan.decision, refused, plan.started)
        return refused

    def upstream_refused_query(self, plan: Forward) -> bytes | None:
        """The answer when the upstream side refused the query as malformed: FORMERR."""
        if plan.refresh:
            return None
        formerr = wire.formerr(plan.query.data)
        self._record(plan.query, plan.client, "failed", plan.decision, formerr, plan.started)
        return formerr

    def _udp_limit(self, query: Query) -> int:
        limit = query.udp_limit
        return limit if limit < self.max_udp_size else self.max_udp_size

    def _upstream_answer(
        self, plan: Forward, reply: bytes | None, failure: str
    ) -> tuple[bytes, str, Decision]:
        """The answer, its result label, and the decision it is recorded under.

        A CNAME-cloaked answer comes back blocked under the decision of the blocked target, so the
        query log and the per-list counters name the list that caught it.
        """
        query, decision = plan.query, plan.decision
        # Only plain queries share cached replies: an answer to a message with extra records (a TSIG
        # signature, say) may depend on them.
        cache = self.cache if plan.plain else None
        if reply is None:
            log.debug("upstreams failed for %s: %s", query.qname, failure)
            if self.serve_stale and cache is not None:
                stale = cache.get_stale(query, self.clock())
                if stale is not None:
                    if self.on_addresses is not None:
                        self._hand_out(stale, cache.stale_ttl)
                    return stale, "stale", decision
            self._upstream_failed(failure)
            return wire.servfail(query, _EDE_UNREACHABLE), "failed", decision
        try:
            meta = wire.parse_response_meta(reply)
        except FormError:
            return wire.servfail(query), "failed", decision
        if self.cname_check and meta.targets:
            policy = self._policy
            group = policy.group_for(plan.client)
            now = self.wall_clock()
            for target in meta.targets:
                target_decision = policy.decide_for_group(target, group, now, query.qtype, plan.client)
                if target_decision.kind is Kind.BLOCK:
                    self.stats.cname_blocked += 1
                    return self._block_reply(query, target_decision), "blocked", target_decision
        # The cache is shared by every group: an answer whose CNAME chain another group blocks would
        # reach that group's clients from the cache without their own check, so it is not stored.
        if cache is not None and not (
            self.cname_check and meta.targets and self._any_group_blocks(meta.targets)
        ):
            cache.put(query, reply, self.clock(), meta)
        self._hand_out_meta(meta)
        return reply, "allowed", decision

    def _answer_ttl(self, ttl: int | None) -> int:
        """The longest a client may keep the answer's addresses: its TTL as the cache clamps it."""
        value = ttl or 0
        cache = self.cache
        if cache is not None:
            value = min(max(value, cache.min_ttl), cache.max_ttl)
        return value

    def _hand_out_meta(self, meta: wire.ResponseMeta) -> None:
        """Hand out the addresses of an upstream answer already read (its meta) for its clamped TTL."""
        hook = self.on_addresses
        if hook is not None and meta.addresses:
            hook(meta.addresses, self._answer_ttl(meta.ttl))

    def _hand_out(self, reply: bytes, ttl: int) -> None:
        hook = self.on_addresses
        if hook is None:
            return
        try:
            addresses = wire.parse_response_meta(reply).addresses
        except FormError:
            return
        if addresses:
            hook(addresses, ttl)

    def _target_answer(self, query: Query, decision: Decision, reply: bytes | None) -> bytes:
        """A CNAME answer to decision.target plus the target's addresses of the asked family."""
        addresses: tuple[bytes, ...] = ()
        if reply is not None:
            try:
                family = 4 if query.qtype == QTYPE_A else 16
                addresses = tuple(a for a in wire.parse_response_meta(reply).addresses if len(a) == family)
                if addresses and self.on_addresses is not None:
                    self.on_addresses(addresses, decision.ttl)
            except FormError as exc:
                log.debug("could not resolve %s: %s", decision.target, exc)
        return wire.answer_cname(query, decision.target, decision.ttl, addresses)

    def _upstream_failed(self, failure: str) -> None:
        """Count a query no upstream answered; say so in the log at most once per OUTAGE_LOG_INTERVAL."""
        self.stats.upstream_failures += 1
        self._outage_failures += 1
        now = self.clock()
        if now - self._outage_logged_at >= OUTAGE_LOG_INTERVAL:
            log.warning(
                "no upstream answered: %d queries got SERVFAIL since the last report (%s)",
                self._outage_failures,
                failure[:200],
            )
            self._outage_logged_at = now
            self._outage_failures = 0

    # -- prefetch -----------------------------------------------------------------------------

    def _prefetch_due(self) -> None:
        hook = self.on_prefetch
        if hook is not None:
            hook()

    def take_prefetch(self) -> list[Forward]:
        """Plans that refresh the cache entries flagged as popular and about to expire."""
        cache = self.cache
        if cache is None or not self.prefetch:
            return []
        started = self.clock()
        return [
            Forward(query, "", False, True, _REFRESH, started, query.data, query.qname, True)
            for query in cache.take_prefetch()
        ]

    def _refreshed(self, query: Query, reply: bytes | None, failure: str) -> None:
        """Store a refreshed answer; no client is waiting for it."""
        cache = self.cache
        if cache is None:
            return
        if reply is None:
            # The entry expires as usual and serve-stale still covers it.
            log.debug("prefetch of %s failed: %s", query.qname, failure)
            return
        try:
            meta = wire.parse_response_meta(reply)
        except FormError as exc:
            log.debug("prefetch of %s failed: %s", query.qname, exc)
            return
        if self.cname_check and meta.targets and self._any_group_blocks(meta.targets):
            return  # the next client query goes upstream and gets the CNAME check of its own group
        if cache.put(query, reply, self.clock(), meta):
            self.stats.prefetched += 1
            self._hand_out_meta(meta)

    def _any_group_blocks(self, names: tuple[str, ...]) -> bool:
        policy = self._policy
        now = self.wall_clock()
        # A decision that depends on the client may block for some client of the group: not shared.
        for group in policy.groups.values():
            for name in names:
                decision = policy.decide_for_group(name, group, now)
                if decision.kind is Kind.BLOCK or decision.per_client:
                    return True
        return False

    # -- bookkeeping ------------------------------------------------------------------------

    def _record(
        self,
        query: Query,
        client: str,
        result: str,
        decision: Decision,
        reply: bytes,
        started: float | None = None,
        now: float | None = None,
    ) -> None:
        group = decision.group
        queries = self.stats.queries
        key = (result, group)
        queries[key] = queries.get(key, 0) + 1
        elapsed = (self.clock() - started) if started is not None else 0.0
        at = self.wall_clock() if now is None else now
        rcode = reply[3] & 15 if len(reply) > 3 else 0
        # A plain tuple: this runs for every query, and the log is read rarely (API, tests).
        record = (at, client, query.qname, query.qtype, result, group, decision.reason, elapsed * 1000, rcode)
        self.query_log.append(record)
        sink = self.log_sink
        if sink is not None:
            sink.add(record)
        else:
            counts = self.answer_counts
            answer_key = query.qtype << 4 | rcode
            counts[answer_key] = counts.get(answer_key, 0) + 1
        if self.on_query is not None:
            self.on_query(result, group, elapsed)

    def new_log_sink(self, max_entries: int) -> LogSink:
        """An empty sink for the lasting log (set it as log_sink), reading this resolver's plans."""
        return LogSink(max_entries, _plan_log_fields)

    def take_log_stream(self) -> Iterator[LogRow]:
        """The queries gathered for the lasting log since the last call, one row per distinct query with
        its count, made as they are read (the sink starts empty again at once)."""
        sink = self.log_sink
        return sink.take_rows() if sink is not None and sink.size else iter(())

    def take_answer_counts(self) -> dict[tuple[int, int], int]:
        """(qtype, rcode) -> queries answered without a sink since the last call (the counts start again)."""
        counts, self.answer_counts = self.answer_counts, {}
        return {(key >> 4, key & 15): count for key, count in counts.items()}

    def recent_queries(self) -> list[LogEntry]:
        """The query log, oldest first."""
        return [LogEntry(*entry) for entry in self.query_log]


def _parse(data: bytes) -> tuple[Query, bool]:
    """The query, and whether it is plain (one question, at most an OPT RR: what the wire fast path reads).

    Anything else that is still one valid question (records in the answer or authority section, a
    non-OPT additional record such as TSIG) is read by the bounded full parser and forwarded as it came,
    uncached.
    """
    try:
        return wire.parse_query(data), True
    except QueryError as exc:
        if not exc.fallback:
            raise
        return wire.parse_full_query(data), False


def _query_for(name: str, qtype: int) -> bytes:
    """A minimal recursive query for `name` (RD set)."""
    header = struct.pack("!HHHHHH", int.from_bytes(os.urandom(2), "big"), 0x0100, 1, 0, 0, 0)
    return header + wire.encode_name(name) + struct.pack("!HH", qtype, 1)
