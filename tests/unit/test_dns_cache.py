"""The answer cache, driven by a fake clock: what it stores, for how long, and what each client gets back."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import pytest
from dnslib import QTYPE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns import wire
from dnsguard.dns.cache import AnswerCache, cache_key
from dnsguard.dns.wire import Query
from dnsguard.errors import FormError

T0 = 1000.0  # an arbitrary CLOCK_BOOTTIME reading


def query(
    name: str = "www.example.com",
    qtype: int = wire.QTYPE_A,
    *,
    ident: int = 0x1111,
    flags: int = wire.FLAG_RD,
    payload: int | None = None,
    dnssec_ok: bool = False,
) -> Query:
    header = struct.pack(">HHHHHH", ident, flags, 1, 0, 0, 0 if payload is None else 1)
    message = header + wire.encode_name(name) + struct.pack(">HH", qtype, 1)
    if payload is not None:
        message += b"\x00" + struct.pack(">HHIH", 41, payload, 0x8000 if dnssec_ok else 0, 0)
    return wire.parse_query(message)


def record(owner: int, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return struct.pack(">HHHIH", owner, rtype, 1, ttl, len(rdata)) + rdata


def upstream_reply(
    to: Query,
    answers: Sequence[tuple[int, int, bytes]] = (),
    *,
    rcode: int = 0,
    authority: bytes = b"",
    nscount: int = 0,
    flags: int = 0x8180,
    opt: bytes | None = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 12) + b"\x00\x0a\x00\x08" + bytes(8),
) -> bytes:
    """An upstream's reply to `to`: answers owned by the question name (pointer 0xC00C)."""
    body = b"".join(record(0xC00C, rtype, ttl, rdata) for rtype, ttl, rdata in answers)
    arcount = 0 if opt is None else 1
    header = struct.pack(">HHHHHH", to.id, flags | rcode, 1, len(answers), nscount, arcount)
    return header + to.question + body + authority + (opt or b"")


def soa(ttl: int, minimum: int) -> bytes:
    rdata = b"\x02ns\xc0\x0c\x03noc\xc0\x0c" + struct.pack(">IIIII", 1, 7200, 3600, 1209600, minimum)
    return record(0xC00C, wire.QTYPE_SOA, ttl, rdata)


A_1234 = (wire.QTYPE_A, 300, bytes([1, 2, 3, 4]))


def read(reply: bytes | None) -> DNSRecord:
    assert reply is not None
    return DNSRecord.parse(reply)


# --- hits and misses ----------------------------------------------------------------------------------------


def test_miss_then_hit_with_the_clients_id_and_case() -> None:
    cache = AnswerCache()
    first = query(ident=1)
    assert cache.get(first, T0) is None
    assert cache.put(first, upstream_reply(first, [A_1234]), T0)
    second = query("WWW.Example.com", ident=2)
    reply = cache.get(second, T0 + 0.5)
    answer = read(reply)
    assert answer.header.id == 2
    assert reply is not None and reply[12 : second.question_end] == second.question  # 0x20 echo
    assert [(str(rr.rdata), rr.ttl) for rr in answer.rr] == [("1.2.3.4", 300)]
    assert cache.stats()[:3] == (1, 1, 1)  # entries, hits, misses


def test_ttls_count_down_with_the_clock() -> None:
    cache = AnswerCache()
    q = query()
    cname_then_a = [(wire.QTYPE_CNAME, 3600, b"\x03cdn\xc0\x10"), (wire.QTYPE_A, 60, bytes(4))]
    cache.put(q, upstream_reply(q, cname_then_a), T0)
    assert [rr.ttl for rr in read(cache.get(q, T0 + 10.9)).rr] == [3590, 50]
    assert [rr.ttl for rr in read(cache.get(q, T0 + 11.0)).rr] == [3589, 49]
    assert [rr.ttl for rr in read(cache.get(q, T0 + 59.99)).rr] == [3541, 1]  # never 0 while fresh


