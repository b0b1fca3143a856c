"""The upstream transports against real servers on loopback: UDP, TCP, DoT and DoH.

These test the edge: sockets, TLS, HTTP and the mapping of their failures to dnsguard's errors. Nothing here
asserts how long something took; the group's choice of upstreams, failover, racing and timing are tested on
a virtual clock with in-memory upstreams in test_dns_upstream_group.py.
"""

from __future__ import annotations

import asyncio
import socket
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
from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns.upstream_errors import (
    AllUpstreamsFailedError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUsageError,
)
from dnsguard.dns.upstream_spec import Scheme, UpstreamSpec, UpstreamSpecError, parse_upstream
from dnsguard.errors import ConfigError, DnsguardError, FormError, NetworkError
from dnsguard.net.upstream import (
    HttpsUpstream,
    TcpUpstream,
    TlsUpstream,
    TransportOptions,
    UdpUpstream,
    UpstreamGroup,
    create_upstream,
)
from dnsguard.net.upstream.fake import VirtualClockLoop, run_on_virtual_clock


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


def test_udp_resends_at_half_the_timeout_and_gives_up_at_the_timeout() -> None:
    # Nothing reads this socket, so nothing answers and no ICMP error comes back: only timers matter, and on
    # a virtual clock they fire at exactly their time.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))
        silent.setblocking(False)

        async def main(loop: VirtualClockLoop) -> None:
            upstream = UdpUpstream(LOOPBACK, silent.getsockname()[1])
            started = loop.time()
            retransmits: dict[float, int] = {}
            for after in (0.199, 0.201, 0.399):
                loop.call_at(
                    started + after, lambda t=after: retransmits.setdefault(t, upstream.counters.retransmits)
                )
            try:
                with pytest.raises(UpstreamTimeoutError):
                    await upstream.query(make_query(), 0.4)
            finally:
                await upstream.close()
            assert loop.time() - started == pytest.approx(0.4)
            assert retransmits == {0.199: 0, 0.201: 1, 0.399: 1}

        run_on_virtual_clock(main)
        datagrams = [silent.recv(512), silent.recv(512)]
        with pytest.raises(BlockingIOError):
            silent.recv(512)
    assert datagrams[0] == datagrams[1]  # the same ID: a late reply to the first still counts


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


async def test_udp_retransmits_once_with_the_same_id(server: ScriptedDnsServer) -> None:
    server.drop_first = 1
    upstream = UdpUpstream(LOOPBACK, server.port)
    try:
        reply = await upstream.query(make_query(), 0.4)
    finally:
        await upstream.close()
    # The reply to the resent datagram counts; when the resend happens is tested on a virtual clock below.
    assert answer_of(reply) == "192.0.2.1"
    assert [seen.transport for seen in server.log] == ["udp", "udp"]
    assert server.log[0].query_id == server.log[1].query_id
    assert upstream.counters.retransmits == 1


async def test_udp_times_out_when_nothing_answers(server: ScriptedDnsServer) -> None:
    server.drop = True
    upstream = UdpUpstream(LOOPBACK, server.port)
    try:
        with pytest.raises(UpstreamTimeoutError) as caught:
            await upstream.query(make_query(), 0.2)
    finally:
        await upstream.close()
    assert isinstance(caught.value, NetworkError)
    assert len(server.log) == 2


async def test_udp_refused_port_fails_fast() -> None:
    upstream = UdpUpstream(LOOPBACK, closed_udp_port())
    try:
        with pytest.raises(UpstreamError, match="UDP error") as caught:
            await upstream.query(make_query(), 2.0)
    finally:
        await upstream.close()
    # The ICMP error ended the query, not its timeout.
    assert not isinstance(caught.value, UpstreamTimeoutError)


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
        # Polled rather than slept for: how soon the close is seen depends on the machine's load, and
        # the test is about whether it happens, not when.
        for _ in range(500):
            if server.tcp_closed:
                break
            await asyncio.sleep(0.01)
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


def test_settings_that_cannot_work_are_caller_misuse() -> None:
    for bad in ({"max_in_flight": 0}, {"idle_timeout": 0.0}, {"doh_method": "PUT"}):
        with pytest.raises(UpstreamUsageError) as caught:
            TransportOptions(**bad)  # type: ignore[arg-type]
        assert isinstance(caught.value, DnsguardError) and isinstance(caught.value, ValueError)
        assert not isinstance(caught.value, UpstreamError)  # not a remote fault: nothing failover could fix
    with pytest.raises(UpstreamUsageError):
        UpstreamGroup([UdpUpstream(LOOPBACK, 53)], timeout=0)


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
