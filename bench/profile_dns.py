#!/usr/bin/env python3
"""Where `dnsguard resolve` spends its CPU under load: py-spy samples while dnsperf runs a mix.

    sudo .venv/bin/python bench/profile_dns.py [--mix cached,pageload] [--seconds 15] [--top 25] [--querylog]

The lab, the blocklist and the query mixes are bench/dns.py's (imported from it, so they stay the same).
For each mix, dnsperf loads the resolver at full speed while `py-spy record` samples it; the script
prints the event loop thread's functions with the most samples, by own time (the function itself was
running) and by total time (it was on the stack), and keeps each raw profile (collapsed stacks, for
flame graph tools) in --out. uvloop's own time (Runner.run) includes waiting in epoll: the resolver
was idle, waiting for dnsperf. --querylog profiles the same resolver with its lasting query log on
(bench/dns.py's `dnsguard+log`); the writer process is not sampled (the CPU it takes is bench/dns.py's
`writer` column).
Needs py-spy (`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

from sibling import load_bench

from dnsguard.lab import Lab


def bench_dns() -> ModuleType:
    return load_bench("dns.py")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("needs py-spy: .venv/bin/pip install py-spy")
    return found


def summarise(collapsed: Path, top: int, thread: str = "run_daemon") -> str:
    """The heaviest frames of a collapsed-stack profile, by own samples and by samples on the stack,
    counting only the stacks that pass through `thread` (a frame of the thread that matters)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or thread not in stack:
            continue  # only the event loop's thread: an executor's idle workers would fill the top
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples", "own%   frame"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total% frame"]
    lines += [f"{100 * n / samples:5.1f}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--mix", default="cached,pageload")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--qps", type=int, help="load at this fixed rate (where the latency tail shows) instead of full speed"
    )
    parser.add_argument("--querylog", action="store_true", help="profile the resolver with its query log on")
    parser.add_argument("--idle", action="store_true", help="keep the idle loop's samples (py-spy --idle)")
    parser.add_argument(
        "--native",
        action="store_true",
        help="sample C frames too (py-spy --native): the compiled data path's functions, libc's calls; "
        "py-spy pauses the process for each such sample, also with --qps",
    )
    parser.add_argument("--out", default="bench/results/profiles", help="directory for the raw profiles")
    args = parser.parse_args()
    spy = py_spy()
    dns = bench_dns()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = dns.load_names(args.names)
    with Lab() as lab:
        if args.querylog:
            pid = dns.start_servers(lab, names, [], querylog=True)[dns.LOGGED]
            port = dns.LOGGED_PORT
        else:
            pid, port = dns.start_servers(lab, names, ["dnsguard"])["dnsguard"], dns.DNSGUARD_PORT
        files = dns.query_files(lab.log_dir, names)
        for mix in dict.fromkeys(["cached", *args.mix.split(",")]):
            dns.dnsperf(lab, port, files[mix], 3)  # warm the cache with every mix profiled: a steady state
        for mix in args.mix.split(","):
            collapsed = out / f"dns-{mix}.txt"
            record = [spy, "record", "--pid", str(pid), "--rate", str(args.rate)]
            record += ["--duration", str(args.seconds - 2), "--format", "raw", "--output", str(collapsed)]
            if args.qps and not args.native:
                record += ["--nonblocking"]  # pausing the process for each sample would add stalls of its own
            record += ["--idle"] if args.idle else []
            record += ["--native"] if args.native else []
            load: dict[str, float] = {}

            def run_load(mix: str = mix, load: dict[str, float] = load) -> None:
                load.update(dns.dnsperf(lab, port, files[mix], args.seconds, args.qps))

            thread = threading.Thread(target=run_load)
            thread.start()
            subprocess.run(record, check=True, capture_output=True, timeout=args.seconds + 60)
            thread.join()
            print(f"\n== {mix}: {load.get('qps', 0):.0f} qps while sampled; raw profile {collapsed}")
            print(summarise(collapsed, args.top), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
