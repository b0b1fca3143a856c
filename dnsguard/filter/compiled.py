"""Compiled lists as bytes: one parsed source, or a whole matcher index that a daemon maps into memory.

Parsing a million names costs seconds of CPU and a few hundred MB at its peak; the index it yields is
8 bytes a rule. Kept as a file, a restart or a reload whose sources did not change skips the parse, and a
daemon that maps the index file (``mmap``) reads its tables in place: no copy, pages shared with the
page cache, and nothing for the garbage collector to walk.

Both kinds are one container::

    magic (8 bytes) | meta length (u64) | payload length (u64) | BLAKE2b-256 of meta + payload (32 bytes)
    meta (JSON, padded to 8 bytes) | payload (the tables, each at an 8-byte aligned offset)

The digest makes a truncated, partly written or otherwise damaged file an error (`CompiledFormatError`)
rather than a wrong answer or a crash; the caller rebuilds it. Tables are stored in the machine's byte
order, which the meta names: a file from another machine is refused the same way.

Names are hashed with `keyed_name_hash`: Python's ``hash()`` is re-seeded in every process, so an index
kept on disk needs a hash that is the same in every process, and keyed with a secret so that nobody can
craft a query name that collides with a listed one.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from array import array
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from dnsguard.errors import DnsguardError
from dnsguard.filter.lists import (
    LineIssue,
    ListSource,
    NameHash,
    ParsedSource,
    ParseReport,
    RegexRule,
    RuleBlock,
)
from dnsguard.filter.matcher import Matcher, _Regex
from dnsguard.filter.rules import Outcome, parse_line
from dnsguard.filter.side import SideRule

__all__ = [
    "HEADER_BYTES",
    "INDEX_MAGIC",
    "KEY_BYTES",
    "SOURCE_MAGIC",
    "CompiledFormatError",
    "body_digest",
    "index_chunks",
    "key_id",
    "keyed_name_hash",
    "load_index",
    "load_source",
    "read_header",
    "source_chunks",
]

SOURCE_MAGIC: Final = b"DGSRC003"
INDEX_MAGIC: Final = b"DGIDX003"
KEY_BYTES: Final = 32
_HEADER: Final = struct.Struct("<8sQQ32s")
_DIGEST_BYTES: Final = 32
_ALIGN: Final = 8


class CompiledFormatError(DnsguardError):
    """A compiled file is truncated, damaged, from another version or built with another key."""


def keyed_name_hash(key: bytes) -> NameHash:
    """A 64-bit BLAKE2b of a name keyed with `key`: the same in every process that holds the key.

    Costs about 0.7 µs a name here (``hash()``: 0.1 µs), paid once per distinct query name thanks to the
    matcher's caches, and about a second per million names in the child process that compiles.
    """
    template = hashlib.blake2b(digest_size=8, key=key)
    copy = template.copy
    from_bytes = int.from_bytes

    def name_hash(name: str) -> int:
        state = copy()
        state.update(name.encode("utf-8", "surrogatepass"))
        return from_bytes(state.digest(), "little", signed=True)

    return name_hash


def key_id(key: bytes) -> str:
    """A short public fingerprint of a hash key, recorded in every file built with it."""
    return hashlib.blake2b(key, digest_size=8, person=b"dnsguard-key-id").hexdigest()


# -- the container ------------------------------------------------------------------------------


def _pack(magic: bytes, meta: dict[str, Any], tables: Mapping[str, array[int]]) -> list[bytes]:
    """The file as chunks (header first); `meta` gains the tables' layout and the byte order."""
    layout = []
    offset = 0
    for name, table in tables.items():
        size = len(table) * table.itemsize
        layout.append([name, table.typecode, offset, len(table)])
        offset += size + (-size % _ALIGN)
    meta = {**meta, "byteorder": sys.byteorder, "tables": layout}
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    meta_bytes += b" " * (-len(meta_bytes) % _ALIGN)
    body: list[bytes] = [meta_bytes]
    for table in tables.values():
        data = table.tobytes()
        body.append(data + b"\0" * (-len(data) % _ALIGN))
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for chunk in body:
        digest.update(chunk)
    header = _HEADER.pack(magic, len(meta_bytes), offset, digest.digest())
    return [header, *body]


HEADER_BYTES: Final = _HEADER.size


def read_header(header: bytes, magic: bytes) -> tuple[int, bytes]:
    """The file length a container header promises and the digest of what follows it."""
    if len(header) < _HEADER.size:
        raise CompiledFormatError(f"{len(header)} bytes is shorter than the header")
    found, meta_length, payload_length, expected = _HEADER.unpack_from(header)
    if found != magic:
        raise CompiledFormatError(f"not a {magic[:5].decode()} file of this version (magic {found!r})")
    return _HEADER.size + meta_length + payload_length, expected


