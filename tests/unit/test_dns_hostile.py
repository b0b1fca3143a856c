"""What a hostile client can make the resolver do: nothing but counted refusals and bounded answers.

Every entry point that takes a client's bytes is fed the attack packets named in the issue that
opened this file (a pointer loop, ANY, large EDNS sizes) and arbitrary mutations of real queries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct

import pytest
from dnslib import CNAME, EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns import wire
from dnsguard.dns.resolver import OUTAGE_LOG_INTERVAL, Forward
from dnsguard.dns.upstream_errors import UpstreamReplyError
from dnsguard.net.dns_listeners import ListenerStats, TcpSettings, UdpListener, _serve_tcp
from tests.unit.test_dns_server import closed_after, families, replies_waiting, udp_pair
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
    assert isinstance(resolver.answer_now(message, "192.0.2.1"), Forward)
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
    assert isinstance(resolver.answer_now(bytes(record.pack()), "192.0.2.1"), Forward)


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
    if isinstance(resolver.answer_now(data, "192.0.2.1"), Forward):
        reply = await resolver.answer_later(data, "192.0.2.1", False)
        assert reply is None or reply[:2] == data[:2]


class ReplayUpstreams:
    """A broken or hostile server answering with whatever bytes the test hands it, seen through what the
    upstream transports guarantee: a response with our question (RFC 5452) gets the asker's ID, anything
    else is no reply."""

    def __init__(self) -> None:
        self.reply = b""

    async def query(self, data: bytes) -> bytes:
        reply = self.reply
        end = wire.parse_query(data).question_end
        if len(reply) < end or not reply[2] & 0x80 or reply[4:6] != b"\x00\x01":
            raise UpstreamReplyError("replay", "not a reply to our question")
        if (
            reply[12 : end - 4].lower() != data[12 : end - 4].lower()
            or reply[end - 4 : end] != data[end - 4 : end]
        ):
            raise UpstreamReplyError("replay", "not a reply to our question")
        return data[:2] + reply[2:]

    async def close(self) -> None:
        pass


def good_reply(name: str) -> bytes:
    record = DNSRecord.question(name)
    reply = record.reply()
    reply.add_answer(RR(name, QTYPE.A, rdata=A("198.51.100.80"), ttl=300))
    reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME("t.example"), ttl=300))
    return bytes(reply.pack())


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=600), mutated(good_reply("up.example"))))
async def test_whatever_an_upstream_sends_the_client_gets_an_answer_and_the_cache_stays_sane(
    reply: bytes,
) -> None:
    resolver, _, _ = make()
    upstream = ReplayUpstreams()
    upstream.reply = reply
    resolver.upstreams = upstream  # type: ignore[assignment]
    message = query("up.example", ident=0x4242)
    for _ in range(2):  # the second may come from the cache
        answer = resolver.answer_now(message, "192.0.2.1")
        if isinstance(answer, Forward):
            answer = await resolver.answer_later(message, "192.0.2.1", False)
        assert answer is None or answer[:2] == b"\x42\x42"


class RecordingWriter:
    """The half of a TCP connection that _serve_tcp writes to."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("192.0.2.1", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        pass


def frames(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(st.one_of(*(mutated(q) for q in REAL_QUERIES)), max_size=5).map(frames),
        mutated(frames(REAL_QUERIES)),
    )
)
async def test_any_tcp_byte_stream_gets_framed_replies_and_a_closed_connection(stream: bytes) -> None:
    resolver, _, _ = make()
    resolver.upstreams = EchoUpstreams()  # type: ignore[assignment]
    reader = asyncio.StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    writer = RecordingWriter()
    stats = ListenerStats()
    await _serve_tcp(resolver.forwarder, stats, reader, writer, TcpSettings(idle_timeout=5))  # type: ignore[arg-type]
    assert writer.closed and stats.internal_errors == 0
    out = writer.data
    while out:  # every reply is one whole length-prefixed DNS response
        length = struct.unpack_from("!H", out)[0]
        assert 12 <= length <= len(out) - 2 and out[4] & 0x80
        out = out[2 + length :]


def hostile_datagrams(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes of any length up to 600, and real queries with bytes flipped, cut or added."""
    datagrams = []
    for _ in range(count):
        if rng.random() < 0.3:
            datagrams.append(rng.randbytes(rng.randrange(601)))
            continue
        message = bytearray(rng.choice(REAL_QUERIES))
        for _ in range(rng.randrange(1, 4)):
            action, where = rng.randrange(3), rng.randrange(len(message) + 1)
            if action == 0 and where < len(message):
                message[where] = rng.randrange(256)
            elif action == 1:
                del message[where:]
            else:
                message[where:where] = rng.randbytes(rng.randrange(1, 5))
        datagrams.append(bytes(message))
    return datagrams


@pytest.mark.parametrize(("family", "host"), list(families()), ids=lambda value: str(value))
async def test_hostile_datagrams_through_the_listeners_batches_are_answered_or_dropped(
    family: socket.AddressFamily, host: str
) -> None:
    # The path a LAN client's datagrams take in the daemon: a UDP listener (its wake-ups' single reads
    # and its recvmmsg and sendmmsg batches, compiled in CI) in front of the resolver and the forwarder.
    # Each wave is sent before the loop runs again, so most of it is read in batches.
    harness, _, _ = make()
    harness.upstreams = EchoUpstreams()  # any bytes the resolver forwards get a reply
    server, clients = udp_pair(family, host)
    stats = ListenerStats()
    listener = UdpListener(server, harness.forwarder, stats)
    rng = random.Random(37)
    sent = 0
    with closed_after(server, clients):
        listener.start(asyncio.get_running_loop())
        try:
            for wave in range(4):
                for index, datagram in enumerate(hostile_datagrams(rng, 100)):
                    clients[index % 2].sendto(datagram, server.getsockname())
                    sent += 1
                for _ in range(5000):
                    if stats.udp_queries == sent and not listener.pending:
                        break
                    await asyncio.sleep(0.001)
                assert stats.udp_queries == sent, f"wave {wave}: {stats.udp_queries} of {sent} read"
            assert stats.internal_errors == 0
            for client in clients[:2]:
                for reply in replies_waiting(client):
                    assert len(reply) >= 12 and reply[2] & 0x80  # a DNS response, whatever it answers
            clients[2].sendto(query("www.example.org", ident=0x0BAD), server.getsockname())
            reply = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, clients[2].recv, 512), 2
            )
            answer = parse(reply)
            assert answer.header.id == 0x0BAD and answer.header.rcode == RCODE.NOERROR
            assert str(answer.q.qname) == "www.example.org."
        finally:
            listener.close()
