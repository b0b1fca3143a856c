"""Rules with DNS modifiers and hosts answers end to end: the resolver core over fake upstreams."""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE, RCODE

from dnsguard.app.lists import build_sync
from dnsguard.config import Config, GroupConfig, ListConfig
from dnsguard.config.model import ClientConfig
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.resolver import Forward, Resolver
from dnsguard.policy.engine import Policy
from tests.unit.test_resolver import FakeUpstreams, Harness, parse, query

LAPTOP = "192.0.2.30"
PHONE = "192.0.2.20"
OTHER = "192.0.2.99"

RULES = """\
192.0.2.10 nas.home.arpa
2001:db8::10 nas.home.arpa
||ads.example^
@@||ads.example^$client=192.0.2.30
||video.example^$ctag=device_phone
||v6.example^$dnstype=AAAA
||info.example^$dnsrewrite=NOERROR;TXT;hello world
||info.example^$dnsrewrite=NOERROR;MX;10 mail.info.example
||gone.example^$dnsrewrite=REFUSED
||alias.example^$dnsrewrite=target.example
||self.example^$dnsrewrite=self.example
"""


def make() -> tuple[Any, FakeUpstreams]:
    config = Config(
        lists={"custom": ListConfig(sources=[RULES])},
        groups={"default": GroupConfig(block=["custom"])},
        clients={"phone": ClientConfig(addresses=[PHONE], tags=["device_phone"])},
    )
    for group in config.groups.values():
        group.validate()
    policy = Policy(config, build_sync(config).matcher)
    upstreams = FakeUpstreams()
    resolver = Resolver(policy, AnswerCache(max_entries=100), clock=lambda: 1000.0)
    return Harness(resolver, upstreams), upstreams


def records(reply: object) -> list[tuple[str, str]]:
    return [(QTYPE[rr.rtype], str(rr.rdata)) for rr in parse(reply).rr]


def test_a_hosts_line_answers_locally_a_and_aaaa_and_nodata_for_other_types() -> None:
    resolver, upstreams = make()
    assert records(resolver.answer_now(query("nas.home.arpa"), OTHER)) == [("A", "192.0.2.10")]
    assert records(resolver.answer_now(query("nas.home.arpa", "AAAA"), OTHER)) == [("AAAA", "2001:db8::10")]
    nodata = parse(resolver.answer_now(query("nas.home.arpa", "MX"), OTHER))
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr and nodata.auth
    assert upstreams.asked == []


def test_local_record_addresses_are_handed_out_on_every_answer() -> None:
    resolver, _ = make()
    handed: list[tuple[tuple[bytes, ...], int]] = []
    resolver.on_addresses = lambda addresses, ttl: handed.append((addresses, ttl))
    for _ in range(2):
        resolver.answer_now(query("nas.home.arpa"), OTHER)
    resolver.answer_now(query("nas.home.arpa", "AAAA"), OTHER)
    resolver.answer_now(query("nas.home.arpa", "MX"), OTHER)
    v4, v6 = bytes([192, 0, 2, 10]), bytes.fromhex("20010db8000000000000000000000010")
    assert [addresses for addresses, _ in handed] == [(v4,), (v4,), (v6,)]
    assert all(ttl > 0 for _, ttl in handed)


def test_dnsrewrite_answers_txt_and_mx_records() -> None:
    resolver, upstreams = make()
    assert records(resolver.answer_now(query("info.example", "TXT"), OTHER)) == [("TXT", '"hello world"')]
    assert records(resolver.answer_now(query("info.example", "MX"), OTHER)) == [
        ("MX", "10 mail.info.example.")
    ]
    assert upstreams.asked == []


def test_dnsrewrite_refused_answers_refused() -> None:
    resolver, _ = make()
    assert parse(resolver.answer_now(query("gone.example"), OTHER)).header.rcode == RCODE.REFUSED


async def test_a_cname_rewrite_is_followed_upstream() -> None:
    resolver, upstreams = make()
    reply = await resolver.answer_later(query("alias.example"), OTHER, False)
    assert records(reply) == [("CNAME", "target.example."), ("A", "198.51.100.80")]
    assert upstreams.asked == ["target.example"]


