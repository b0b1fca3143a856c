"""The compiled matcher: suffix semantics, allow versus block, importance, groups, and provenance."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsguard.app.memory import release_free_memory
from dnsguard.errors import ConfigError, DnsguardError
from dnsguard.filter import (
    NOT_LISTED,
    Action,
    ListSource,
    Matcher,
    RuleKind,
    Verdict,
    compile_matcher,
    parse_file,
    parse_line,
    parse_text,
)
from dnsguard.filter import matcher as matcher_module
from dnsguard.filter.rules import Outcome, Scope, category_allow, category_important, category_scope


def build(
    lists: dict[str, str], *, allow: frozenset[str] = frozenset(), max_regex_rules: int = 1000
) -> Matcher:
    """A matcher from {list name: text}; lists named in `allow` are allowlists."""
    parsed = [
        parse_text(text, ListSource(name, f"{name}.txt", allow=name in allow)) for name, text in lists.items()
    ]
    return compile_matcher(parsed, max_regex_rules=max_regex_rules)


def test_exact_suffix_and_subdomain_rules() -> None:
    matcher = build({"l": "exact.example\n||suffix.example^\n.sub.example^\n"})
    blocked = {
        name
        for name in (
            "exact.example",
            "www.exact.example",
            "suffix.example",
            "a.b.suffix.example",
            "sub.example",
            "a.sub.example",
            "notsuffix.example",
        )
        if matcher.match(name).blocked
    }
    assert blocked == {"exact.example", "suffix.example", "a.b.suffix.example", "a.sub.example"}


def test_allow_in_any_selected_list_beats_block() -> None:
    matcher = build(
        {
            "ads": "||tracker.example^\n||example.com^\n",
            "ok": "@@||safe.example.com^\n",
            "kids": "x.example\n",
        }
    )
    assert matcher.match("a.tracker.example").blocked
    assert matcher.match("safe.example.com").action is Action.ALLOW
    assert matcher.match("deep.safe.example.com").action is Action.ALLOW
    assert matcher.match("other.example.com").blocked
    group = matcher.select(["ads"])
    assert group.match("safe.example.com").blocked


def test_allow_of_a_parent_beats_a_more_specific_block() -> None:
    matcher = build({"b": "||ads.cdn.example^\n", "a": "cdn.example\n"}, allow=frozenset({"a"}))
    assert matcher.match("ads.cdn.example").blocked, "an exact allow of the parent does not cover children"
    widened = compile_matcher(
        [
            parse_text("||ads.cdn.example^\n", ListSource("b", "b.txt")),
            parse_text("cdn.example\n", ListSource("a", "a.txt", allow=True, subdomains=True)),
        ]
    )
    assert widened.match("ads.cdn.example").action is Action.ALLOW


def test_important_block_beats_allow_and_important_allow_beats_everything() -> None:
    matcher = build(
        {"l": "||a.example^$important\n@@||a.example^\n@@||b.example^$important\n||b.example^$important\n"}
    )
    verdict = matcher.match("x.a.example")
    assert verdict.blocked
    assert verdict.important
    assert matcher.match("x.b.example").action is Action.ALLOW
    assert matcher.match("x.b.example").important


def test_verdict_says_which_list_source_line_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "ads.txt"
    path.write_text("# ads\n\n0.0.0.0 one.example two.example\n||Tracker.Example^\n")
    matcher = compile_matcher([parse_file(path, "ads")])
    verdict = matcher.match("px.tracker.example")
    assert verdict == Verdict(Action.BLOCK, "ads", str(path), 4, "tracker.example", RuleKind.SUFFIX, False)
    assert verdict.rule == "||tracker.example^"
    assert matcher.source_line(verdict) == "||Tracker.Example^"
    assert matcher.match("two.example") == Verdict(
        Action.BLOCK, "ads", str(path), 3, "two.example", RuleKind.EXACT, False
    )
    assert matcher.match("two.example").rule == "|two.example^"
    assert matcher.explain("px.tracker.example") == (
        f"px.tracker.example: blocked by list 'ads', rule ||tracker.example^ ({path}:4: ||Tracker.Example^)"
    )
    assert matcher.explain("nothing.example") == "nothing.example: no rule in the selected lists"


def test_query_case_and_trailing_dot_do_not_matter() -> None:
    matcher = build({"l": "||ads.example^\n"})
    group = matcher.select()
    assert group.match("X.AdS.Example.").blocked
    assert group.is_blocked("ADS.EXAMPLE")
    assert group.match_canonical("x.ads.example").blocked
    assert group.match_canonical("X.ADS.EXAMPLE") is NOT_LISTED, "match_canonical trusts its caller"


def test_more_rules_than_the_index_can_number_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matcher_module, "_MAX_ENTRIES", 3)
    with pytest.raises(DnsguardError, match="exceed"):
        build({"l": "a.example\nb.example\nc.example\nd.example\n"})


def test_unlisted_names_share_one_verdict() -> None:
    matcher = build({"l": "a.example\n"})
    assert matcher.match("b.example") is NOT_LISTED
    assert not NOT_LISTED.blocked
    assert NOT_LISTED.rule == ""


def test_source_line_is_none_when_the_source_cannot_be_read() -> None:
    matcher = compile_matcher([parse_text("a.example\n", ListSource("l", "https://lists.example/l.txt"))])
    verdict = matcher.match("a.example")
    assert verdict.source == "https://lists.example/l.txt"
    assert matcher.source_line(verdict) is None
    assert matcher.source_line(NOT_LISTED) is None


def test_groups_select_lists_and_unknown_lists_are_refused() -> None:
    matcher = compile_matcher(
        [parse_text("||ads.example^\n", ListSource("ads", "ads.txt"))], lists=["empty", "ads"]
    )
    assert matcher.list_names == ("empty", "ads")
    assert not matcher.select(["empty"]).is_blocked("ads.example")
    assert matcher.select(["empty", "ads"]).is_blocked("ads.example")
    assert matcher.select([]).match("ads.example") is NOT_LISTED
    with pytest.raises(ConfigError, match="no list named 'nope'"):
        matcher.select(["nope"])


def test_several_sources_make_one_list() -> None:
    matcher = compile_matcher(
        [
            parse_text("a.example\n", ListSource("ads", "one.txt")),
            parse_text("b.example\n", ListSource("ads", "two.txt")),
        ]
    )
    assert matcher.list_names == ("ads",)
    assert matcher.match("b.example").source == "two.txt"


def test_regex_rules_decide_only_what_hash_rules_leave_open() -> None:
    matcher = build(
        {
            "l": "/^ad[0-9]+\\./\n||ads.example^\n||glob*.example^\n||pre.\n/track/\n",
            "ok": "@@/^ad7\\./\n@@|ad8.example^\n",
        }
    )
    assert matcher.match("ad1.example").kind is RuleKind.REGEX
    assert matcher.match("ad1.example").rule == "/^ad[0-9]+\\./"
    assert matcher.match("ad7.example").action is Action.ALLOW
    assert matcher.match("ad8.example").action is Action.ALLOW
    assert matcher.match("x.ads.example").kind is RuleKind.SUFFIX
    assert matcher.match("globx.example").blocked
    assert matcher.match("pre.anything.net").blocked
    assert matcher.match("a.tracker.net").blocked
    assert not matcher.match("example.org").blocked
    assert matcher.regex_count == 5


def test_regex_rules_compile_lazily_and_are_capped() -> None:
    matcher = build({"l": "".join(f"/^r{i}\\./\n" for i in range(5))}, max_regex_rules=3)
    assert matcher.regex_count == 3
    assert matcher.dropped_regexes == 2
    assert all(rule._compiled is None for rule in matcher._regexes)
    assert matcher.match("r1.example").blocked
    assert not matcher.match("r4.example").blocked


def test_badfilter_disables_the_same_rule_in_every_list() -> None:
    matcher = build(
        {
            "a": "||ads.example^\n||keep.example^$important\n/^re\\./\n",
            "b": "||ads.example^$badfilter\n||keep.example^$badfilter\n/^re\\./$badfilter\n",
        }
    )
    assert not matcher.match("ads.example").blocked
    assert matcher.match("keep.example").blocked, "$badfilter must match the modifiers too"
    assert not matcher.match("re.example").blocked


def test_cached_verdicts_are_reused_and_the_cache_stays_bounded() -> None:
    matcher = build({"l": "||ads.example^\n"})
    group = matcher.select(cache_size=2)
    first = group.match("a.ads.example")
    assert group.match("a.ads.example") is first
    for name in ("b.ads.example", "c.ads.example", "d.ads.example"):
        group.match(name)
    assert len(group._cache) <= 2


def test_reports_outlive_the_parsed_sources_and_memory_can_be_released() -> None:
    parsed = [parse_text("a.example\nbad!.example\n", ListSource("l", "l.txt"))]
    matcher = compile_matcher(parsed)
    del parsed
    release_free_memory()
    (report,) = matcher.reports
    assert report.issue_count == 1
    assert matcher.memory_bytes > 0
    assert matcher.match("a.example").blocked


def test_parent_results_are_cached_per_group_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matcher_module, "_PARENT_CACHE_SIZE", 3)
    group = build({"l": "||ads.example^\n@@||ok.ads.example^\n"}).select(cache_size=0)
    for name in ("a.b.c.example", "x.ok.ads.example", "y.ads.example", "z.other.example", "q.ads.example"):
        group.match(name)
    assert len(group._chains) <= 3
    assert group.match("deep.ok.ads.example").action is Action.ALLOW
    assert group.match("deep.ads.example").blocked


def test_empty_matcher() -> None:
    matcher = compile_matcher([])
    assert matcher.rule_count == 0
    assert matcher.match("anything.example") is NOT_LISTED


# The matcher against a naive model: a name is blocked iff some selected rule covering it blocks and no
# covering allow rule is as strong; strength is important allow > important block > allow > block.

LABELS = ["a", "b", "ads", "x"]
NAMES = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(".".join)
QUERIES = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
RULE_FORMS = {
    (Scope.EXACT, False, False): ["0.0.0.0 {}", "{}", "|{}^", "://{}^"],
    (Scope.SUFFIX, False, False): ["||{}^", "*.{}", "server=/{}/", "address=/{}/0.0.0.0"],
    (Scope.SUBDOMAINS, False, False): [".{}^", "://*.{}^"],
    (Scope.EXACT, True, False): ["@@|{}^"],
    (Scope.SUFFIX, True, False): ["@@||{}^"],
    (Scope.SUBDOMAINS, True, False): ["@@.{}^"],
}
LINE = st.tuples(st.sampled_from(sorted(RULE_FORMS, key=str)), st.booleans(), NAMES, st.integers(0, 3)).map(
    lambda t: (
        RULE_FORMS[t[0]][t[3] % len(RULE_FORMS[t[0]])].format(t[2])
        + ("$important" if t[1] and RULE_FORMS[t[0]][0].startswith(("|", "@", ".", ":")) else "")
    )
)


def covers(scope: Scope, listed: str, query: str) -> bool:
    if scope is Scope.EXACT:
        return query == listed
    below = query.endswith("." + listed)
    return below or (scope is Scope.SUFFIX and query == listed)


def strength(cat: int) -> int:
    if category_allow(cat):
        return 4 if category_important(cat) else 2
    return 3 if category_important(cat) else 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(LINE, max_size=12), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.lists(QUERIES, min_size=1, max_size=20),
)
def test_matcher_agrees_with_naive_model(
    lists: list[list[str]], selected: list[bool], queries: list[str]
) -> None:
    texts = {f"l{i}": "\n".join(lines) + "\n" for i, lines in enumerate(lists)}
    matcher = build(texts)
    chosen = [name for name, keep in zip(texts, selected, strict=False) if keep]
    group = matcher.select(chosen)
    rules: list[tuple[str, int, str, int]] = []
    for name in chosen:
        for number, line in enumerate(texts[name].split("\n"), 1):
            result = parse_line(line)
            if result.outcome is Outcome.RULE:
                rules.extend((name, number, listed, result.category) for listed in result.names)
    for query in queries:
        covering = [r for r in rules if covers(category_scope(r[3]), r[2], query)]
        verdict = group.match(query)
        if not covering:
            assert verdict is NOT_LISTED
            continue
        strongest = max(strength(r[3]) for r in covering)
        assert verdict.action is (Action.ALLOW if strongest % 2 == 0 else Action.BLOCK)
        assert verdict.important == (strongest > 2)
        # The verdict names one of the strongest covering rules, down to its line.
        candidates = {(r[0], r[1], r[2]) for r in covering if strength(r[3]) == strongest}
        assert (verdict.list_name, verdict.line, verdict.rule_name) in candidates
        assert verdict.source == f"{verdict.list_name}.txt"
