"""Line syntax: what each blocklist line means, format by format, including the odd ones."""

from __future__ import annotations

import re

import pytest

from dnsguard.filter.regex_hints import label_hint, regex_hints
from dnsguard.filter.rules import (
    LineResult,
    Outcome,
    Scope,
    canonical_name,
    category,
    parse_line,
)

EXACT = category(Scope.EXACT)
SUFFIX = category(Scope.SUFFIX)
SUBDOMAINS = category(Scope.SUBDOMAINS)
ALLOW_SUFFIX = category(Scope.SUFFIX, allow=True)
ALLOW_EXACT = category(Scope.EXACT, allow=True)


def rule(cat: int, *names: str) -> LineResult:
    return LineResult(Outcome.RULE, cat, names)


# Hosts files.


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 ads.example.com", rule(EXACT, "ads.example.com")),
        ("127.0.0.1 x.example", rule(EXACT, "x.example")),
        (":: tracker.example.net", rule(EXACT, "tracker.example.net")),
        ("0.0.0.0 a.example b.example c.example", rule(EXACT, "a.example", "b.example", "c.example")),
        ("0.0.0.0\ttab.example", rule(EXACT, "tab.example")),
        ("0.0.0.0 ads.example.com # served by the ad network", rule(EXACT, "ads.example.com")),
        ("0.0.0.0 ads.example.com#comment", rule(EXACT, "ads.example.com")),
        ("  0.0.0.0   spaced.example  ", rule(EXACT, "spaced.example")),
        ("0.0.0.0 Upper.Example.COM.", rule(EXACT, "upper.example.com")),
    ],
)
def test_hosts_lines(line: str, expected: LineResult) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "127.0.0.1 localhost",
        "127.0.0.1 localhost.localdomain",
        "127.0.0.1 local",
        "255.255.255.255 broadcasthost",
        "::1 localhost",
        "::1 ip6-localhost",
        "::1 ip6-loopback",
        "fe80::1%lo0 localhost",
        "ff00::0 ip6-localnet",
        "ff00::0 ip6-mcastprefix",
        "ff02::1 ip6-allnodes",
        "ff02::2 ip6-allrouters",
        "ff02::3 ip6-allhosts",
        "0.0.0.0 0.0.0.0",
    ],
)
def test_hosts_pseudo_entries_are_ignored(line: str) -> None:
    assert parse_line(line).outcome is Outcome.PSEUDO


def test_hosts_line_keeps_real_names_next_to_pseudo_ones() -> None:
    assert parse_line("127.0.0.1 localhost ads.example") == rule(EXACT, "ads.example")


def test_hosts_line_with_one_bad_name_keeps_the_others_and_says_why() -> None:
    result = parse_line("0.0.0.0 good.example bad$name.example")
    assert result.outcome is Outcome.RULE
    assert result.names == ("good.example",)
    assert "bad$name.example" in result.reason


def test_hosts_line_without_an_address_is_malformed() -> None:
    assert parse_line("ads.example.com tracker.example.com").outcome is Outcome.MALFORMED


@pytest.mark.parametrize("line", ["::1", "0.0.0.0", "192.168.1.1"])
def test_a_bare_address_is_an_ip_rule_and_skipped(line: str) -> None:
    result = parse_line(line)
    assert result.outcome in (Outcome.SKIPPED, Outcome.PSEUDO)


def test_hosts_subdomains_option_widens_entries() -> None:
    assert parse_line("0.0.0.0 ads.example", subdomains=True) == rule(SUFFIX, "ads.example")


# Plain domains and wildcards.


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ads.example.com", rule(EXACT, "ads.example.com")),
        ("ADS.Example.Com", rule(EXACT, "ads.example.com")),
        ("ads.example.com.", rule(EXACT, "ads.example.com")),
        ("_dmarc.example.com", rule(EXACT, "_dmarc.example.com")),
        ("xn--80abnuns.xn--p1acf", rule(EXACT, "xn--80abnuns.xn--p1acf")),
        (
            "\u0431\u0430\u043d\u0440\u0435\u043a.\u0440\u0443\u0441",
            rule(EXACT, "xn--80abnuns.xn--p1acf"),
        ),  # a Cyrillic name from the AdGuard filter
        ("Bücher.example", rule(EXACT, "xn--bcher-kva.example")),
        ("single", rule(EXACT, "single")),
        ("*.ads.example.com", rule(SUFFIX, "ads.example.com")),
    ],
)
def test_plain_and_wildcard_lines(line: str, expected: LineResult) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ads..example.com", "empty label"),
        (".", "empty name"),
        ("bad name!.example", "expected an address"),
        ("bad!name.example", "invalid character"),
        ("a" * 64 + ".example", "label longer than 63"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("example.123", "numeric top-level label"),
        ("\ud800.example", "internationalized"),
    ],
)
def test_invalid_names_are_malformed(line: str, reason: str) -> None:
    result = parse_line(line)
    assert result.outcome is Outcome.MALFORMED
    assert reason in result.reason


