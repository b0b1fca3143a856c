"""AdGuard DNS rule modifiers, hosts answers and their precedence, as AdGuard documents them.

Each test states one rule of the documented semantics; the policy is built from inline lists the way
the daemon builds it, and asked as the resolver asks it (name, client, query type).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from dnslib import HTTPS as HTTPS_RDATA
from dnslib.dns import DNSBuffer
from hypothesis import given
from hypothesis import strategies as st

from dnsguard.app.lists import build_sync
from dnsguard.config import Config, GroupConfig, ListConfig
from dnsguard.config.model import ClientConfig, Duration, RewriteConfig
from dnsguard.filter import ListSource, compile_matcher, parse_line, parse_text
from dnsguard.filter.compiled import index_chunks, load_index, load_source, source_chunks
from dnsguard.filter.modifiers import parse_rewrite
from dnsguard.filter.rules import Outcome
from dnsguard.filter.side import SideIndex, SideRule
from dnsguard.policy.engine import Decision, Kind, Policy

A, PTR, AAAA, MX, TXT, HTTPS = 1, 12, 28, 15, 16, 65
PHONE = "192.0.2.20"
CHILD_TABLET = "192.0.2.40"
LAPTOP = "192.0.2.30"
OTHER = "198.51.100.9"
NOW = 1_000_000.0


def policy(rules: str, *, more: str = "") -> Policy:
    """One group with the list `rules` (and an allowlist-free second list `more`); three known clients."""
    lists = {"custom": ListConfig(sources=[rules])}
    if more:
        lists["more"] = ListConfig(sources=[more])
    config = Config(
        lists=lists,
        groups={
            "default": GroupConfig(block=list(lists)),
            "kids": GroupConfig(clients=[CHILD_TABLET], block=list(lists), tags=["user_child"]),
        },
        clients={
            "Frank's laptop": ClientConfig(addresses=[LAPTOP]),
            "phone": ClientConfig(addresses=[PHONE], tags=["device_phone"]),
            "tablet": ClientConfig(addresses=[CHILD_TABLET], tags=["device_tablet"]),
        },
    )
    for group in config.groups.values():
        group.validate()
    return Policy(config, build_sync(config).matcher)


def decide(p: Policy, name: str, client: str = OTHER, qtype: int = A) -> Decision:
    return p.decide(name, client, NOW, qtype)


def kind(p: Policy, name: str, client: str = OTHER, qtype: int = A) -> Kind:
    return decide(p, name, client, qtype).kind


# -- $dnstype --------------------------------------------------------------------------------------


def test_dnstype_limits_a_rule_to_the_listed_query_types() -> None:
    p = policy("||example.org^$dnstype=AAAA|TXT\n")
    assert kind(p, "example.org", qtype=AAAA) is Kind.BLOCK
    assert kind(p, "www.example.org", qtype=TXT) is Kind.BLOCK
    assert kind(p, "example.org", qtype=A) is Kind.FORWARD


def test_dnstype_with_tilde_applies_to_every_type_but_the_excluded() -> None:
    p = policy("||example.org^$dnstype=~A|~CNAME\n")
    assert kind(p, "example.org", qtype=A) is Kind.FORWARD
    assert kind(p, "example.org", qtype=AAAA) is Kind.BLOCK


def test_a_query_type_filter_over_every_name_blocks_that_type_only() -> None:
    p = policy("||*^$dnstype=HTTPS\n")
    assert kind(p, "anything.example", qtype=HTTPS) is Kind.BLOCK
    assert kind(p, "anything.example", qtype=A) is Kind.FORWARD


# -- $client ---------------------------------------------------------------------------------------


def test_client_by_address_cidr_and_bracketed_ipv6() -> None:
    p = policy("||a.example^$client=192.0.2.20\n||b.example^$client=192.0.2.0/28|[2001:db8::7]\n")
    assert kind(p, "a.example", PHONE) is Kind.BLOCK
    assert kind(p, "a.example", OTHER) is Kind.FORWARD
    assert kind(p, "b.example", "192.0.2.3") is Kind.BLOCK
    assert kind(p, "b.example", "2001:db8::7") is Kind.BLOCK
    assert kind(p, "b.example", "2001:db8::8") is Kind.FORWARD
    assert kind(p, "a.example", "::ffff:192.0.2.20") is Kind.BLOCK  # an IPv4 client on a dual-stack socket


def test_client_by_quoted_name_with_escaped_quote_and_comma() -> None:
    p = policy("||games.example^$client='Frank\\'s laptop'\n")
    assert kind(p, "games.example", LAPTOP) is Kind.BLOCK
    assert kind(p, "games.example", PHONE) is Kind.FORWARD


def test_negated_client_applies_to_everyone_else() -> None:
    p = policy("||news.example^$client=~phone|~192.0.2.30\n")
    assert kind(p, "news.example", PHONE) is Kind.FORWARD
    assert kind(p, "news.example", LAPTOP) is Kind.FORWARD
    assert kind(p, "news.example", OTHER) is Kind.BLOCK


def test_an_exception_for_one_client_lifts_a_block_for_that_client_only() -> None:
    p = policy("||ads.example^\n@@||ads.example^$client=192.0.2.30\n")
    assert kind(p, "ads.example", LAPTOP) is Kind.FORWARD
    assert kind(p, "ads.example", OTHER) is Kind.BLOCK


def test_client_values_mixing_negated_and_plain_make_the_line_malformed() -> None:
    assert parse_line("||x.example^$client=~a|b").outcome is Outcome.MALFORMED


# -- $ctag -----------------------------------------------------------------------------------------


def test_ctag_matches_tags_of_the_client_and_of_its_group() -> None:
    p = policy("||social.example^$ctag=device_phone|user_child\n")
    assert kind(p, "social.example", PHONE) is Kind.BLOCK  # the client's own tag
    assert kind(p, "social.example", CHILD_TABLET) is Kind.BLOCK  # its group's tag
    assert kind(p, "social.example", LAPTOP) is Kind.FORWARD


def test_negated_ctag_applies_to_clients_without_the_tag() -> None:
    p = policy("||video.example^$ctag=~user_child\n")
    assert kind(p, "video.example", CHILD_TABLET) is Kind.FORWARD
    assert kind(p, "video.example", OTHER) is Kind.BLOCK


# -- $denyallow ------------------------------------------------------------------------------------


def test_denyallow_exempts_the_listed_domains_and_their_subdomains() -> None:
    p = policy("||example.org^$denyallow=keep.example.org\n")
    assert kind(p, "ads.example.org", OTHER) is Kind.BLOCK
    assert kind(p, "keep.example.org", OTHER) is Kind.FORWARD
    assert kind(p, "a.keep.example.org", OTHER) is Kind.FORWARD


def test_block_everything_but_some_top_level_domains() -> None:
    p = policy("*$denyallow=com|net\n")
    assert kind(p, "example.org") is Kind.BLOCK
    assert kind(p, "example.com") is Kind.FORWARD
    assert kind(p, "a.example.net") is Kind.FORWARD


# -- $dnsrewrite -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rcode", "rtype", "cname"),
    [
        ("192.0.2.1", 0, A, ""),
        ("2001:db8::1", 0, AAAA, ""),
        ("alias.example", 0, 5, "alias.example"),
        ("NXDOMAIN", 3, 0, ""),
        ("REFUSED", 5, 0, ""),
        ("NOERROR", 0, 0, ""),
        ("NOERROR;A;192.0.2.1", 0, A, ""),
        ("NOERROR;CNAME;alias.example", 0, 5, "alias.example"),
        ("NOERROR;MX;10 mail.example", 0, MX, ""),
        ("NOERROR;TXT;v=spf1 -all", 0, TXT, ""),
        ("NOERROR;HTTPS;1 . alpn=h2\\,h3 port=443", 0, HTTPS, ""),
        ("REFUSED;;", 5, 0, ""),
    ],
)
def test_dnsrewrite_short_and_full_forms(value: str, rcode: int, rtype: int, cname: str) -> None:
    rewrite = parse_rewrite(value)
    assert (rewrite.rcode, rewrite.rtype, rewrite.cname) == (rcode, rtype, cname)


def test_dnsrewrite_records_are_encoded_as_rdata() -> None:
    assert parse_rewrite("NOERROR;MX;10 mail.example").rdata == b"\x00\x0a\x04mail\x07example\x00"
    assert parse_rewrite("NOERROR;TXT;hi").rdata == b"\x02hi"
    https = parse_rewrite("NOERROR;HTTPS;1 . alpn=h2\\,h3 port=443").rdata
    assert https == b"\x00\x01\x00" + b"\x00\x01\x00\x06\x02h2\x02h3" + b"\x00\x03\x00\x02\x01\xbb"


def test_dnsrewrite_https_takes_every_rfc_9460_parameter() -> None:
    value = "NOERROR;HTTPS;1 . mandatory=alpn\\,ech alpn=h3 ech=AEX+DQ== dohpath=/q{?dns} key65000=x"
    assert parse_rewrite(value).rdata == (
        b"\x00\x01\x00"
        + b"\x00\x00\x00\x04\x00\x01\x00\x05"  # mandatory: alpn, ech
        + b"\x00\x01\x00\x03\x02h3"
        + b"\x00\x05\x00\x04\x00\x45\xfe\x0d"  # ech: the base64 decoded
        + b"\x00\x07\x00\x08/q{?dns}"
        + b"\xfd\xe8\x00\x01x"
    )
    # dnslib reads it back the same (it still says echconfig, ech's draft name).
    rdata = parse_rewrite(value).rdata
    assert str(HTTPS_RDATA.parse(DNSBuffer(rdata), len(rdata))) == (
        "1 . mandatory=alpn,echconfig alpn=h3 echconfig=AEX+DQ== key7=/q{?dns} key65000=x"
    )


@pytest.mark.parametrize(
    "value",
    [
        "1 . ech=not*base64",
        "1 . mandatory=port",  # names a parameter the record lacks
        "1 . mandatory=mandatory",
        "1 . port=1 port=2",
        "1 . dohpath=/dns-query",
        "1 . bogus=1",
    ],
)
def test_dnsrewrite_https_refuses_bad_parameters(value: str) -> None:
    assert parse_line(f"||x.example^$dnsrewrite=NOERROR;HTTPS;{value}").outcome is Outcome.MALFORMED


@pytest.mark.parametrize(
    "line",
    [
        "||x.example^$dnsrewrite=NOERROR;A;not-an-address",
        "||x.example^$dnsrewrite=BOGUS;;",
        "||x.example^$dnsrewrite=NOERROR;AAAA;192.0.2.1",
        "||x.example^$dnsrewrite=REFUSED;A;192.0.2.1",
        "||x.example^$dnstype=NOTATYPE",
        "||x.example^$denyallow=*.example",
    ],
)
def test_bad_modifier_values_are_malformed_lines(line: str) -> None:
    assert parse_line(line).outcome is Outcome.MALFORMED


def test_records_of_all_noerror_rewrites_are_summed_by_the_asked_type() -> None:
    p = policy(
        "||home.example^$dnsrewrite=192.0.2.1\n"
        "||home.example^$dnsrewrite=192.0.2.2\n"
        "||home.example^$dnsrewrite=NOERROR;TXT;hello\n"
    )
    a = decide(p, "home.example", qtype=A)
    assert a.kind is Kind.REWRITE and a.records == (b"\xc0\x00\x02\x01", b"\xc0\x00\x02\x02")
    assert decide(p, "home.example", qtype=TXT).records == (b"\x05hello",)
    assert decide(p, "home.example", qtype=AAAA).records == ()  # NODATA


def test_a_response_code_rewrite_beats_a_cname_which_beats_records() -> None:
    p = policy(
        "||x.example^$dnsrewrite=192.0.2.1\n||x.example^$dnsrewrite=alias.example\n||x.example^$dnsrewrite=REFUSED\n"
    )
    assert decide(p, "x.example").kind is Kind.RCODE
    assert "answer:   response code REFUSED" in p.explain("x.example", OTHER, NOW)
    q = policy("||x.example^$dnsrewrite=192.0.2.1\n||x.example^$dnsrewrite=alias.example\n")
    assert decide(q, "x.example").target == "alias.example"
    assert kind(policy("||x.example^$dnsrewrite=NXDOMAIN\n"), "x.example") is Kind.NXDOMAIN


def test_dnsrewrite_beats_blocking_even_important_and_plain_exceptions() -> None:
    p = policy("||x.example^$important\n@@||x.example^\n||x.example^$dnsrewrite=192.0.2.7\n")
    decision = decide(p, "x.example")
    assert decision.kind is Kind.REWRITE and decision.records == (b"\xc0\x00\x02\x07",)
    explained = p.explain("x.example", OTHER, NOW)
    assert "beat:     ||x.example^$important" in explained and "beat:     @@||x.example^ " in explained


def test_an_exception_with_dnsrewrite_disables_all_rewrites_or_the_one_it_names() -> None:
    rules = "||x.example^$dnsrewrite=192.0.2.1\n||x.example^$dnsrewrite=192.0.2.2\n"
    assert kind(policy(rules + "@@||x.example^$dnsrewrite\n"), "x.example") is Kind.FORWARD
    one = decide(policy(rules + "@@||x.example^$dnsrewrite=192.0.2.1\n"), "x.example")
    assert one.records == (b"\xc0\x00\x02\x02",)


def test_a_rewrite_combined_with_dnstype_and_denyallow() -> None:
    p = policy("$dnstype=AAAA,denyallow=example.org,dnsrewrite=NOERROR;;\n")
    assert decide(p, "ipv4only.example", qtype=AAAA).records == ()
    assert kind(p, "ipv4only.example", qtype=A) is Kind.FORWARD
    assert kind(p, "www.example.org", qtype=AAAA) is Kind.FORWARD


def test_a_rewrite_for_one_client_by_tag() -> None:
    p = policy("||nas.example^$ctag=device_phone,dnsrewrite=192.0.2.50\n")
    assert decide(p, "nas.example", PHONE).records == (b"\xc0\x00\x02\x32",)
    assert kind(p, "nas.example", LAPTOP) is Kind.FORWARD


# -- precedence: $important, exceptions, blocks, $badfilter -----------------------------------------


def test_important_block_beats_exception_beats_block_with_modifiers() -> None:
    p = policy("||x.example^$client=192.0.2.30,important\n@@||x.example^\n||x.example^$dnstype=A\n")
    assert kind(p, "x.example", LAPTOP) is Kind.BLOCK
    assert kind(p, "x.example", OTHER) is Kind.FORWARD


def test_an_important_exception_beats_an_important_block() -> None:
    p = policy("||x.example^$important,ctag=device_phone\n@@||x.example^$important,client=192.0.2.20\n")
    assert kind(p, "x.example", PHONE) is Kind.FORWARD


def test_badfilter_disables_exactly_the_rule_it_names_across_lists() -> None:
    p = policy(
        "||x.example^$client=192.0.2.20\n||x.example^$dnstype=AAAA\n",
        more="||x.example^$client=192.0.2.20,badfilter\n",
    )
    assert kind(p, "x.example", PHONE, A) is Kind.FORWARD
    assert kind(p, "x.example", PHONE, AAAA) is Kind.BLOCK


def test_modifier_order_does_not_matter_to_badfilter() -> None:
    p = policy(
        "||x.example^$dnstype=AAAA,client=192.0.2.20\n||x.example^$client=192.0.2.20,dnstype=AAAA,badfilter\n"
    )
    assert kind(p, "x.example", PHONE, AAAA) is Kind.FORWARD


# -- hosts lines with real addresses ------------------------------------------------------------


def test_hosts_lines_with_real_addresses_answer_with_them() -> None:
    p = policy("192.0.2.10 nas.home.arpa nas\n2001:db8::10 nas.home.arpa\n0.0.0.0 ads.example\n")
    a = decide(p, "nas.home.arpa", qtype=A)
    assert a.kind is Kind.REWRITE and a.records == (ipaddress.ip_address("192.0.2.10").packed,)
    assert decide(p, "nas.home.arpa", qtype=AAAA).records == (ipaddress.ip_address("2001:db8::10").packed,)
    assert decide(p, "nas", qtype=MX).records == ()  # NODATA
    assert kind(p, "sub.nas.home.arpa") is not Kind.REWRITE  # exact, as /etc/hosts
    assert kind(p, "ads.example") is Kind.BLOCK


def test_hosts_lines_answer_reverse_lookups_with_their_first_name() -> None:
    p = policy(
        "192.0.2.10 nas.home.arpa nas\n192.0.2.10 printer.home.arpa\n2001:db8::10 nas.home.arpa\n"
        "0.0.0.0 ads.example\n"
    )
    v4 = decide(p, "10.2.0.192.in-addr.arpa", qtype=PTR)
    assert v4.kind is Kind.REWRITE and v4.records == (
        b"\x03nas\x04home\x04arpa\x00",
        b"\x07printer\x04home\x04arpa\x00",
    )
    v6 = decide(p, ipaddress.ip_address("2001:db8::10").reverse_pointer, qtype=PTR)
    assert v6.records == (b"\x03nas\x04home\x04arpa\x00",)
    assert decide(p, "10.2.0.192.in-addr.arpa", qtype=A).records == ()  # the name exists: NODATA
    assert decide(p, "11.2.0.192.in-addr.arpa", qtype=PTR).kind is not Kind.REWRITE
    explained = p.explain("10.2.0.192.in-addr.arpa", OTHER, NOW, PTR)
    assert (
        "PTR nas.home.arpa., PTR printer.home.arpa." in explained
        and "192.0.2.10 nas.home.arpa nas" in explained
    )


def test_configured_rewrites_answer_reverse_lookups_of_their_addresses() -> None:
    config = Config(
        rewrites=[
            RewriteConfig("nas.home.arpa", ["192.0.2.10", "2001:db8::10"], Duration(600)),
            RewriteConfig("files.home.arpa", ["192.0.2.10"], Duration(60)),
            RewriteConfig("*.lab.home.arpa", ["192.0.2.99"]),
            RewriteConfig("alias.home.arpa", ["nas.home.arpa"]),
        ]
    )
    config.validate()
    p = Policy(config, build_sync(config).matcher)
    v4 = decide(p, "10.2.0.192.in-addr.arpa", qtype=PTR)
    assert v4.kind is Kind.REWRITE and v4.ttl == 60
    assert v4.records == (b"\x03nas\x04home\x04arpa\x00", b"\x05files\x04home\x04arpa\x00")
    assert decide(p, ipaddress.ip_address("2001:db8::10").reverse_pointer, qtype=PTR).records == (
        b"\x03nas\x04home\x04arpa\x00",
    )
    # A wildcard names no one host: its address does not resolve back.
    assert decide(p, "99.2.0.192.in-addr.arpa", qtype=PTR).kind is not Kind.REWRITE


@pytest.mark.parametrize("address", ["0.0.0.0", "127.0.0.1", "::", "::1"])
def test_hosts_lines_with_sinkhole_addresses_stay_blocks(address: str) -> None:
    assert kind(policy(f"{address} ads.example\n"), "ads.example") is Kind.BLOCK


def test_a_block_or_exception_rule_decides_before_a_hosts_answer() -> None:
    assert kind(policy("192.0.2.10 x.example\n||x.example^\n"), "x.example") is Kind.BLOCK


# -- syntax ---------------------------------------------------------------------------------------


def test_a_host_rule_with_a_wildcard_path_means_the_host() -> None:
    assert parse_line("||example.org/*") == parse_line("||example.org^")


@pytest.mark.parametrize("header", ["[Adblock Plus 2.0]", "[Adblock]", "[AdGuard]"])
def test_adblock_headers_are_headers_not_malformed(header: str) -> None:
    parsed = parse_text(f"{header}\n||ads.example^\n", ListSource("x", "x.txt"))
    assert parsed.report.issue_count == 0 and parsed.report.counts["comment"] == 1


@pytest.mark.parametrize("name", ["xn---abc.example", "xn--abc.example", "www.xn--zz.example"])
def test_punycode_that_does_not_round_trip_is_malformed(name: str) -> None:
    assert parse_line(name).outcome is Outcome.MALFORMED
    assert parse_line(f"||{name}^").outcome is Outcome.MALFORMED
    bulk = "\n".join(f"0.0.0.0 host{i}.example" for i in range(20)) + f"\n0.0.0.0 {name}\n"
    report = parse_text(bulk, ListSource("x", "x.txt")).report
    assert report.counts.get("malformed") == 1 and report.issues[0].line == 21


def test_valid_punycode_is_a_rule() -> None:
    assert parse_line("xn--p1ai").outcome is Outcome.RULE
    assert parse_line("||xn--80ak6aa92e.example^").outcome is Outcome.RULE


# -- explain, caching, storage --------------------------------------------------------------------


def test_explain_names_the_winner_and_the_rules_it_beat() -> None:
    p = policy("||x.example^\n@@||x.example^$client=192.0.2.30\n")
    text = p.explain("x.example", LAPTOP, NOW)
    assert "decision: forward" in text
    assert "rule:     @@||x.example^$client=192.0.2.30 in list 'custom'" in text
    assert "beat:     ||x.example^ in list 'custom' (lists.custom.sources[0] (inline):1)" in text


def test_explain_lists_beaten_plain_rules_too() -> None:
    p = policy("||x.example^\n@@||www.x.example^\n")
    text = p.explain("www.x.example", OTHER, NOW)
    assert "rule:     @@||www.x.example^" in text and "beat:     ||x.example^" in text


def test_explain_for_a_query_type() -> None:
    text = policy("||x.example^$dnstype=AAAA\n").explain("x.example", OTHER, NOW, AAAA)
    assert "type:     AAAA" in text and "decision: block" in text


def test_a_decision_that_depends_on_the_client_says_so() -> None:
    p = policy("||x.example^$client=192.0.2.30\n||y.example^$dnstype=AAAA\n||z.example^\n")
    assert decide(p, "x.example", OTHER).per_client  # even where the rule did not apply
    assert not decide(p, "y.example", OTHER, AAAA).per_client
    assert not decide(p, "z.example").per_client


def test_side_rules_survive_the_compiled_files() -> None:
    text = "||x.example^$client='Frank\\'s laptop',dnsrewrite=NOERROR;TXT;Hello World\n192.0.2.10 nas\n"
    parsed = parse_text(text, ListSource("custom", "custom.txt"))
    key = b"k" * 32
    again = load_source(b"".join(source_chunks(parsed, key)), key)
    assert [r.text for r in again.side_rules] == [r.text for r in parsed.side_rules]
    assert again.side_rules[0].rewrite == parsed.side_rules[0].rewrite
    matcher = compile_matcher([again])
    loaded = load_index(b"".join(index_chunks(matcher, [again], key)), key)
    assert [(r.text, r.line, r.list_name) for r in loaded.side_rules] == [
        (r.text, r.line, r.list_name) for r in matcher.side_rules
    ]


def test_groups_without_side_rules_keep_the_plain_path() -> None:
    matcher = compile_matcher([parse_text("||a.example^\n", ListSource("plain", "p.txt"))])
    assert matcher.select().side is None


def test_the_explain_command_takes_a_client_and_a_query_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dnsguard.cli import main

    rules = tmp_path / "rules.txt"
    rules.write_text(
        "||x.example^\n@@||x.example^$dnstype=A\n||x.example^$dnstype=AAAA,client=192.0.2.20,important\n"
    )
    document = {
        "upstreams": {"servers": ["198.51.100.53"]},
        "lists": {"custom": {"sources": [str(rules)]}},
        "groups": {"default": {"block": ["custom"]}},
        "loading": {"cache-dir": str(tmp_path / "cache")},
    }
    config = tmp_path / "dnsguard.yaml"
    config.write_text(yaml.safe_dump(document))
    assert main(["explain", "x.example", "-c", str(config), "--client", "192.0.2.20", "--type", "AAAA"]) == 0
    out = capsys.readouterr().out
    assert "decision: block" in out
    assert f"source:   {rules}:3" in out
    assert f"beat:     ||x.example^ in list 'custom' ({rules}:1)" in out
    assert main(["explain", "x.example", "-c", str(config), "--type", "A"]) == 0
    out = capsys.readouterr().out
    assert "decision: forward" in out and "rule:     @@||x.example^$dnstype=A in list 'custom'" in out
    assert main(["explain", "x.example", "-c", str(config), "--type", "NOPE"]) == 2


def test_side_rules_per_source_are_bounded_and_the_rest_reported() -> None:
    from dnsguard.filter.lists import MAX_SIDE_RULES

    text = "".join(f"192.0.2.1 host{i}.example\n" for i in range(MAX_SIDE_RULES + 3))
    parsed = parse_text(text, ListSource("x", "x.txt"))
    assert len(parsed.side_rules) == MAX_SIDE_RULES
    assert parsed.report.counts["skipped"] == 3 and parsed.report.issue_count == 3


_LABELS = st.sampled_from(["a", "b", "com"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=3).map(".".join)


@given(
    rules=st.lists(st.tuples(_NAMES, st.sampled_from([0, 1, 2])), max_size=12),
    names=st.lists(_NAMES, min_size=1, max_size=10),
)
def test_the_side_index_finds_exactly_the_rules_a_scan_finds(
    rules: list[tuple[str, int]], names: list[str]
) -> None:
    side_rules = [SideRule(f"r{i}", scope=scope, names=(listed,)) for i, (listed, scope) in enumerate(rules)]
    index = SideIndex(side_rules)
    for name in names:
        expected = [
            rule
            for rule in side_rules
            if (name == rule.names[0] and rule.scope != 2)
            or (name.endswith("." + rule.names[0]) and rule.scope != 0)
        ]
        assert list(index.candidates(name)) == expected