def test_dnstype_blocks_one_query_type_of_a_name() -> None:
    resolver, _ = make()
    assert records(resolver.answer_now(query("v6.example", "AAAA"), OTHER)) == [("AAAA", "::")]
    assert isinstance(resolver.answer_now(query("v6.example", "A"), OTHER), Forward)


async def test_a_per_client_exception_is_not_replayed_for_other_clients_of_the_group() -> None:
    resolver, _ = make()
    message = query("ads.example")
    for _ in range(2):
        allowed = await resolver.answer_later(message, LAPTOP, False)
        assert records(allowed) == [("A", "198.51.100.80")]
        # The same message from another client of the same group: its own decision, not the laptop's.
        assert records(resolver.answer_now(message, OTHER)) == [("A", "0.0.0.0")]


async def test_a_per_client_block_does_not_reach_other_clients_from_memos_or_cache() -> None:
    resolver, _ = make()
    message = query("video.example")
    for _ in range(2):
        assert records(await resolver.answer_later(message, OTHER, False)) == [("A", "198.51.100.80")]
        assert records(resolver.answer_now(message, PHONE)) == [("A", "0.0.0.0")]


async def test_a_cname_target_blocked_for_one_client_is_checked_for_each_client() -> None:
    resolver, upstreams = make()
    upstreams.cnames["cdn.example"] = "video.example"
    message = query("cdn.example")
    for _ in range(2):
        assert records(await resolver.answer_later(message, PHONE, False)) == [("A", "0.0.0.0")]
        allowed = records(await resolver.answer_later(message, OTHER, False))
        assert allowed == [("CNAME", "video.example."), ("A", "198.51.100.80")]


def test_a_local_answer_larger_than_the_udp_limit_goes_truncated_over_udp_and_whole_over_tcp() -> None:
    rules = "".join(f"||big.example^$dnsrewrite=NOERROR;TXT;{'x' * 200}{i}\n" for i in range(30))
    config = Config(
        lists={"custom": ListConfig(sources=[rules])}, groups={"default": GroupConfig(block=["custom"])}
    )
    for group in config.groups.values():
        group.validate()
    resolver = Resolver(
        Policy(config, build_sync(config).matcher), AnswerCache(max_entries=100), clock=lambda: 1000.0
    )
    message = query("big.example", "TXT")
    for tcp in (False, True, False):  # the second UDP answer must not come from a replayed plan either
        reply = resolver.answer_now(message, OTHER, tcp=tcp)
        assert isinstance(reply, bytes)
        answer = parse(reply)
        if tcp:
            assert not answer.header.tc and len(answer.rr) == 30
        else:
            assert answer.header.tc and not answer.rr and len(reply) <= 512


async def test_a_cname_rewrite_to_the_asked_name_itself_is_left_out_and_the_name_resolves_upstream() -> None:
    resolver, upstreams = make()
    reply = parse(await resolver.answer_later(query("self.example"), OTHER, False))
    assert upstreams.asked == ["self.example"]
    assert [QTYPE[rr.rtype] for rr in reply.rr] == ["A"]


def test_client_rules_name_clients_learned_at_run_time_as_soon_as_they_are_learned() -> None:
    config = Config(
        lists={"custom": ListConfig(sources=["||games.example^$client='Kids Tablet'\n"])},
        groups={"default": GroupConfig(block=["custom"])},
    )
    for group in config.groups.values():
        group.validate()
    learned: dict[str, str] = {}  # what leases, neighbours or reverse lookups named so far
    policy = Policy(
        config, build_sync(config).matcher, learned_names=lambda address: learned.get(address, "")
    )
    resolver = Resolver(policy, AnswerCache(max_entries=100), clock=lambda: 1000.0)

    def answer(client: str) -> object:
        return resolver.answer_now(query("games.example"), client)

    assert isinstance(answer("192.0.2.77"), Forward)  # not named yet
    learned["192.0.2.77"] = "Kids Tablet"
    assert records(answer("192.0.2.77")) == [("A", "0.0.0.0")]
    assert isinstance(answer(OTHER), Forward)