def test_plain_subdomains_option() -> None:
    assert parse_line("ads.example", subdomains=True) == rule(SUFFIX, "ads.example")


@pytest.mark.parametrize(
    "line", ["", "   ", "# a comment", "! adblock comment", "[Adblock Plus 2.0]", "##.banner"]
)
def test_blank_and_comment_lines(line: str) -> None:
    assert parse_line(line).outcome in (Outcome.BLANK, Outcome.COMMENT)


# Adblock / AdGuard DNS syntax.


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("||ads.example.com^", rule(SUFFIX, "ads.example.com")),
        ("||ads.example.com^|", rule(SUFFIX, "ads.example.com")),
        ("||ads.example.com", rule(SUFFIX, "ads.example.com")),
        ("||ADS.example.com^", rule(SUFFIX, "ads.example.com")),
        ("@@||ok.example.com^", rule(ALLOW_SUFFIX, "ok.example.com")),
        ("@@||ok.example.com^|", rule(ALLOW_SUFFIX, "ok.example.com")),
        ("@@ok.example.com^", rule(ALLOW_SUFFIX, "ok.example.com")),
        ("||ads.example.com^$important", rule(category(Scope.SUFFIX, important=True), "ads.example.com")),
        (
            "@@||ok.example.com^$important",
            rule(category(Scope.SUFFIX, allow=True, important=True), "ok.example.com"),
        ),
        ("|exact.example.com^", rule(EXACT, "exact.example.com")),
        ("://exact.example.com^", rule(EXACT, "exact.example.com")),
        ("//exact.example.com^", rule(EXACT, "exact.example.com")),
        ("http://exact.example.com^", rule(EXACT, "exact.example.com")),
        ("|https://exact.example.com^", rule(EXACT, "exact.example.com")),
        (".under.example.com^", rule(SUBDOMAINS, "under.example.com")),
        ("://*.under.example.com^", rule(SUBDOMAINS, "under.example.com")),
        ("||*.under.example.com^", rule(SUBDOMAINS, "under.example.com")),
        ("*.under.example.com^", rule(SUBDOMAINS, "under.example.com")),
        ("bare.example.com^", rule(SUFFIX, "bare.example.com")),
        (
            "||\u0437\u0435\u0440\u043a\u0430\u043b\u043e.\u0440\u0444^",
            rule(SUFFIX, "xn--80ajfngsk.xn--p1ai"),
        ),
    ],
)
def test_adblock_rules(line: str, expected: LineResult) -> None:
    assert parse_line(line) == expected


def test_adblock_exception_in_an_allowlist_and_block_syntax_in_an_allowlist_are_both_allow() -> None:
    assert parse_line("||ok.example^", allow=True) == rule(ALLOW_SUFFIX, "ok.example")
    assert parse_line("@@||ok.example^", allow=True) == rule(ALLOW_SUFFIX, "ok.example")
    assert parse_line("ok.example", allow=True) == rule(ALLOW_EXACT, "ok.example")


def test_badfilter_names_the_rule_it_disables() -> None:
    result = parse_line("||ads.example.com^$badfilter")
    assert result == LineResult(Outcome.BADFILTER, SUFFIX, ("ads.example.com",))
    important = parse_line("||ads.example.com^$important,badfilter")
    assert important.category == category(Scope.SUFFIX, important=True)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("||ads.example.com^$third-party", "$third-party does not apply"),
        ("||ads.example.com^$image,script", "$image does not apply"),
        ("||ads.example.com/banner", "url rule"),
        ("||ads.example.com^*partner=", "url rule"),
        ("||ads.example.com:8080", "url rule"),
        ("||ad.doubleclick.*;sz=", "url rule"),
        ("example.com##.ad-banner", "cosmetic"),
        ("example.com#%#window.x = 1;", "cosmetic"),
        ("||1.2.3.4^", "ip address rule"),
        ("||104.154.", "ip address rule"),
    ],
)
def test_adblock_rules_that_make_no_sense_for_dns_are_skipped_with_a_reason(line: str, reason: str) -> None:
    result = parse_line(line)
    assert result.outcome is Outcome.SKIPPED
    assert reason in result.reason


