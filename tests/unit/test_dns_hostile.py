"""What a hostile client can make the resolver do: nothing but counted refusals and bounded answers.

Every entry point that takes a client's bytes is fed the attack packets named in the issue that
opened this file (a pointer loop, ANY, large EDNS sizes) and arbitrary mutations of real queries.
"""

from __future__ import annotations

import logging
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns import wire
from dnsguard.dns.resolver import LATER, OUTAGE_LOG_INTERVAL
from tests.unit.test_dns_wire import mutated, pointer_loop_query
from tests.unit.test_resolver import make, parse, query


def edns(name: str, qtype: str = "A", payload: int = 4096) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.add_ar(EDNS0(udp_len=payload))
    return bytes(record.pack())


def test_a_pointer_loop_gets_formerr_and_is_counted() -> None:
    resolver, upstreams, _ = make()
    reply = resolver.answer_now(pointer_loop_query(), "192.0.2.1")
    assert isinstance(reply, bytes) and parse(reply).header.rcode == RCODE.FORMERR
    assert resolver.stats.malformed == {"records": 1}
    assert upstreams.asked == []


def test_any_is_answered_locally_per_rfc_8482() -> None:
    resolver, upstreams, _ = make()
    for _ in range(2):  # the second takes the remembered plan
        reply = resolver.answer_now(edns("example.org", "ANY"), "192.0.2.1")
        assert isinstance(reply, bytes)
        answer = parse(reply)
        assert [QTYPE[r.rtype] for r in answer.rr] == ["HINFO"]
    assert upstreams.asked == []
    assert resolver.stats.queries == {("rewritten", "default"): 2}


def test_a_blocked_name_asked_with_any_is_still_blocked() -> None:
    resolver, _, _ = make()
    reply = resolver.answer_now(query("x.ads.example", "ANY"), "192.0.2.1")
    assert isinstance(reply, bytes) and resolver.stats.blocked_by_list == {"ads": 1}


async def test_udp_replies_are_capped_at_the_configured_size_whatever_the_client_asks() -> None:
    resolver, upstreams, _ = make()
    upstreams.many["big.example"] = 100  # 100 A records: 1.6 KB, more than 1232
    message = edns("big.example", payload=4096)
    assert resolver.answer_now(message, "192.0.2.1") is LATER
    first = await resolver.answer_later(message, "192.0.2.1", False)
    assert first is not None and len(first) <= 1232 and parse(first).header.tc
    cached = resolver.answer_now(message, "192.0.2.1")
    assert isinstance(cached, bytes) and len(cached) <= 1232 and parse(cached).header.tc
    over_tcp = resolver.answer_now(message, "192.0.2.1", tcp=True)
    assert isinstance(over_tcp, bytes) and len(parse(over_tcp).rr) == 100
    resolver.max_udp_size = 4096
    resolver.forget_plans()
    whole = resolver.answer_now(message, "192.0.2.1")
    assert isinstance(whole, bytes) and not parse(whole).header.tc


async def test_an_upstream_outage_is_answered_with_an_extended_error_and_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver, upstreams, clock = make()
    resolver.serve_stale = False
    upstreams.fail = True
    caplog.set_level(logging.WARNING, logger="dnsguard.resolver")
    for i in range(1000):
        message = edns(f"n{i}.example")
        reply = await resolver.answer_later(message, "192.0.2.1", False)
        assert reply is not None
        answer = parse(reply)
        assert answer.header.rcode == RCODE.SERVFAIL
        (option,) = answer.ar[0].rdata
        assert option.code == 15 and option.data[:2] == struct.pack("!H", wire.EDE_NO_REACHABLE_AUTHORITY)
    assert resolver.stats.upstream_failures == 1000
    assert len(caplog.records) == 1
    clock[0] += OUTAGE_LOG_INTERVAL
    await resolver.answer_later(edns("later.example"), "192.0.2.1", False)
    assert len(caplog.records) == 2 and "1000 queries" in caplog.records[1].getMessage()  # 999 + this one


def test_a_query_with_a_tsig_like_additional_record_is_read_without_dnslib() -> None:
    record = DNSRecord.question("signed.example")
    record.add_ar(RR("key.example", QTYPE.TXT, rdata=TXT("mac")))
    resolver, _, _ = make()
    assert resolver.answer_now(bytes(record.pack()), "192.0.2.1") is LATER


class EchoUpstreams:
    """An upstream that sends the query back as its reply (QR and RA set), whatever the bytes."""

    async def query(self, data: bytes) -> bytes:
        return data[:2] + bytes([data[2] | 0x80, data[3] | 0x80]) + data[4:]

    async def close(self) -> None:
        pass


REAL_QUERIES = [query("www.example.org"), edns("x.ads.example"), pointer_loop_query()]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=700), *(mutated(q) for q in REAL_QUERIES)))
def test_answer_now_never_raises_on_any_bytes(data: bytes) -> None:
    resolver, _, _ = make()
    reply = resolver.answer_now(data, "192.0.2.1")
    if isinstance(reply, bytes):
        assert struct.unpack_from("!H", reply)[0] == struct.unpack_from("!H", data)[0]
        assert reply[2] & 0x80  # QR
    total = sum(resolver.stats.malformed.values())
    assert set(resolver.stats.malformed) <= set(wire.MALFORMED_REASONS)
    assert total <= 1


@settings(max_examples=300, deadline=None)
@given(st.one_of(*(mutated(q) for q in REAL_QUERIES[:2])))
async def test_answer_later_never_raises_on_what_answer_now_sent_there(data: bytes) -> None:
    resolver, _, _ = make()
    resolver.upstreams = EchoUpstreams()  # type: ignore[assignment]
    if resolver.answer_now(data, "192.0.2.1") is LATER:
        reply = await resolver.answer_later(data, "192.0.2.1", False)
        assert reply is None or reply[:2] == data[:2]
