"""The resolver's remembered answers (plans), prefetch, oversize cache hits and unusual messages.

A repeat of a message takes the planned path; whatever it takes, a query is counted and logged exactly
as on the first pass (and, answered at once, counted in instant_answers instead of reported to the
hook), and a changed policy or pause is obeyed at once.
"""

from __future__ import annotations

import asyncio
import gc
import struct

from dnslib import CLASS, EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from dnsguard.dns import wire
from dnsguard.dns.resolver import Forward, Resolver
from dnsguard.policy.engine import Policy
from tests.unit.test_resolver import make, parse, query


def edns_query(name: str, ident: int = 0x4321, payload: int = 1232, version: int = 0) -> bytes:
    record = DNSRecord.question(name)
    record.header.id = ident
    record.add_ar(EDNS0(udp_len=payload, version=version))
    return bytes(record.pack())


def hooked(resolver: Resolver) -> list[tuple[str, str, float]]:
    calls: list[tuple[str, str, float]] = []
    resolver.on_query = lambda result, group, seconds: calls.append((result, group, seconds))
    return calls


def test_a_repeated_blocked_query_gets_the_same_answer_and_is_counted_each_time() -> None:
    resolver, upstreams, _ = make()
    calls = hooked(resolver)
    first = resolver.answer_now(query("x.ads.example", ident=1), "198.51.100.7")
    second = resolver.answer_now(query("x.ads.example", ident=2), "198.51.100.8")
    assert isinstance(first, bytes) and isinstance(second, bytes)
    assert first[:2] == b"\x00\x01" and second[:2] == b"\x00\x02" and first[2:] == second[2:]
    assert [str(r.rdata) for r in parse(second).rr] == ["0.0.0.0"]
    assert resolver.stats.queries == {("blocked", "default"): 2}
    assert resolver.stats.blocked_by_list == {"ads": 2}
    assert [(e.client, e.name, e.result, e.reason) for e in resolver.recent_queries()] == [
        ("198.51.100.7", "x.ads.example", "blocked", "ads"),
        ("198.51.100.8", "x.ads.example", "blocked", "ads"),
    ]
    assert calls == [("blocked", "default", 0.0)] * 2  # each client's first ask is decided afresh
    # A repeat answered at once from the plan is counted by result instead of reported to the hook.
    assert resolver.answer_now(query("x.ads.example", ident=3), "198.51.100.7") == b"\x00\x03" + first[2:]
    assert len(calls) == 2 and resolver.instant_answers == {"blocked": 1}
    assert resolver.stats.queries == {("blocked", "default"): 3}
    assert upstreams.asked == []


def test_a_remembered_local_answer_leaves_the_garbage_collectors_sight() -> None:
    # Tens of thousands of plans live until the policy changes: tracked, every full collection would
    # walk them while queries wait. A plan of a local answer holds only strings, bytes and numbers.
    resolver, _, _ = make()
    resolver.answer_now(query("x.ads.example"), "198.51.100.7")
    resolver.answer_now(query("nas.home.arpa"), "198.51.100.7")
    # A collection untracks a tuple only if its items are untracked when it comes to it; the plan's
    # (result, group) tuple may sit after the plan in the collector's list (it depends on when young
    # collections ran), and the plan then goes at the next collection.
    gc.collect()
    gc.collect()
    plans = list(resolver._plans_by_group["default"].values())
    assert len(plans) == 2
    assert not any(gc.is_tracked(plan) for plan in plans)


def test_plans_follow_the_client_group() -> None:
    resolver, _, _ = make()
    for _ in range(2):
        assert isinstance(resolver.answer_now(query("adult.example"), "198.51.100.7"), Forward)
        kids = parse(resolver.answer_now(query("adult.example"), "192.0.2.40"))
        assert [str(r.rdata) for r in kids.rr] == ["0.0.0.0"]
    assert resolver.stats.queries == {("blocked", "kids"): 2}


async def test_a_repeated_cached_query_is_counted_as_cached_each_time() -> None:
    resolver, upstreams, clock = make()
    calls = hooked(resolver)
    assert isinstance(resolver.answer_now(query("www.example.org", ident=1), "192.0.2.1"), Forward)
    await resolver.answer_later(query("www.example.org", ident=1), "192.0.2.1", False)
    clock[0] += 10
    for ident in (2, 3):
        reply = parse(resolver.answer_now(query("www.example.org", ident=ident), "192.0.2.1"))
        assert reply.header.id == ident and reply.rr[0].ttl == 290
    assert resolver.stats.queries == {("allowed", "default"): 1, ("cached", "default"): 2}
    assert [e.result for e in resolver.recent_queries()] == ["allowed", "cached", "cached"]
    assert [call[0] for call in calls] == ["allowed"]
    assert resolver.instant_answers == {"cached": 2}
    assert upstreams.asked == ["www.example.org"]