def body_digest() -> Any:
    """The hash object whose digest of everything after the header `read_header` returns."""
    return hashlib.blake2b(digest_size=_DIGEST_BYTES)


def _unpack(
    buffer: Any, magic: bytes, *, digest_checked: bool = False
) -> tuple[dict[str, Any], dict[str, memoryview]]:
    """The meta and the tables (typed views into `buffer`) of a container; checks everything first.

    `digest_checked`: the caller already compared the digest, reading the file (so that checking a
    mapped index does not pull every page of it into the process's resident memory at once).
    """
    view = memoryview(buffer).cast("B")
    end, expected = read_header(bytes(view[: _HEADER.size]), magic)
    _, meta_length, _, _ = _HEADER.unpack_from(view)
    if len(view) != end:
        raise CompiledFormatError(f"{len(view)} bytes, the header says {end}: truncated or damaged")
    if not digest_checked:
        digest = body_digest()
        digest.update(view[_HEADER.size :])
        if digest.digest() != expected:
            raise CompiledFormatError("checksum mismatch: the file is damaged")
    try:
        meta = json.loads(bytes(view[_HEADER.size : _HEADER.size + meta_length]))
    except ValueError as exc:
        raise CompiledFormatError(f"unreadable meta: {exc}") from None
    if not isinstance(meta, dict) or meta.get("byteorder") != sys.byteorder:
        raise CompiledFormatError("written on a machine of another byte order")
    payload = view[_HEADER.size + meta_length :]
    tables: dict[str, memoryview] = {}
    try:
        for name, typecode, offset, count in meta["tables"]:
            size = array(typecode).itemsize * count
            if offset < 0 or offset + size > len(payload):
                raise CompiledFormatError(f"table {name} lies outside the file")
            tables[name] = payload[offset : offset + size].cast(typecode)
    except (KeyError, TypeError, ValueError) as exc:
        raise CompiledFormatError(f"bad table layout: {exc}") from None
    return meta, tables


# -- one parsed source ----------------------------------------------------------------------------


def _report_meta(report: ParseReport) -> dict[str, Any]:
    return {
        "location": report.location,
        "lines": report.lines,
        "rules": report.rules,
        "regex_rules": report.regex_rules,
        "counts": dict(report.counts),
        "reasons": dict(report.reasons),
        "issues": [[i.location, i.line, i.reason, i.text] for i in report.issues],
        "issue_count": report.issue_count,
        "subdomains": report.subdomains,
        "fast_shape": report.fast_shape,
    }


def _report_from(meta: dict[str, Any]) -> ParseReport:
    return ParseReport(
        location=meta["location"],
        lines=meta["lines"],
        rules=meta["rules"],
        regex_rules=meta["regex_rules"],
        counts=meta["counts"],
        reasons=meta["reasons"],
        issues=tuple(LineIssue(*issue) for issue in meta["issues"]),
        issue_count=meta["issue_count"],
        subdomains=meta["subdomains"],
        fast_shape=meta["fast_shape"],
    )


def _source_meta(source: ListSource) -> list[Any]:
    return [source.list_name, source.location, source.allow, source.subdomains, source.path]


def _side_rules_from(
    rows: list[Any], sources: tuple[ListSource, ...], reports: tuple[ParseReport, ...]
) -> tuple[SideRule, ...]:
    """Side rules stored as (source number, line, line text): parsed again, as few as they are."""
    rules = []
    for source_id, line, text in rows:
        source = sources[source_id]
        result = parse_line(text, allow=source.allow, subdomains=reports[source_id].subdomains)
        if result.outcome is not Outcome.SIDE or result.side is None:
            raise CompiledFormatError(f"stored side rule {text[:80]!r} no longer parses")
        rules.append(replace(result.side, line=line, list_name=source.list_name, source=source.location))
    return tuple(rules)


def source_chunks(parsed: ParsedSource, key: bytes) -> list[bytes]:
    """A parsed source (hashed with `keyed_name_hash(key)`) as the chunks of its compiled file."""
    tables: dict[str, array[int]] = {}
    blocks = []
    for number, block in enumerate(parsed.blocks):
        for part in ("hashes", "run_offsets", "run_lines", "run_steps"):
            tables[f"{number}.{part}"] = getattr(block, part)
        blocks.append(block.category)
    meta = {
        "key_id": key_id(key),
        "source": _source_meta(parsed.source),
        "blocks": blocks,
        "regexes": [[r.category, r.pattern, r.line, r.suffix, r.label, r.literal] for r in parsed.regexes],
        "badfilters": [list(item) for item in parsed.badfilters],
        "regex_badfilters": [list(item) for item in parsed.regex_badfilters],
        "side_rules": [[0, rule.line, rule.line_text] for rule in parsed.side_rules],
        "side_badfilters": list(parsed.side_badfilters),
        "report": _report_meta(parsed.report),
    }
    return _pack(SOURCE_MAGIC, meta, tables)


