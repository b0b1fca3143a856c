"""Regex rules cannot backtrack: they run on RE2, and what RE2 cannot run is refused at load, line by line.

No test here measures time. The property that matters (a search is one pass over the name) is RE2's,
so the tests check that every accepted pattern is compiled by RE2 within the program-size bound, and
that the patterns that stall a backtracking engine are accepted and answer correctly on 255-character
names (under `re` these searches would run for longer than the age of the universe).
"""

from __future__ import annotations

import re

import pytest
import re2  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsguard.errors import DnsguardError
from dnsguard.filter import ListSource, compile_matcher, parse_line, parse_text
from dnsguard.filter.regex import MAX_PROGRAM_SIZE, compile_regex, regex_problem
from dnsguard.filter.regex_hints import label_hint, regex_hints
from dnsguard.filter.rules import Outcome

# 255 characters, the longest a name can be: four 63-character labels. Each is built to make a
# backtracking engine try every way of splitting it before it fails.
ALL_A = "a" * 255
LABELS_OF_A = ".".join(["a" * 63] * 4)
A_THEN_B = "a" * 254 + "b"
ADVERSARIAL_NAMES = (ALL_A, LABELS_OF_A, A_THEN_B, "ab." * 85, "a-" * 127 + "a")


def is_re2(compiled: object) -> bool:
    return type(compiled).__module__ == re2.__name__


@pytest.mark.parametrize(
    ("pattern", "matching", "missing"),
    [
        (r"^(a|a)*$", ALL_A, A_THEN_B),
        (r"^(a|aa)+$", ALL_A, LABELS_OF_A),
        (r"^(a|a|\.)*$", LABELS_OF_A, A_THEN_B),
        (r"^(a+)+$", ALL_A, A_THEN_B),
        (r"(a*)*b", A_THEN_B, ALL_A),
        (r"^(.*a){20}$", ALL_A, A_THEN_B),
        (r"^(a|a?)+c", "a" * 254 + "c", A_THEN_B),
        (r"(\w+\.?)+\.example$", "x." * 120 + "example", "x." * 120 + "example.net"),
    ],
)
def test_patterns_that_stall_a_backtracking_engine_are_accepted_and_answer(
    pattern: str, matching: str, missing: str
) -> None:
    result = parse_line(f"/{pattern}/")
    assert result.outcome is Outcome.REGEX
    compiled = compile_regex(pattern)
    assert is_re2(compiled)
    assert compiled.search(matching) is not None
    assert compiled.search(missing) is None


def test_the_matcher_answers_a_catastrophic_rule_on_a_255_character_name() -> None:
    matcher = compile_matcher([parse_text("/^(a|a|\\.)*$/\n", ListSource("l", "l.txt"))])
    assert matcher.match(LABELS_OF_A).blocked
    assert not matcher.match(LABELS_OF_A[:-1] + "b").blocked
    assert all(is_re2(rule._compiled) for rule in matcher._regexes)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "backreference"),
        (r"(?P<x>a)(?P=x)", "backreference"),
        (r"(?=ads)a", "lookahead"),
        (r"(?!ok)ads", "lookahead"),
        (r"(?<=x)ads", "lookbehind"),
        (r"(?<!x)ads", "lookbehind"),
        (r"(?>a+)b", "atomic group"),
        (r"a++b", "possessive quantifier"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"ads\Z", r"\Z (write $)"),
        (r"a{,3}b", "{,n}"),
        (r"\Qa.b\E", r"\Q...\E"),
        (r"[a-z.-]{1,200}x$", "too complex"),
        (r"\pL+\.com$", "too complex"),
        (r"a{1001}", "invalid regex"),
        (r"ads(", "invalid regex"),
    ],
)
def test_what_needs_backtracking_or_is_unbounded_is_refused(pattern: str, reason: str) -> None:
    problem = regex_problem(pattern)
    assert reason in problem
    result = parse_line(f"/{pattern}/")
    assert result.outcome is Outcome.MALFORMED
    assert result.reason == problem
    with pytest.raises(DnsguardError, match="refused"):
        compile_regex(pattern)


