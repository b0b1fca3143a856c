"""Whole lists: text in, compact arrays of name hashes with line numbers out, plus a report of what was
skipped or malformed and where.

Speed matters here (a million names must load in seconds on a small machine), and a Python loop over
every line costs about a microsecond a line. So `parse_text` first learns the file's dominant line shape
from a sample (``0.0.0.0 {name}``, ``||{name}^``, ``{name}``, ``server=/{name}/``...), splits the whole
text on that shape's separator in C, validates all the resulting names at once with a few byte-level
passes, and hashes them with ``map(name_hash, ...)``. Every line that does not fit the shape exactly
(comments, inline comments, exceptions, modifiers, IDN, bad characters, several names on a line...) goes
through `rules.parse_line`, the reference parser, and the two paths must agree (property-tested).

Names are stored as a 64-bit hash of the canonical name, by default Python's built-in ``hash()``:
computed in C, cached on the string, and randomised per process, so such a parse is only valid in the
process that made it. Indexes kept on disk pass a keyed hash that is the same in every process
(`dnsguard.filter.compiled.keyed_name_hash`). See `matcher.py` for how the 64 bits are used and what a
collision would cost.
"""

from __future__ import annotations

import operator
import os
import re
import stat
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from dnsguard.errors import DnsguardError
from dnsguard.filter.regex_hints import label_hint, regex_hints
from dnsguard.filter.rules import (
    EXCERPT_CHARS,
    LineResult,
    Outcome,
    parse_line,
)
from dnsguard.filter.side import SideRule

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "LineIssue",
    "ListFileError",
    "ListSource",
    "NameHash",
    "ParseReport",
    "ParsedSource",
    "RegexRule",
    "RuleBlock",
    "parse_bytes",
    "parse_file",
    "parse_text",
    "read_list_file",
    "split_lines",
]

NameHash = Callable[[str], int]
"""A canonical name to its 64-bit hash (signed, like ``hash()``)."""

DEFAULT_MAX_ISSUES: Final = 20
DEFAULT_MAX_REGEX: Final = 1000
MAX_SIDE_RULES: Final = 20_000
"""Side rules (DNS modifiers, hosts lines with addresses) kept per source: a few hundred bytes each, and
weighed per query; real lists hold a handful, so a source with more is cut there and the rest reported."""
DEFAULT_MAX_FILE_SIZE: Final = 64 * 1024 * 1024
"""The largest list file read (the configuration's ``loading.max-size`` has the same default)."""
_READ_SLACK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ListSource:
    """One source (file, URL or inline text) of a named list, and how to read its entries."""

    list_name: str
    """The list this source belongs to; policy groups select lists by this name."""
    location: str
    """File path or URL, as shown in verdicts and reports."""
    allow: bool = False
    """True for an allowlist: every rule in it is an exception."""
    subdomains: bool | None = None
    """Whether hosts and plain-domain entries also cover subdomains; None: no, unless the header says so."""
    path: str | None = None
    """Where the text can be read again to show a rule's line (a cached download); None: `location`."""


@dataclass(frozen=True, slots=True)
class LineIssue:
    """A line that was skipped or malformed, with where it is."""

    location: str
    line: int
    reason: str
    text: str
    """The line, stripped; only its first `EXCERPT_CHARS` characters when it is longer (see `size`)."""
    size: int = 0
    """The whole line's size in bytes when `text` is cut short, else 0."""

    def __str__(self) -> str:
        shown = f"{self.text!r}…({self.size} bytes)" if self.size else repr(self.text)
        return f"{self.location}:{self.line}: {self.reason}: {shown}"


