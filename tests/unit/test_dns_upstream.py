"""The upstream layer against real servers on loopback: UDP, TCP, DoT, DoH, and groups over them."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from dns_test_server import (
    LOOPBACK,
    DohTestServer,
    ScriptedDnsServer,
    TlsMaterial,
    make_tls_material,
)
from dnslib import EDNS0, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns.upstream import (
    AllUpstreamsFailedError,
    HealthPolicy,
    HttpsUpstream,
    Outcome,
    Scheme,
    Strategy,
    TcpUpstream,
    TlsUpstream,
    TransportOptions,
    UdpUpstream,
    UpstreamBusyError,
    UpstreamError,
    UpstreamGroup,
    UpstreamSpec,
    UpstreamSpecError,
    UpstreamTimeoutError,
    create_upstream,
    parse_upstream,
)
from dnsguard.errors import ConfigError, FormError, NetworkError


def make_query(
    name: str = "www.example.test", qtype: str = "A", query_id: int = 0x1234, edns: str | None = None
) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = query_id
    if edns is not None:
        record.add_ar(EDNS0(flags=edns, udp_len=1232))
    return bytes(record.pack())


def answer_of(reply: bytes) -> str:
    """The first A record's address in a reply."""
    return str(DNSRecord.parse(reply).rr[0].rdata)


def reply_id(reply: bytes) -> int:
    return int.from_bytes(reply[:2], "big")


