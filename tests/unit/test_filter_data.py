"""The README checks on real public lists: the same list in different formats means the same thing."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from dnsguard.filter import Action, Matcher, ParsedSource, compile_matcher, parse_file
from dnsguard.filter.rules import Scope, category, category_allow

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LISTS = DATA / "blocklists"
QUERIES = DATA / "queries"

pytestmark = pytest.mark.skipif(
    not LISTS.is_dir(), reason=f"real blocklists not found at {LISTS} (shared data checkout absent)"
)


@cache
def parsed(name: str) -> ParsedSource:
    return parse_file(LISTS / name)


@cache
def matcher(*names: str) -> Matcher:
    return compile_matcher([parsed(name) for name in names])


def plain_names(name: str, step: int = 1) -> list[str]:
    lines = (LISTS / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "!"))][::step]


def top_domains(count: int) -> list[str]:
    return (QUERIES / "top-domains.txt").read_text(encoding="utf-8").split()[:count]


def test_hagezi_light_domains_and_hosts_are_the_same_87391_names() -> None:
    domains = parsed("hagezi-light-domains.txt").name_hashes()
    assert len(domains) == 87_391
    assert parsed("hagezi-light-hosts.txt").name_hashes() == domains


def test_oisd_adblock_and_wildcard_lists_give_the_same_verdicts() -> None:
    adblock = matcher("oisd-big-adblock.txt")
    wildcard = matcher("oisd-big-wildcard.txt")
    listed = [line[2:] for line in plain_names("oisd-big-wildcard.txt", step=40)]
    queries = top_domains(20_000) + listed + [f"sub.{name}" for name in listed]
    queries += [name.partition(".")[2] for name in listed]
    verdicts = [(adblock.match(q).blocked, wildcard.match(q).blocked) for q in queries]
    assert all(a == w for a, w in verdicts)
    assert sum(a for a, _ in verdicts) > len(listed) * 2


def test_every_1hosts_domain_is_blocked_by_the_compressed_1hosts_adblock_list() -> None:
    adblock = matcher("1hosts-pro-adblock.txt")
    names = plain_names("1hosts-pro-domains.txt", step=3)
    assert len(names) > 50_000
    assert [name for name in names if not adblock.match(name).blocked] == []


def test_notracking_counts_each_name_once_despite_its_ipv6_twin_lines() -> None:
    report = parsed("notracking-hostnames.txt").report
    assert report.counts["rule"] == 152_480
    assert len(parsed("notracking-hostnames.txt").name_hashes()) == 76_240
    assert parsed("notracking-hostnames.txt").rule_count == 76_240


def test_stevenblack_header_entries_are_not_blocked() -> None:
    source = parsed("stevenblack-hosts.txt")
    assert source.report.counts["pseudo-host"] == 14
    assert len(source.name_hashes()) == 58_866
    hosts = matcher("stevenblack-hosts.txt")
    for name in (
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    ):
        assert not hosts.match(name).blocked, name
    assert hosts.match("n2019cov.000webhostapp.com").blocked


@pytest.mark.parametrize(
    ("twin", "reference", "count"),
    [
        ("formats/basic-domains.txt", "blp-basic-hosts.txt", 76_036),
        ("formats/basic-adblock.txt", "blp-basic-hosts.txt", 76_036),
        ("formats/basic-dnsmasq.txt", "blp-basic-hosts.txt", 76_036),
        ("formats/facebook-adblock.txt", "formats/facebook-hosts.txt", 22_362),
    ],
)
def test_format_twins_parse_to_the_same_names(twin: str, reference: str, count: int) -> None:
    names = parsed(twin).name_hashes()
    assert len(names) == count
    assert names == parsed(reference).name_hashes()


def test_adguard_dns_filter_keeps_its_21_exceptions_and_counts_the_odd_rules() -> None:
    source = parsed("adguard-sdns-filter-2019.txt")
    report = source.report
    allows = sum(len(block.hashes) for block in source.blocks if category_allow(block.category))
    assert allows == 21
    assert report.counts == {"comment": 414, "rule": 27_298, "regex": 125, "skipped": 142}
    assert report.reasons == {
        "ip address rule (filters answers, not names)": 71,
        "url rule (path or query part)": 68,
        "cosmetic rule": 2,
        "modifier $image does not apply to DNS": 1,
    }
    assert sum(report.counts.values()) == report.lines == 27_979
    assert {str(issue).split(": ")[0] for issue in report.issues[:1]} == {
        f"{LISTS / 'adguard-sdns-filter-2019.txt'}:118"
    }
    adguard = matcher("adguard-sdns-filter-2019.txt")
    assert adguard.match("pagead.l.doubleclick.net").action is Action.ALLOW
    assert adguard.match("alishop7.ru").blocked
    assert adguard.match("x.bpmonline.com").blocked
    assert not adguard.match("bpmonline.com").blocked


def test_hagezi_onlydomains_header_makes_entries_cover_subdomains() -> None:
    source = parsed("hagezi-pro-onlydomains.txt")
    assert source.report.subdomains
    assert {block.category for block in source.blocks} == {category(Scope.SUFFIX)}
    onlydomains = matcher("hagezi-pro-onlydomains.txt")
    first = plain_names("hagezi-pro-onlydomains.txt")[0]
    assert onlydomains.match(f"deep.sub.{first}").blocked


def test_referral_allowlist_unblocks_names_hagezi_pro_blocks() -> None:
    combined = compile_matcher(
        [
            parsed("hagezi-pro-adblock.txt"),
            parse_file(LISTS / "hagezi-allowlist-referral-adblock.txt", "referral", allow=True),
        ]
    )
    allowed = plain_names("hagezi-allowlist-referral-domains.txt")
    pro_only = combined.select(["hagezi-pro-adblock"])
    both = combined.select(["hagezi-pro-adblock", "referral"])
    blocked_by_pro = [name for name in allowed if pro_only.match(name).blocked]
    assert blocked_by_pro
    assert all(both.match(name).action is Action.ALLOW for name in blocked_by_pro)
    assert both.match("a-go.kelkoogroup.net").action is Action.ALLOW