@dataclass(frozen=True, slots=True)
class ParseReport:
    """What parsing one source produced; counts are per line, `rules` per name."""

    location: str
    lines: int
    rules: int
    """Names accepted as rules (a hosts line with three names counts three)."""
    regex_rules: int
    counts: Mapping[str, int]
    """Lines per outcome: rule, regex, badfilter, blank, comment, pseudo-host, skipped, malformed."""
    reasons: Mapping[str, int]
    """Skipped and malformed lines per reason."""
    issues: tuple[LineIssue, ...]
    """The first few skipped or malformed lines (see `issue_count` for all of them)."""
    issue_count: int
    subdomains: bool
    """Whether hosts and plain entries were read as covering subdomains."""
    fast_shape: str
    """The dominant line shape handled in bulk, e.g. ``'0.0.0.0 {name}'``; '' when none was used.

    Several shapes (``'0.0.0.0 {name} | :: {name}'``) mean the file mixes hosts addresses; a name then
    repeated on the very next line (the IPv6 twin of an IPv4 line) is stored once.
    """

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"{self.location}: {self.rules} names", f"{self.regex_rules} regex"]
        if self.counts.get("side"):
            parts.append(f"{self.counts['side']} with DNS modifiers or addresses")
        parts += [f"{count} {reason}" for reason, count in sorted(self.reasons.items())]
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, eq=False)
class RuleBlock:
    """Rules of one category from one source: name hashes, and their line numbers as runs.

    Lines are stored as arithmetic runs, not one number per name: in real lists consecutive names sit on
    consecutive lines, so a whole file usually needs a handful of runs instead of 4 bytes a name. Entry
    ``i`` of run ``k`` (``run_offsets[k] <= i < run_offsets[k + 1]``) is on line
    ``run_lines[k] + (i - run_offsets[k]) * run_steps[k]``.
    """

    category: int
    hashes: array[int]
    """The 64-bit hash of each canonical name (typecode 'q'), from the parse's `name_hash`."""
    run_offsets: array[int]
    run_lines: array[int]
    run_steps: array[int]

    def line_of(self, index: int) -> int:
        """The 1-based line of entry `index`."""
        run = bisect_right(self.run_offsets, index) - 1
        return self.run_lines[run] + (index - self.run_offsets[run]) * self.run_steps[run]

    def without(self, dropped: set[int]) -> RuleBlock:
        """This block minus the names whose hash is in `dropped` (``$badfilter``; rare, so simple)."""
        builder = _BlockBuilder()
        for index, name_hash in enumerate(self.hashes):
            if name_hash not in dropped:
                builder.add(name_hash, self.line_of(index))
        return builder.build(self.category)


class _BlockBuilder:
    """Appends names and keeps their line numbers as runs, merging entries that continue a run.

    With `twins` set (files listing each name under two addresses), a name equal to the one on the line
    just before is dropped.
    """

    __slots__ = (
        "_count",
        "_first",
        "_last_hash",
        "_last_line",
        "_step",
        "hashes",
        "run_lines",
        "run_offsets",
        "run_steps",
        "twins",
    )

    def __init__(self) -> None:
        self.hashes: array[int] = array("q")
        self.run_offsets: array[int] = array("I")
        self.run_lines: array[int] = array("I")
        self.run_steps: array[int] = array("B")
        self.twins = False
        self._first = 0
        self._step = 1
        self._count = 0
        self._last_hash = 0
        self._last_line = -2

    def _new_run(self, line: int, step: int, count: int) -> None:
        self.run_offsets.append(len(self.hashes))
        self.run_lines.append(line)
        self.run_steps.append(step)
        self._first, self._step, self._count = line, step, count

    def add(self, name_hash: int, line: int) -> None:
        if self.twins:
            twin = name_hash == self._last_hash and line == self._last_line + 1
            self._last_hash, self._last_line = name_hash, line
            if twin:
                return
        count = self._count
        if count == 1 and 0 <= line - self._first <= 255:
            self._step = line - self._first
            self.run_steps[-1] = self._step
            self._count = 2
        elif count > 1 and line == self._first + count * self._step:
            self._count = count + 1
        else:
            self._new_run(line, 1, 1)
        self.hashes.append(name_hash)

    def add_run(self, hashes: list[int], first_line: int) -> None:
        """Names on consecutive lines starting at `first_line`."""
        if not hashes:
            return
        step = 1
        if self.twins:
            keep = [hashes[0] != self._last_hash or first_line != self._last_line + 1]
            keep += map(operator.ne, hashes[1:], hashes[:-1])
            self._last_hash, self._last_line = hashes[-1], first_line + len(hashes) - 1
            if not all(keep):
                pairs = len(hashes) // 2
                if keep == [True, False] * pairs + [True] * (len(hashes) % 2):
                    hashes, step = hashes[::2], 2
                elif keep == [False, True] * pairs + [False] * (len(hashes) % 2):
                    hashes, first_line, step = hashes[1::2], first_line + 1, 2
                else:
                    self.twins = False
                    for offset, (name_hash, kept) in enumerate(zip(hashes, keep, strict=True)):
                        if kept:
                            self.add(name_hash, first_line + offset)
                    self.twins = True
                    return
        if self._count and step == self._step and first_line == self._first + self._count * step:
            self._count += len(hashes)
        else:
            self._new_run(first_line, step, len(hashes))
        self.hashes.fromlist(hashes)

    def build(self, cat: int) -> RuleBlock:
        return RuleBlock(cat, self.hashes, self.run_offsets, self.run_lines, self.run_steps)