def closed_udp_port() -> int:
    """A loopback UDP port with nothing listening: queries to it draw ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[ScriptedDnsServer]:
    dns = await ScriptedDnsServer(answer_ip="192.0.2.1").start()
    yield dns
    await dns.stop()


@pytest.fixture
async def other_server() -> AsyncIterator[ScriptedDnsServer]:
    dns = await ScriptedDnsServer(answer_ip="192.0.2.2").start()
    yield dns
    await dns.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


# ------------------------------------------------------------------------------------------------------------
# Spec parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.53", UpstreamSpec(Scheme.UDP, "198.51.100.53", 53)),
        ("198.51.100.53:5353", UpstreamSpec(Scheme.UDP, "198.51.100.53", 5353)),
        ("2001:db8::53", UpstreamSpec(Scheme.UDP, "2001:db8::53", 53)),
        ("[2001:db8::53]:5353", UpstreamSpec(Scheme.UDP, "2001:db8::53", 5353)),
        ("udp:198.51.100.53", UpstreamSpec(Scheme.UDP, "198.51.100.53", 53)),
        ("tcp+udp:[2001:DB8::53]", UpstreamSpec(Scheme.UDP, "2001:db8::53", 53)),
        ("tcp:198.51.100.53:5300", UpstreamSpec(Scheme.TCP, "198.51.100.53", 5300)),
        ("tcp://198.51.100.53", UpstreamSpec(Scheme.TCP, "198.51.100.53", 53)),
        ("tls:dns.example:853", UpstreamSpec(Scheme.TLS, "dns.example", 853)),
        ("tcp-tls:dns.example", UpstreamSpec(Scheme.TLS, "dns.example", 853)),
        ("tls://1.1.1.1", UpstreamSpec(Scheme.TLS, "1.1.1.1", 853)),
        (
            "tls:dns.example#198.51.100.1,2001:db8::1",
            UpstreamSpec(Scheme.TLS, "dns.example", 853, addresses=("198.51.100.1", "2001:db8::1")),
        ),
        ("https://dns.example/dns-query", UpstreamSpec(Scheme.HTTPS, "dns.example", 443, "/dns-query")),
        ("https://dns.example", UpstreamSpec(Scheme.HTTPS, "dns.example", 443, "/dns-query")),
        ("https://dns.example:8443/q?x=1", UpstreamSpec(Scheme.HTTPS, "dns.example", 8443, "/q?x=1")),
        (
            "https://dns.example/dns-query#198.51.100.1",
            UpstreamSpec(Scheme.HTTPS, "dns.example", 443, "/dns-query", ("198.51.100.1",)),
        ),
        ("  HTTPS://[2001:db8::1]/dns-query ", UpstreamSpec(Scheme.HTTPS, "2001:db8::1", 443, "/dns-query")),
    ],
)
def test_spec_parses(text: str, expected: UpstreamSpec) -> None:
    assert parse_upstream(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("dns.example", "plain DNS needs an IP address"),
        ("tcp:dns.example:53", "plain DNS needs an IP address"),
        ("198.51.100.53:0", "port '0'"),
        ("198.51.100.53:65536", "port '65536'"),
        ("198.51.100.53:dns", "port 'dns'"),
        ("[2001:db8::53", "expected [IPv6 address]"),
        ("[2001:db8::53]x", "unexpected 'x'"),
        ("2001:db8::zz", "not an IPv6 address"),
        ("quic:dns.example", "unsupported protocol 'quic'"),
        ("sdns://AgcAAAAAAAAA", "unsupported protocol 'sdns'"),
        ("http://dns.example/dns-query", "needs https://"),
        ("https:///dns-query", "missing host"),
        ("https://user:pw@dns.example/", "credentials"),
        ("tls:dns.example#", "empty pinned address"),
        ("tls:dns.example#not-an-ip", "is not an IP address"),
        ("tls:198.51.100.1#198.51.100.2", "only make sense for a host name"),
        ("tls:bad_host!:853", "neither an IP address nor a host name"),
        ("tls:-bad.example", "neither an IP address nor a host name"),
        ("198.51.100.53 198.51.100.54", "whitespace"),
    ],
)
def test_spec_errors_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(UpstreamSpecError) as caught:
        parse_upstream(text, file="dnsguard.yaml", line=7, key="upstreams.groups.default")
    message = str(caught.value)
    assert reason in message
    assert message.startswith("dnsguard.yaml:7: upstreams.groups.default: bad upstream")
    assert isinstance(caught.value, ConfigError)


@settings(max_examples=50, deadline=None)
@given(
    scheme=st.sampled_from([Scheme.UDP, Scheme.TCP, Scheme.TLS]),
    address=st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
    port=st.integers(min_value=1, max_value=65535),
)
def test_spec_name_parses_back_to_the_same_spec(scheme: Scheme, address: object, port: int) -> None:
    spec = UpstreamSpec(scheme, str(address), port)
    assert parse_upstream(spec.name) == spec
    assert parse_upstream(str(spec)) == spec


@settings(max_examples=30, deadline=None)
@given(
    label=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
    port=st.integers(min_value=1, max_value=65535),
    pins=st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=3),
)
def test_doh_spec_with_pins_round_trips(label: str, port: int, pins: list[str]) -> None:
    spec = UpstreamSpec(Scheme.HTTPS, f"{label}.example", port, "/dns-query", tuple(pins))
    assert parse_upstream(str(spec)) == spec


def test_create_upstream_picks_the_transport() -> None:
    assert isinstance(create_upstream("198.51.100.53"), UdpUpstream)
    assert isinstance(create_upstream("tcp:198.51.100.53"), TcpUpstream)
    assert isinstance(create_upstream("tls:dns.example#198.51.100.1"), TlsUpstream)
    doh = create_upstream("https://dns.example/dns-query#198.51.100.1")
    assert isinstance(doh, HttpsUpstream)
    assert doh.name == "https://dns.example/dns-query"


# ------------------------------------------------------------------------------------------------------------
# UDP


async def test_udp_rewrites_the_id_on_the_wire_and_restores_it(server: ScriptedDnsServer) -> None:
    upstream = UdpUpstream(LOOPBACK, server.port)
    try:
        replies = [await upstream.query(make_query(query_id=0x1234), 1.0) for _ in range(8)]
    finally:
        await upstream.close()
    assert all(reply_id(reply) == 0x1234 for reply in replies)
    assert all(answer_of(reply) == "192.0.2.1" for reply in replies)
    seen_ids = {seen.query_id for seen in server.log}
    assert seen_ids != {0x1234}  # 8 random IDs all equal to the client's: probability 2**-128
    assert upstream.counters.connections == 1  # one socket, reused


async def test_udp_ignores_replies_with_a_wrong_id_or_question(server: ScriptedDnsServer) -> None:
    server.spoof = True
    upstream = UdpUpstream(LOOPBACK, server.port)
    try:
        reply = await upstream.query(make_query(), 1.0)
    finally:
        await upstream.close()
    # The forged replies carried 203.0.113.x; the rogue one from another port never reached the connected
    # socket.
    assert answer_of(reply) == "192.0.2.1"
    assert upstream.counters.unmatched_replies == 2


async def test_udp_retransmits_once_after_half_the_timeout(server: ScriptedDnsServer) -> None:
    server.drop_first = 1
    upstream = UdpUpstream(LOOPBACK, server.port)
    started = time.perf_counter()
    try:
        reply = await upstream.query(make_query(), 0.4)
    finally:
        await upstream.close()
    assert answer_of(reply) == "192.0.2.1"
    assert 0.19 <= time.perf_counter() - started < 0.4
    assert [seen.transport for seen in server.log] == ["udp", "udp"]
    assert server.log[0].query_id == server.log[1].query_id
    assert upstream.counters.retransmits == 1


async def test_udp_times_out_when_nothing_answers(server: ScriptedDnsServer) -> None:
    server.drop = True
    upstream = UdpUpstream(LOOPBACK, server.port)
    started = time.perf_counter()
    try:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await upstream.query(make_query(), 0.2)
    finally:
        await upstream.close()
    assert 0.2 <= time.perf_counter() - started < 0.5
    assert isinstance(caught.value, NetworkError)
    assert len(server.log) == 2


async def test_udp_refused_port_fails_fast() -> None:
    upstream = UdpUpstream(LOOPBACK, closed_udp_port())
    started = time.perf_counter()
    try:
        with pytest.raises(UpstreamError, match="UDP error"):
            await upstream.query(make_query(), 2.0)
    finally:
        await upstream.close()
    assert time.perf_counter() - started < 0.5


async def test_truncated_udp_reply_is_asked_again_over_tcp(server: ScriptedDnsServer) -> None:
    server.truncate_udp = True
    upstream = UdpUpstream(LOOPBACK, server.port)
    try:
        reply = await upstream.query(make_query(query_id=0xBEEF), 1.0)
    finally:
        await upstream.close()
    assert reply_id(reply) == 0xBEEF
    assert not DNSRecord.parse(reply).header.tc
    assert answer_of(reply) == "192.0.2.1"
    assert [seen.transport for seen in server.log] == ["udp", "tcp"]
    assert upstream.counters.truncated_retries == 1


async def test_udp_rotates_its_socket_and_drains_the_old_one(server: ScriptedDnsServer) -> None:
    upstream = UdpUpstream(LOOPBACK, server.port, options=TransportOptions(udp_rotate_after=2))
    try:
        replies = await asyncio.gather(*(upstream.query(make_query(query_id=n), 1.0) for n in range(5)))
        replies.append(await upstream.query(make_query(query_id=5), 1.0))
    finally:
        await upstream.close()
    assert [reply_id(reply) for reply in replies] == list(range(6))
    assert upstream.counters.connections >= 3


async def test_udp_in_flight_limit_is_enforced(server: ScriptedDnsServer) -> None:
    server.delay = 0.2
    upstream = UdpUpstream(LOOPBACK, server.port, options=TransportOptions(max_in_flight=2))
    try:
        results = await asyncio.gather(
            *(upstream.query(make_query(query_id=n), 1.0) for n in range(3)), return_exceptions=True
        )
    finally:
        await upstream.close()
    assert sum(isinstance(result, UpstreamBusyError) for result in results) == 1
    assert sum(isinstance(result, bytes) for result in results) == 2


async def test_malformed_query_is_a_form_error(server: ScriptedDnsServer) -> None:
    upstream = UdpUpstream(LOOPBACK, server.port)
    with pytest.raises(FormError):
        await upstream.query(b"\x12\x34" + b"\x00" * 8, 1.0)
    with pytest.raises(FormError):
        await upstream.query(make_query()[:-3], 1.0)
    await upstream.close()
    assert server.log == []


# ------------------------------------------------------------------------------------------------------------
# TCP and TLS


async def test_tcp_pipelines_on_one_connection_and_matches_out_of_order_replies(
    server: ScriptedDnsServer,
) -> None:
    server.delays = {"slow.example.test": 0.3, "medium.example.test": 0.15, "fast.example.test": 0.0}
    upstream = TcpUpstream(LOOPBACK, server.port)
    names = ["slow.example.test", "medium.example.test", "fast.example.test"]
    try:
        replies = await asyncio.gather(
            *(upstream.query(make_query(name, query_id=n), 1.0) for n, name in enumerate(names))
        )
        again = await upstream.query(make_query("fast.example.test", query_id=99), 1.0)
    finally:
        await upstream.close()
    assert server.reply_order[:3] == ["fast.example.test", "medium.example.test", "slow.example.test"]
    for n, (name, reply) in enumerate(zip(names, replies, strict=True)):
        assert reply_id(reply) == n
        assert str(DNSRecord.parse(reply).q.qname).rstrip(".") == name
    assert reply_id(again) == 99
    assert server.tcp_connections == 1
    assert {seen.transport for seen in server.log} == {"tcp"}


async def test_tcp_reconnects_after_the_server_closes(server: ScriptedDnsServer) -> None:
    server.close_after_reply = True
    upstream = TcpUpstream(LOOPBACK, server.port)
    try:
        first = await upstream.query(make_query(query_id=1), 1.0)
        await asyncio.sleep(0.05)
        second = await upstream.query(make_query(query_id=2), 1.0)
        # Back to back: a query may be written into a connection the server is closing; it is asked again
        # on a fresh connection (RFC 7766 §6.2.1) instead of failing.
        rest = [await upstream.query(make_query(query_id=n), 1.0) for n in range(3, 8)]
    finally:
        await upstream.close()
    assert [reply_id(reply) for reply in [first, second, *rest]] == list(range(1, 8))
    assert server.tcp_connections >= 7


async def test_tcp_closes_an_idle_connection(server: ScriptedDnsServer) -> None:
    upstream = TcpUpstream(LOOPBACK, server.port, options=TransportOptions(idle_timeout=0.05))
    try:
        await upstream.query(make_query(), 1.0)
        await asyncio.sleep(0.2)
        assert server.tcp_closed == 1
        await upstream.query(make_query(), 1.0)
    finally:
        await upstream.close()
    assert server.tcp_connections == 2


async def test_tcp_timeout_and_refused_connection(server: ScriptedDnsServer) -> None:
    server.drop = True
    upstream = TcpUpstream(LOOPBACK, server.port)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await upstream.query(make_query(), 0.1)
        # Nothing came back on that connection while we waited: it may be wedged, so the next query opens
        # a new one.
        server.drop = False
        assert answer_of(await upstream.query(make_query(), 1.0)) == "192.0.2.1"
    finally:
        await upstream.close()
    assert server.tcp_connections == 2
    await server.stop()
    refused = TcpUpstream(LOOPBACK, server.port)
    with pytest.raises(UpstreamError, match="cannot connect"):
        await refused.query(make_query(), 1.0)


async def test_dot_round_trip_with_pinned_address(tls: TlsMaterial) -> None:
    dns = await ScriptedDnsServer(answer_ip="192.0.2.53").start(tls=tls.server_context, udp=False)
    options = TransportOptions(ca_file=str(tls.ca_file))
    upstream = create_upstream(f"tls:dns.test:{dns.port}#{LOOPBACK}", options)
    tls.server_names.clear()
    try:
        replies = await asyncio.gather(*(upstream.query(make_query(query_id=n), 2.0) for n in range(3)))
    finally:
        await upstream.close()
        await dns.stop()
    assert tls.server_names == ["dns.test"]  # SNI carries the name, the TCP connection went to the pin
    assert [reply_id(reply) for reply in replies] == [0, 1, 2]
    assert answer_of(replies[0]) == "192.0.2.53"
    assert dns.tcp_connections == 1
    assert {seen.transport for seen in dns.log} == {"tls"}


async def test_dot_rejects_a_certificate_for_another_name(tls: TlsMaterial) -> None:
    dns = await ScriptedDnsServer().start(tls=tls.server_context, udp=False)
    upstream = TlsUpstream(
        "other.test", dns.port, addresses=[LOOPBACK], options=TransportOptions(ca_file=str(tls.ca_file))
    )
    untrusted = TlsUpstream("dns.test", dns.port, addresses=[LOOPBACK])  # system CAs do not know our CA
    try:
        with pytest.raises(UpstreamError, match="certificate"):
            await upstream.query(make_query(), 2.0)
        with pytest.raises(UpstreamError, match="certificate"):
            await untrusted.query(make_query(), 2.0)
    finally:
        await dns.stop()
    assert dns.log == []


# ------------------------------------------------------------------------------------------------------------
# DNS over HTTPS


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_doh_round_trip_sends_id_zero_and_restores_the_id(
    tls: TlsMaterial, method: Literal["GET", "POST"]
) -> None:
    dns = ScriptedDnsServer(answer_ip="192.0.2.80")
    doh = await DohTestServer(dns, tls.server_context).start()
    options = TransportOptions(ca_file=str(tls.ca_file), doh_method=method)
    upstream = create_upstream(f"https://dns.test:{doh.port}/dns-query#{LOOPBACK}", options)
    try:
        replies = await asyncio.gather(
            *(upstream.query(make_query(query_id=0x4000 + n), 2.0) for n in range(8))
        )
        connections = upstream.counters.connections
        replies.append(await upstream.query(make_query(query_id=0x4008), 2.0))
    finally:
        await upstream.close()
        await doh.stop()
    assert [reply_id(reply) for reply in replies] == [0x4000 + n for n in range(9)]
    assert answer_of(replies[0]) == "192.0.2.80"
    assert doh.wire_ids == [0] * 9
    assert 1 <= connections <= options.max_connections  # the pool bounds connections
    assert upstream.counters.connections == connections  # and keeps them alive for the next query
    assert {seen.transport for seen in dns.log} == {f"doh-{method.lower()}"}


async def test_doh_http_error_and_timeout(tls: TlsMaterial) -> None:
    dns = ScriptedDnsServer()
    doh = await DohTestServer(dns, tls.server_context).start()
    options = TransportOptions(ca_file=str(tls.ca_file))
    wrong_path = HttpsUpstream(f"https://dns.test:{doh.port}/nope", addresses=[LOOPBACK], options=options)
    upstream = HttpsUpstream(f"https://dns.test:{doh.port}/dns-query", addresses=[LOOPBACK], options=options)
    try:
        with pytest.raises(UpstreamError, match="HTTP status 404"):
            await wrong_path.query(make_query(), 2.0)
        dns.drop = True
        with pytest.raises(UpstreamTimeoutError):
            await upstream.query(make_query(), 0.2)
    finally:
        await wrong_path.close()
        await upstream.close()
        await doh.stop()


# ------------------------------------------------------------------------------------------------------------
# Socket hook


async def test_socket_setup_and_local_address_apply_to_every_transport(
    server: ScriptedDnsServer, tls: TlsMaterial
) -> None:
    made: list[tuple[int, int]] = []

    def setup(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # stands in for SO_MARK, which needs root
        made.append((sock.family, sock.type))

    options = TransportOptions(socket_setup=setup, local_addr=(LOOPBACK, 0), ca_file=str(tls.ca_file))
    doh = await DohTestServer(ScriptedDnsServer(), tls.server_context).start()
    upstreams = [
        UdpUpstream(LOOPBACK, server.port, options=options),
        TcpUpstream(LOOPBACK, server.port, options=options),
        HttpsUpstream(f"https://dns.test:{doh.port}/dns-query", addresses=[LOOPBACK], options=options),
    ]
    try:
        for upstream in upstreams:
            await upstream.query(make_query(), 2.0)
    finally:
        for upstream in upstreams:
            await upstream.close()
        await doh.stop()
    assert made == [
        (socket.AF_INET, socket.SOCK_DGRAM),
        (socket.AF_INET, socket.SOCK_STREAM),
        (socket.AF_INET, socket.SOCK_STREAM),
    ]


# ------------------------------------------------------------------------------------------------------------
# Groups


def udp(dns: ScriptedDnsServer) -> UdpUpstream:
    return UdpUpstream(LOOPBACK, dns.port, name=f"udp-{dns.answer_ip}")


async def test_strict_asks_in_order_and_fails_over(
    server: ScriptedDnsServer, other_server: ScriptedDnsServer
) -> None:
    async with UpstreamGroup([udp(server), udp(other_server)], strategy="strict", timeout=1.0) as group:
        assert answer_of(await group.query(make_query("one.test"))) == "192.0.2.1"
        assert other_server.log == []
        server.drop = True
        started = time.perf_counter()
        reply = await group.query(make_query("two.test", query_id=77))
        elapsed = time.perf_counter() - started
        stats = group.stats()
    assert answer_of(reply) == "192.0.2.2"
    assert reply_id(reply) == 77
    assert 0.5 <= elapsed < 0.9  # the first upstream had half the budget
    assert [seen.qname for seen in other_server.log] == ["two.test"]
    assert (stats[0].queries, stats[0].timeouts, stats[0].consecutive_failures) == (2, 1, 1)
    assert stats[0].last_error is not None and "no reply" in stats[0].last_error
    assert (stats[1].queries, stats[1].failures) == (1, 0)
    assert stats[1].latency_ewma is not None and stats[1].latency_ewma < 0.1


async def test_servfail_fails_over_but_is_returned_when_everyone_says_so(
    server: ScriptedDnsServer, other_server: ScriptedDnsServer
) -> None:
    server.rcode = RCODE.SERVFAIL
    async with UpstreamGroup([udp(server), udp(other_server)], strategy="strict") as group:
        assert answer_of(await group.query(make_query("a.test"))) == "192.0.2.2"
        other_server.rcode = RCODE.REFUSED
        last_resort = await group.query(make_query("b.test", query_id=5))
        stats = group.stats()
    assert DNSRecord.parse(last_resort).header.rcode == RCODE.SERVFAIL
    assert reply_id(last_resort) == 5
    assert stats[0].servfails == 2
    # SERVFAIL is about the name, not the upstream: no backoff. REFUSED is about the upstream.
    assert stats[0].backoff_until == 0.0
    assert stats[1].backoff_until > 0.0


async def test_all_upstreams_failing_raises_with_every_error() -> None:
    group = UpstreamGroup(
        [
            UdpUpstream(LOOPBACK, closed_udp_port(), name="a"),
            UdpUpstream(LOOPBACK, closed_udp_port(), name="b"),
        ],
        strategy="strict",
        timeout=1.0,
    )
    async with group:
        with pytest.raises(AllUpstreamsFailedError) as caught:
            await group.query(make_query())
    assert [error.upstream for error in caught.value.errors] == ["a", "b"]


async def test_group_deadline_bounds_the_whole_query(server: ScriptedDnsServer) -> None:
    server.drop = True
    upstreams = [udp(server), UdpUpstream(LOOPBACK, server.port, name="again")]
    async with UpstreamGroup(upstreams, strategy="strict", timeout=0.3, attempt_timeout=0.2) as group:
        started = time.perf_counter()
        with pytest.raises(AllUpstreamsFailedError):
            await group.query(make_query())
        assert time.perf_counter() - started < 0.5


async def test_parallel_best_returns_the_fast_answer(
    server: ScriptedDnsServer, other_server: ScriptedDnsServer
) -> None:
    server.delay = 0.5
    calls: list[tuple[str, float, Outcome]] = []
    group = UpstreamGroup(
        [udp(server), udp(other_server)],
        strategy=Strategy.PARALLEL_BEST,
        on_query=lambda *call: calls.append(call),
    )
    async with group:
        started = time.perf_counter()
        reply = await group.query(make_query())
        elapsed = time.perf_counter() - started
    assert answer_of(reply) == "192.0.2.2"
    assert elapsed < 0.4  # the slow one takes 0.5 s
    assert len(server.log) == len(other_server.log) == 1  # both were asked
    assert [(name, outcome) for name, _, outcome in calls] == [("udp-192.0.2.2", Outcome.OK)]
    assert 0 < calls[0][1] < 0.4


async def test_parallel_best_takes_the_good_answer_over_a_quick_servfail(
    server: ScriptedDnsServer, other_server: ScriptedDnsServer
) -> None:
    server.rcode = RCODE.SERVFAIL
    other_server.delay = 0.1
    async with UpstreamGroup([udp(server), udp(other_server)], strategy="parallel_best") as group:
        reply = await group.query(make_query())
    assert answer_of(reply) == "192.0.2.2"


async def test_random_spreads_queries_by_weight_and_fails_over(
    server: ScriptedDnsServer, other_server: ScriptedDnsServer
) -> None:
    group = UpstreamGroup(
        [udp(server), udp(other_server)], strategy="random", coalesce=False, rng=random.Random(1), timeout=0.4
    )
    async with group:
        for n in range(40):
            await group.query(make_query(f"n{n}.test"))
        # Both answer in about the same time on loopback, so both get a fair share.
        assert len(server.log) >= 8 and len(other_server.log) >= 8
        assert len(server.log) + len(other_server.log) == 40
        server.drop = True
        for n in range(6):
            assert answer_of(await group.query(make_query(f"m{n}.test"))) == "192.0.2.2"


async def test_dead_upstream_backs_off_and_is_retried_later(other_server: ScriptedDnsServer) -> None:
    clock = FakeClock()
    dead = UdpUpstream(LOOPBACK, closed_udp_port(), name="dead")
    policy = HealthPolicy(backoff_initial=1.0, backoff_max=4.0)
    async with UpstreamGroup(
        [dead, udp(other_server)], strategy="strict", clock=clock, health=policy
    ) as group:

        def dead_stats() -> tuple[int, int, float]:
            stats = group.stats()[0]
            return stats.queries, stats.consecutive_failures, stats.backoff_until

        await group.query(make_query("a.test"))
        assert dead_stats() == (1, 1, 1001.0)
        clock.now = 1000.5
        await group.query(make_query("b.test"))
        assert dead_stats() == (1, 1, 1001.0)  # resting: not asked
        clock.now = 1001.0
        await group.query(make_query("c.test"))
        assert dead_stats() == (2, 2, 1003.0)  # asked again, failed again: twice the backoff
        for now in (1003.0, 1007.0):
            clock.now = now
            await group.query(make_query(f"{now}.test"))
        assert dead_stats() == (4, 4, 1011.0)  # capped at backoff_max
        assert len(other_server.log) == 5


async def test_parallel_best_does_not_race_a_resting_upstream(other_server: ScriptedDnsServer) -> None:
    clock = FakeClock()
    dead = UdpUpstream(LOOPBACK, closed_udp_port(), name="dead")
    async with UpstreamGroup([dead, udp(other_server)], strategy="parallel_best", clock=clock) as group:
        for n in range(5):
            assert answer_of(await group.query(make_query(f"q{n}.test"))) == "192.0.2.2"
        assert group.stats()[0].queries == 1  # raced once, failed, then left alone while backing off
        clock.now += 1.0
        await group.query(make_query("later.test"))
        assert group.stats()[0].queries == 2  # back in the race once its backoff is over


async def test_resting_upstreams_are_still_a_last_resort(server: ScriptedDnsServer) -> None:
    clock = FakeClock()
    async with UpstreamGroup([udp(server)], clock=clock, timeout=0.4) as group:
        server.drop = True
        with pytest.raises(AllUpstreamsFailedError):
            await group.query(make_query())
        assert group.stats()[0].backoff_until > clock.now
        server.drop = False
        assert answer_of(await group.query(make_query())) == "192.0.2.1"
        assert group.stats()[0].consecutive_failures == 0


async def test_identical_queries_in_flight_are_coalesced(server: ScriptedDnsServer) -> None:
    server.delay = 0.1
    async with UpstreamGroup([udp(server)]) as group:
        same = [
            make_query("Burst.Example.Test" if n == 7 else "burst.example.test", query_id=n)
            for n in range(30)
        ]
        other_type = make_query("burst.example.test", "AAAA", query_id=99)
        replies = await asyncio.gather(*(group.query(wire) for wire in [*same, other_type]))
    assert [reply_id(reply) for reply in replies] == [*range(30), 99]
    assert [(seen.qname, seen.qtype) for seen in server.log] == [
        ("burst.example.test", "A"),
        ("burst.example.test", "AAAA"),
    ]
    # Each asker sees its own spelling of the name (case-randomising stubs check it).
    assert str(DNSRecord.parse(replies[7]).q.qname) == "Burst.Example.Test."
    assert str(DNSRecord.parse(replies[8]).q.qname) == "burst.example.test."


async def test_coalescing_keeps_edns_and_dnssec_queries_apart(server: ScriptedDnsServer) -> None:
    server.delay = 0.1
    queries = [
        make_query(query_id=1),
        make_query(query_id=2, edns=""),
        make_query(query_id=3, edns=""),
        make_query(query_id=4, edns="do"),
    ]
    async with UpstreamGroup([udp(server)]) as group:
        replies = await asyncio.gather(*(group.query(wire) for wire in queries))
    assert [reply_id(reply) for reply in replies] == [1, 2, 3, 4]
    assert len(server.log) == 3  # no EDNS, EDNS, EDNS with DO; the two plain EDNS queries shared one


async def test_a_cancelled_asker_does_not_cancel_the_others(server: ScriptedDnsServer) -> None:
    server.delay = 0.1
    async with UpstreamGroup([udp(server)]) as group:
        impatient = asyncio.ensure_future(group.query(make_query(query_id=1)))
        patient = asyncio.ensure_future(group.query(make_query(query_id=2)))
        await asyncio.sleep(0.02)
        impatient.cancel()
        reply = await patient
    assert reply_id(reply) == 2
    assert len(server.log) == 1


async def test_a_failing_hook_does_not_break_resolution(server: ScriptedDnsServer) -> None:
    def broken_hook(name: str, duration: float, outcome: Outcome) -> None:
        raise RuntimeError("metrics backend down")

    async with UpstreamGroup([udp(server)], on_query=broken_hook) as group:
        assert answer_of(await group.query(make_query())) == "192.0.2.1"


async def test_group_bounds_distinct_queries_in_flight(server: ScriptedDnsServer) -> None:
    server.delay = 0.1
    async with UpstreamGroup([udp(server)], max_in_flight=2) as group:
        results = await asyncio.gather(
            *(group.query(make_query(f"d{n}.test")) for n in range(3)), return_exceptions=True
        )
    assert [type(result) for result in results] == [bytes, bytes, UpstreamBusyError]


async def test_group_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="at least one upstream"):
        UpstreamGroup([])
    with pytest.raises(ConfigError, match="unknown strategy 'fastest'"):
        UpstreamGroup([UdpUpstream(LOOPBACK, 53)], strategy="fastest")
    with pytest.raises(UpstreamSpecError):
        UdpUpstream("dns.example")


async def test_group_from_specs_over_mixed_transports(server: ScriptedDnsServer, tls: TlsMaterial) -> None:
    dot = await ScriptedDnsServer(answer_ip="192.0.2.53").start(tls=tls.server_context, udp=False)
    options = TransportOptions(ca_file=str(tls.ca_file))
    specs = [f"tls:dns.test:{dot.port}#{LOOPBACK}", f"{LOOPBACK}:{server.port}"]
    try:
        async with UpstreamGroup.from_specs(specs, options=options, strategy="strict") as group:
            assert answer_of(await group.query(make_query())) == "192.0.2.53"
            assert [upstream.name for upstream in group.upstreams] == [
                f"tls:dns.test:{dot.port}",
                f"udp:{LOOPBACK}:{server.port}",
            ]
    finally:
        await dot.stop()
