"""From the configuration's `lists:` to a compiled matcher: read files, inline rules and downloads.

A source that cannot be read, or whose new copy is rejected (empty, garbage, far shorter than the last
good one), keeps its last good compiled copy and is reported; it never empties the rest of its list or
stops the others (see `dnsguard.app.list_store`). Only sources whose content changed are parsed again, and
an index for unchanged sources is loaded from the cache directory, mapped into memory, without
compiling. Big compiles run in a child process (`dnsguard.app.list_compiler`), so a daemon keeps
answering with its current matcher at full speed while a new one is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import mmap
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from dnsguard.app.list_store import (
    CompileJob,
    JobResult,
    SourceJob,
    SourceOutcome,
    StoreError,
    plan,
    prepare_directory,
    read_source,
    run_job,
)
from dnsguard.app.memory import release_free_memory
from dnsguard.config.model import Config
from dnsguard.errors import DnsguardError
from dnsguard.filter.compiled import (
    HEADER_BYTES,
    INDEX_MAGIC,
    CompiledFormatError,
    body_digest,
    load_index,
    read_header,
)
from dnsguard.filter.lists import ListFileError, ParsedSource, parse_bytes
from dnsguard.filter.matcher import Matcher, compile_matcher
from dnsguard.net.downloads import FetchResult, ListFetcher, ProgressCallback

log = logging.getLogger("dnsguard.lists")

SourceReport = SourceOutcome
"""What became of one source in a build (see `dnsguard.app.list_store.SourceOutcome`)."""

IN_PROCESS_BYTES: Final = 256 * 1024
IN_PROCESS_RULES: Final = 50_000
"""A compile that parses at most IN_PROCESS_BYTES and indexes at most IN_PROCESS_RULES (plus what it
parses) runs in a worker thread: tens of milliseconds of GIL, less than starting a child process costs.
Anything bigger runs in the child: even when one small list changed, sorting a million-rule index holds
the GIL for most of a second."""


class BuildError(DnsguardError):
    """The lists could not be compiled (the compiler failed); nothing was changed."""


@dataclass
class BuildResult:
    matcher: Matcher
    sources: list[SourceReport]
    seconds: float
    built_at: float
    compiled: bool = True
    """False when the index came from the cache directory without compiling."""
    index: str | None = None
    """The index file the matcher is mapped from; None for a matcher built in memory."""

    def entries_by_list(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for report in self.sources:
            counts[report.list_name] = counts.get(report.list_name, 0) + report.rules
        return counts

    @property
    def failures(self) -> list[SourceReport]:
        return [r for r in self.sources if r.status in ("error", "failed", "cached", "kept")]


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_inline(source: str) -> bool:
    return "\n" in source


def compile_job(config: Config, fetched: dict[str, FetchResult]) -> CompileJob:
    """Every source of every list, as the compile reads it."""
    base = Path(config.base_dir)
    sources: list[SourceJob] = []
    for list_name, list_config in config.lists.items():
        options = {"allow": list_config.allow, "subdomains": list_config.subdomains}
        for index, source in enumerate(list_config.sources):
            if is_inline(source):
                location = f"lists.{list_name}.sources[{index}] (inline)"
                sources.append(SourceJob(list_name, location, None, text=source, **options))  # type: ignore[arg-type]
            elif is_url(source):
                fetch = fetched.get(source)
                path = str(fetch.path) if fetch is not None and fetch.path is not None else None
                status = fetch.status if fetch is not None else "failed"
                error = fetch.error if fetch is not None else "not downloaded"
                sources.append(
                    SourceJob(list_name, source, path, fetch_status=status, fetch_error=error, **options)  # type: ignore[arg-type]
                )
            else:
                path = str((base / source).resolve())
                sources.append(SourceJob(list_name, path, path, **options))  # type: ignore[arg-type]
    return CompileJob(
        str(Path(config.loading.cache_dir) / "compiled"),
        list(config.lists),
        sources,
        config.loading.min_ratio,
        int(config.loading.max_size),
    )


def _load(path: Path, key: bytes) -> Matcher:
    """The matcher of an index file, mapped read-only (CompiledFormatError when damaged)."""
    try:
        with path.open("rb") as handle:
            # The digest is checked by reading the file, not through the mapping: that would make every
            # page of the new index resident at once, next to the index still in use.
            length, expected = read_header(handle.read(HEADER_BYTES), INDEX_MAGIC)
            # One small reused buffer (file_digest's): big read() chunks would raise glibc's mmap
            # threshold and leave their memory in the heap.
            digest = hashlib.file_digest(handle, body_digest)
            if handle.tell() != length:
                raise CompiledFormatError(f"{handle.tell()} bytes, the header says {length}: truncated")
            if digest.digest() != expected:
                raise CompiledFormatError("checksum mismatch: the file is damaged")
            mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    except (OSError, ValueError) as exc:
        raise CompiledFormatError(f"cannot map {path}: {exc}") from None
    return load_index(mapped, key, digest_checked=True)


def _result(
    matcher: Matcher, sources: list[SourceOutcome], started: float, compiled: bool, index: str
) -> BuildResult:
    return BuildResult(matcher, sources, time.perf_counter() - started, time.time(), compiled, index)


def _in_memory(config: Config, fetched: dict[str, FetchResult], reason: str) -> BuildResult:
    """The build without a cache directory: parse and compile here (no last good copy to keep)."""
    log.warning("compiled lists are not kept (%s): compiling in the daemon", reason)
    started = time.perf_counter()
    parsed: list[ParsedSource] = []
    reports: list[SourceReport] = []
    for source in compile_job(config, fetched).sources:
        report = SourceReport(source.list_name, source.location)
        if source.fetch_status != "ok":
            report.status, report.error = source.fetch_status, source.fetch_error
        try:
            result = parse_bytes(read_source(source, int(config.loading.max_size)), source.list_source())
        except ListFileError as exc:
            report.status = "error" if source.fetch_status == "ok" else source.fetch_status
            report.error = exc.reason
            reports.append(report)
            continue
        report.rules = result.rule_count + result.report.regex_rules
        report.malformed = result.report.issue_count
        report.examples = [str(issue) for issue in result.report.issues[:5]]
        parsed.append(result)
        reports.append(report)
    matcher = compile_matcher(parsed, lists=list(config.lists), release_memory=release_free_memory)
    del parsed
    release_free_memory()
    return BuildResult(matcher, reports, time.perf_counter() - started, time.time())


def build_sync(config: Config, fetched: dict[str, FetchResult] | None = None) -> BuildResult:
    """The build of `build`, all in the calling thread (for `check`, `explain` and tests)."""
    fetched = fetched if fetched is not None else cached_downloads(config)
    job = compile_job(config, fetched)
    started = time.perf_counter()
    try:
        key = prepare_directory(Path(job.directory))
    except StoreError as exc:
        return _in_memory(config, fetched, str(exc))
    ready = plan(job, key)
    if ready.index is not None:
        with contextlib.suppress(CompiledFormatError):
            return _result(_load(ready.index, key), ready.sources, started, False, str(ready.index))
        ready.index.unlink(missing_ok=True)
    result = run_job(job, key)
    return _load_compiled(result, key, started)


def _load_compiled(result: JobResult, key: bytes, started: float) -> BuildResult:
    try:
        matcher = _load(Path(result.index), key)
    except CompiledFormatError as exc:
        # Written a moment ago and already damaged: the disk or another writer is at fault. Removed, so
        # that the next attempt writes it again.
        Path(result.index).unlink(missing_ok=True)
        raise BuildError(f"the compiled index {result.index} is unusable: {exc}") from None
    return _result(matcher, result.sources, started, True, result.index)


async def compile_in_child(job: CompileJob, key: bytes) -> JobResult:
    """Run the compile in `python -m dnsguard.app.list_compiler`; BuildError with its message on failure."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dnsguard.app.list_compiler",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    request = json.dumps({"key": key.hex(), "job": asdict(job)}).encode()
    try:
        out, err = await process.communicate(request)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise BuildError(lines[-1] if lines else f"the list compiler exited with status {process.returncode}")
    try:
        return JobResult.from_json(out.decode())
    except (ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"the list compiler's answer is unreadable: {exc}") from None


