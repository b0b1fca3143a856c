"""The compiled matcher: every list's rules in one compact hash index, queried by a suffix walk.

Layout: 8 bytes a rule (a rule is one name from one source in one category), plus a 256 KiB directory
and small per-block and per-run tables:

- Rules are numbered source by source, block by block (``entry``, 24 bits, so up to 16.7M rules); an
  entry's block (list, source, category) and line follow from run tables, looked up only for a verdict.
- ``h = name_hash(name)``, 64 bits (Python's ``hash()``, or a keyed hash for an index kept on disk).
  Its top 24 bits, sign bit flipped (``u``), split into a 16-bit bucket and an 8-bit fragment.
  ``_entries`` holds ``fragment << 24 | entry``, sorted by bucket, then fragment, then entry;
  ``_directory[bucket]`` is where a bucket starts. A lookup is two directory reads and a C
  `bisect` over the bucket's ~30 entries (at two million rules).
- ``_low_hashes[entry]`` holds the low 32 bits of ``h``, compared on a candidate. A rule is so identified
  by 56 hash bits; a name wrongly matching one of two million rules takes about one query in 10^10.
  With ``hash()`` it would stay wrong only for this process's lifetime (re-seeded at every start); an
  index written to disk (`dnsguard.filter.compiled`) uses a hash keyed with a secret kept beside it, so
  its collisions cannot be worked out from the outside either.

Several lists in one index, rather than one index per list: a group's lookup is one walk whatever the
number of lists it selects, and a name listed by several sources costs 8 bytes per source, not a
second index. A `Selection` (one per policy group) maps each block to the rule strength it has for that
group (0 for lists the group does not select).

Building sorts one float per rule: the double ``2**52 + (u << 24 | entry)`` is exact, its bytes can be
assembled with byte copies, Python sorts floats fast, and the sorted doubles' low 32-bit words are
``_entries`` (read through a memoryview). No Python loop runs per rule.

Matching walks the query's suffixes from the full name to the top-level label (``a.b.example.com``,
``b.example.com``, ``example.com``, ``com``) and keeps the strongest applicable rule:

    important allow  >  important block  >  allow  >  block

An exact rule applies only to the full name, a subdomains-only rule only to proper suffixes, a suffix
rule to both. The walk stops early once nothing stronger exists in the group (for a block-only group, at
the first block). Regex rules run only when the hash rules left a stronger verdict possible, and only
those whose required suffix or label the name has (or that have neither), each after a literal pre-test.
"""

from __future__ import annotations

import enum
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, repeat
from pathlib import Path
from typing import Final, TypeAlias

from dnsguard.errors import ConfigError, DnsguardError
from dnsguard.filter.lists import (
    ListFileError,
    ListSource,
    NameHash,
    ParsedSource,
    ParseReport,
    RegexRule,
    RuleBlock,
    read_list_file,
    split_lines,
)
from dnsguard.filter.regex import CompiledRegex, compile_regex
from dnsguard.filter.rules import Scope, category_allow, category_important, category_scope
from dnsguard.filter.side import SideIndex, SideRule

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "NOT_LISTED",
    "Action",
    "Matcher",
    "RuleKind",
    "Selection",
    "Verdict",
    "Words",
    "compile_matcher",
]

DEFAULT_CACHE_SIZE: Final = 4096
DEFAULT_MAX_REGEX_RULES: Final = 1000
_PARENT_CACHE_SIZE: Final = 4096
_VERDICT_CACHE_SIZE: Final = 8192
_NO_RULE: Final = (0, 0, "")

Words: TypeAlias = "array[int] | memoryview"
"""An index table: an array, or a typed view of a compiled file mapped into memory."""


class Action(enum.Enum):
    """What the lists say about a name."""

    BLOCK = "block"
    ALLOW = "allow"
    """An allow (exception) rule matched; policy layers may treat this as 'explicitly allowed'."""
    NONE = "none"
    """No rule of the selected lists applies."""