def test_entry_expires_with_its_smallest_ttl() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(
        q, upstream_reply(q, [(wire.QTYPE_CNAME, 3600, b"\x03cdn\xc0\x10"), (wire.QTYPE_A, 60, bytes(4))]), T0
    )
    assert cache.get(q, T0 + 59.9) is not None
    assert cache.get(q, T0 + 60) is None


def test_clock_going_backwards_never_raises_ttls() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert read(cache.get(q, T0 - 5)).rr[0].ttl == 300


def test_keys_separate_type_class_do_and_cd() -> None:
    cache = AnswerCache()
    plain = query()
    cache.put(plain, upstream_reply(plain, [A_1234]), T0)
    assert cache.get(query(qtype=wire.QTYPE_AAAA), T0) is None
    assert cache.get(query(payload=1232, dnssec_ok=True), T0) is None  # DO=1 wants RRSIGs
    assert cache.get(query(flags=wire.FLAG_RD | wire.FLAG_CD), T0) is None  # CD=1 may get unvalidated data
    assert cache.get(query(payload=1232), T0) is not None  # EDNS alone does not change the answer
    assert cache_key(plain) == ("www.example.com", wire.QTYPE_A, wire.QCLASS_IN, 0)


def test_https_and_type_97_do_not_share_an_entry() -> None:
    # 65 is 0x0041, "A" in ASCII: lower-casing the raw question would have made it 0x0061 = 97.
    cache = AnswerCache()
    https = query(qtype=wire.QTYPE_HTTPS)
    cache.put(https, upstream_reply(https, [(wire.QTYPE_HTTPS, 300, b"\x00\x01\x00")]), T0)
    assert cache.get(query(qtype=97), T0) is None
    assert cache.get(https, T0) is not None


# --- what is and is not stored ------------------------------------------------------------------------------


def test_negative_answer_lives_as_long_as_the_soa_allows() -> None:
    cache = AnswerCache()
    q = query("nope.example.com")
    nxdomain = upstream_reply(q, rcode=wire.RCODE_NXDOMAIN, authority=soa(3600, 300), nscount=1)
    assert cache.put(q, nxdomain, T0)
    answer = read(cache.get(q, T0 + 100))
    assert answer.header.rcode == wire.RCODE_NXDOMAIN
    # RFC 2308: min(SOA TTL, MINIMUM) = 300; the SOA TTL is cut to that so clients agree with us.
    assert answer.auth[0].ttl == 200
    assert cache.get(q, T0 + 300) is None


def test_nodata_is_cached_and_capped_by_negative_max_ttl() -> None:
    cache = AnswerCache(negative_max_ttl=60)
    q = query(qtype=wire.QTYPE_AAAA)
    assert cache.put(q, upstream_reply(q, authority=soa(86400, 86400), nscount=1), T0)
    assert read(cache.get(q, T0)).auth[0].ttl == 60
    assert cache.get(q, T0 + 60) is None


def test_negative_answer_without_soa_is_not_cached() -> None:
    cache = AnswerCache()
    q = query()
    assert not cache.put(q, upstream_reply(q, rcode=wire.RCODE_NXDOMAIN), T0)
    assert len(cache) == 0


@pytest.mark.parametrize(
    "reply_of",
    [
        lambda q: upstream_reply(q, [A_1234], flags=0x8380),  # TC: partial data (RFC 2181 section 9)
        lambda q: upstream_reply(q, rcode=wire.RCODE_SERVFAIL),
        lambda q: upstream_reply(q, rcode=wire.RCODE_REFUSED),
        lambda q: upstream_reply(q, [(wire.QTYPE_A, 0, bytes(4))]),  # TTL 0: use once
        lambda q: upstream_reply(query("other.example.com"), [A_1234]),  # another question
        lambda q: upstream_reply(query(qtype=wire.QTYPE_AAAA), [A_1234]),
    ],
    ids=["truncated", "servfail", "refused", "ttl-0", "other-name", "other-type"],
)
def test_uncacheable_replies(reply_of: Callable[[Query], bytes]) -> None:
    cache = AnswerCache()
    q = query()
    assert not cache.put(q, reply_of(q), T0)
    assert cache.get(q, T0) is None