def test_an_escaped_backslash_before_q_is_not_quoting() -> None:
    assert regex_problem(r"a\\Q") == ""
    assert regex_problem(r"a\\\Q") != ""


def test_refused_regex_lines_are_malformed_with_file_and_line() -> None:
    text = "||ok.example^\n/(a)\\1/\n/^ads?[0-9]*\\./\n@@/(?!x)y/\n"
    parsed = parse_text(text, ListSource("l", "lists/l.txt"))
    assert parsed.report.counts == {"rule": 1, "regex": 1, "malformed": 2}
    assert [str(issue) for issue in parsed.report.issues] == [
        "lists/l.txt:2: unsupported regex syntax: backreference (needs a backtracking engine): '/(a)\\\\1/'",
        "lists/l.txt:4: unsupported regex syntax: lookahead (needs a backtracking engine): '@@/(?!x)y/'",
    ]
    assert [rule.line for rule in parsed.regexes] == [3]


def test_a_wildcard_rule_with_too_many_stars_is_malformed() -> None:
    assert parse_line("||a*b*c^").outcome is Outcome.REGEX
    result = parse_line("||" + "a*" * 200 + "b^")
    assert result.outcome is Outcome.MALFORMED
    assert "too complex" in result.reason


# Any accepted pattern: RE2 within the program bound, whatever the grammar throws at the parser. The
# atoms and operators include everything that makes a backtracking engine exponential or polynomial.

# Refused constructs are a few entries among many, so that most generated patterns are accepted.
ATOMS = st.sampled_from(
    ["a", "a", "b", r"\.", ".", ".", "[a-z]", "[^.]", r"\d", r"\w", "-", "(?:a|a)", "(a|aa)", r"\1"]
)
QUANTIFIERS = st.sampled_from(["", "", "*", "*", "+", "+", "?", "{2}", "{1,5}", "{20}", "*?", "++", "{,4}"])

GROUP_OPENERS = st.sampled_from(["", "", "?:", "?:", "?:", "?=", "?!", "?<="])


def regexes() -> st.SearchStrategy[str]:
    piece = st.builds(lambda atom, quantifier: atom + quantifier, ATOMS, QUANTIFIERS)
    sequence = st.lists(piece, min_size=1, max_size=4).map("".join)
    return st.recursive(
        sequence,
        lambda inner: st.one_of(
            st.builds(lambda x, q: f"({x}){q}", inner, QUANTIFIERS),
            st.builds(lambda x, y: f"{x}|{y}", inner, inner),
            st.builds(lambda x, y: x + y, inner, inner),
            st.builds(lambda x, look: f"({look}{x})", inner, GROUP_OPENERS),
        ),
        max_leaves=8,
    ).map(lambda body: body if len(body) % 3 else f"^{body}$")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regexes())
def test_every_accepted_regex_runs_on_re2_within_the_program_bound(pattern: str) -> None:
    result = parse_line(f"/{pattern}/")
    problem = regex_problem(pattern)
    assert (result.outcome is Outcome.REGEX) == (problem == "")
    if problem:
        assert result.outcome is Outcome.MALFORMED
        return
    compiled = compile_regex(pattern)
    assert is_re2(compiled)
    assert compiled.programsize <= MAX_PROGRAM_SIZE
    for name in ADVERSARIAL_NAMES:
        compiled.search(name)


# On the patterns both engines accept, RE2 answers as `re` did: lists written for the old engine keep
# their meaning. Quantifiers apply to single atoms only here so that `re` itself stays fast.

SIMPLE_ATOMS = st.sampled_from(
    ["a", "b", "c", "0", "-", r"\.", ".", "[a-c]", "[^.]", r"\d", r"\w", "[[:digit:]]", "(?:a|bc)"]
)
SIMPLE_QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,3}", "*?"])


