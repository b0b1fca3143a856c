"""Blocklists and allowlists: parsing every common format, and one compact matcher for all of them.

Typical use (dnsguard/app/lists.py parses and compiles the configured lists; policy/engine.py selects
once per client group; the resolver matches per query)::

    parsed = [parse_file("hosts.txt", "ads"), parse_text(text, ListSource("ads", url)), ...]
    matcher = compile_matcher(parsed)                         # matcher.reports: what was skipped, where
    del parsed                                                # then give the pages back (app/memory.py)
    kids = matcher.select(["ads", "adult", "allow-school"])   # once per policy group
    verdict = kids.match("tracker.example.com")               # per query: canonical name in
    if verdict.blocked: ...                                   # verdict.list_name, .source, .line, .rule

Formats are detected per line: hosts (``0.0.0.0 a b``, ``::1 x``, inline ``#`` comments, localhost-style
entries ignored), plain domains, wildcards (``*.x``), adblock / AdGuard DNS syntax (``||x^``, ``@@``
exceptions, ``$important``, ``$badfilter``), dnsmasq (``address=/x/0.0.0.0``, ``server=/x/``) and regex
(``/re/``). Names are lower-cased, IDN names converted to punycode, one trailing dot dropped.

Matching semantics:

- hosts and plain entries: the exact name; with the list option ``subdomains: true`` (or a header saying
  "Domains (without subdomains)") the name and its subdomains;
- ``||x^``, ``*.x``, dnsmasq: the name and its subdomains; ``.x^``: subdomains only; ``|x^``: exact;
- an allow rule of any selected list beats every block rule, unless the block rule is ``$important``;
  an important allow beats everything;
- regex rules (and adblock patterns with ``*`` inside a name) run only when the hash rules have not
  already decided at their strength; adblock rules with paths, cosmetic rules and browser-only modifiers
  are skipped and counted (see `rules` for the full list);
- rules with DNS modifiers (``$dnstype``, ``$client``, ``$ctag``, ``$denyallow``, ``$dnsrewrite``) and hosts
  lines with real addresses are side rules (`side`): few, kept beside the index in `Selection.side`, and
  weighed against the index's verdict by the policy (`side.resolve`, AdGuard's precedence).

Malformed lines never fail a load: they are counted per reason and the first few are kept with their
source and line number (`ParseReport.issues`).
"""

from dnsguard.filter.lists import (
    LineIssue,
    ListSource,
    ParsedSource,
    ParseReport,
    RegexRule,
    RuleBlock,
    parse_bytes,
    parse_file,
    parse_text,
)
from dnsguard.filter.matcher import (
    NOT_LISTED,
    Action,
    Matcher,
    RuleKind,
    Selection,
    Verdict,
    compile_matcher,
)
from dnsguard.filter.rules import LineResult, Outcome, Scope, canonical_name, folded_name, parse_line

__all__ = [
    "NOT_LISTED",
    "Action",
    "LineIssue",
    "LineResult",
    "ListSource",
    "Matcher",
    "Outcome",
    "ParseReport",
    "ParsedSource",
    "RegexRule",
    "RuleBlock",
    "RuleKind",
    "Scope",
    "Selection",
    "Verdict",
    "canonical_name",
    "compile_matcher",
    "folded_name",
    "parse_bytes",
    "parse_file",
    "parse_line",
    "parse_text",
]