def test_uncacheable_reply_drops_what_was_cached() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    cache.put(q, upstream_reply(q, [(wire.QTYPE_A, 0, bytes(4))]), T0 + 1)
    assert cache.get(q, T0 + 2) is None


def test_malformed_reply_is_a_form_error() -> None:
    q = query()
    with pytest.raises(FormError):
        AnswerCache().put(q, upstream_reply(q, [A_1234])[:-20], T0)


def test_min_and_max_ttl_clamp_both_lifetime_and_served_ttls() -> None:
    cache = AnswerCache(min_ttl=60, max_ttl=600)
    short, long = query("short.example"), query("long.example")
    cache.put(short, upstream_reply(short, [(wire.QTYPE_A, 5, bytes(4))]), T0)
    cache.put(long, upstream_reply(long, [(wire.QTYPE_A, 10**6, bytes(4))]), T0)
    assert read(cache.get(short, T0 + 30)).rr[0].ttl == 30
    assert read(cache.get(long, T0)).rr[0].ttl == 600
    assert cache.get(long, T0 + 600) is None


# --- EDNS and header bits follow the client -----------------------------------------------------------------


def test_upstream_opt_is_replaced_by_one_for_the_client() -> None:
    cache = AnswerCache()
    filler = query(payload=1232)
    cache.put(filler, upstream_reply(filler, [A_1234]), T0)  # the upstream OPT carries a COOKIE
    with_edns = read(cache.get(query(payload=4096), T0))
    [opt] = with_edns.ar
    assert opt.rtype == QTYPE.OPT and opt.rclass == wire.EDNS_PAYLOAD and opt.rdata == []
    without_edns = read(cache.get(query(), T0))
    assert without_edns.ar == []  # RFC 6891 section 7: no OPT to a client that sent none


def test_do_bit_is_copied_to_the_client() -> None:
    cache = AnswerCache()
    q = query(payload=1232, dnssec_ok=True)
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert read(cache.get(q, T0)).ar[0].ttl & 0x8000


def test_rd_is_copied_from_each_client() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert read(cache.get(query(flags=0), T0)).header.rd == 0
    assert read(cache.get(query(flags=wire.FLAG_RD), T0)).header.rd == 1


def test_additional_records_keep_their_place_when_the_opt_is_dropped() -> None:
    cache = AnswerCache()
    q = query(qtype=wire.QTYPE_NS)
    glue = record(0xC00C, wire.QTYPE_A, 120, bytes([5, 6, 7, 8]))
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
    reply = upstream_reply(q, [(wire.QTYPE_NS, 300, b"\x02ns\xc0\x0c")], opt=None)
    reply = reply[:10] + b"\x00\x02" + reply[12:] + glue + opt
    assert cache.put(q, reply, T0)
    answer = read(cache.get(q, T0 + 20))
    assert [(rr.rtype, rr.ttl) for rr in answer.ar] == [(QTYPE.A, 100)]


def test_opt_in_the_middle_of_the_additional_section_is_not_cached() -> None:
    cache = AnswerCache()
    q = query()
    glue = record(0xC00C, wire.QTYPE_A, 120, bytes([5, 6, 7, 8]))
    opt = b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)
    reply = upstream_reply(q, [A_1234], opt=None)
    reply = reply[:10] + b"\x00\x02" + reply[12:] + opt + glue
    assert not cache.put(q, reply, T0)


# --- bounded size -------------------------------------------------------------------------------------------


def test_least_recently_used_entry_is_evicted() -> None:
    cache = AnswerCache(max_entries=3)
    names = [query(f"n{i}.example") for i in range(4)]
    for q in names[:3]:
        cache.put(q, upstream_reply(q, [A_1234]), T0)
    cache.get(names[0], T0)  # n0 is now the most recently used; n1 the least
    cache.put(names[3], upstream_reply(names[3], [A_1234]), T0)
    assert len(cache) == 3
    assert cache.get(names[1], T0) is None
    assert all(cache.get(q, T0) is not None for q in (names[0], names[2], names[3]))
    assert cache.stats().evictions == 1


