"""The pure upstream cores: reply matching, health and selection, driven by hand with `now` and a seed."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from dnslib import EDNS0, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

import dnsguard.dns
from dnsguard.dns.upstream_errors import (
    AllUpstreamsFailedError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
)
from dnsguard.dns.upstream_health import HealthPolicy, Outcome, UpstreamHealth, outcome_of_reply
from dnsguard.dns.upstream_match import (
    flight_key,
    free_id,
    is_reply_to,
    personalise,
    question_end,
    question_key,
    rcode,
    with_id,
)
from dnsguard.dns.upstream_select import (
    Admission,
    FlightTable,
    ReplyCollector,
    Strategy,
    UpstreamSelection,
    attempt_budget,
    parse_strategy,
)
from dnsguard.errors import ConfigError, FormError

NOW = 1000.0


def make_query(
    name: str = "www.example.test",
    qtype: str = "A",
    query_id: int = 0x1234,
    edns: str | None = None,
    rd: bool = True,
    cd: bool = False,
) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = query_id
    record.header.rd = int(rd)
    record.header.cd = int(cd)
    if edns is not None:
        record.add_ar(EDNS0(flags=edns, udp_len=1232))
    return bytes(record.pack())


def make_reply(query: bytes, rcode: int = 0, name: str | None = None) -> bytes:
    request = DNSRecord.parse(query)
    if name is not None:
        request.q.qname = name
    reply = request.reply()
    reply.header.rcode = rcode
    return bytes(reply.pack())


# ------------------------------------------------------------------------------------------------------------
# The layering rule: these cores stay pure


PURE_MODULES = ["upstream_errors", "upstream_match", "upstream_health", "upstream_select", "upstream_spec"]
FORBIDDEN = {"asyncio", "socket", "ssl", "aiohttp", "pyroute2", "ctypes", "subprocess", "time", "selectors"}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_upstream_cores_import_no_io_and_read_no_clock(module: str) -> None:
    path = Path(dnsguard.dns.__file__).parent / f"{module}.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("dnsguard.net"):
                imported.add("dnsguard.net")
    assert not imported & (FORBIDDEN | {"dnsguard.net"})


# ------------------------------------------------------------------------------------------------------------
# Reply matching


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_question_end_rejects_garbage_only_with_form_error(data: bytes) -> None:
    try:
        end = question_end(data)
    except FormError:
        return
    assert 12 + 5 <= end <= len(data)


def test_question_end_and_key() -> None:
    query = make_query("WWW.Example.Test", "AAAA")
    end = question_end(query)
    assert end == len(query)
    assert question_key(query, end) == question_key(make_query("www.example.test", "AAAA"), end)
    assert question_key(query, end) != question_key(make_query("www.example.test", "A"), end)
    for broken in (query[:-1], query[:4] + b"\x00\x02" + query[6:], b"\x00" * 11):
        with pytest.raises(FormError):
            question_end(broken)


def test_a_reply_must_be_a_response_with_our_question() -> None:
    query = make_query()
    end = question_end(query)
    key = question_key(query, end)
    assert is_reply_to(make_reply(query), key, end, allow_no_question=False)
    assert is_reply_to(make_reply(query, name="WWW.EXAMPLE.TEST"), key, end, allow_no_question=False)
    assert not is_reply_to(query, key, end, allow_no_question=True)  # QR clear: a query, not a reply
    assert not is_reply_to(make_reply(query, name="other.test"), key, end, allow_no_question=True)
    # A FORMERR without its question: accepted only on a connection of our own, where the ID suffices.
    bare = make_reply(query, RCODE.FORMERR)[:4] + b"\x00\x00" + b"\x00" * 6
    assert is_reply_to(bare, key, end, allow_no_question=True)
    assert not is_reply_to(bare, key, end, allow_no_question=False)


def test_flight_keys_share_only_what_one_reply_can_answer() -> None:
    def key(**kwargs: object) -> bytes:
        wire = make_query(**kwargs)  # type: ignore[arg-type]
        return flight_key(wire, question_end(wire))

    assert key(query_id=1) == key(query_id=2, name="WWW.EXAMPLE.TEST")  # ID and case do not matter
    assert key(edns="") == key(edns="", query_id=9)
    distinct = [key(), key(edns=""), key(edns="do"), key(rd=False), key(cd=True), key(qtype="AAAA")]
    assert len(set(distinct)) == len(distinct)


def test_personalise_gives_each_asker_its_id_and_spelling() -> None:
    first = make_query("www.example.test", query_id=1)
    reply = make_reply(first)
    asker = make_query("WwW.ExAmPlE.TeSt", query_id=0xABCD)
    mine = personalise(reply, asker, question_end(asker))
    parsed = DNSRecord.parse(mine)
    assert parsed.header.id == 0xABCD
    assert str(parsed.q.qname) == "WwW.ExAmPlE.TeSt."
    assert parsed.rr == DNSRecord.parse(reply).rr
    # A reply whose question differs keeps its own, and still gets the asker's ID.
    other = make_reply(first, name="other.test")
    assert personalise(other, asker, question_end(asker)) == with_id(0xABCD, other)


def test_free_id_skips_ids_in_use() -> None:
    draws = iter([7, 7, 9, 8])
    assert free_id({7, 9}, lambda bits: next(draws)) == 8
    assert rcode(make_reply(make_query(), RCODE.REFUSED)) == RCODE.REFUSED


# ------------------------------------------------------------------------------------------------------------
# Health


def test_outcome_of_a_reply() -> None:
    query = make_query()
    assert outcome_of_reply(make_reply(query)) is Outcome.OK
    assert outcome_of_reply(make_reply(query, RCODE.NXDOMAIN)) is Outcome.OK
    assert outcome_of_reply(make_reply(query, RCODE.SERVFAIL)) is Outcome.SERVFAIL
    assert outcome_of_reply(make_reply(query, RCODE.REFUSED)) is Outcome.REFUSED


def test_latency_is_an_ewma_of_replies_only() -> None:
    health = UpstreamHealth("u", HealthPolicy(latency_alpha=0.5))
    health.record(Outcome.OK, 0.1, NOW)
    health.record(Outcome.SERVFAIL, 0.3, NOW)
    health.record(Outcome.TIMEOUT, 5.0, NOW, "no reply")  # a timeout says nothing about the reply time
    assert health.stats.latency_ewma == pytest.approx(0.2)
    assert health.stats.last_latency == pytest.approx(0.3)


def test_backoff_doubles_per_failure_up_to_the_maximum_and_resets_on_success() -> None:
    health = UpstreamHealth("u", HealthPolicy(backoff_initial=1.0, backoff_max=4.0))
    now = NOW
    expected = [1.0, 2.0, 4.0, 4.0]
    for backoff in expected:
        health.record(Outcome.ERROR, 0.0, now, "refused")
        assert health.stats.backoff_until == now + backoff
        assert health.resting(now) and not health.resting(now + backoff)
        now += backoff
    health.record(Outcome.OK, 0.01, now)
    assert health.stats.consecutive_failures == 0
    health.record(Outcome.ERROR, 0.0, now, "refused")
    assert health.stats.backoff_until == now + 1.0  # back to the first step


def test_failures_during_a_backoff_do_not_extend_it() -> None:
    # Queries already in flight when an upstream dies all fail together: that is one failure for the backoff.
    health = UpstreamHealth("u", HealthPolicy(backoff_initial=1.0, backoff_max=60.0))
    for _ in range(10):
        health.record(Outcome.TIMEOUT, 0.5, NOW, "no reply")
    assert health.stats.backoff_until == NOW + 1.0
    assert (health.stats.failures, health.stats.timeouts, health.stats.consecutive_failures) == (10, 10, 10)


def test_servfail_fails_over_without_backoff_and_busy_is_not_a_failure() -> None:
    health = UpstreamHealth("u", HealthPolicy())
    health.record(Outcome.SERVFAIL, 0.01, NOW)
    assert (health.stats.servfails, health.stats.failures, health.stats.last_error) == (1, 1, "servfail")
    assert not health.resting(NOW) and health.stats.last_failure_at is None
    health.record(Outcome.BUSY, 0.0, NOW, "busy")
    assert (health.stats.busy, health.stats.failures) == (1, 1)
    health.record(Outcome.REFUSED, 0.01, NOW)
    assert health.resting(NOW) and health.stats.last_error == "refused"


def test_a_recent_failure_divides_the_weight() -> None:
    policy = HealthPolicy(latency_offset=0.01, failure_memory=60.0, failure_penalty=10.0)
    health = UpstreamHealth("u", policy)
    assert health.weight(NOW, unknown_latency=0.04) == pytest.approx(1 / 0.05)
    health.record(Outcome.OK, 0.09, NOW)
    assert health.weight(NOW, unknown_latency=0.04) == pytest.approx(1 / 0.1)
    health.record(Outcome.ERROR, 0.0, NOW, "reset")
    assert health.weight(NOW + 59.9, 0.04) == pytest.approx(1 / 0.1 / 10)
    assert health.weight(NOW + 60.0, 0.04) == pytest.approx(1 / 0.1)


# ------------------------------------------------------------------------------------------------------------
# Selection


def selection(strategy: Strategy, count: int = 3, seed: int = 1) -> UpstreamSelection:
    names = [f"u{n}" for n in range(count)]
    return UpstreamSelection(names, strategy, HealthPolicy(backoff_initial=1.0), random.Random(seed))


def test_strict_tries_in_configured_order_then_resting_ones_soonest_back_first() -> None:
    chosen = selection(Strategy.STRICT, 4)
    assert chosen.rounds(NOW) == [(0,), (1,), (2,), (3,)]
    chosen.record(0, Outcome.ERROR, 0.0, NOW, "down")  # back at NOW + 1
    chosen.record(0, Outcome.ERROR, 0.0, NOW + 1, "down")  # back at NOW + 3
    chosen.record(2, Outcome.ERROR, 0.0, NOW + 1, "down")  # back at NOW + 2
    assert chosen.rounds(NOW + 1) == [(1,), (3,), (2,), (0,)]
    assert chosen.rounds(NOW + 2.5) == [(1,), (2,), (3,), (0,)]


def test_parallel_best_races_two_ready_upstreams_and_never_a_resting_one_first() -> None:
    chosen = selection(Strategy.PARALLEL_BEST, 3)
    first, *rest = chosen.rounds(NOW)
    assert len(first) == 2 and len(rest) == 1
    assert sorted([*first, *rest[0]]) == [0, 1, 2]
    for index in (0, 1):
        chosen.record(index, Outcome.ERROR, 0.0, NOW, "down")
    assert chosen.rounds(NOW)[0] == (2,)  # one ready upstream: no race with a resting one
    chosen.record(2, Outcome.ERROR, 0.0, NOW + 0.5, "down")
    assert chosen.rounds(NOW + 0.5) == [(0, 1), (2,)]  # all resting: race the two soonest back


def test_random_order_follows_the_weights() -> None:
    chosen = selection(Strategy.RANDOM, 2, seed=3)
    chosen.record(0, Outcome.OK, 0.0, NOW)  # weight 1 / 0.01
    chosen.record(1, Outcome.OK, 0.09, NOW)  # weight 1 / 0.1: a tenth
    firsts = [chosen.rounds(NOW)[0][0] for _ in range(2000)]
    # Efraimidis-Spirakis: the first pick is proportional to weight, 10 / 11 for upstream 0.
    assert firsts.count(0) / len(firsts) == pytest.approx(10 / 11, abs=0.03)


def test_an_unmeasured_upstream_counts_as_fast_as_the_best_known() -> None:
    chosen = selection(Strategy.RANDOM, 2, seed=5)
    chosen.record(0, Outcome.OK, 0.02, NOW)
    firsts = [chosen.rounds(NOW)[0][0] for _ in range(2000)]
    assert firsts.count(1) / len(firsts) == pytest.approx(0.5, abs=0.04)


def test_selection_counts_attempts_and_snapshots_stats() -> None:
    chosen = selection(Strategy.STRICT, 2)
    chosen.attempt_started(1)
    stats = chosen.stats()
    assert [(s.name, s.queries) for s in stats] == [("u0", 0), ("u1", 1)]
    stats[1].queries = 99  # a snapshot: changing it changes nothing
    assert chosen.stats()[1].queries == 1


def test_parse_strategy() -> None:
    assert parse_strategy("parallel_best") is Strategy.PARALLEL_BEST
    with pytest.raises(ConfigError, match="unknown strategy 'fastest' \\(expected strict, random"):
        parse_strategy("fastest")
    with pytest.raises(ConfigError, match="at least one upstream"):
        UpstreamSelection([], Strategy.STRICT, HealthPolicy(), random.Random())


def test_reply_collector_prefers_a_good_reply_then_the_first_servfail() -> None:
    query = make_query()
    collector = ReplyCollector()
    timeout = UpstreamTimeoutError("a", "no reply")
    servfail, refused, good = (make_reply(query, code) for code in (RCODE.SERVFAIL, RCODE.REFUSED, 0))
    assert collector.judge(timeout) is None
    assert collector.judge(servfail) is None
    assert collector.judge(refused) is None
    assert collector.last_resort("g") == servfail
    assert collector.judge(good) == good
    empty = ReplyCollector()
    empty.judge(timeout)
    with pytest.raises(AllUpstreamsFailedError) as caught:
        empty.last_resort("g")
    assert caught.value.errors == (timeout,)
    assert isinstance(caught.value, UpstreamError)


def test_attempt_budget_is_the_attempt_timeout_within_the_deadline() -> None:
    assert attempt_budget(NOW + 2.0, NOW, 1.0) == 1.0
    assert attempt_budget(NOW + 2.0, NOW + 1.5, 1.0) == pytest.approx(0.5)
    assert attempt_budget(NOW + 2.0, NOW + 1.9995, 1.0) is None
    assert attempt_budget(NOW + 2.0, NOW + 3.0, 1.0) is None


def test_flight_table_bounds_distinct_flights_and_lands_only_its_own() -> None:
    table: FlightTable[str] = FlightTable("g", 2)
    assert table.open(b"a", lambda: "flight a") == "flight a"
    table.open(b"b", lambda: "flight b")
    started: list[str] = []
    with pytest.raises(UpstreamBusyError, match="2 distinct queries in flight"):
        table.open(b"c", lambda: started.append("c") or "flight c")  # type: ignore[func-returns-value]
    assert started == []  # refused before anything started
    assert table.get(b"a") == "flight a"
    table.land(b"a", "an older flight")  # a newer flight under the key stays
    assert table.get(b"a") == "flight a"
    table.land(b"a", "flight a")
    assert table.get(b"a") is None and len(table) == 1 and list(table) == ["flight b"]


def test_admission_bounds_resolutions_under_way() -> None:
    admission = Admission("g", 1)
    admission.enter()
    with pytest.raises(UpstreamBusyError, match="1 queries in flight"):
        admission.enter()
    admission.leave()
    admission.enter()
    assert admission.running == 1