async def build_from(
    config: Config, fetched: dict[str, FetchResult], reuse: BuildResult | None = None
) -> BuildResult:
    """The matcher for `config` with these downloads: from the cache, or compiled off the event loop.

    `reuse`: the build in use; when the sources map to its very index, its matcher is kept (a reload that
    changed no list maps nothing twice).
    """
    job = compile_job(config, fetched)
    started = time.perf_counter()
    try:
        key = await asyncio.to_thread(prepare_directory, Path(job.directory))
    except StoreError as exc:
        return await asyncio.to_thread(_in_memory, config, fetched, str(exc))
    ready = await asyncio.to_thread(plan, job, key)
    if ready.index is not None and reuse is not None and reuse.index == str(ready.index):
        return _result(reuse.matcher, ready.sources, started, False, str(ready.index))
    if ready.index is not None:
        try:
            matcher = await asyncio.to_thread(_load, ready.index, key)
        except CompiledFormatError as exc:
            log.warning("compiled index %s is damaged (%s): compiling again", ready.index, exc)
            ready.index.unlink(missing_ok=True)
        else:
            return _result(matcher, ready.sources, started, False, str(ready.index))
    if ready.pending_bytes <= IN_PROCESS_BYTES and ready.known_rules <= IN_PROCESS_RULES:
        result = await asyncio.to_thread(run_job, job, key)
    else:
        result = await compile_in_child(job, key)
    return await asyncio.to_thread(_load_compiled, result, key, started)


