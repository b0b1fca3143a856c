"""Compiled lists on disk: one file per source, one index per set of sources, and the last good copy.

Under ``loading.cache-dir``/compiled:

- ``hash.key``: the secret key of the name hash (`dnsguard.filter.compiled.keyed_name_hash`), made once.
- per source, named by what identifies it (list, location, allow, subdomains): ``<id>.rules``, its
  parsed rules, and ``<id>.json``, its state: the stamp (size, mtime, inode) and content digest of the
  copy compiled, its report, and the stamp and reason of a newer copy that was rejected (judged again
  when the file or ``loading.min-ratio`` changes).
- ``index-<key>.idx``: the matcher of one set of source copies, keyed by their digests and the list
  names, which a daemon maps into memory.

A compile (`run_job`) parses only the sources whose content changed (same stamp: not even read; same
digest: not parsed), and writes an index only for a set of copies it has not indexed before. A copy that
cannot be read, is empty where the last one was not, is mostly malformed lines, or has far fewer rules
than the last good copy (``loading.min-ratio``) is rejected: the source keeps its last good compiled copy
and the report says why. `plan` answers, from stats and the small state files alone, whether an index for
the current sources already exists: that is how a restart serves filtered answers without compiling.

Everything is written to a temporary name and renamed into place, so a crash leaves the old file or the
new one; a damaged file fails its checksum and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from dnsguard.app.memory import release_free_memory
from dnsguard.errors import DnsguardError
from dnsguard.filter.compiled import (
    KEY_BYTES,
    CompiledFormatError,
    index_chunks,
    key_id,
    keyed_name_hash,
    load_source,
    source_chunks,
)
from dnsguard.filter.lists import (
    DEFAULT_MAX_FILE_SIZE,
    ListFileError,
    ListSource,
    ParsedSource,
    parse_bytes,
    read_list_file,
)
from dnsguard.filter.matcher import compile_matcher
from dnsguard.net.files import atomic_write

log = logging.getLogger("dnsguard.lists")

FORMAT: Final = 3
"""Bumped whenever what a compiled file holds changes; part of every name and key (3: side rules,
rules with DNS modifiers and hosts lines with addresses, are stored)."""
GARBAGE_FRACTION: Final = 0.5
"""A copy whose rule lines are more than this fraction malformed or skipped is rejected as garbage."""
RATIO_FLOOR: Final = 1000
"""`min-ratio` applies from this many rules in the last good copy: a hand-kept list of a few names may
shrink to one, but a 100k-name list that drops to 30k is a broken download or a truncated write."""
KEPT_INDEXES: Final = 3
"""Index files kept besides the current one (another daemon on the same cache may still use them)."""

Stamp = list[int] | None
"""(size, mtime in ns, inode) of a source file; None while it does not exist."""


class StoreError(DnsguardError):
    """The compiled-list cache cannot be used (directory or key file)."""


@dataclass(frozen=True, slots=True)
class SourceJob:
    """One source as the compile needs it: where its text is, and how to read it."""

    list_name: str
    location: str
    """Path, URL or inline label, as reports show it."""
    path: str | None
    """The file to read (a local list, or a URL's cached download); None for inline text."""
    text: str | None = None
    """Inline rules."""
    allow: bool = False
    subdomains: bool | None = None
    fetch_status: str = "ok"
    """For URLs: the download's status ('downloaded', 'not-modified', 'cached', 'failed')."""
    fetch_error: str | None = None

    @property
    def source_id(self) -> str:
        identity = [FORMAT, self.list_name, self.location, self.allow, self.subdomains]
        return hashlib.blake2b(json.dumps(identity).encode(), digest_size=10).hexdigest()

    def list_source(self) -> ListSource:
        return ListSource(
            self.list_name,
            self.location,
            allow=self.allow,
            subdomains=self.subdomains,
            path=self.path if self.location != self.path else None,
        )


@dataclass(frozen=True, slots=True)
class CompileJob:
    directory: str
    list_names: list[str]
    sources: list[SourceJob]
    min_ratio: float = 0.5
    max_size: int = DEFAULT_MAX_FILE_SIZE
    """The largest list file read (``loading.max-size``)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CompileJob:
        raw = json.loads(text)
        return cls(
            raw["directory"],
            raw["list_names"],
            [SourceJob(**source) for source in raw["sources"]],
            raw["min_ratio"],
            raw["max_size"],
        )


@dataclass(slots=True)
class SourceOutcome:
    """What a compile made of one source, for logs, the API and the metrics."""

    list_name: str
    location: str
    rules: int = 0
    status: str = "ok"
    """'ok'; for URLs the fetch status; 'kept' (rejected, last good copy in use); 'error' (nothing)."""
    error: str | None = None
    malformed: int = 0
    examples: list[str] = field(default_factory=list)
    parsed: bool = False
    """True when this compile parsed the source (its content changed)."""


@dataclass(slots=True)
class JobResult:
    index: str
    """Path of the index file for these sources."""
    sources: list[SourceOutcome]
    built_index: bool
    """False when an index for exactly these copies already existed."""
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        raw = json.loads(text)
        return cls(
            raw["index"],
            [SourceOutcome(**source) for source in raw["sources"]],
            raw["built_index"],
            raw["seconds"],
        )


# -- files ----------------------------------------------------------------------------------


def prepare_directory(directory: Path) -> bytes:
    """Create the compiled-list directory if needed; the hash key, made on first use (StoreError)."""
    key_path = directory / "hash.key"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            key = os.urandom(KEY_BYTES)
            temporary = directory / f".hash.key.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
            try:
                # link() fails if another process made the key first: then its key is the one.
                os.link(temporary, key_path)
            except FileExistsError:
                key = key_path.read_bytes()
            finally:
                temporary.unlink()
        probe = directory / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"cannot use {directory}: {exc.strerror or exc}") from None
    if len(key) != KEY_BYTES:
        raise StoreError(f"{key_path} is damaged ({len(key)} bytes): delete it to make a new key")
    return key


def stamp_of(path: str) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _read_state(directory: Path, source_id: str) -> dict[str, Any] | None:
    try:
        state = json.loads((directory / f"{source_id}.json").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


def _write_state(directory: Path, source_id: str, state: dict[str, Any]) -> None:
    atomic_write(directory / f"{source_id}.json", [json.dumps({**state, "format": FORMAT}).encode()])


def index_path(
    directory: Path, key: bytes, list_names: list[str], digests: list[tuple[str, str | None]]
) -> Path:
    """The index file for these lists and these source copies (None: the source contributes nothing)."""
    identity = json.dumps([FORMAT, key_id(key), list_names, digests]).encode()
    return directory / f"index-{hashlib.blake2b(identity, digest_size=16).hexdigest()}.idx"


# -- the fast path: is there an index for the sources as they are? -------------------------------


@dataclass(slots=True)
class Plan:
    index: Path | None
    """The index file to load; None when a compile is needed."""
    sources: list[SourceOutcome]
    pending_bytes: int
    """Bytes of the sources a compile would have to read."""
    known_rules: int
    """Rules in the compiled copies on record: what an index sort would cost at least."""


def plan(job: CompileJob, key: bytes) -> Plan:
    """Whether the sources are unchanged since an index was written, from stats and state files only."""
    directory = Path(job.directory)
    digests: list[tuple[str, str | None]] = []
    outcomes: list[SourceOutcome] = []
    pending = 0
    known_rules = 0
    ready = True
    for source in job.sources:
        state = _read_state(directory, source.source_id)
        if state is not None and state.get("digest"):
            known_rules += int((state.get("report") or {}).get("rules", 0))
        outcome = SourceOutcome(source.list_name, source.location)
        if source.fetch_status != "ok":
            outcome.status, outcome.error = source.fetch_status, source.fetch_error
        digest: str | None = None
        if source.path is None and source.text is not None:
            digest = _digest(source.text.encode())
            if state is None or state.get("digest") != digest:
                ready = False
                pending += len(source.text)
        else:
            stamp = stamp_of(source.path) if source.path is not None else None
            rejected = state.get("rejected") if state is not None else None
            if state is not None and stamp is not None and state.get("stamp") == stamp:
                digest = state.get("digest")
            elif (
                state is not None
                and rejected is not None
                and rejected.get("stamp") == stamp
                and rejected.get("min_ratio") == job.min_ratio
            ):
                digest = state.get("digest")
                outcome.status, outcome.error = _rejected_status(state), rejected.get("reason")
            else:
                ready = False
                pending += stamp[0] if stamp is not None else 0
        if state is not None and digest is not None:
            _fill(outcome, state)
        digests.append((source.source_id, digest))
        outcomes.append(outcome)
    if not ready:
        return Plan(None, outcomes, pending, known_rules)
    path = index_path(directory, key, job.list_names, digests)
    return Plan(path if path.exists() else None, outcomes, pending, known_rules)


def _rejected_status(state: dict[str, Any]) -> str:
    return "kept" if state.get("digest") else "error"


def _fill(outcome: SourceOutcome, state: dict[str, Any]) -> None:
    report = state.get("report") or {}
    outcome.rules = int(report.get("rules", 0))
    outcome.malformed = int(report.get("malformed", 0))
    outcome.examples = list(report.get("examples", []))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the compile --------------------------------------------------------------------------------


def _verdict_on(parsed: ParsedSource, previous_rules: int, min_ratio: float) -> str | None:
    """Why a freshly parsed copy must not replace the last good one; None when it may."""
    report = parsed.report
    rules = report.rules + report.regex_rules + report.counts.get("side", 0)
    if rules == 0:
        return "no rules (empty list)" if previous_rules else None
    counts = report.counts
    content_lines = report.lines - counts.get("blank", 0) - counts.get("comment", 0)
    if content_lines and report.issue_count > content_lines * GARBAGE_FRACTION:
        return f"{report.issue_count} of {content_lines} rule lines are malformed or skipped: not a list"
    if previous_rules >= RATIO_FLOOR and rules < previous_rules * min_ratio:
        return (
            f"{rules} rules, the last good copy had {previous_rules}: treated as truncated "
            f"(loading.min-ratio {min_ratio})"
        )
    return None


def _summary(parsed: ParsedSource) -> dict[str, Any]:
    report = parsed.report
    return {
        "rules": parsed.rule_count + report.regex_rules + len(parsed.side_rules),
        "malformed": report.issue_count,
        "examples": [str(issue) for issue in report.issues[:5]],
    }


def _load_copy(directory: Path, source_id: str, key: bytes) -> ParsedSource | None:
    try:
        return load_source((directory / f"{source_id}.rules").read_bytes(), key)
    except (OSError, CompiledFormatError) as exc:
        log.warning("compiled copy %s unusable (%s): compiling the source again", source_id, exc)
        return None


def read_source(source: SourceJob, max_size: int = DEFAULT_MAX_FILE_SIZE) -> bytes:
    """The source's current text; ListFileError (with a short reason) when it cannot be read.

    Files are read as bounded regular files only (`read_list_file`): a FIFO, a device or a file past
    ``loading.max-size`` is refused instead of blocking or exhausting the compile.
    """
    if source.path is not None:
        try:
            return read_list_file(source.path, max_size)
        except ListFileError as exc:
            if source.location != source.path:  # a URL's cached download
                raise ListFileError(source.path, f"cached copy {exc}") from None
            raise
    if source.text is not None:
        return source.text.encode()
    raise ListFileError(source.location, source.fetch_error or "not downloaded yet")


def _compile_source(
    source: SourceJob, directory: Path, key: bytes, min_ratio: float, max_size: int
) -> tuple[ParsedSource | None, str | None, SourceOutcome]:
    """This source's rules (its current copy or its last good one), their digest, and what happened."""
    name_hash = keyed_name_hash(key)
    source_id = source.source_id
    state = _read_state(directory, source_id)
    outcome = SourceOutcome(source.list_name, source.location)
    if source.fetch_status != "ok":
        outcome.status, outcome.error = source.fetch_status, source.fetch_error
    stamp = stamp_of(source.path) if source.path is not None else None
    good_digest = state.get("digest") if state is not None else None
    reason: str | None = None
    parsed: ParsedSource | None = None
    try:
        data = read_source(source, max_size)
    except ListFileError as exc:
        reason = exc.reason
    else:
        digest = _digest(data)
        if state is not None and digest == good_digest:
            parsed = _load_copy(directory, source_id, key)
            if parsed is not None:
                if state.get("stamp") != stamp or state.get("rejected"):
                    _write_state(directory, source_id, {**state, "stamp": stamp, "rejected": None})
                _fill(outcome, state)
                return parsed, digest, outcome
        parsed = parse_bytes(data, source.list_source(), name_hash=name_hash)
        del data
        previous_rules = int((state or {}).get("report", {}).get("rules", 0)) if good_digest else 0
        reason = _verdict_on(parsed, previous_rules, min_ratio)
        if reason is None:
            atomic_write(directory / f"{source_id}.rules", source_chunks(parsed, key))
            summary = _summary(parsed)
            _write_state(
                directory,
                source_id,
                {"stamp": stamp, "digest": digest, "report": summary, "rejected": None},
            )
            outcome.rules, outcome.malformed, outcome.examples = (
                summary["rules"],
                summary["malformed"],
                summary["examples"],
            )
            outcome.parsed = True
            return parsed, digest, outcome
    # Rejected (or unreadable): the last good copy, if there is one, stays in use.
    outcome.error = reason
    last_good = _load_copy(directory, source_id, key) if good_digest else None
    if state is not None:
        rejected = {"stamp": stamp, "reason": reason, "min_ratio": min_ratio}
        if state.get("rejected") != rejected:
            _write_state(directory, source_id, {**state, "rejected": rejected})
    elif reason is not None:
        _write_state(
            directory,
            source_id,
            {
                "stamp": None,
                "digest": None,
                "report": None,
                "rejected": {"stamp": stamp, "reason": reason, "min_ratio": min_ratio},
            },
        )
    if last_good is None:
        outcome.status = "error" if source.fetch_status == "ok" else source.fetch_status
        return None, None, outcome
    outcome.status = "kept"
    _fill(outcome, state or {})
    return last_good, good_digest, outcome


def run_job(job: CompileJob, key: bytes) -> JobResult:
    """Bring every source's compiled copy and the index of them up to date (blocking, CPU-heavy)."""
    started = time.perf_counter()
    directory = Path(job.directory)
    parsed: list[ParsedSource] = []
    digests: list[tuple[str, str | None]] = []
    outcomes: list[SourceOutcome] = []
    for source in job.sources:
        rules, digest, outcome = _compile_source(source, directory, key, job.min_ratio, job.max_size)
        if rules is not None:
            parsed.append(rules)
        digests.append((source.source_id, digest))
        outcomes.append(outcome)
    path = index_path(directory, key, job.list_names, digests)
    built = False
    if not _index_usable(path):
        matcher = compile_matcher(
            parsed,
            lists=job.list_names,
            name_hash=keyed_name_hash(key),
            release_memory=release_free_memory,
        )
        atomic_write(path, index_chunks(matcher, parsed, key))
        del matcher
        built = True
        prune(directory, keep=path)
    del parsed
    release_free_memory()
    return JobResult(str(path), outcomes, built, time.perf_counter() - started)


def _index_usable(path: Path) -> bool:
    # The loader checks the digest; here an existing file of a plausible size is enough to skip the
    # sort (a damaged one is removed by the loader and rebuilt on the next attempt).
    return path.exists()


def prune(directory: Path, keep: Path) -> None:
    """Remove index files beyond the newest few, and leftovers of interrupted writes."""
    indexes = sorted(directory.glob("index-*.idx"), key=_mtime, reverse=True)
    for old in [p for p in indexes if p != keep][KEPT_INDEXES:]:
        with contextlib.suppress(OSError):
            old.unlink()
    for leftover in directory.glob(".*.tmp"):
        if _mtime(leftover) < time.time() - 3600:
            with contextlib.suppress(OSError):
                leftover.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