def simple_regexes() -> st.SearchStrategy[str]:
    piece = st.builds(lambda atom, quantifier: atom + quantifier, SIMPLE_ATOMS, SIMPLE_QUANTIFIERS)
    body = st.lists(piece, min_size=1, max_size=6).map("".join)
    anchored = st.builds(
        lambda start, middle, end: start + middle + end,
        st.sampled_from(["", "^", r"(?:^|\.)", r"\b"]),
        body,
        st.sampled_from(["", "$", r"\.", r"\b"]),
    )
    return st.one_of(anchored, st.builds(lambda x, y: f"{x}|{y}", anchored, anchored))


NAMES = st.text(alphabet="abc0-.", min_size=1, max_size=40)


@settings(max_examples=500, deadline=None)
@given(simple_regexes(), st.lists(NAMES, min_size=1, max_size=8))
def test_re2_agrees_with_re_on_patterns_both_accept(pattern: str, names: list[str]) -> None:
    if "[[:" in pattern:
        # Python reads [[:digit:]] as a set of characters followed by ']'; RE2 as a POSIX class.
        reference = re.compile(pattern.replace("[[:digit:]]", "[0-9]"), re.IGNORECASE)
    else:
        reference = re.compile(pattern, re.IGNORECASE)
    assert regex_problem(pattern) == ""
    compiled = compile_regex(pattern)
    for name in names:
        assert (compiled.search(name) is not None) == (reference.search(name) is not None), name


# The hints (required suffix, label, literal) decide which regex rules the matcher tries for a name: a
# wrong hint would let a listed name through. Each generated pattern comes with a name built to match
# it, and every hint must hold for that name, in RE2's reading of the escapes and classes.

HINT_ATOMS = st.sampled_from(
    [
        ("a", "a"),
        ("ds", "ds"),
        ("ads", "ads"),
        ("-", "-"),
        (r"\.", "."),
        (r"\-", "-"),
        (r"\x61", "a"),
        (r"\x{62}", "b"),
        (r"\141", "a"),
        ("[[:alpha:]]", "z"),
        ("[^.[:space:]]", "w"),
        (r"[\x5d-]", "-"),
        (r"\d", "7"),
        (".", "k"),
        ("(?:ad|bc)", "bc"),
        ("(?i:AD)", "ad"),
    ]
)
HINT_QUANTIFIERS = st.sampled_from([("", 1), ("+", 2), ("*", 0), ("*", 2), ("?", 0), ("?", 1), ("{2}", 2)])
HINT_STARTS = st.sampled_from([("", "x."), ("^", ""), (r"(?:^|\.)", ""), (r"(^|\.)", "y.")])
HINT_ENDS = st.sampled_from(
    [("", ".z"), ("$", ""), (r"\.", ".z"), (r"\.com$", ".com"), (r"\.co\.uk$", ".co.uk")]
)


def quantified(atom: str, quantifier: str) -> str:
    return f"(?:{atom}){quantifier}" if quantifier and atom.isalpha() and len(atom) > 1 else atom + quantifier


@st.composite
def patterns_with_a_match(draw: st.DrawFn) -> tuple[str, str]:
    start, head = draw(HINT_STARTS)
    end, tail = draw(HINT_ENDS)
    pieces = draw(st.lists(st.tuples(HINT_ATOMS, HINT_QUANTIFIERS), min_size=1, max_size=6))
    # A quantifier applies to a whole multi-character literal only inside a group.
    pattern = start + "".join(quantified(atom, quantifier) for (atom, _), (quantifier, _) in pieces) + end
    name = head + "".join(text * count for (_, text), (_, count) in pieces) + tail
    return pattern, name


@settings(max_examples=500, deadline=None)
@given(patterns_with_a_match())
def test_regex_hints_hold_for_every_name_the_pattern_matches(case: tuple[str, str]) -> None:
    pattern, name = case
    compiled = compile_regex(pattern)
    assert compiled.search(name) is not None
    suffix, literal = regex_hints(pattern)
    assert literal in name
    assert not suffix or name == suffix or name.endswith("." + suffix)
    label = label_hint(pattern)
    assert not label or label in name.split(".")
    matcher = compile_matcher([parse_text(f"/{pattern}/\n", ListSource("l", "l.txt"))])
    assert matcher.select().match_canonical(name).blocked