def urls_of(config: Config) -> list[str]:
    """Every URL to download: the lists' sources and the firewall's DoH lists (same cache and limits)."""
    return list(dict.fromkeys([*list_urls_of(config), *doh_urls_of(config)]))


def list_urls_of(config: Config) -> list[str]:
    return list(dict.fromkeys(s for lst in config.lists.values() for s in lst.sources if is_url(s)))


DOH_LISTS = "firewall.doh-lists"
"""The name the DoH lists' downloads are counted under, beside the lists' names."""


def doh_urls_of(config: Config) -> list[str]:
    """URL sources of `firewall.doh-lists` (the default, the shipped file, has none)."""
    firewall = config.firewall
    if not (firewall.enabled and firewall.refuse_doh):
        return []
    return [s for s in firewall.doh_lists or [] if is_url(s)]


def fetcher_for(config: Config, progress: ProgressCallback | None = None) -> ListFetcher:
    """A list fetcher with the configuration's cache directory and download limits."""
    loading = config.loading
    return ListFetcher(
        loading.cache_dir,
        timeout=float(loading.timeout),
        max_size=int(loading.max_size),
        min_ratio=loading.min_ratio,
        progress=progress,
    )


def cached_downloads(config: Config) -> dict[str, FetchResult]:
    """The last good copy of every URL source, without any network access."""
    fetcher = fetcher_for(config)
    fetched = {}
    for url in urls_of(config):
        path, meta = fetcher.cached(url)
        fetched[url] = FetchResult(
            url,
            path,
            "cached" if path else "failed",
            error=None if path else "not downloaded yet: run 'dnsguard lists update'",
            size=meta.size if meta else 0,
        )
    return fetched


async def build(config: Config, *, download: bool = True, reuse: BuildResult | None = None) -> BuildResult:
    """Download (or take cached copies of) URL sources, then load or compile the lists (see `build_from`)."""
    urls = urls_of(config)
    if urls and download:
        fetched = await fetcher_for(config).fetch_all(urls)
    else:
        fetched = cached_downloads(config)
    return await build_from(config, fetched, reuse)