def test_letter_case_is_echoed_on_repeats() -> None:
    resolver, _, _ = make()
    for _ in range(2):
        reply = resolver.answer_now(query("X.AdS.Example"), "192.0.2.1")
        assert isinstance(reply, bytes) and b"\x01X\x03AdS\x07Example" in reply


def test_a_new_policy_replaces_the_remembered_answers() -> None:
    resolver, _, _ = make()
    assert isinstance(resolver.answer_now(query("x.ads.example"), "192.0.2.1"), bytes)
    old = resolver.policy
    config = old.config
    config.groups["default"].block = []
    resolver.policy = Policy(config, old.matcher)
    assert isinstance(resolver.answer_now(query("x.ads.example"), "192.0.2.1"), Forward)


def test_pausing_blocking_is_obeyed_by_repeats() -> None:
    resolver, _, _ = make()
    assert isinstance(resolver.answer_now(query("x.ads.example"), "192.0.2.1"), bytes)
    resolver.policy.paused_until = resolver.wall_clock() + 60
    assert isinstance(resolver.answer_now(query("x.ads.example"), "192.0.2.1"), Forward)
    resolver.policy.paused_until = 0.0
    assert [str(r.rdata) for r in parse(resolver.answer_now(query("x.ads.example"), "192.0.2.1")).rr] == [
        "0.0.0.0"
    ]


def test_turning_on_extended_errors_changes_repeats() -> None:
    resolver, _, _ = make()
    assert not parse(resolver.answer_now(edns_query("x.ads.example"), "192.0.2.1")).ar[0].rdata
    resolver.extended_errors = True
    options = parse(resolver.answer_now(edns_query("x.ads.example"), "192.0.2.1")).ar[0].rdata
    assert [option.code for option in options] == [15]
    assert b"blocked by ads" in options[0].data


async def test_a_cached_reply_too_big_for_the_udp_client_is_truncated() -> None:
    resolver, upstreams, _ = make()
    upstreams.many["big.example"] = 60  # about 1 kB
    await resolver.answer_later(query("big.example"), "192.0.2.1", True)
    for _ in range(2):  # the first and the planned path
        over_udp = parse(resolver.answer_now(query("big.example", ident=9), "192.0.2.1"))
        assert over_udp.header.tc == 1 and not over_udp.rr and over_udp.header.id == 9
        over_tcp = parse(resolver.answer_now(query("big.example"), "192.0.2.1", True))
        assert over_tcp.header.tc == 0 and len(over_tcp.rr) == 60
        assert len(parse(resolver.answer_now(edns_query("big.example", payload=4096), "192.0.2.1")).rr) == 60


async def test_popular_entries_are_refreshed_before_they_expire() -> None:
    resolver, upstreams, clock = make()
    await resolver.answer_later(query("popular.example"), "192.0.2.1", False)  # cached for 300 s
    clock[0] += 280  # inside the last tenth of its lifetime
    for _ in range(3):  # popular: the cache flags it and the resolver asks upstream again
        assert isinstance(resolver.answer_now(query("popular.example"), "192.0.2.1"), bytes)
    for _ in range(10):
        await asyncio.sleep(0)
    assert upstreams.asked == ["popular.example", "popular.example"]
    assert resolver.stats.prefetched == 1
    clock[0] += 100  # past the first answer's expiry: the refreshed one is still fresh
    refreshed = parse(resolver.answer_now(query("popular.example"), "192.0.2.1"))
    assert refreshed.rr[0].ttl == 200
    # Prefetches are not client queries.
    assert sum(resolver.stats.queries.values()) == 5


async def test_prefetch_does_not_cache_a_target_some_group_blocks() -> None:
    resolver, upstreams, clock = make()
    await resolver.answer_later(query("shop.example"), "192.0.2.1", False)
    upstreams.cnames["shop.example"] = "adult.example"  # blocked for the kids group only
    clock[0] += 280
    for _ in range(3):
        resolver.answer_now(query("shop.example"), "192.0.2.1")
    for _ in range(10):
        await asyncio.sleep(0)
    assert upstreams.asked == ["shop.example", "shop.example"] and resolver.stats.prefetched == 0


async def test_prefetch_can_be_turned_off() -> None:
    resolver, upstreams, clock = make()
    resolver.prefetch = False
    await resolver.answer_later(query("popular.example"), "192.0.2.1", False)
    clock[0] += 280
    for _ in range(3):
        resolver.answer_now(query("popular.example"), "192.0.2.1")
    await asyncio.sleep(0)
    assert upstreams.asked == ["popular.example"]


