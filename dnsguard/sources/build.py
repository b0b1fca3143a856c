"""From the configuration's `lists:` to a compiled matcher: read files, inline rules and downloads.

A source that cannot be read is reported and skipped; it never empties the rest of its list or
stops the others. Parsing and compiling run in a worker thread so a daemon keeps answering with
its current matcher while a new one is built, then swaps it in at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from dnsguard.config.model import Config
from dnsguard.filter.lists import (
    ListFileError,
    ListSource,
    ParsedSource,
    parse_bytes,
    parse_file,
    parse_text,
    read_list_file,
)
from dnsguard.filter.matcher import Matcher, compile_matcher, release_free_memory
from dnsguard.sources.fetch import FetchResult, ListFetcher, ProgressCallback


@dataclass
class SourceReport:
    list_name: str
    location: str
    rules: int = 0
    status: str = "ok"
    """'ok', or for URLs the fetch status ('downloaded', 'not-modified', 'cached', 'failed'); 'error'."""
    error: str | None = None
    malformed: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class BuildResult:
    matcher: Matcher
    sources: list[SourceReport]
    seconds: float
    built_at: float

    def entries_by_list(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for report in self.sources:
            counts[report.list_name] = counts.get(report.list_name, 0) + report.rules
        return counts

    @property
    def failures(self) -> list[SourceReport]:
        return [r for r in self.sources if r.status in ("error", "failed", "cached")]


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_inline(source: str) -> bool:
    return "\n" in source


def _report(parsed: ParsedSource, report: SourceReport) -> None:
    report.rules = parsed.rule_count + parsed.report.regex_rules
    report.malformed = parsed.report.issue_count
    report.examples = [str(issue) for issue in parsed.report.issues[:5]]


def parse_sources(
    config: Config, fetched: dict[str, FetchResult]
) -> tuple[list[ParsedSource], list[SourceReport]]:
    """Parse every source of every list (blocking; run it in a thread for big lists)."""
    parsed: list[ParsedSource] = []
    reports: list[SourceReport] = []
    base = Path(config.base_dir)
    max_size = int(config.loading.max_size)
    for list_name, list_config in config.lists.items():
        for index, source in enumerate(list_config.sources):
            if is_inline(source):
                location = f"lists.{list_name}.sources[{index}] (inline)"
                report = SourceReport(list_name, location)
                result = parse_text(
                    source,
                    ListSource(
                        list_name, location, allow=list_config.allow, subdomains=list_config.subdomains
                    ),
                )
            elif is_url(source):
                report = SourceReport(list_name, source)
                fetch = fetched.get(source)
                if fetch is None or fetch.path is None:
                    report.status = "failed"
                    report.error = fetch.error if fetch else "not downloaded"
                    reports.append(report)
                    continue
                report.status, report.error = fetch.status, fetch.error
                try:
                    data = read_list_file(fetch.path, max_size)
                except ListFileError as exc:
                    report.status, report.error = "error", f"cached copy {exc}"
                    reports.append(report)
                    continue
                result = parse_bytes(
                    data,
                    ListSource(
                        list_name,
                        source,
                        allow=list_config.allow,
                        subdomains=list_config.subdomains,
                        path=str(fetch.path),
                    ),
                )
            else:
                path = (base / source).resolve()
                report = SourceReport(list_name, str(path))
                try:
                    result = parse_file(
                        path,
                        list_name,
                        allow=list_config.allow,
                        subdomains=list_config.subdomains,
                        max_size=max_size,
                    )
                except ListFileError as exc:
                    # Only regular files are read, and at most loading.max-size of them (read_list_file).
                    report.status, report.error = "error", exc.reason
                    reports.append(report)
                    continue
            _report(result, report)
            parsed.append(result)
            reports.append(report)
    return parsed, reports


def build_sync(config: Config, fetched: dict[str, FetchResult] | None = None) -> BuildResult:
    """Parse and compile every list of the configuration."""
    started = time.perf_counter()
    parsed, reports = parse_sources(config, fetched or {})
    matcher = compile_matcher(parsed, lists=list(config.lists))
    del parsed
    # Building needs several times the index's memory; give it back to the system.
    release_free_memory()
    return BuildResult(matcher, reports, time.perf_counter() - started, time.time())


def urls_of(config: Config) -> list[str]:
    return list(dict.fromkeys(s for lst in config.lists.values() for s in lst.sources if is_url(s)))


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


async def build(config: Config, *, download: bool = True) -> BuildResult:
    """Download (or take cached copies of) URL sources, then parse and compile in a worker thread."""
    urls = urls_of(config)
    if urls and download:
        fetched = await fetcher_for(config).fetch_all(urls)
    else:
        fetched = cached_downloads(config)
    return await asyncio.to_thread(build_sync, config, fetched)