def test_size_never_exceeds_the_bound() -> None:
    cache = AnswerCache(max_entries=50)
    for i in range(500):
        q = query(f"host{i}.example")
        cache.put(q, upstream_reply(q, [A_1234]), T0 + i)
        assert len(cache) <= 50
    assert cache.stats().evictions == 450


# --- serve-stale (RFC 8767) ---------------------------------------------------------------------------------


def test_stale_answer_served_with_short_ttl_only_when_asked() -> None:
    cache = AnswerCache(stale_max_age=3600, stale_ttl=30)
    q = query()
    cache.put(q, upstream_reply(q, [(wire.QTYPE_CNAME, 900, b"\x03cdn\xc0\x10"), A_1234]), T0)
    expired = T0 + 301
    assert cache.get(q, expired) is None  # a normal lookup never returns stale data
    stale = read(cache.get_stale(q, expired))
    assert [rr.ttl for rr in stale.rr] == [30, 30]  # RFC 8767 section 4
    assert cache.stats().stale_served == 1


def test_stale_answer_says_so_to_edns_clients() -> None:
    cache = AnswerCache()
    q = query(payload=1232)
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    [opt] = read(cache.get_stale(q, T0 + 400)).ar
    [option] = opt.rdata
    assert (option.code, option.data) == (15, b"\x00\x03")  # EDE 3 "Stale Answer" (RFC 8914)
    assert read(cache.get_stale(query(), T0 + 400)).ar == []


def test_stale_window_ends_and_the_entry_goes() -> None:
    cache = AnswerCache(stale_max_age=3600)
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert cache.get_stale(q, T0 + 300 + 3599) is not None
    assert cache.get_stale(q, T0 + 300 + 3600) is None
    assert len(cache) == 0


def test_get_stale_on_a_fresh_entry_is_a_normal_hit() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert read(cache.get_stale(q, T0 + 100)).rr[0].ttl == 200
    assert cache.stats().stale_served == 0


def test_serve_stale_disabled() -> None:
    cache = AnswerCache(stale_max_age=0)
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    assert cache.get_stale(q, T0 + 300) is None


def test_prune_drops_only_entries_past_their_stale_window() -> None:
    cache = AnswerCache(stale_max_age=100)
    old, new = query("old.example"), query("new.example")
    cache.put(old, upstream_reply(old, [A_1234]), T0)
    cache.put(new, upstream_reply(new, [A_1234]), T0 + 200)
    assert cache.prune(T0 + 400) == 1
    assert len(cache) == 1 and cache.get(new, T0 + 400) is not None


# --- prefetch hints -----------------------------------------------------------------------------------------


def test_popular_entry_near_expiry_asks_for_one_refresh() -> None:
    cache = AnswerCache(prefetch_min_hits=3, prefetch_window=0.1)
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)  # lifetime 300: the window opens at 270
    for _ in range(3):
        cache.get(q, T0 + 10)
    assert cache.take_prefetch() == []  # popular, but not near expiry yet
    cache.get(q, T0 + 271)
    assert cache.take_prefetch() == [q]
    cache.get(q, T0 + 272)
    assert cache.take_prefetch() == []  # one hint per stored reply
    cache.put(q, upstream_reply(q, [A_1234]), T0 + 273)  # the refresh arrives and re-arms the hint
    for _ in range(3):
        cache.get(q, T0 + 273 + 280)
    assert cache.take_prefetch() == [q]
    assert cache.stats().prefetch_hints == 2


def test_rarely_used_entry_is_not_prefetched() -> None:
    cache = AnswerCache(prefetch_min_hits=3)
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    cache.get(q, T0 + 290)
    assert cache.take_prefetch() == []


# --- housekeeping -------------------------------------------------------------------------------------------


def test_flush_forgets_everything_but_keeps_counters() -> None:
    cache = AnswerCache()
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    cache.get(q, T0)
    cache.flush()
    assert len(cache) == 0 and cache.get(q, T0) is None
    assert cache.stats().hits == 1


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        AnswerCache(min_ttl=10, max_ttl=5)
    with pytest.raises(ValueError):
        AnswerCache(max_entries=0)
    with pytest.raises(ValueError):
        AnswerCache(prefetch_window=1.5)