@pytest.mark.parametrize(
    ("line", "matches", "misses"),
    [
        ("||alishop*.ru^", ["alishop1.ru", "x.alishop-x.y.ru"], ["alishop.com", "xalishop1.ru"]),
        ("||admulti.", ["admulti.com", "x.admulti.net"], ["xadmulti.com", "admulti"]),
        ("ads*.example.com", ["ads1.example.com", "ads.x.example.com"], ["x.ads1.example.com"]),
        ("@@||*-go.example.net^", ["a-go.example.net", "x.y-go.example.net"], ["go.example.net"]),
        ("://example.", ["example.com"], ["x.example.com"]),
    ],
)
def test_wildcard_patterns_become_regex_rules(line: str, matches: list[str], misses: list[str]) -> None:
    result = parse_line(line)
    assert result.outcome is Outcome.REGEX
    compiled = re.compile(result.pattern)
    assert all(compiled.search(name) for name in matches)
    assert not any(compiled.search(name) for name in misses)


# dnsmasq.


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("address=/ads.example.com/0.0.0.0", rule(SUFFIX, "ads.example.com")),
        ("address=/ads.example.com/", rule(SUFFIX, "ads.example.com")),
        ("address=/ads.example.com/::", rule(SUFFIX, "ads.example.com")),
        ("address=/a.example/b.example/#", rule(SUFFIX, "a.example", "b.example")),
        ("server=/ads.example.com/", rule(SUFFIX, "ads.example.com")),
        ("local=/ads.example.com/", rule(SUFFIX, "ads.example.com")),
    ],
)
def test_dnsmasq_rules(line: str, expected: LineResult) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("server=/corp.example/10.0.0.1", "forwarding"),
        ("address=/printer.lan/192.168.1.5", "rewrite"),
        ("conf-file=/etc/dnsmasq.d/more.conf", "dnsmasq option"),
    ],
)
def test_dnsmasq_lines_that_are_not_blocks_are_skipped(line: str, reason: str) -> None:
    result = parse_line(line)
    assert result.outcome is Outcome.SKIPPED
    assert reason in result.reason


# Regex rules.


def test_regex_rule_keeps_its_case_and_modifiers() -> None:
    assert parse_line(r"/^ad\D+\.example\.com$/") == LineResult(
        Outcome.REGEX, EXACT, pattern=r"^ad\D+\.example\.com$"
    )
    allow = parse_line(r"@@/^ok\./$important")
    assert allow.outcome is Outcome.REGEX
    assert allow.category == category(Scope.EXACT, allow=True, important=True)


@pytest.mark.parametrize(
    ("line", "outcome", "reason"),
    [
        ("/ads(/", Outcome.MALFORMED, "invalid regex"),
        ("/(a)\\1/", Outcome.MALFORMED, "backreference"),
        ("/" + "a" * 600 + "/", Outcome.MALFORMED, "longer than"),
    ],
)
def test_dangerous_or_broken_regexes_are_refused(line: str, outcome: Outcome, reason: str) -> None:
    result = parse_line(line)
    assert result.outcome is outcome
    assert reason in result.reason


def test_a_url_path_that_looks_like_a_regex_is_a_url_rule() -> None:
    assert parse_line("/banner/*/img^").outcome is Outcome.SKIPPED


# Names and regex hints.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("  example.com ", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("bad name", None),
        ("1.2.3.4", None),
        ("", None),
    ],
)
def test_canonical_name(text: str, expected: str | None) -> None:
    assert canonical_name(text) == expected


@pytest.mark.parametrize(
    ("pattern", "suffix", "literal"),
    [
        (r"(?:^|\.)alishop.*\.ru$", "ru", "alishop"),
        (r"^ad[0-9]+\.example\.com$", "example.com", ".example.com"),
        (r"ads|track", "", ""),
        (r"x\.co\.uk$", "co.uk", "x.co.uk"),
        (r"a?bc\.com$", "com", "bc.com"),
        (r"ab+c\.com$", "com", "c.com"),
        (r"\bads\b", "", "ads"),
        (r"^[^.[:space:]]+\.ads\.com$", "ads.com", ".ads.com"),
        (r"^[[:alpha:]]x\.net$", "net", "x.net"),
    ],
)
def test_regex_hints_are_conservative(pattern: str, suffix: str, literal: str) -> None:
    assert regex_hints(pattern) == (suffix, literal)


@pytest.mark.parametrize(
    ("pattern", "label"),
    [
        (r"(?:^|\.)admulti\.", "admulti"),
        (r"^ads\.", "ads"),
        (r"(^|\.)Tracker\.", "tracker"),
        (r"ads\.", ""),
        (r"^ab?c\.", ""),
        (r"^abc\.|x", ""),
    ],
)
def test_label_hint(pattern: str, label: str) -> None:
    assert label_hint(pattern) == label