# -- unusual messages: FORMERR, NOTIMP, BADVERS, or forwarded as they came ------------------------------


def with_header(message: bytes, **fields: int) -> bytes:
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", message)
    values = {"flags": flags, "qd": qd, "an": an, "ns": ns, "ar": ar} | fields
    header = struct.pack(
        "!HHHHHH", ident, values["flags"], values["qd"], values["an"], values["ns"], values["ar"]
    )
    return header + message[12:]


def test_opcodes_other_than_query_get_notimp() -> None:
    resolver, upstreams, _ = make()
    for opcode in (1, 2, 4, 5, 6):  # IQUERY, STATUS, NOTIFY, UPDATE, DSO
        message = with_header(query("a.example"), flags=opcode << 11 | wire.FLAG_RD)
        reply = parse(resolver.answer_now(message, "192.0.2.1"))
        assert reply.header.rcode == RCODE.NOTIMP and reply.header.opcode == opcode
        assert reply.header.id == 0x1234 and reply.header.qr == 1
    assert upstreams.asked == [] and resolver.stats.malformed == {"opcode": 5}


def test_question_counts_other_than_one_get_formerr() -> None:
    resolver, _, _ = make()
    for count in (0, 2, 3):
        reply = parse(resolver.answer_now(with_header(query("a.example"), qd=count), "192.0.2.1"))
        assert reply.header.rcode == RCODE.FORMERR


def test_edns_version_1_gets_badvers() -> None:
    resolver, _, _ = make()
    reply = parse(resolver.answer_now(edns_query("a.example", version=1), "192.0.2.1"))
    assert reply.header.rcode + (reply.ar[0].ttl >> 24 << 4) == 16


def test_responses_are_dropped() -> None:
    resolver, _, _ = make()
    assert resolver.answer_now(with_header(query("a.example"), flags=0x8180), "192.0.2.1") is None


async def test_other_classes_are_forwarded_and_never_get_an_address_when_blocked() -> None:
    resolver, upstreams, _ = make()
    chaos = DNSRecord.question("version.bind", "TXT", "CH").pack()
    assert isinstance(resolver.answer_now(bytes(chaos), "192.0.2.1"), Forward)
    assert (await resolver.answer_later(bytes(chaos), "192.0.2.1", False)) is not None
    assert upstreams.asked == ["version.bind"]
    blocked = parse(
        resolver.answer_now(bytes(DNSRecord.question("x.ads.example", "A", "CH").pack()), "192.0.2.1")
    )
    assert blocked.header.rcode == RCODE.NOERROR and not blocked.rr
    assert blocked.q.qclass == CLASS.CH


async def test_a_query_with_extra_records_is_forwarded_uncached() -> None:
    resolver, upstreams, _ = make()
    record = DNSRecord.question("extra.example")
    record.add_answer(RR("extra.example", QTYPE.A, rdata=A("192.0.2.9"), ttl=60))  # a "known answer"
    message = bytes(record.pack())
    for _ in range(2):
        assert isinstance(resolver.answer_now(message, "192.0.2.1"), Forward)
        reply = parse(await resolver.answer_later(message, "192.0.2.1", False))
        assert [str(r.rdata) for r in reply.rr] == ["198.51.100.80"]
    assert upstreams.asked == ["extra.example"] * 2
    assert resolver.stats.malformed == {}
    # The name is still filtered.
    record = DNSRecord.question("x.ads.example")
    record.add_auth(RR("ads.example", QTYPE.A, rdata=A("192.0.2.9")))
    assert [str(r.rdata) for r in parse(resolver.answer_now(bytes(record.pack()), "192.0.2.1")).rr] == [
        "0.0.0.0"
    ]


def test_an_extra_record_that_does_not_parse_gets_formerr() -> None:
    resolver, _, _ = make()
    message = with_header(query("a.example"), an=1) + b"\x00\x00\x01"
    assert parse(resolver.answer_now(message, "192.0.2.1")).header.rcode == RCODE.FORMERR
    assert sum(resolver.stats.malformed.values()) == 1


def test_two_opt_records_get_formerr() -> None:
    resolver, _, _ = make()
    message = edns_query("a.example")
    opt = message[len(query("a.example")) :]
    reply = parse(resolver.answer_now(with_header(message, ar=2) + opt, "192.0.2.1"))
    assert reply.header.rcode == RCODE.FORMERR


