"""Whole lists: the bulk parser agrees with the line parser, and reports say what was dropped and where."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsguard.filter.lists import ListSource, ParsedSource, parse_bytes, parse_file, parse_text, split_lines
from dnsguard.filter.rules import PSEUDO_HOSTS, Outcome, Scope, category, parse_line

SOURCE = ListSource("test", "test.txt")


def parsed_rules(parsed: ParsedSource) -> Counter[tuple[int, int, int]]:
    """(category, name hash, line) of every hash rule, as a multiset."""
    rules: Counter[tuple[int, int, int]] = Counter()
    for block in parsed.blocks:
        for index, name_hash in enumerate(block.hashes):
            rules[(block.category, name_hash, block.line_of(index))] += 1
    return rules


def reference(
    text: str, *, allow: bool = False, subdomains: bool = False, twins: bool = False
) -> tuple[Counter[tuple[int, int, int]], list[tuple[int, str, int]], Counter[str], list[tuple[int, str]]]:
    """What parsing every line on its own with `parse_line` gives."""
    lines = split_lines(text)
    if lines and lines[-1] == "":
        lines.pop()
    rules: Counter[tuple[int, int, int]] = Counter()
    regexes: list[tuple[int, str, int]] = []
    counts: Counter[str] = Counter()
    issues: list[tuple[int, str]] = []
    previous: dict[int, tuple[int, int]] = {}
    # The hosts lines' category: the one the bulk path's shape fills (other rules are never twins).
    hosts = parse_line("0.0.0.0 twin.example", allow=allow, subdomains=subdomains).category
    for number, line in enumerate(lines, 1):
        result = parse_line(line, allow=allow, subdomains=subdomains)
        counts[result.outcome.value] += 1
        for name in result.names if result.outcome is Outcome.RULE else ():
            # A file mixing hosts addresses stores a name repeated on the next line (its twin) once.
            twin = (
                twins
                and result.category == hosts
                and previous.get(result.category) == (hash(name), number - 1)
            )
            previous[result.category] = (hash(name), number)
            if not twin:
                rules[(result.category, hash(name), number)] += 1
        if result.outcome is Outcome.REGEX:
            regexes.append((result.category, result.pattern, number))
        if result.reason:
            issues.append((number, result.reason))
    return rules, regexes, counts, issues


def assert_same_as_line_parser(text: str, *, allow: bool = False, subdomains: bool = False) -> ParsedSource:
    parsed = parse_text(text, ListSource("t", "t.txt", allow=allow, subdomains=subdomains), max_issues=1000)
    twins = " | " in parsed.report.fast_shape
    rules, regexes, counts, issues = reference(text, allow=allow, subdomains=subdomains, twins=twins)
    assert parsed_rules(parsed) == rules
    assert [(r.category, r.pattern, r.line) for r in parsed.regexes] == regexes
    assert parsed.report.counts == {key: value for key, value in counts.items() if value}
    assert [(issue.line, issue.reason) for issue in parsed.report.issues] == issues
    return parsed


# The bulk path only engages when a shape dominates, so generated lists are mostly one shape plus noise
# chosen to hit every check of the bulk validation (bad characters, empty labels, long labels and names,
# numeric endings, pseudo hosts, IDN, case, trailing dots, comments inside runs...).
SHAPES = [
    "0.0.0.0 {}",
    "{}",
    "||{}^",
    "*.{}",
    "server=/{}/",
    "address=/{}/0.0.0.0",
    "@@||{}^",
    "127.0.0.1 {}",
    ":: {}",
]
LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
ODD = st.sampled_from(
    [
        "",
        "   ",
        "# comment",
        "! comment",
        "[Adblock Plus 2.0]",
        "localhost",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-foo.example",
        "localhost.example",
        "0.0.0.0",
        "127.0.0.1 localhost",
        "example.123",
        "1.2.3.4",
        "a" * 64 + ".example",
        "a" * 63 + ".example",
        ".".join(["abcdefghi"] * 26),
        ".".join(["abcdefgh"] * 28),
        "Upper.Example.COM",
        "trailing.example.",
        "..double.example",
        "double..example",
        ".leading.example",
        "bücher.example",
        "0.0.0.0 a.example b.example",
        "0.0.0.0 inline.example # comment",
        "0.0.0.0\ttab.example",
        "||mod.example^$important",
        "||mod.example^$third-party",
        "@@||ok.example^",
        "/^re[0-9]+\\.example$/",
        "||glob*.example^",
        "bad!char.example",
        "sp ace.example",
        "x",
        "-",
        "_",
        "a.b",
        "0.0.0.0 ",
        ":: twin.example",
        "0.0.0.0 twin.example",
        "||^",
        "*.",
    ]
)


@st.composite
def list_texts(draw: st.DrawFn) -> str:
    shape = draw(st.sampled_from(SHAPES))
    lines = [shape.format(draw(NAME)) for _ in range(10)]
    for _ in range(draw(st.integers(0, 40))):
        if draw(st.booleans()):
            lines.append(shape.format(draw(NAME)))
        elif draw(st.booleans()):
            lines.append(shape.format(draw(ODD)))
        else:
            lines.append(draw(ODD))
    lines = draw(st.permutations(lines))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    ending = draw(st.sampled_from(["", newline]))
    return newline.join(lines) + ending


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(list_texts(), st.booleans(), st.booleans())
def test_bulk_parser_agrees_with_line_parser(text: str, allow: bool, subdomains: bool) -> None:
    assert_same_as_line_parser(text, allow=allow, subdomains=subdomains)


def test_bulk_parser_is_used_for_a_dominant_shape() -> None:
    text = "# header\n" + "".join(f"0.0.0.0 host{i}.example\n" for i in range(50))
    parsed = assert_same_as_line_parser(text)
    assert parsed.report.fast_shape == "0.0.0.0 {name}"
    assert parsed.report.rules == 50
    (block,) = parsed.blocks
    assert [block.line_of(i) for i in (0, 49)] == [2, 51]


def test_odd_lines_inside_a_run_keep_line_numbers_straight() -> None:
    lines = [f"||n{i}.example^" for i in range(30)]
    lines[10] = "! comment in the middle"
    lines[11] = "||n11.example^$important"
    lines[20] = "||N20.Example^"
    lines[25] = "||bad!.example^"
    parsed = assert_same_as_line_parser("\n".join(lines))
    assert parsed.report.issue_count == 1
    assert parsed.report.issues[0].line == 26


@pytest.mark.parametrize("pseudo", sorted(PSEUDO_HOSTS | {"ip6-anything"}))
@pytest.mark.parametrize("shape", ["0.0.0.0 {}", "{}", "||{}^"])
def test_pseudo_hosts_are_caught_inside_bulk_runs(pseudo: str, shape: str) -> None:
    lines = [shape.format(f"n{i}.example") for i in range(20)]
    lines.insert(10, shape.format(pseudo))
    parsed = assert_same_as_line_parser("\n".join(lines))
    assert parsed.rule_count == 20


def test_files_listing_each_name_under_two_addresses_count_it_once() -> None:
    names = [f"n{i}.example" for i in range(40)]
    text = "# notracking style\n" + "".join(f"0.0.0.0 {n}\n:: {n}\n" for n in names)
    parsed = parse_text(text, SOURCE)
    assert parsed.report.counts["rule"] == 80
    assert parsed.rule_count == 40
    assert parsed.name_hashes() == {hash(n) for n in names}
    (block,) = parsed.blocks
    lines = {block.hashes[i]: block.line_of(i) for i in range(len(block.hashes))}
    assert lines[hash("n0.example")] == 2
    assert lines[hash("n39.example")] == 80


def test_two_address_files_with_irregular_twins_still_get_exact_lines() -> None:
    body = "".join(f"0.0.0.0 n{i}.example\n:: n{i}.example\n" for i in range(20))
    body += ":: only6.example\n0.0.0.0 only4.example\n"
    parsed = parse_text("# x\n" + body, SOURCE)
    (block,) = parsed.blocks
    lines = {block.hashes[i]: block.line_of(i) for i in range(len(block.hashes))}
    assert lines[hash("only6.example")] == 42
    assert lines[hash("only4.example")] == 43
    assert parsed.rule_count == 22


def test_issue_report_names_source_and_line_and_shows_the_line_as_written() -> None:
    text = "ok.example\nBad!Name.example\n" + "fine.example\n" * 10
    parsed = parse_text(text, ListSource("ads", "https://lists.example/ads.txt"))
    (issue,) = parsed.report.issues
    assert issue.line == 2
    assert issue.text == "Bad!Name.example"
    assert str(issue) == "https://lists.example/ads.txt:2: invalid character '!' in name: 'Bad!Name.example'"
    assert parsed.report.reasons == {"invalid character '!' in name": 1}


def test_report_summary_is_one_line_for_logs() -> None:
    parsed = parse_text("a.example\nbad!.example\n/^r\\./\n", ListSource("l", "l.txt"))
    assert parsed.report.summary() == "l.txt: 1 names, 1 regex, 1 invalid character '!' in name"


def test_only_the_first_issues_are_kept_but_all_are_counted() -> None:
    text = "".join(f"bad!{i}.example\n" for i in range(30))
    parsed = parse_text(text, SOURCE, max_issues=5)
    assert len(parsed.report.issues) == 5
    assert parsed.report.issue_count == 30
    assert parsed.report.counts == {"malformed": 30}


def test_header_declaring_entries_without_subdomains_widens_plain_entries() -> None:
    text = "# Title: x\n# Syntax: Domains (without subdomains)\n" + "".join(
        f"d{i}.example\n" for i in range(20)
    )
    parsed = parse_text(text, SOURCE)
    assert parsed.report.subdomains
    assert {block.category for block in parsed.blocks} == {category(Scope.SUFFIX)}
    explicit = parse_text(text, ListSource("t", "t.txt", subdomains=False))
    assert {block.category for block in explicit.blocks} == {category(Scope.EXACT)}


def test_regex_cap_is_per_source_and_reported() -> None:
    text = "".join(f"/^r{i}\\./\n" for i in range(5))
    parsed = parse_text(text, SOURCE, max_regex=3)
    assert len(parsed.regexes) == 3
    assert parsed.report.counts == {"regex": 3, "skipped": 2}
    assert parsed.report.issues[0].line == 4


def test_regex_rules_keep_case_when_parsed_in_bulk() -> None:
    text = "".join(f"||n{i}.example^\n" for i in range(20)) + "/^ad\\D+\\.example$/\n"
    parsed = parse_text(text, SOURCE)
    assert parsed.regexes[0].pattern == "^ad\\D+\\.example$"


def test_badfilter_rules_are_collected() -> None:
    parsed = parse_text("||a.example^$badfilter\n/^x\\./$badfilter\n", SOURCE)
    assert parsed.badfilters == ((category(Scope.SUFFIX), "a.example"),)
    assert parsed.regex_badfilters == ((category(Scope.EXACT), "^x\\."),)


def test_awkward_texts() -> None:
    for text in [
        "",
        "\n",
        "\ufeff0.0.0.0 bom.example\n",
        "a.example\rb.example\r",
        "a.example\x00\nb.example",
    ]:
        assert_same_as_line_parser(text)
    assert parse_text("", SOURCE).report.lines == 0
    assert parse_text("\ufeffbom.example", SOURCE).rule_count == 1


def test_undecodable_bytes_make_a_line_malformed_not_the_list(tmp_path: Path) -> None:
    parsed = parse_bytes(b"good.example\nbad\xff.example\n", SOURCE)
    assert parsed.rule_count == 1
    assert parsed.report.counts == {"rule": 1, "malformed": 1}


def test_parse_file_names_the_list_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ads.txt"
    path.write_text("0.0.0.0 a.example\n")
    parsed = parse_file(path)
    assert parsed.source == ListSource("ads", str(path), path=str(path))
    assert parse_file(path, "custom", allow=True).source.allow