@dataclass(frozen=True, slots=True)
class RegexRule:
    """A regular-expression rule (``/re/`` or a converted adblock wildcard)."""

    category: int
    pattern: str
    line: int
    suffix: str
    """Label-aligned suffix every match ends with ('' if unknown): the matcher's first index key."""
    label: str
    """A label every match contains ('' if unknown): the matcher's second index key."""
    literal: str
    """A substring every match contains ('' if unknown): a cheap pre-test."""


@dataclass(frozen=True, slots=True, eq=False)
class ParsedSource:
    """One parsed source: its hash rules in blocks, its regex rules, its ``$badfilter`` rules, its report."""

    source: ListSource
    blocks: tuple[RuleBlock, ...]
    regexes: tuple[RegexRule, ...]
    badfilters: tuple[tuple[int, str], ...]
    """(category, canonical name) of ``$badfilter`` rules naming a domain."""
    regex_badfilters: tuple[tuple[int, str], ...]
    """(category, pattern) of ``$badfilter`` rules naming a regex or wildcard."""
    report: ParseReport
    side_rules: tuple[SideRule, ...] = ()
    """Rules with DNS modifiers and hosts lines with real addresses (`dnsguard.filter.side`)."""
    side_badfilters: tuple[str, ...] = ()
    """Canonical texts (`SideRule.text`) of the rules with DNS modifiers that ``$badfilter`` disables."""

    @property
    def rule_count(self) -> int:
        """Hash rules (one per name per line)."""
        return sum(len(block.hashes) for block in self.blocks)

    def name_hashes(self) -> set[int]:
        """The distinct name hashes of all hash rules (for tests and statistics; allocates)."""
        distinct: set[int] = set()
        for block in self.blocks:
            distinct.update(block.hashes)
        return distinct


def split_lines(text: str) -> list[str]:
    """The lines of a list text as line numbers count them (CRLF and CR are line ends)."""
    return _normalize_newlines(text).split("\n")