def _copy(view: memoryview) -> array[int]:
    table = array(view.format)
    table.frombytes(view.cast("B"))
    return table


def load_source(data: bytes, key: bytes) -> ParsedSource:
    """A parsed source back from its compiled file; CompiledFormatError when it is not usable."""
    meta, tables = _unpack(data, SOURCE_MAGIC)
    if meta.get("key_id") != key_id(key):
        raise CompiledFormatError("built with another hash key")
    try:
        blocks = tuple(
            RuleBlock(
                category,
                _copy(tables[f"{number}.hashes"]),
                _copy(tables[f"{number}.run_offsets"]),
                _copy(tables[f"{number}.run_lines"]),
                _copy(tables[f"{number}.run_steps"]),
            )
            for number, category in enumerate(meta["blocks"])
        )
        source = ListSource(*meta["source"])
        report = _report_from(meta["report"])
        return ParsedSource(
            source,
            blocks,
            tuple(RegexRule(*rule) for rule in meta["regexes"]),
            tuple((category, name) for category, name in meta["badfilters"]),
            tuple((category, pattern) for category, pattern in meta["regex_badfilters"]),
            report,
            _side_rules_from(meta["side_rules"], (source,), (report,)),
            tuple(meta["side_badfilters"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CompiledFormatError(f"bad source meta: {exc}") from None


# -- a whole matcher ----------------------------------------------------------------------------

_INDEX_TABLES: Final = (
    "entries",
    "low_hashes",
    "directory",
    "run_starts",
    "run_lines",
    "run_steps",
    "run_blocks",
)


def _as_array(table: Any, typecode: str) -> array[int]:
    if isinstance(table, array):
        return table
    return array(typecode, table)


def index_chunks(matcher: Matcher, parsed: list[ParsedSource], key: bytes) -> list[bytes]:
    """A matcher compiled from `parsed` (hashed with `keyed_name_hash(key)`) as its index file's chunks."""
    categories = {
        (source_id, rule.line, rule.pattern): rule.category
        for source_id, p in enumerate(parsed)
        for rule in p.regexes
    }
    source_ids = {source.location: number for number, source in enumerate(matcher.sources)}
    tables = {
        name: _as_array(getattr(matcher, f"_{name}"), "B" if name == "run_steps" else "I")
        for name in _INDEX_TABLES
    }
    meta = {
        "key_id": key_id(key),
        "list_names": list(matcher.list_names),
        "sources": [_source_meta(source) for source in matcher.sources],
        "source_lists": list(matcher._source_lists),
        "block_categories": list(matcher._block_categories),
        "block_sources": list(matcher._block_sources),
        "block_starts": list(matcher._block_starts),
        "regexes": [
            [
                rule.source_id,
                rule.list_id,
                categories[(rule.source_id, rule.line, rule.pattern)],
                rule.pattern,
                rule.line,
                rule.suffix,
                rule.label,
                rule.literal,
            ]
            for rule in matcher._regexes
        ],
        "dropped_regexes": matcher.dropped_regexes,
        "reports": [_report_meta(report) for report in matcher.reports],
        "side_rules": [[source_ids[rule.source], rule.line, rule.line_text] for rule in matcher.side_rules],
    }
    return _pack(INDEX_MAGIC, meta, tables)


def load_index(buffer: Any, key: bytes, *, digest_checked: bool = False) -> Matcher:
    """The matcher of an index file, its tables read in place from `buffer` (bytes or an mmap)."""
    meta, tables = _unpack(buffer, INDEX_MAGIC, digest_checked=digest_checked)
    if meta.get("key_id") != key_id(key):
        raise CompiledFormatError("built with another hash key")
    try:
        regexes = tuple(
            _Regex(RegexRule(category, pattern, line, suffix, label, literal), source_id, list_id)
            for source_id, list_id, category, pattern, line, suffix, label, literal in meta["regexes"]
        )
        entries = tables["entries"]
        directory = tables["directory"]
        if len(directory) != (1 << 16) + 1 or (len(entries) and directory[-1] != len(entries)):
            raise CompiledFormatError("the bucket directory does not fit the entries")
        sources = tuple(ListSource(*source) for source in meta["sources"])
        reports = tuple(_report_from(report) for report in meta["reports"])
        return Matcher(
            list_names=tuple(meta["list_names"]),
            sources=sources,
            source_lists=tuple(meta["source_lists"]),
            **{name: tables[name] for name in _INDEX_TABLES},
            block_categories=tuple(meta["block_categories"]),
            block_sources=tuple(meta["block_sources"]),
            block_starts=tuple(meta["block_starts"]),
            regexes=regexes,
            dropped_regexes=meta["dropped_regexes"],
            reports=reports,
            name_hash=keyed_name_hash(key),
            side_rules=_side_rules_from(meta["side_rules"], sources, reports),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CompiledFormatError(f"bad index meta: {exc}") from None
