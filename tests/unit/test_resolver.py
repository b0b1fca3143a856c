"""The resolver core without sockets: policy decisions to wire answers, cache, CNAME cloaking, stale."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from dnsguard.app.lists import build_sync
from dnsguard.config import Config, GroupConfig, ListConfig, RewriteConfig
from dnsguard.config.model import BlockingConfig
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.resolver import Forward, Resolver
from dnsguard.dns.upstream_errors import AllUpstreamsFailedError
from dnsguard.net.forwarding import Forwarder
from dnsguard.policy.engine import Policy


def query(name: str, qtype: str = "A", ident: int = 0x1234) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = ident
    return bytes(record.pack())


class FakeUpstreams:
    """Answers every name with 198.51.100.80, or a CNAME chain, or fails, as a test sets it."""

    def __init__(self) -> None:
        self.cnames: dict[str, str] = {}
        self.fail = False
        self.many: dict[str, int] = {}
        self.asked: list[str] = []

    async def query(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        name = str(request.q.qname).rstrip(".")
        self.asked.append(name)
        if self.fail:
            raise AllUpstreamsFailedError("upstreams", "all failed")  # type: ignore[call-arg]
        reply = request.reply()
        owner = name
        if name in self.cnames:
            from dnslib import CNAME

            reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(self.cnames[name]), ttl=300))
            owner = self.cnames[name]
        for i in range(self.many.get(name, 1)):
            reply.add_answer(RR(owner, QTYPE.A, rdata=A(f"198.51.100.{80 + i}"), ttl=300))
        return bytes(reply.pack())

    async def close(self) -> None:
        pass


class Harness:
    """The resolver core with a forwarder over fake upstreams, asked as the DNS listeners ask it.

    Attributes are the core's, except `upstreams` and `conditional`, which are the forwarder's.
    """

    def __init__(self, core: Resolver, upstreams: Any) -> None:
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "forwarder", Forwarder(core, upstreams))

    def __getattr__(self, name: str) -> Any:
        if name in ("upstreams", "conditional"):
            return getattr(self.forwarder, name)
        return getattr(self.core, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.forwarder if name in ("upstreams", "conditional") else self.core, name, value)

    async def answer_later(self, message: bytes, client: str, tcp: bool) -> bytes | None:
        """answer_now, and the upstream round trip when it gives a plan."""
        answer = self.core.answer_now(message, client, tcp)
        if isinstance(answer, Forward):
            return await self.forwarder.answer_later(answer)
        return answer


def make(mode: str = "null_ip", **extra: Any) -> tuple[Any, FakeUpstreams, list[float]]:
    config = Config(
        lists={
            "ads": ListConfig(sources=["||ads.example^\n||tracker.example^\n"]),
            "adult": ListConfig(sources=["||adult.example^\n"]),
        },
        groups={
            "default": GroupConfig(block=["ads"]),
            "kids": GroupConfig(clients=["192.0.2.32/27"], block=["ads", "adult"], safe_search=True),
        },
        blocking=BlockingConfig(mode=mode, **extra),  # type: ignore[arg-type]
        rewrites=[RewriteConfig(name="nas.home.arpa", answer=["192.0.2.50"])],
    )
    for group in config.groups.values():
        group.validate()
    built = build_sync(config)
    upstreams = FakeUpstreams()
    clock = [1000.0]
    resolver = Resolver(Policy(config, built.matcher), AnswerCache(max_entries=100), clock=lambda: clock[0])
    return Harness(resolver, upstreams), upstreams, clock


def parse(reply: object) -> DNSRecord:
    assert isinstance(reply, bytes)
    return DNSRecord.parse(reply)


@pytest.mark.parametrize(
    ("mode", "rcode", "answer"),
    [
        ("null_ip", RCODE.NOERROR, "0.0.0.0"),
        ("nxdomain", RCODE.NXDOMAIN, None),
        ("nodata", RCODE.NOERROR, None),
        ("refused", RCODE.REFUSED, None),
        ("custom_ip", RCODE.NOERROR, "192.0.2.99"),
    ],
)
def test_block_modes(mode: str, rcode: int, answer: str | None) -> None:
    resolver, upstreams, _ = make(mode, custom_ipv4="192.0.2.99")
    reply = parse(resolver.answer_now(query("x.ads.example"), "198.51.100.7"))
    assert reply.header.id == 0x1234 and reply.header.rcode == rcode
    assert [str(r.rdata) for r in reply.rr] == ([answer] if answer else [])
    assert upstreams.asked == []
    assert resolver.stats.blocked_by_list == {"ads": 1}


def test_group_of_the_client_decides() -> None:
    resolver, _, _ = make()
    assert isinstance(resolver.answer_now(query("adult.example"), "198.51.100.7"), Forward)
    assert [str(r.rdata) for r in parse(resolver.answer_now(query("adult.example"), "192.0.2.40")).rr] == [
        "0.0.0.0"
    ]


def test_rewrite_and_canary_are_answered_locally() -> None:
    resolver, upstreams, _ = make()
    assert [str(r.rdata) for r in parse(resolver.answer_now(query("nas.home.arpa"), "192.0.2.1")).rr] == [
        "192.0.2.50"
    ]
    assert (
        parse(resolver.answer_now(query("use-application-dns.net"), "192.0.2.1")).header.rcode
        == RCODE.NXDOMAIN
    )
    reverse = parse(resolver.answer_now(query("50.2.0.192.in-addr.arpa", "PTR"), "192.0.2.1"))
    assert [(QTYPE[r.rtype], str(r.rdata)) for r in reverse.rr] == [("PTR", "nas.home.arpa.")]
    assert upstreams.asked == []


async def test_forward_then_cache_then_count_down() -> None:
    resolver, upstreams, clock = make()
    assert isinstance(resolver.answer_now(query("www.example.org"), "192.0.2.1"), Forward)
    first = parse(await resolver.answer_later(query("www.example.org"), "192.0.2.1", False))
    assert [str(r.rdata) for r in first.rr] == ["198.51.100.80"]
    clock[0] += 100
    cached = parse(resolver.answer_now(query("www.example.org", ident=7), "192.0.2.1"))
    assert cached.header.id == 7 and cached.rr[0].ttl == 200
    assert upstreams.asked == ["www.example.org"]


async def test_cname_cloaking_is_blocked() -> None:
    resolver, upstreams, _ = make()
    upstreams.cnames["shop.example"] = "metrics.tracker.example"
    reply = parse(await resolver.answer_later(query("shop.example"), "192.0.2.1", False))
    assert [str(r.rdata) for r in reply.rr] == ["0.0.0.0"]
    assert resolver.stats.cname_blocked == 1
    # Counted and logged once, under the list that caught the target.
    assert resolver.stats.queries == {("blocked", "default"): 1}
    assert resolver.stats.blocked_by_list == {"ads": 1}
    assert [entry.reason for entry in resolver.recent_queries()] == ["ads"]


async def test_a_cname_another_group_blocks_is_not_served_to_it_from_the_cache() -> None:
    resolver, upstreams, _ = make()
    upstreams.cnames["video.example"] = "cdn.adult.example"
    allowed = parse(await resolver.answer_later(query("video.example"), "192.0.2.1", False))
    assert [str(r.rdata) for r in allowed.rr] == ["cdn.adult.example.", "198.51.100.80"]
    # The kids' group blocks the target: its clients get their own check, not the cached answer.
    assert isinstance(resolver.answer_now(query("video.example"), "192.0.2.40"), Forward)
    blocked = parse(await resolver.answer_later(query("video.example"), "192.0.2.40", False))
    assert [str(r.rdata) for r in blocked.rr] == ["0.0.0.0"]
    assert resolver.stats.blocked_by_list == {"adult": 1}


def test_the_doh_canary_is_counted_under_its_rule() -> None:
    resolver, _, _ = make()
    for _ in range(2):  # the second one takes the remembered-reply path
        resolver.answer_now(query("use-application-dns.net"), "192.0.2.1")
    assert resolver.stats.blocked_by_list == {"doh-canary": 2}
    assert resolver.stats.queries == {("blocked", "default"): 2}


async def test_safe_search_cname_with_target_addresses() -> None:
    resolver, _, _ = make()
    assert isinstance(resolver.answer_now(query("www.google.com"), "192.0.2.40"), Forward)
    reply = parse(await resolver.answer_later(query("www.google.com"), "192.0.2.40", False))
    assert [str(r.rdata) for r in reply.rr] == ["forcesafesearch.google.com.", "198.51.100.80"]


async def test_serve_stale_then_servfail() -> None:
    resolver, upstreams, clock = make()
    await resolver.answer_later(query("a.example"), "192.0.2.1", False)
    clock[0] += 3600
    upstreams.fail = True
    stale = parse(await resolver.answer_later(query("a.example"), "192.0.2.1", False))
    assert [str(r.rdata) for r in stale.rr] == ["198.51.100.80"] and stale.rr[0].ttl == 30
    never_seen = parse(await resolver.answer_later(query("b.example"), "192.0.2.1", False))
    assert never_seen.header.rcode == RCODE.SERVFAIL


def test_malformed_queries_are_answered_formerr_or_dropped() -> None:
    resolver, _, _ = make()
    two_questions = bytearray(query("a.example"))
    struct.pack_into("!H", two_questions, 4, 2)
    assert parse(resolver.answer_now(bytes(two_questions), "192.0.2.1")).header.rcode == RCODE.FORMERR
    assert resolver.answer_now(b"\x01", "192.0.2.1") is None
    assert resolver.stats.malformed == {"question": 1, "header": 1}


async def test_big_answer_is_truncated_over_udp_only() -> None:
    resolver, upstreams, _ = make()
    upstreams.many["big.example"] = 60
    over_udp = parse(await resolver.answer_later(query("big.example"), "192.0.2.1", False))
    assert over_udp.header.tc == 1 and not over_udp.rr
    over_tcp = parse(await resolver.answer_later(query("big.example"), "192.0.2.1", True))
    assert over_tcp.header.tc == 0 and len(over_tcp.rr) == 60


class NamedUpstreams(FakeUpstreams):
    """FakeUpstreams that answers every name with its own address, to tell groups apart."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    async def query(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        self.asked.append(str(request.q.qname).rstrip("."))
        reply = request.reply()
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.address), ttl=60))
        return bytes(reply.pack())


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("pc.home.arpa", "192.0.2.1"),
        ("a.b.lab.home.arpa", "192.0.2.2"),  # the longest zone wins
        ("home.arpa.example.org", "198.51.100.1"),
        ("printer", "192.0.2.3"),  # "." is every single-label name
        ("10.2.0.192.in-addr.arpa", "192.0.2.1"),
    ],
)
async def test_conditional_zones_go_to_their_own_upstreams(name: str, answer: str) -> None:
    resolver, _, _ = make()
    config = resolver.policy.config
    # The policy hands the zones over (special-use names in them are not answered locally).
    config.upstreams.conditional = {
        zone: ["192.0.2.1"] for zone in ("home.arpa", ".", "2.0.192.in-addr.arpa")
    }
    resolver.policy = Policy(config, resolver.policy.matcher)
    resolver.upstreams = NamedUpstreams("198.51.100.1")  # type: ignore[assignment]
    resolver.conditional = {
        "home.arpa": NamedUpstreams("192.0.2.1"),  # type: ignore[dict-item]
        "lab.home.arpa": NamedUpstreams("192.0.2.2"),  # type: ignore[dict-item]
        ".": NamedUpstreams("192.0.2.3"),  # type: ignore[dict-item]
        "2.0.192.in-addr.arpa": NamedUpstreams("192.0.2.1"),  # type: ignore[dict-item]
    }
    message = query(name, "PTR" if name.endswith("arpa") and "in-addr" in name else "A")
    reply = await resolver.answer_later(message, "192.0.2.1", False)
    assert reply is not None and [str(r.rdata) for r in parse(reply).rr] == [answer]