def _normalize_newlines(text: str) -> str:
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class ListFileError(DnsguardError):
    """A list file that cannot be read: missing, unreadable, not a regular file, or too big."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


_FILE_KINDS: Final = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _over_limit(max_size: int) -> str:
    return f"over the {max_size}-byte limit (loading.max-size)"


def read_list_file(path: str | Path, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes:
    """The bytes of a regular file of at most `max_size` bytes; anything else raises ListFileError.

    A list path is configuration, and whatever it names must cost a bounded read: a FIFO would block
    `check` and every reload until a writer appears (hence O_NONBLOCK, and the type is checked on the
    open descriptor, not on the name, which could be swapped in between), a device such as /dev/zero
    never ends, and a file growing while it is read stops at the limit.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ListFileError(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise ListFileError(path, f"{kind}, not a regular file")
        if info.st_size > max_size:
            raise ListFileError(path, f"{info.st_size} bytes, {_over_limit(max_size)}")
        chunks: list[bytes] = []
        total = 0
        while True:
            # One read of the whole file in the usual case; the slack finds the end (or growth).
            wanted = min(max(info.st_size - total, 0) + _READ_SLACK, max_size + 1 - total)
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_size:
                raise ListFileError(path, f"grew while read, {_over_limit(max_size)}")
    except OSError as exc:
        raise ListFileError(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_file(
    path: str | Path,
    list_name: str | None = None,
    *,
    allow: bool = False,
    subdomains: bool | None = None,
    max_issues: int = DEFAULT_MAX_ISSUES,
    max_regex: int = DEFAULT_MAX_REGEX,
    max_size: int = DEFAULT_MAX_FILE_SIZE,
    name_hash: NameHash = hash,
) -> ParsedSource:
    """Parse a list file; the list name defaults to the file's stem. Raises ListFileError (see
    `read_list_file`) when the file cannot be read; its content never raises."""
    path = Path(path)
    source = ListSource(
        list_name if list_name is not None else path.stem,
        str(path),
        allow=allow,
        subdomains=subdomains,
        path=str(path),
    )
    data = read_list_file(path, max_size)
    return parse_bytes(data, source, max_issues=max_issues, max_regex=max_regex, name_hash=name_hash)


def parse_bytes(
    data: bytes,
    source: ListSource,
    *,
    max_issues: int = DEFAULT_MAX_ISSUES,
    max_regex: int = DEFAULT_MAX_REGEX,
    name_hash: NameHash = hash,
) -> ParsedSource:
    """Parse a downloaded or read list; bytes that are not UTF-8 make their lines malformed, not the list."""
    return parse_text(
        data.decode("utf-8", errors="replace"),
        source,
        max_issues=max_issues,
        max_regex=max_regex,
        name_hash=name_hash,
    )


# The dominant shape of a list's lines: text before and after the name, and the rule category all such
# lines yield. `alternates` are other hosts prefixes (':: ' next to '0.0.0.0 ') rewritten to `prefix`.
@dataclass(frozen=True, slots=True)
class _Shape:
    prefix: str
    suffix: str
    category: int
    alternates: tuple[str, ...] = ()


_SUBDOMAIN_HEADER: Final = re.compile(
    r"^[#!][ \t]*syntax:[ \t]*domains[ \t]*\(without subdomains\)", re.I | re.M
)
_SAMPLE_CHARS: Final = 256 * 1024
_SAMPLE_LINES: Final = 400
_MIN_SHAPE_LINES: Final = 8
_PROBE_NAMES: Final = ("example.com", "a", "x-y_z.0a", "xn--p1ai", "a.b.c.d.e.example.co.uk")
_HOSTS_PREFIX: Final = re.compile(r"[0-9a-f:.]+[ \t]")


def _header_declares_subdomains(text: str) -> bool:
    # hagezi's wildcard "onlydomains" files say "Syntax: Domains (without subdomains)": each entry stands
    # for the name and all names below it, so listing the subdomains would be redundant.
    return _SUBDOMAIN_HEADER.search(text, 0, 16384) is not None


def _detect_shape(low: str, allow: bool, subdomains: bool) -> _Shape | None:
    sample = low[:_SAMPLE_CHARS].split("\n")[:_SAMPLE_LINES]
    shapes: Counter[tuple[str, str, int]] = Counter()
    for line in sample:
        result = parse_line(line, allow=allow, subdomains=subdomains)
        if result.outcome is not Outcome.RULE or len(result.names) != 1 or result.reason:
            continue
        name = result.names[0]
        at = line.find(name)
        if at < 0 or line.find(name, at + 1) >= 0:
            continue
        shapes[(line[:at], line[at + len(name) :], result.category)] += 1
    if not shapes:
        return None
    (prefix, suffix, cat), count = shapes.most_common(1)[0]
    if count < _MIN_SHAPE_LINES or not _shape_is_sound(prefix, suffix, cat, allow, subdomains):
        return None
    alternates = tuple(
        other
        for (other, other_suffix, other_cat), other_count in shapes.items()
        if other != prefix
        and other_suffix == suffix == ""
        and other_cat == cat
        and other_count * 20 >= count
        and _HOSTS_PREFIX.fullmatch(prefix)
        and _HOSTS_PREFIX.fullmatch(other)
        and _shape_is_sound(other, suffix, cat, allow, subdomains)
    )
    return _Shape(prefix, suffix, cat, alternates)


def _shape_is_sound(prefix: str, suffix: str, cat: int, allow: bool, subdomains: bool) -> bool:
    """True when prefix + any valid name + suffix parses as exactly that one name in `cat`."""
    if "\n" in prefix or "\n" in suffix or "\x00" in prefix or "\x00" in suffix:
        return False
    for name in _PROBE_NAMES:
        expected = LineResult(Outcome.RULE, cat, (name,))
        if parse_line(prefix + name + suffix, allow=allow, subdomains=subdomains) != expected:
            return False
    return True


# Byte tables for the bulk checks. Every name byte maps to b'a' (letters, '-', '_'), b'0' (digits) or b'.';
# NUL separates names; anything a name may not contain (including '\n' and the '?' that non-ASCII
# characters were encoded to) maps to b'?'.
def _table(mapping: Callable[[int], int]) -> bytes:
    return bytes(mapping(b) for b in range(256))


def _class_of(b: int) -> int:
    c = chr(b)
    if c.isascii() and (c.islower() or c in "-_"):
        return ord("a")
    if c.isdigit() and c.isascii():
        return ord("0")
    if c == ".":
        return ord(".")
    if b == 0:
        return 0
    return ord("?")


_CLASS_TABLE: Final = _table(_class_of)
# Labels: name bytes -> 'a', label and name separators -> '.', so '..' means an empty label or name.
_LABEL_TABLE: Final = _table(lambda b: ord(".") if b in (0, ord(".")) else ord("a"))
# Lengths: everything but the separator -> 'a'.
_LENGTH_TABLE: Final = _table(lambda b: 0 if b == 0 else ord("a"))
_LONG_LABEL: Final = b"a" * 64
_LONG_NAME: Final = b"a" * 254
_PSEUDO_NEEDLES: Final = (b"\x00local", b"\x00broadcasthost", b"\x00ip6-")
_ACE_PREFIX: Final = b"xn--"


def _positions(haystack: bytes, needle: bytes, names: bytes, out: list[int], shift: int = 0) -> None:
    """Append where `needle` occurs in `haystack` (a translation of `names`), at most once per name."""
    # One hit marks the whole name, so the search resumes at the next separator: a comment line inside
    # a run costs two finds, not one per odd character.
    at = haystack.find(needle)
    while at >= 0:
        out.append(at + shift)
        at = names.find(b"\x00", at + shift)
        if at < 0:
            return
        at = haystack.find(needle, at)


def _odd_chunks(middle: list[str]) -> list[int]:
    """Indices of the chunks that are not a single valid, non-pseudo name (sorted, unique)."""
    if not middle:
        return []
    joined = "\x00".join(middle)
    # 'replace' encodes each non-ASCII character as one b'?', so byte offsets equal character offsets.
    data = joined.encode("ascii", "replace")
    where: list[int] = []
    classes = data.translate(_CLASS_TABLE)
    _positions(classes, b"?", data, where)
    _positions(classes, b"0\x00", data, where)
    if classes.endswith(b"0"):
        where.append(len(classes) - 1)
    labels = data.translate(_LABEL_TABLE)
    _positions(labels, b"..", data, where, 1)
    if labels.startswith(b"."):
        where.append(0)
    if labels.endswith(b"."):
        # A trailing dot belongs to the last name; a trailing separator means the last name is empty.
        where.append(len(labels) if data.endswith(b"\x00") else len(labels) - 1)
    _positions(labels, _LONG_LABEL, data, where)
    _positions(data.translate(_LENGTH_TABLE), _LONG_NAME, data, where)
    # Punycode labels are checked line by line: one that does not round-trip is a malformed line.
    _positions(data, _ACE_PREFIX, data, where)
    for needle in _PSEUDO_NEEDLES:
        _positions(data, needle, data, where, 1)
        if data.startswith(needle[1:]):
            where.append(0)
    if not where:
        return []
    where.sort()
    odd: list[int] = []
    index = 0
    previous = 0
    for at in where:
        index += data.count(b"\x00", previous, at)
        previous = at
        if not odd or odd[-1] != index:
            odd.append(index)
    return odd


class _Collector:
    """Accumulates rules, regexes, counts and issues for one source."""

    def __init__(
        self, source: ListSource, max_issues: int, max_regex: int, original: str, name_hash: NameHash
    ) -> None:
        self.source = source
        self.name_hash = name_hash
        self.max_issues = max_issues
        self.max_regex = max_regex
        self.original = original
        self._original_lines: list[str] | None = None
        self.blocks: dict[int, _BlockBuilder] = {}
        self.regexes: list[RegexRule] = []
        self.badfilters: list[tuple[int, str]] = []
        self.regex_badfilters: list[tuple[int, str]] = []
        self.side_rules: list[SideRule] = []
        self.side_badfilters: list[str] = []
        self.counts: Counter[Outcome] = Counter()
        self.reasons: Counter[str] = Counter()
        self.issues: list[LineIssue] = []
        self.issue_count = 0

    def block(self, cat: int) -> _BlockBuilder:
        block = self.blocks.get(cat)
        if block is None:
            block = self.blocks[cat] = _BlockBuilder()
        return block

    def original_line(self, number: int) -> str:
        # Issues and regexes show the line as written: the bulk path lower-cased the text and may have
        # rewritten hosts prefixes.
        if self._original_lines is None:
            self._original_lines = self.original.split("\n")
        lines = self._original_lines
        return lines[number - 1] if 0 < number <= len(lines) else ""

    def issue(self, number: int, reason: str) -> None:
        self.issue_count += 1
        self.reasons[reason] += 1
        if len(self.issues) < self.max_issues:
            # Kept short: a list line can be a megabyte, and issues end up in reports and logs.
            text = self.original_line(number).strip()
            size = len(text.encode("utf-8", "replace")) if len(text) > EXCERPT_CHARS else 0
            self.issues.append(LineIssue(self.source.location, number, reason, text[:EXCERPT_CHARS], size))

    def slow_line(self, line: str, number: int, allow: bool, subdomains: bool) -> None:
        text = line.strip()
        # Comments and blank lines are most of what the bulk path leaves over; the same answer as
        # parse_line, without building a result.
        if not text:
            self.counts[Outcome.BLANK] += 1
            return
        if text[0] in "#!":
            self.counts[Outcome.COMMENT] += 1
            return
        if text.startswith(("/", "@@/")) or "$" in text:
            # Regexes and modifier values ($client='Laptop', $dnsrewrite=...;TXT;...) keep their case.
            line = self.original_line(number)
        result = parse_line(line, allow=allow, subdomains=subdomains)
        outcome = result.outcome
        self.counts[outcome] += 1
        if outcome is Outcome.RULE:
            block = self.block(result.category)
            for name in result.names:
                block.add(self.name_hash(name), number)
            if result.reason:
                self.issue(number, result.reason)
        elif outcome is Outcome.REGEX:
            if len(self.regexes) >= self.max_regex:
                self.counts[outcome] -= 1
                self.counts[Outcome.SKIPPED] += 1
                self.issue(number, f"more than {self.max_regex} regex rules in one source")
                return
            suffix, literal = regex_hints(result.pattern)
            label = "" if suffix else label_hint(result.pattern)
            self.regexes.append(RegexRule(result.category, result.pattern, number, suffix, label, literal))
        elif outcome is Outcome.SIDE and result.side is not None:
            if len(self.side_rules) >= MAX_SIDE_RULES:
                self.counts[outcome] -= 1
                self.counts[Outcome.SKIPPED] += 1
                self.issue(
                    number, f"more than {MAX_SIDE_RULES} rules with DNS modifiers or addresses in one source"
                )
                return
            source = self.source
            self.side_rules.append(
                replace(result.side, line=number, list_name=source.list_name, source=source.location)
            )
            if result.reason:
                self.issue(number, result.reason)
        elif outcome is Outcome.BADFILTER and result.side is not None:
            self.side_badfilters.append(result.side.text)
        elif outcome is Outcome.BADFILTER:
            if result.names:
                self.badfilters.extend((result.category, name) for name in result.names)
            else:
                self.regex_badfilters.append((result.category, result.pattern))
        elif outcome in (Outcome.SKIPPED, Outcome.MALFORMED):
            self.issue(number, result.reason)


def parse_text(
    text: str,
    source: ListSource,
    *,
    max_issues: int = DEFAULT_MAX_ISSUES,
    max_regex: int = DEFAULT_MAX_REGEX,
    name_hash: NameHash = hash,
) -> ParsedSource:
    """Parse a whole list; never raises for bad content, it is counted and reported with line numbers."""
    text = _normalize_newlines(text)
    subdomains = source.subdomains if source.subdomains is not None else _header_declares_subdomains(text)
    allow = source.allow
    low = text.lower()
    total_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    collect = _Collector(source, max_issues, max_regex, text, name_hash)
    # NUL separates names in the bulk checks, so a text holding one (a broken file) is read line by line.
    shape = None if "\x00" in low else _detect_shape(low, allow, subdomains)
    if shape is None:
        for number, line in enumerate(low.split("\n")[:total_lines], 1):
            collect.slow_line(line, number, allow, subdomains)
        fast_shape = ""
    else:
        _parse_bulk(low, shape, collect, allow, subdomains, total_lines)
        fast_shape = " | ".join(p + "{name}" + shape.suffix for p in (shape.prefix, *shape.alternates))
    blocks = tuple(builder.build(cat) for cat, builder in sorted(collect.blocks.items()) if builder.hashes)
    counts = {outcome.value: value for outcome, value in collect.counts.items() if value}
    report = ParseReport(
        location=source.location,
        lines=total_lines,
        rules=sum(len(block.hashes) for block in blocks),
        regex_rules=len(collect.regexes),
        counts=counts,
        reasons=dict(collect.reasons),
        issues=tuple(collect.issues),
        issue_count=collect.issue_count,
        subdomains=subdomains,
        fast_shape=fast_shape,
    )
    return ParsedSource(
        source,
        blocks,
        tuple(collect.regexes),
        tuple(collect.badfilters),
        tuple(collect.regex_badfilters),
        report,
        tuple(collect.side_rules),
        tuple(collect.side_badfilters),
    )


def _parse_bulk(
    low: str, shape: _Shape, collect: _Collector, allow: bool, subdomains: bool, total: int
) -> None:
    prefix, suffix = shape.prefix, shape.suffix
    # Made before the split: objects that outlive the millions of short-lived name strings should not
    # be allocated among them, or they pin the allocator's arenas (RSS that is never given back).
    block = collect.block(shape.category)
    # Files that list every name twice (a 0.0.0.0 line and a :: line) put the twins next to each other.
    block.twins = bool(shape.alternates)
    work = low
    for alternate in shape.alternates:
        work = work.replace("\n" + alternate, "\n" + prefix)
    chunks = work.split(suffix + "\n" + prefix)
    last = len(chunks) - 1
    odd = [0] + [i + 1 for i in _odd_chunks(chunks[1:last])] + ([last] if last > 0 else [])
    line = 1
    start = 0
    bulk_lines = 0
    for index in odd:
        if index > start:
            block.add_run(list(map(collect.name_hash, chunks[start:index])), line)
            bulk_lines += index - start
            line += index - start
        chunk = chunks[index]
        segment = (prefix if index > 0 else "") + chunk + (suffix if index < last else "")
        for offset, text in enumerate(segment.split("\n")):
            if line + offset <= total:
                collect.slow_line(text, line + offset, allow, subdomains)
        line += chunk.count("\n") + 1
        start = index + 1
    block.twins = False
    collect.counts[Outcome.RULE] += bulk_lines