# --- properties ---------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    ttls=st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=4),
    put_at=st.integers(0, 2**30).map(lambda ticks: ticks / 1024),  # clock readings, exact in binary
    ages=st.lists(st.integers(0, 2**27).map(lambda ticks: ticks / 1024), min_size=1, max_size=5),
    min_ttl=st.integers(0, 100),
)
def test_fresh_answers_count_down_and_never_say_zero(
    ttls: list[int], put_at: float, ages: list[float], min_ttl: int
) -> None:
    cache = AnswerCache(min_ttl=min_ttl, max_ttl=86400)
    q = query()
    lifetime = min(max(min(ttls), min_ttl), 86400)
    stored = cache.put(q, upstream_reply(q, [(wire.QTYPE_A, ttl, bytes(4)) for ttl in ttls]), put_at)
    assert stored == (lifetime > 0)
    previous: list[int] | None = None
    for age in sorted(ages):
        reply = cache.get(q, put_at + age)
        assert (reply is None) == (not stored or age >= lifetime)
        if reply is None:
            continue
        served = [rr.ttl for rr in read(reply).rr]
        assert all(1 <= ttl <= 86400 for ttl in served)
        if previous is not None:
            assert all(now <= before for now, before in zip(served, previous, strict=True))
        previous = served


# --- the planned path: get_planned answers as get does ------------------------------------------------------

VARIANTS = [
    {"ident": 7},
    {"ident": 8, "flags": 0},  # RD clear
    {"ident": 9, "payload": 1232},
    {"ident": 10, "payload": 4096, "dnssec_ok": True},
]


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["ask", "ask", "ask", "refresh", "evict", "flush"]),
            st.integers(0, len(VARIANTS) - 1),
            st.sampled_from(["www.example.com", "WWW.Example.COM", "other.example"]),
            st.integers(0, 4000).map(lambda ticks: ticks / 8),  # seconds forward, exact in binary
        ),
        min_size=1,
        max_size=30,
    )
)
def test_a_planned_lookup_answers_exactly_as_get(steps: list[tuple[str, int, str, float]]) -> None:
    # The planned path keeps whole replies per entry for the rest of a second of its age; whatever
    # happens to the entry (refreshed, evicted, flushed, expired, aged), its replies must be get's.
    cache = AnswerCache(max_entries=1)
    now = T0
    for action, variant, name, forward in steps:
        now += forward
        q = query(name, **VARIANTS[variant])  # type: ignore[arg-type]
        if action == "refresh":
            cache.put(q, upstream_reply(q, [(wire.QTYPE_A, 600, bytes([198, 51, 100, variant]))]), now)
        elif action == "evict":
            other = query("evicts.example")
            cache.put(other, upstream_reply(other, [A_1234]), now)
        elif action == "flush":
            cache.flush()
        else:
            expected = cache.get(q, now)
            again = query(name, **{**VARIANTS[variant], "ident": 0x4242})  # type: ignore[arg-type]
            planned = cache.get_planned(cache_key(q), q, again.data, again.data[2:], now)
            assert planned == (None if expected is None else b"\x42\x42" + expected[2:])
            # Asked again in the same second, from the memo:
            assert cache.get_planned(cache_key(q), q, q.data, q.data[2:], now) == expected


def test_a_planned_hit_counts_and_asks_for_prefetch_as_get_does() -> None:
    cache = AnswerCache(prefetch_min_hits=2, prefetch_window=0.5)
    q = query()
    cache.put(q, upstream_reply(q, [A_1234]), T0)
    for _ in range(3):
        assert cache.get_planned(cache_key(q), q, q.data, q.data[2:], T0 + 200) is not None
    assert cache.hits == 3 and cache.misses == 0
    assert cache.take_prefetch() == [q]  # once, however many hits follow
    assert cache.get_planned(cache_key(q), q, q.data, q.data[2:], T0 + 301) is None
    assert cache.misses == 1
