"""Blocklist load benchmark: parse + compile time, memory above baseline, and lookups per second.

    python bench/filter_load.py                       # every block list in the shared data folder
    python bench/filter_load.py a.txt b.txt --runs 5  # chosen files

Every run is a fresh child process, so RSS is measured from a clean baseline and runs do not warm each
other up. Timing runs do not trace allocations (tracemalloc slows allocation-heavy code several times);
one extra run traces them for the Python-level numbers. Medians are over the timing runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dnsguard.app.memory import release_free_memory  # noqa: E402
from dnsguard.filter import Matcher, compile_matcher, parse_file  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_LISTS = DATA / "blocklists"
DEFAULT_QUERIES = DATA / "queries" / "top-domains.txt"
DEFAULT_TRACE = DATA / "queries" / "pageload-hostnames.txt"


def default_files() -> list[Path]:
    """Every block list in the shared folder: not the allowlists, licenses or the messy AdGuard filter."""
    return sorted(
        path
        for path in DEFAULT_LISTS.glob("*.txt")
        if not path.name.startswith("LICENSE") and "allowlist" not in path.name and "adguard" not in path.name
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _lookups_per_second(
    matcher: Matcher, names: list[str], *, cache_size: int, canonical: bool = False
) -> float:
    best = float("inf")
    for _ in range(3):
        selection = matcher.select(cache_size=cache_size)
        match = selection.match_canonical if canonical else selection.match
        start = time.perf_counter()
        for name in names:
            match(name)
        best = min(best, time.perf_counter() - start)
    return len(names) / best


def count_distinct(files: list[Path]) -> dict[str, Any]:
    """Distinct names over all files (in its own process: the set would distort the memory figures)."""
    distinct: set[int] = set()
    for path in files:
        distinct |= parse_file(path).name_hashes()
    return {"distinct_names": len(distinct)}


def child(files: list[Path], queries: Path, trace_file: Path, traced: bool) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    names = queries.read_text(encoding="utf-8").split()
    trace = trace_file.read_text(encoding="utf-8").split() if trace_file.is_file() else []
    gc.collect()
    rss_before = _status_kib("VmRSS")
    if traced:
        tracemalloc.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    parsed = [parse_file(path) for path in files]
    wall1 = time.perf_counter()
    matcher = compile_matcher(parsed)
    wall2, cpu2 = time.perf_counter(), time.process_time()
    result: dict[str, Any] = {
        "parse_s": wall1 - wall0,
        "compile_s": wall2 - wall1,
        "total_s": wall2 - wall0,
        "total_cpu_s": cpu2 - cpu0,
        "rule_lines": sum(p.report.counts.get("rule", 0) for p in parsed),
        "rules": matcher.rule_count,
        "index_mib": matcher.memory_bytes / 2**20,
    }
    # What a daemon does after a (re)load: drop the parses, keep the matcher.
    del parsed
    gc.collect()
    release_free_memory()
    result["rss_delta_mib"] = (_status_kib("VmRSS") - rss_before) / 1024
    result["rss_peak_delta_mib"] = (_status_kib("VmHWM") - rss_before) / 1024
    if traced:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["traced_mib"] = current / 2**20
        result["traced_peak_mib"] = peak / 2**20
        return result
    selection = matcher.select(cache_size=0)
    blocked = [name for name in names if selection.match(name).blocked]
    result["blocked_share"] = len(blocked) / len(names)
    result["lookups_per_s"] = _lookups_per_second(matcher, names, cache_size=0)
    result["canonical_lookups_per_s"] = _lookups_per_second(matcher, names, cache_size=0, canonical=True)
    result["blocked_lookups_per_s"] = _lookups_per_second(matcher, blocked, cache_size=0)
    if trace:
        result["trace_lookups_per_s"] = _lookups_per_second(matcher, trace, cache_size=4096)
    return result


def run_child(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--queries",
        str(args.queries),
        "--trace",
        str(args.trace),
    ]
    command += [str(path) for path in args.files]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    loaded: dict[str, Any] = json.loads(output)
    return loaded


ROWS = [
    ("parse (s)", "parse_s", "{:.2f}"),
    ("compile (s)", "compile_s", "{:.2f}"),
    ("parse + compile, wall (s)", "total_s", "{:.2f}"),
    ("parse + compile, cpu (s)", "total_cpu_s", "{:.2f}"),
    ("RSS above baseline after build (MiB)", "rss_delta_mib", "{:.1f}"),
    ("RSS peak above baseline (MiB)", "rss_peak_delta_mib", "{:.1f}"),
    ("index arrays (MiB)", "index_mib", "{:.1f}"),
    ("lookups/s, top-domains, no cache", "lookups_per_s", "{:,.0f}"),
    ("  the same with match_canonical", "canonical_lookups_per_s", "{:,.0f}"),
    ("lookups/s, blocked names only, no cache", "blocked_lookups_per_s", "{:,.0f}"),
    ("lookups/s, page-load trace, 4096 cache", "trace_lookups_per_s", "{:,.0f}"),
]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table (or one child measurement as JSON)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help="list files (default: all shared block lists)")
    parser.add_argument(
        "--runs", type=int, default=3, help="timing runs, each in a fresh process (default 3)"
    )
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="names for lookups/s")
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="query trace with repeats")
    parser.add_argument("--json", action="store_true", help="print the raw measurements as JSON")
    parser.add_argument("--child", choices=["timed", "traced", "count"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.files:
        args.files = default_files()
    if args.child == "count":
        print(json.dumps(count_distinct(args.files)))
        return 0
    if args.child:
        print(json.dumps(child(args.files, args.queries, args.trace, args.child == "traced")))
        return 0
    runs = [run_child(args, "timed") for _ in range(args.runs)]
    traced = run_child(args, "traced")
    distinct = run_child(args, "count")["distinct_names"]
    if args.json:
        print(json.dumps({"runs": runs, "traced": traced, "distinct_names": distinct}, indent=2))
        return 0
    first = runs[0]
    print(f"dnsguard filter load: {len(args.files)} files, {first['rule_lines']:,} rule lines")
    print(f"distinct names {distinct:,}; index entries {first['rules']:,} (one per name per source)")
    print(f"blocked share of {args.queries.name}: {first['blocked_share']:.1%}")
    print()
    header = f"{'':42}" + "".join(f"{'run ' + str(i + 1):>12}" for i in range(len(runs))) + f"{'median':>12}"
    print(header)
    print("-" * len(header))
    for label, key, fmt in ROWS:
        values = [run[key] for run in runs if key in run]
        if not values:
            continue
        cells = "".join(f"{fmt.format(v):>12}" for v in values)
        print(f"{label:42}{cells}{fmt.format(statistics.median(values)):>12}")
    print()
    print(f"traced run (tracemalloc on, so slower): {traced['total_s']:.2f} s")
    print(f"  Python memory held after build:  {traced['traced_mib']:.1f} MiB")
    print(f"  Python memory peak during build: {traced['traced_peak_mib']:.1f} MiB")
    print(f"  RSS above baseline after build:  {traced['rss_delta_mib']:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
