"""What the instruction-counting benches share (bench/dns_instructions.py, bench/tunnel_instructions.py):
the measured child process, callgrind's count of it, and the checkouts to count."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

CALLGRIND = "valgrind --tool=callgrind --callgrind-out-file=/dev/null"
"""The prefix that runs a child under callgrind, for its count of user-space instructions."""


def run_measured(
    argv: list[str], checkout: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a measured child with PYTHONHASHSEED fixed (and `env` added); a failure ends the bench."""
    run = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})},
        timeout=1800,
        check=False,
    )
    if run.returncode:
        raise SystemExit(f"{checkout}: the measured process failed:\n{run.stdout}{run.stderr[-3000:]}")
    return run


def collected(stderr: str, checkout: str) -> int:
    """The instructions callgrind reports on `stderr` ("Collected : N")."""
    found = re.search(r"Collected : ([\d,]+)", stderr)
    if not found:
        raise SystemExit(f"{checkout}: callgrind gave no count:\n{stderr[-3000:]}")
    return int(found.group(1).replace(",", ""))


def checkouts(bench_file: str, baseline: str | None) -> dict[str, str]:
    """{"this checkout": the checkout holding `bench_file`, "baseline": --baseline's, when given}."""
    found = {"this checkout": str(Path(bench_file).resolve().parents[1])}
    if baseline:
        source = Path(baseline).resolve()
        if not (source / "dnsguard" / "cli.py").exists():
            raise SystemExit(f"--baseline {baseline}: not a dnsguard checkout")
        found["baseline"] = str(source)
    return found


def arguments(doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The options both benches take: --baseline, --rounds, and the child's --child (hidden)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout to count beside this one")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--child", metavar="CHECKOUT", help=argparse.SUPPRESS)
    return parser


def report(counts: dict[str, float], counted: dict[str, str], what: str, prefix: str = "") -> None:
    """Print each checkout's count per `what`, and this checkout's over the baseline's."""
    for label, count in counts.items():
        print(f"{prefix}{label:14s} {count:9.0f} instructions per {what} ({counted[label]})")
    if "baseline" in counts:
        print(f"{prefix}this checkout / baseline: {counts['this checkout'] / counts['baseline']:.3f}")
