"""Special-use and locally-served names are answered here, one case per RFC section, not forwarded."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from dnsguard.app.lists import build_sync
from dnsguard.config import Config, GroupConfig, load_config
from dnsguard.config.model import SpecialUseConfig
from dnsguard.dns.names import fold_name
from dnsguard.dns.resolver import Forward, Resolver
from dnsguard.errors import ConfigError
from dnsguard.policy.engine import Kind, Policy
from dnsguard.policy.special import (
    PRIVATE_REVERSE_ZONES,
    Answer,
    SpecialUseNames,
    reverse_zones,
)

QTYPES = {"A": 1, "AAAA": 28, "MX": 15, "PTR": 12, "DS": 43, "NS": 2, "HTTPS": 65}


def ptr(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


@pytest.mark.parametrize(
    ("name", "answer", "rfc"),
    [
        ("localhost", Answer.LOOPBACK, "RFC 6761 6.3"),
        ("www.localhost", Answer.LOOPBACK, "RFC 6761 6.3"),
        ("invalid", Answer.NXDOMAIN, "RFC 6761 6.4"),
        ("anything.invalid", Answer.NXDOMAIN, "RFC 6761 6.4"),
        ("test", Answer.NXDOMAIN, "RFC 6761 6.2"),
        ("my.app.test", Answer.NXDOMAIN, "RFC 6761 6.2"),
        ("printer.local", Answer.NXDOMAIN, "RFC 6762 22.1"),
        ("duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion", Answer.NXDOMAIN, "RFC 7686"),
        ("home.arpa", Answer.NXDOMAIN, "RFC 8375"),
        ("nas.home.arpa", Answer.NXDOMAIN, "RFC 8375"),
        (ptr("192.168.1.20"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("10.1.2.3"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("172.16.0.1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("172.31.255.1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("127.0.0.1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("0.1.2.3"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("169.254.7.7"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("192.0.2.7"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("198.51.100.7"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("203.0.113.7"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("255.255.255.255"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("100.64.0.1"), Answer.NXDOMAIN, "RFC 7793"),
        (ptr("100.127.255.1"), Answer.NXDOMAIN, "RFC 7793"),
        (ptr("::1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("::"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("fd12:3456::1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("fe80::1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("febf::1"), Answer.NXDOMAIN, "RFC 6303"),
        (ptr("2001:db8::1"), Answer.NXDOMAIN, "RFC 6303"),
        ("168.192.in-addr.arpa", Answer.NXDOMAIN, "RFC 6303"),  # the zone itself (its SOA, NS)
        ("nas", Answer.NXDOMAIN, "domain-needed"),
        ("wpad", Answer.NXDOMAIN, "TA16-144A"),
        ("wpad.home", Answer.NXDOMAIN, "TA16-144A"),
    ],
)
def test_answered_here(name: str, answer: Answer, rfc: str) -> None:
    special = SpecialUseNames().check(name, QTYPES["A"] if "arpa" not in name else QTYPES["PTR"])
    assert special is not None and special.answer is answer
    assert rfc in special.rule


@pytest.mark.parametrize(
    "name",
    [
        "",  # the root
        "example.com",
        "www.example",  # RFC 6761 6.5: example names are resolved normally
        "local.example.com",
        "localhost.example.com",  # only names under the localhost TLD are loopback
        "wpadx.home",
        "abcd.com",
        "wpad.example.com",  # a real domain's proxy autodiscovery stays the domain's business
        ptr("198.51.99.7"),
        ptr("100.128.0.1"),  # just above 100.64.0.0/10
        ptr("172.32.0.1"),  # just above 172.16.0.0/12
        ptr("8.8.8.8"),
        ptr("2001:db9::1"),
        ptr("fec0::1"),  # just above fe80::/10
        "in-addr.arpa",
        "ip6.arpa",
    ],
)
def test_forwarded(name: str) -> None:
    assert SpecialUseNames().check(name, QTYPES["A"]) is None


def test_a_single_label_is_answered_only_for_address_lookups() -> None:
    names = SpecialUseNames()
    for qtype in ("A", "AAAA", "HTTPS"):
        assert names.check("nas", QTYPES[qtype]) is not None
    # A validating stub asks the TLDs for DS and NS: an unsigned NXDOMAIN would make the TLD bogus.
    for qtype in ("DS", "NS"):
        for tld in ("com", "example", "arpa"):
            assert names.check(tld, QTYPES[qtype]) is None
    assert names.check("localhost", QTYPES["MX"]) is not None  # the special TLDs stay special


def test_a_conditional_upstream_takes_its_zone_back() -> None:
    zones = ["home.arpa", "168.192.in-addr.arpa.", "TEST", "."]
    names = SpecialUseNames(forwarded=[fold_name(zone) for zone in zones])  # as the configuration folds
    assert names.check("nas.home.arpa") is None
    assert names.check(ptr("192.168.1.20"), QTYPES["PTR"]) is None
    assert names.check(ptr("10.0.0.1"), QTYPES["PTR"]) is not None  # another private zone
    assert names.check("app.test") is None  # RFC 6761 6.2's option to resolve test names
    assert names.check("nas") is None  # "." covers single-label names, as in blocky
    assert names.check("localhost") is not None  # loopback never leaves the host


def test_each_part_switches_off() -> None:
    assert SpecialUseNames(local_answers=False).check("printer.local") is None
    assert SpecialUseNames(local_answers=False).check("localhost") is None
    assert SpecialUseNames(private_reverse=False).check(ptr("192.168.1.1"), QTYPES["PTR"]) is None
    assert SpecialUseNames(single_label=False).check("nas") is None
    assert SpecialUseNames(single_label=False).check("wpad") is not None


def test_reverse_zones_split_on_label_bounds() -> None:
    assert reverse_zones("10.0.0.0/8") == ["10.in-addr.arpa"]
    assert reverse_zones("172.16.0.0/12")[0] == "16.172.in-addr.arpa"
    assert len(reverse_zones("172.16.0.0/12")) == 16
    assert len(reverse_zones("100.64.0.0/10")) == 64
    assert reverse_zones("fe80::/10") == [
        "8.e.f.ip6.arpa",
        "9.e.f.ip6.arpa",
        "a.e.f.ip6.arpa",
        "b.e.f.ip6.arpa",
    ]
    assert reverse_zones("2001:db8::/32") == ["8.b.d.0.1.0.0.2.ip6.arpa"]
    assert reverse_zones("fd00::/8") == ["d.f.ip6.arpa"]
    assert "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa" in PRIVATE_REVERSE_ZONES


# -- through the policy and the resolver -------------------------------------------------------


def query(name: str, qtype: str = "A") -> bytes:
    return bytes(DNSRecord.question(name, qtype).pack())


def resolver_for(config: Config) -> Resolver:
    for group in config.groups.values():
        group.validate()
    return Resolver(Policy(config, build_sync(config).matcher), None)


def reply(resolver: Resolver, name: str, qtype: str = "A") -> DNSRecord:
    answer = resolver.answer_now(query(name, qtype), "192.0.2.7")
    assert isinstance(answer, bytes), f"{name} {qtype} was not answered locally"
    return DNSRecord.parse(answer)


def test_localhost_gets_loopback_addresses_and_nodata_for_other_types() -> None:
    resolver = resolver_for(Config())
    assert [str(r.rdata) for r in reply(resolver, "localhost").rr] == ["127.0.0.1"]
    assert [str(r.rdata) for r in reply(resolver, "db.localhost", "AAAA").rr] == ["::1"]
    mx = reply(resolver, "localhost", "MX")
    assert mx.header.rcode == RCODE.NOERROR and not mx.rr and mx.auth[0].rtype == QTYPE.SOA


def test_private_reverse_lookups_get_nxdomain_with_an_soa() -> None:
    resolver = resolver_for(Config())
    answer = reply(resolver, ptr("192.168.1.20"), "PTR")
    assert answer.header.rcode == RCODE.NXDOMAIN
    assert answer.auth[0].rtype == QTYPE.SOA  # RFC 2308: negative answers carry the SOA
    assert resolver.stats.blocked_by_list == {"special-use": 1}


def test_special_use_applies_even_without_filtering_and_while_paused() -> None:
    config = Config(groups={"default": GroupConfig(filtering=False)})
    resolver = resolver_for(config)
    resolver.policy.paused_until = float("inf")
    assert reply(resolver, "printer.local").header.rcode == RCODE.NXDOMAIN
    assert isinstance(resolver.answer_now(query("example.com"), "192.0.2.7"), Forward)


def test_single_label_tld_queries_still_go_upstream() -> None:
    resolver = resolver_for(Config())
    assert reply(resolver, "nas").header.rcode == RCODE.NXDOMAIN
    assert isinstance(resolver.answer_now(query("com", "DS"), "192.0.2.7"), Forward)
    assert isinstance(resolver.answer_now(query("com", "NS"), "192.0.2.7"), Forward)


def test_conditional_upstream_in_the_config_forwards_its_zone() -> None:
    config = Config()
    config.upstreams.conditional = {"home.arpa": ["192.0.2.1"], "168.192.in-addr.arpa": ["192.0.2.1"]}
    resolver = resolver_for(config)
    assert isinstance(resolver.answer_now(query("nas.home.arpa"), "192.0.2.7"), Forward)
    assert isinstance(resolver.answer_now(query(ptr("192.168.1.20"), "PTR"), "192.0.2.7"), Forward)
    assert reply(resolver, ptr("10.0.0.1"), "PTR").header.rcode == RCODE.NXDOMAIN


def test_explain_names_the_rule() -> None:
    policy = Policy(Config(), build_sync(Config()).matcher)
    text = policy.explain(ptr("10.0.0.1"), "192.0.2.7", 0.0)
    assert "decision: nxdomain" in text and "RFC 6303" in text
    assert policy.decide("localhost", "", 0.0).kind is Kind.REWRITE
    # Shared decisions, as for blocks: the answer path allocates none.
    assert policy.decide("a.local", "", 0.0) is policy.decide("b.local", "192.0.2.7", 0.0)


def test_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "dnsguard.yaml"
    path.write_text(
        "resolver:\n  special-use:\n"
        "    local-answers: false\n    private-reverse: true\n    single-label: false\n"
    )
    config = load_config(str(path))
    assert config.resolver.special_use == SpecialUseConfig(
        local_answers=False, private_reverse=True, single_label=False
    )
    resolver = resolver_for(config)
    assert isinstance(resolver.answer_now(query("printer.local"), "192.0.2.7"), Forward)
    assert isinstance(resolver.answer_now(query("nas"), "192.0.2.7"), Forward)
    assert reply(resolver, ptr("10.0.0.1"), "PTR").header.rcode == RCODE.NXDOMAIN
    path.write_text("resolver:\n  special-use:\n    bogus-priv: true\n")
    with pytest.raises(ConfigError, match="bogus-priv"):
        load_config(str(path))