async def test_the_lasting_log_sink_folds_repeats_and_keeps_distinct_queries_apart() -> None:
    resolver, _, _ = make()
    # Four entries: the first pass of a query is one (decided), its replayed repeats another.
    resolver.log_sink = sink = resolver.new_log_sink(4)
    for ident in (1, 2, 3):  # the first pass and two planned repeats
        resolver.answer_now(query("x.ads.example", ident=ident), "198.51.100.7")
    resolver.answer_now(query("x.ads.example"), "198.51.100.8")  # another client: its own row
    assert isinstance(resolver.answer_now(query("www.example.org"), "192.0.2.1"), Forward)
    await resolver.answer_later(query("www.example.org"), "192.0.2.1", False)
    # The sink is full: a new query is lost, a repeat of one that waits still folds.
    resolver.answer_now(query("y.ads.example"), "198.51.100.7")
    resolver.answer_now(query("x.ads.example", ident=4), "198.51.100.7")
    resolver.answer_now(query("x.ads.example", ident=5), "198.51.100.8")
    assert sink.lost == {(1, 0): 1}
    assert sink.waiting() == 7
    rows = list(resolver.take_log_stream())
    assert sink.size == 0 and sink.waiting() == 0 and list(resolver.take_log_stream()) == []
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        counts[row[1], row[2]] = counts.get((row[1], row[2]), 0) + row[9]
    assert counts == {
        ("198.51.100.7", "x.ads.example"): 4,
        ("198.51.100.8", "x.ads.example"): 2,
        ("192.0.2.1", "www.example.org"): 1,
    }
    assert {row[3:7] for row in rows if row[2] == "x.ads.example"} == {(1, "blocked", "default", "ads")}
    (forwarded,) = (row for row in rows if row[2] == "www.example.org")
    assert forwarded[4] == "allowed"
    assert len(resolver.recent_queries()) == 8


def test_a_folded_row_keeps_the_first_time_and_the_longest_answer_time() -> None:
    resolver, _, _ = make()
    resolver.log_sink = sink = resolver.new_log_sink(10)
    for at, elapsed_ms in ((5.0, 1.0), (5.2, 7.5), (5.4, 2.0)):
        sink.add((at, "192.0.2.1", "www.example.org", 1, "allowed", "default", "", elapsed_ms, 0))
    assert list(resolver.take_log_stream()) == [
        (5.0, "192.0.2.1", "www.example.org", 1, "allowed", "default", "", 7.5, 0, 3)
    ]


async def test_without_a_sink_answers_are_counted_by_type_and_rcode_on_both_paths() -> None:
    resolver, _, _ = make()
    assert resolver.log_sink is None
    for ident in (1, 2, 3):  # the first pass parses, the repeats take the plan
        resolver.answer_now(query("x.ads.example", ident=ident), "198.51.100.7")
    resolver.answer_now(query("x.ads.example", qtype="AAAA"), "198.51.100.7")
    assert isinstance(resolver.answer_now(query("www.example.org"), "192.0.2.1"), Forward)
    await resolver.answer_later(query("www.example.org"), "192.0.2.1", False)
    assert resolver.take_answer_counts() == {(1, 0): 4, (28, 0): 1}
    assert resolver.take_answer_counts() == {}
    resolver.log_sink = resolver.new_log_sink(10)
    resolver.answer_now(query("x.ads.example", ident=4), "198.51.100.7")
    assert resolver.take_answer_counts() == {}  # with a sink, the lasting log counts them
    assert len(list(resolver.take_log_stream())) == 1


def test_a_replayed_query_leaves_nothing_in_the_sink_for_the_garbage_collector() -> None:
    # Between two hand-offs the sink holds an entry per distinct query. A tracked object made for each
    # one (a tuple key, an entry) kept young collections running every few hundred queries.
    resolver, _, _ = make()
    names = [f"n{i}.ads.example" for i in range(500)]
    for name in names:  # decided once: a plan per name
        resolver.answer_now(query(name, ident=1), "198.51.100.7")
    for ident in range(2, 4):  # fill the in-memory log, whose oldest entries then make way
        for name in names:
            resolver.answer_now(query(name, ident=ident), "198.51.100.7")
    resolver.log_sink = sink = resolver.new_log_sink(1000)
    messages = [query(name, ident=ident) for ident in (4, 5, 6) for name in names]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for message in messages:  # replayed: the first one of each name is a new entry, then repeats
            resolver.answer_now(message, "198.51.100.7")
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert grown < 20, f"{grown} objects for the collector from 1500 replayed queries"
    rows = list(resolver.take_log_stream())
    assert len(rows) == 500 and {row[9] for row in rows} == {3}
    gc.collect()
    assert not any(gc.is_tracked(row) for row in rows)
    assert sink.size == 0