class RuleKind(enum.Enum):
    """How the deciding rule matched."""

    EXACT = "exact"
    SUFFIX = "suffix"
    SUBDOMAINS = "subdomains"
    REGEX = "regex"
    MODIFIED = "modified"
    """A rule with DNS modifiers or a hosts line with an address (`rule_name` is the rule's text)."""
    NONE = "none"


_KIND_OF_SCOPE: Final = {
    Scope.EXACT: RuleKind.EXACT,
    Scope.SUFFIX: RuleKind.SUFFIX,
    Scope.SUBDOMAINS: RuleKind.SUBDOMAINS,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The deciding rule for a name: which list, which source and line, and what rule."""

    action: Action
    list_name: str = ""
    source: str = ""
    """File path or URL of the source the rule came from."""
    line: int = 0
    """1-based line of the rule in `source`; 0 when no rule applies."""
    rule_name: str = ""
    """The listed name that matched (the query or one of its parents), or the regex pattern."""
    kind: RuleKind = RuleKind.NONE
    important: bool = False

    @property
    def blocked(self) -> bool:
        """True when the name must be blocked."""
        return self.action is Action.BLOCK

    @property
    def rule(self) -> str:
        """The rule in canonical adblock form (the source line itself: `Matcher.source_line`)."""
        if self.action is Action.NONE:
            return ""
        if self.kind is RuleKind.MODIFIED:
            return self.rule_name
        if self.kind is RuleKind.REGEX:
            text = f"/{self.rule_name}/"
        elif self.kind is RuleKind.EXACT:
            text = f"|{self.rule_name}^"
        elif self.kind is RuleKind.SUBDOMAINS:
            text = f".{self.rule_name}^"
        else:
            text = f"||{self.rule_name}^"
        prefix = "@@" if self.action is Action.ALLOW else ""
        return prefix + text + ("$important" if self.important else "")


def side_verdict(rule: SideRule) -> Verdict:
    """The verdict naming a side rule (`dnsguard.filter.side`) as the deciding or a beaten rule."""
    action = Action.ALLOW if rule.allow else Action.BLOCK
    return Verdict(
        action, rule.list_name, rule.source, rule.line, rule.text, RuleKind.MODIFIED, rule.important
    )


NOT_LISTED: Final = Verdict(Action.NONE)
"""The verdict for names no selected rule covers (shared, so the common case allocates nothing)."""

# Rule strength as the walk compares it; 0 means "does not apply here".
_BLOCK: Final = 1
_ALLOW: Final = 2
_IMPORTANT_BLOCK: Final = 3
_IMPORTANT_ALLOW: Final = 4
_ACTION_OF: Final = {
    _BLOCK: Action.BLOCK,
    _ALLOW: Action.ALLOW,
    _IMPORTANT_BLOCK: Action.BLOCK,
    _IMPORTANT_ALLOW: Action.ALLOW,
}


def _strength(cat: int) -> int:
    if category_allow(cat):
        return _IMPORTANT_ALLOW if category_important(cat) else _ALLOW
    return _IMPORTANT_BLOCK if category_important(cat) else _BLOCK


class _Regex:
    """A regex rule placed in the matcher, compiled on first use."""

    __slots__ = (
        "_compiled",
        "label",
        "line",
        "list_id",
        "literal",
        "pattern",
        "source_id",
        "strength",
        "suffix",
    )

    def __init__(self, rule: RegexRule, source_id: int, list_id: int) -> None:
        self.pattern = rule.pattern
        self.line = rule.line
        self.suffix = rule.suffix
        self.label = rule.label
        self.literal = rule.literal
        self.strength = _strength(rule.category)
        self.source_id = source_id
        self.list_id = list_id
        self._compiled: CompiledRegex | None = None

    def search(self, name: str) -> bool:
        # RE2, not `re`: linear in the name's length whatever the pattern (see `regex`).
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = compile_regex(self.pattern)
        return compiled.search(name) is not None


_LOW_WORD: Final = 0 if sys.byteorder == "little" else 1
# The index layout (see the module docstring): u = (hash >> 40) + 2**23 is the hash's top 24 bits made
# non-negative; its top 16 bits pick one of 65,536 buckets, its low 8 bits are kept beside the 24-bit
# entry number. All byte-aligned, so the build assembles sort keys with byte copies; `Selection._probe`
# spells these numbers as literals.
_ENTRY_BITS: Final = 24
_MAX_ENTRIES: Final = 1 << _ENTRY_BITS
_BUCKETS: Final = 1 << 16
_FLIP_TOP_BIT: Final = bytes(b ^ 0x80 for b in range(256))
# High 32 bits of the IEEE-754 double 2**52: biased exponent 1075, zero mantissa. Doubles in [2**52, 2**53)
# are exactly the integers there, and their high word is this plus the top 20 bits of (value - 2**52).
_HIGH_WORD_OF_TWO_52: Final = 0x43300000


def _words(data: array[int] | array[float], which: int) -> array[int]:
    """The low (which=_LOW_WORD) or high 32-bit halves of a 64-bit array, without per-item Python work."""
    halves = array("I")
    halves.frombytes(memoryview(data).cast("B").cast("I")[which::2].tobytes())
    return halves


class Matcher:
    """All lists compiled into one index; `select` gives the view a policy group queries."""

    def __init__(
        self,
        *,
        list_names: tuple[str, ...],
        sources: tuple[ListSource, ...],
        source_lists: tuple[int, ...],
        entries: Words,
        low_hashes: Words,
        directory: Words,
        run_starts: Words,
        run_lines: Words,
        run_steps: Words,
        run_blocks: Words,
        block_categories: tuple[int, ...],
        block_sources: tuple[int, ...],
        block_starts: tuple[int, ...],
        regexes: tuple[_Regex, ...],
        dropped_regexes: int,
        reports: tuple[ParseReport, ...],
        name_hash: NameHash = hash,
        side_rules: tuple[SideRule, ...] = (),
    ) -> None:
        self.list_names = list_names
        self.name_hash = name_hash
        """The hash the index was built with; every lookup hashes its name with it."""
        self.sources = sources
        self.reports = reports
        """Each source's parse report, so the parsed sources (and their arrays) can be dropped."""
        self._source_lists = source_lists
        self._entries = entries
        self._low_hashes = low_hashes
        self._directory = directory
        self._run_starts = run_starts
        self._run_lines = run_lines
        self._run_steps = run_steps
        self._run_blocks = run_blocks
        self._block_categories = block_categories
        self._block_sources = block_sources
        self._block_starts = list(block_starts)
        # What a verdict needs to know about each block, worked out once (enum lookups are slow).
        self._block_info = tuple(
            (
                sources[source_id].list_name,
                sources[source_id].location,
                _KIND_OF_SCOPE[category_scope(cat)],
                category_important(cat),
            )
            for cat, source_id in zip(block_categories, block_sources, strict=True)
        )
        self._regexes = regexes
        self.side_rules = side_rules
        """Rules with DNS modifiers and hosts lines with addresses, in source and line order."""
        self.dropped_regexes = dropped_regexes
        """Regex rules left out because the matcher-wide cap was reached."""
        self._list_ids = {name: i for i, name in enumerate(list_names)}
        self._verdicts: dict[int, Verdict] = {}
        self._default: Selection | None = None

    @property
    def rule_count(self) -> int:
        """Hash rules in the index (a name listed by three sources counts three)."""
        return len(self._entries)

    @property
    def regex_count(self) -> int:
        """Regex rules in the index."""
        return len(self._regexes)

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index arrays (what the compact layout costs, without Python overheads)."""
        arrays = (
            self._entries,
            self._low_hashes,
            self._directory,
            self._run_starts,
            self._run_lines,
            self._run_steps,
            self._run_blocks,
        )
        return sum(a.nbytes if isinstance(a, memoryview) else len(a) * a.itemsize for a in arrays)

    def select(
        self, lists: Iterable[str] | None = None, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> Selection:
        """The view of the named lists (all lists when None) that a policy group matches against."""
        if lists is None:
            ids = frozenset(range(len(self.list_names)))
        else:
            wanted = list(lists)
            unknown = [name for name in wanted if name not in self._list_ids]
            if unknown:
                known = ", ".join(self.list_names) or "none"
                raise ConfigError(f"no list named {unknown[0]!r} (lists: {known})", key="lists")
            ids = frozenset(self._list_ids[name] for name in wanted)
        return Selection(self, ids, cache_size)

    def match(self, name: str, lists: Iterable[str] | None = None) -> Verdict:
        """Match one name against the named lists (all when None); groups should keep a `select`."""
        if lists is None:
            if self._default is None:
                self._default = self.select()
            return self._default.match(name)
        return self.select(lists, cache_size=0).match(name)

    def source_line(self, verdict: Verdict) -> str | None:
        """The text of the verdict's rule line, read again from its source (None if unavailable)."""
        if verdict.action is Action.NONE:
            return None
        for source in self.sources:
            if source.location == verdict.source:
                where = Path(source.path or source.location)
                try:
                    lines = split_lines(read_list_file(where).decode("utf-8", errors="replace"))
                except ListFileError:
                    return None
                return lines[verdict.line - 1] if 0 < verdict.line <= len(lines) else None
        return None

    def explain(self, name: str, lists: Iterable[str] | None = None) -> str:
        """A human-readable account of why `name` is blocked, allowed or neither."""
        verdict = self.match(name, lists)
        if verdict.action is Action.NONE:
            return f"{name}: no rule in the selected lists"
        what = "blocked" if verdict.blocked else "allowed"
        line = self.source_line(verdict)
        shown = f": {line.strip()}" if line is not None else ""
        return (
            f"{name}: {what} by list {verdict.list_name!r}, rule {verdict.rule} "
            f"({verdict.source}:{verdict.line}{shown})"
        )

    # Internals used by Selection.

    def _verdict(self, entry: int, rule_name: str, strength: int) -> Verdict:
        # The same rule decides for many names (every x.doubleclick.net): its verdict is built once.
        verdicts = self._verdicts
        verdict = verdicts.get(entry)
        if verdict is not None:
            return verdict
        run = bisect_right(self._run_starts, entry) - 1
        line = self._run_lines[run] + (entry - self._run_starts[run]) * self._run_steps[run]
        list_name, location, kind, important = self._block_info[self._run_blocks[run]]
        verdict = Verdict(_ACTION_OF[strength], list_name, location, line, rule_name, kind, important)
        if len(verdicts) >= _VERDICT_CACHE_SIZE:
            verdicts.clear()
        verdicts[entry] = verdict
        return verdict

    def _regex_verdict(self, rule: _Regex) -> Verdict:
        source = self.sources[rule.source_id]
        important = rule.strength in (_IMPORTANT_ALLOW, _IMPORTANT_BLOCK)
        return Verdict(
            _ACTION_OF[rule.strength],
            source.list_name,
            source.location,
            rule.line,
            rule.pattern,
            RuleKind.REGEX,
            important,
        )


class Selection:
    """A matcher seen through a set of lists (one policy group): the hot-path `match`.

    Holds small bounded caches (recent verdicts, parent suffixes): cheap to make, but keep one per group
    rather than one per query, and use it from one thread (the resolver's event loop).
    """

    __slots__ = (
        "_block_starts",
        "_cache",
        "_cache_size",
        "_chains",
        "_directory",
        "_entries",
        "_low_hashes",
        "_matcher",
        "_name_hash",
        "_parent_cap",
        "_parent_strength",
        "_regex_by_label",
        "_regex_by_suffix",
        "_regex_max",
        "_regex_unindexed",
        "_self_cap",
        "_self_strength",
        "_walk_cap",
        "lists",
        "side",
    )

    def __init__(self, matcher: Matcher, list_ids: frozenset[int], cache_size: int) -> None:
        self._matcher = matcher
        self._entries = matcher._entries
        self._low_hashes = matcher._low_hashes
        self._directory = matcher._directory
        self._name_hash = matcher.name_hash
        self._block_starts = matcher._block_starts
        self.lists = frozenset(matcher.list_names[i] for i in list_ids)
        selected = [matcher._source_lists[s] in list_ids for s in range(len(matcher.sources))]
        self_strength = bytearray()
        parent_strength = bytearray()
        for cat, source_id in zip(matcher._block_categories, matcher._block_sources, strict=True):
            strength = _strength(cat) if selected[source_id] else 0
            scope = category_scope(cat)
            self_strength.append(strength if scope is not Scope.SUBDOMAINS else 0)
            parent_strength.append(strength if scope is not Scope.EXACT else 0)
        self._self_strength = bytes(self_strength)
        self._parent_strength = bytes(parent_strength)
        regexes = sorted((r for r in matcher._regexes if r.list_id in list_ids), key=_by_strength)
        # A regex that needs a known suffix or label is tried only for names that have it; the rest
        # (hopefully few) are tried for every name the hash rules leave undecided.
        self._regex_unindexed = tuple(r for r in regexes if not r.suffix and not r.label)
        by_suffix: dict[str, list[_Regex]] = {}
        by_label: dict[str, list[_Regex]] = {}
        for rule in regexes:
            if rule.suffix:
                by_suffix.setdefault(rule.suffix, []).append(rule)
            elif rule.label:
                by_label.setdefault(rule.label, []).append(rule)
        self._regex_by_suffix = {key: tuple(rules) for key, rules in by_suffix.items()}
        self._regex_by_label = {key: tuple(rules) for key, rules in by_label.items()}
        self._regex_max = max((r.strength for r in regexes), default=0)
        # Once a rule as strong as any the selection holds has matched, nothing later can override it: the
        # pair scan stops at the level's strongest, the walk at the overall strongest (for the usual
        # block-only group, at the first block).
        self._self_cap = max(self_strength, default=0) or 1
        self._parent_cap = max(parent_strength, default=0) or 1
        self._walk_cap = max(self._self_cap, self._parent_cap, self._regex_max)
        self._cache: dict[str, Verdict] = {}
        self._cache_size = cache_size
        self._chains: dict[str, tuple[int, int, str]] = {}
        side = [rule for rule in matcher.side_rules if rule.list_name in self.lists]
        self.side: SideIndex | None = SideIndex(side) if side else None
        """The selection's side rules; None (the common case) when its lists hold none."""

    def all_matches(self, name: str) -> list[Verdict]:
        """Every hash and regex rule of the selection that covers `name`, strongest first (`explain`)."""
        found: list[tuple[int, Verdict]] = []
        matcher = self._matcher
        suffix = name
        while True:
            strengths = self._self_strength if suffix == name else self._parent_strength
            h = self._name_hash(suffix)
            u = (h >> 40) + 0x800000
            low, high = self._directory[u >> 8], self._directory[(u >> 8) + 1]
            for i in range(low, high):
                entry = self._entries[i]
                if entry >> 24 != u & 0xFF:
                    continue
                entry &= 0xFFFFFF
                if self._low_hashes[entry] != h & 0xFFFFFFFF:
                    continue
                strength = strengths[bisect_right(self._block_starts, entry) - 1]
                if strength:
                    found.append((strength, matcher._verdict(entry, suffix, strength)))
            dot = suffix.find(".")
            if dot < 0:
                break
            suffix = suffix[dot + 1 :]
        for rule in matcher._regexes:
            if matcher.list_names[rule.list_id] in self.lists and rule.search(name):
                found.append((rule.strength, matcher._regex_verdict(rule)))
        found.sort(key=lambda item: -item[0])
        return [verdict for _, verdict in found]

    def is_blocked(self, name: str) -> bool:
        """True when the selected lists block `name` (any case, trailing dot allowed)."""
        return self.match(name).action is Action.BLOCK

    def match(self, name: str) -> Verdict:
        """The verdict for a query name in any case, with or without the trailing dot."""
        # Resolvers randomise query case (0x20): matching the name as received would let
        # "AdS.Example.COM" through.
        return self.match_canonical(name.lower().removesuffix("."))

    def match_canonical(self, name: str) -> Verdict:
        """The verdict for a name already lower-cased and without trailing dot (the resolver's hot path)."""
        cache = self._cache
        verdict = cache.get(name)
        if verdict is not None:
            return verdict
        verdict = self._lookup(name)
        if self._cache_size:
            if len(cache) >= self._cache_size:
                # Clearing beats LRU bookkeeping on every hit; the working set refills in a few queries.
                cache.clear()
            cache[name] = verdict
        return verdict

    def _probe(self, suffix: str, strengths: bytes, cap: int) -> int:
        """The strongest rule naming exactly `suffix`, as ``strength << 32 | entry`` (0: none applies)."""
        # The layout's constants as literals (see _ENTRY_BITS and friends): this runs for every label of
        # every query, and a literal is cheaper than a global lookup.
        h = self._name_hash(suffix)
        u = (h >> 40) + 0x800000
        directory = self._directory
        high = directory[(u >> 8) + 1]
        wanted = (u & 0xFF) << 24
        entries = self._entries
        i = bisect_left(entries, wanted, directory[u >> 8], high)
        if i == high:
            return 0
        limit = wanted | 0xFFFFFF
        entry = entries[i]
        if entry > limit:
            return 0
        low_hashes = self._low_hashes
        block_starts = self._block_starts
        low32 = h & 0xFFFFFFFF
        found = 0
        while True:
            entry &= 0xFFFFFF
            if low_hashes[entry] == low32:
                strength = strengths[bisect_right(block_starts, entry) - 1]
                if strength > found >> 32:
                    found = strength << 32 | entry
                    if strength >= cap:
                        return found
            i += 1
            if i == high:
                return found
            entry = entries[i]
            if entry > limit:
                return found

    def _parents(self, suffix: str) -> tuple[int, int, str]:
        """(strength, entry, listed name) of the strongest rule covering `suffix` as a parent."""
        # The answer for a parent is the same for every name under it (com, amazonaws.com,
        # doubleclick.net...), so it is kept per selection, bounded; the chain above it comes from the
        # same cache, so a query costs one probe for itself and usually one dictionary hit.
        chains = self._chains
        chain = chains.get(suffix)
        if chain is not None:
            return chain
        found = self._probe(suffix, self._parent_strength, self._parent_cap)
        strength = found >> 32
        chain = (strength, found & 0xFFFFFFFF, suffix) if strength else _NO_RULE
        if strength < self._walk_cap:
            dot = suffix.find(".")
            if dot >= 0:
                above = self._parents(suffix[dot + 1 :])
                if above[0] > strength:
                    chain = above
        if len(chains) >= _PARENT_CACHE_SIZE:
            chains.clear()
        chains[suffix] = chain
        return chain

    def _lookup(self, name: str) -> Verdict:
        found = self._probe(name, self._self_strength, self._self_cap)
        best = found >> 32
        best_entry = found & 0xFFFFFFFF
        best_name = name
        if best < self._walk_cap:
            dot = name.find(".")
            if dot >= 0:
                strength, entry, listed = self._parents(name[dot + 1 :])
                if strength > best:
                    best, best_entry, best_name = strength, entry, listed
        if self._regex_max > best:
            rule = self._regex_match(name, best)
            if rule is not None:
                return self._matcher._regex_verdict(rule)
        if best == 0:
            return NOT_LISTED
        return self._matcher._verdict(best_entry, best_name, best)

    def _regex_match(self, name: str, best: int) -> _Regex | None:
        """The strongest regex rule stronger than `best` that matches `name`."""
        indexed: list[_Regex] = []
        by_suffix = self._regex_by_suffix
        if by_suffix:
            suffix = name
            start = 0
            while True:
                found = by_suffix.get(suffix)
                if found is not None:
                    indexed.extend(found)
                dot = name.find(".", start)
                if dot < 0:
                    break
                start = dot + 1
                suffix = name[start:]
        by_label = self._regex_by_label
        if by_label:
            for label in name.split("."):
                found = by_label.get(label)
                if found is not None:
                    indexed.extend(found)
        rules: Iterable[_Regex] = self._regex_unindexed
        if indexed:
            rules = sorted([*indexed, *self._regex_unindexed], key=_by_strength)
        for rule in rules:
            if rule.strength <= best:
                break
            if (not rule.literal or rule.literal in name) and rule.search(name):
                return rule
        return None


def _by_strength(rule: _Regex) -> int:
    return -rule.strength


def _sorted_index(hashes: array[int]) -> tuple[array[int], array[int]]:
    """The sorted entries and the bucket directory for name hashes numbered by position."""
    count = len(hashes)
    # Each key is the double 2**52 + (u24 << 24 | entry): its bytes (little-endian) are the entry's
    # three low bytes, u24's three bytes (the hash's top bytes, sign bit flipped), then 0x30 0x43, the
    # exponent of [2**52, 2**53). Assembled with strided byte copies, no Python object per rule.
    raw = memoryview(hashes).cast("B") if sys.byteorder == "little" else memoryview(_swapped(hashes))
    packed = bytearray(8 * count)
    for byte in range(3):
        packed[byte::8] = _counter_byte(byte, count)
    packed[3::8] = raw[5::8].tobytes()
    packed[4::8] = raw[6::8].tobytes()
    packed[5::8] = raw[7::8].tobytes().translate(_FLIP_TOP_BIT)
    packed[6::8] = b"\x30" * count
    packed[7::8] = b"\x43" * count
    raw.release()
    keys = array("d")
    keys.frombytes(packed)
    del packed
    if sys.byteorder != "little":
        keys.byteswap()
    # Sorting needs float objects. They are made in memory order and freed from that same list after
    # the sorted copy is gone: freeing two million floats in sorted (random) order costs a third of a
    # second in cache misses.
    floats = keys.tolist()
    del keys
    ordered = sorted(floats)
    keys = array("d", ordered)
    del ordered
    del floats
    entries = _words(keys, _LOW_WORD)
    # The high words are the bucket numbers under the exponent bits of [2**52, 2**53), in order.
    buckets = _words(keys, 1 - _LOW_WORD)
    del keys
    first = _HIGH_WORD_OF_TWO_52
    if count < _BUCKETS:
        # Few rules: counting them is cheaper than 65,537 bisections.
        sizes = [0] * (_BUCKETS + 1)
        for word in buckets:
            sizes[word - first + 1] += 1
        directory = array("I", accumulate(sizes))
    else:
        directory = array("I", map(partial(bisect_left, buckets), range(first, first + _BUCKETS + 1)))
    return entries, directory


def _counter_byte(byte: int, count: int) -> bytes:
    """Byte `byte` (0 = lowest) of the little-endian numbers 0, 1, 2... count - 1, for count <= 2**24."""
    # Each value repeats 256**byte times and the pattern cycles every 256**(byte + 1): built from
    # repeated bytes instead of two million ints, and no longer than needed.
    run = 256**byte
    values = min(256, -(-count // run))
    cycle = b"".join(bytes((value,)) * run for value in range(values))
    return (cycle * (count // len(cycle) + 1))[:count] if cycle else b""


def _swapped(data: array[int]) -> bytes:
    copy = array(data.typecode, data)
    copy.byteswap()
    return copy.tobytes()


def compile_matcher(
    parsed: Sequence[ParsedSource],
    *,
    lists: Sequence[str] = (),
    max_regex_rules: int = DEFAULT_MAX_REGEX_RULES,
    name_hash: NameHash = hash,
    release_memory: Callable[[], None] = lambda: None,
) -> Matcher:
    """Compile parsed sources into one matcher; `lists` declares list names (and order) up front.

    ``$badfilter`` rules apply across all sources, as in AdGuard: they disable the identical rule
    wherever it is listed. The parsed sources are not needed afterwards (their reports are kept in
    `Matcher.reports`): drop them and release their memory (dnsguard.app.memory). `name_hash` must be
    the hash the sources were parsed with; `release_memory` is called once the transient arrays of the
    compile are dropped, so the caller can hand their pages back to the system before the next step.
    """
    list_names = list(dict.fromkeys([*lists, *(p.source.list_name for p in parsed)]))
    list_ids = {name: i for i, name in enumerate(list_names)}
    sources = tuple(p.source for p in parsed)
    source_lists = tuple(list_ids[s.list_name] for s in sources)
    bad_names: dict[int, set[int]] = {}
    bad_patterns: set[tuple[int, str]] = set()
    for p in parsed:
        for cat, name in p.badfilters:
            bad_names.setdefault(cat, set()).add(name_hash(name))
        bad_patterns.update(p.regex_badfilters)

    # Everything that outlives the build is made first, the short-lived float keys last: long-lived
    # small objects allocated among millions of floats would pin the allocator's arenas.
    blocks: list[RuleBlock] = []
    run_starts = array("I")
    run_lines = array("I")
    run_steps = array("B")
    run_blocks = array("I")
    block_categories: list[int] = []
    block_sources: list[int] = []
    block_starts: list[int] = []
    base = 0
    for source_id, p in enumerate(parsed):
        for block in p.blocks:
            bad = bad_names.get(block.category)
            if bad and not bad.isdisjoint(block.hashes):
                block = block.without(bad)
            if not block.hashes:
                continue
            block_id = len(blocks)
            blocks.append(block)
            block_categories.append(block.category)
            block_sources.append(source_id)
            block_starts.append(base)
            run_starts.extend(run_offset + base for run_offset in block.run_offsets)
            run_lines.extend(block.run_lines)
            run_steps.extend(block.run_steps)
            run_blocks.extend(repeat(block_id, len(block.run_offsets)))
            base += len(block.hashes)
    if base > _MAX_ENTRIES:
        raise DnsguardError(f"{base} rules exceed the matcher's limit of {_MAX_ENTRIES}")
    side_off = {text for p in parsed for text in p.side_badfilters}
    side_rules = tuple(rule for p in parsed for rule in p.side_rules if rule.text not in side_off)
    regexes: list[_Regex] = []
    dropped = 0
    for source_id, p in enumerate(parsed):
        for rule in p.regexes:
            if (rule.category, rule.pattern) in bad_patterns:
                continue
            if len(regexes) >= max_regex_rules:
                dropped += 1
                continue
            regexes.append(_Regex(rule, source_id, source_lists[source_id]))

    hashes = array("q")
    for block in blocks:
        hashes.extend(block.hashes)
    low_hashes = _words(hashes, _LOW_WORD)
    entries, directory = _sorted_index(hashes)
    del hashes
    release_memory()

    return Matcher(
        list_names=tuple(list_names),
        sources=sources,
        source_lists=source_lists,
        entries=entries,
        low_hashes=low_hashes,
        directory=directory,
        run_starts=run_starts,
        run_lines=run_lines,
        run_steps=run_steps,
        run_blocks=run_blocks,
        block_categories=tuple(block_categories),
        block_sources=tuple(block_sources),
        block_starts=tuple(block_starts),
        regexes=tuple(regexes),
        dropped_regexes=dropped,
        reports=tuple(p.report for p in parsed),
        name_hash=name_hash,
        side_rules=side_rules,
    )
