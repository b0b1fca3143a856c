#!/usr/bin/env python3
"""Where the DNS latency tail comes from: per-query latencies at a fixed rate, their percentiles, and the
slow answers grouped into stalls (runs of slow answers close together).

    sudo .venv/bin/python bench/dns_latency.py [--only dnsguard,unbound] [--mix blocked,cached,pageload]
                                               [--rate 10000] [--seconds 5] [--slow-ms 0.3] [--probe]
                                               [--baseline OTHER_CHECKOUT] [--busy-poll 300us]

The lab, the blocklist, the query mixes and the servers are bench/dns.py's (imported from it). dnsperf
sends each mix at full speed for --prime seconds (as dns.py's throughput run comes before its latency
run, so that every name is cached), then at `--rate` queries a second, printing every answer's latency
(-v) in the order the answers came; a slow answer's position over the rate places it in time. Reported
per server and mix: p50, p90, p99, p99.9 and the maximum; the share of answers slower than --slow-ms;
the server's CPU seconds (from /proc, with its children) per answer at that rate, and its runs (the
times the scheduler put one of its threads on a CPU: its wake-ups, and its returns after being
preempted, by the client its reply woke, say) per answer with the CPU time of each (its own threads'
schedstat, in nanoseconds): a server that runs as often as another but uses more CPU spends it on
each wake-up, not on more of them;
and the stalls: runs of slow answers with fewer than 50 fast ones between them, with how many there were
per second, the longest, and the median spacing between stall starts (a periodic task shows as a steady
spacing; a stall that every answer in a run shares points at the server, not at the query).

On a shared machine the tail moves with the neighbours' load: compare contenders of one run, not runs.
--baseline adds dnsguard from another checkout (e.g. `git worktree add --detach DIR main`), so that a
change is measured against the code before it under the same load, turn by turn. --probe runs this
checkout's dnsguard under bench/stall_probe.py and prints, after each of its runs, what held its loop
(collections, drains, lag). --busy-poll adds `dnsguard+poll`, dnsguard with performance.busy-poll set
(bench/dns.py's contender of that name).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from sibling import load_bench

from dnsguard.lab import Lab

STALL_GAP = 50
"""Fast answers that end a stall: slow answers closer together than this belong to one stall."""


def latencies(lab: Lab, dns: ModuleType, port: int, queries: Path, seconds: int, rate: int) -> list[float]:
    """Each answer's latency in ms, in the order dnsperf received them."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    argv += ["-c", "8", "-q", "200", "-T", "1", "-t", "2", "-Q", str(rate), "-v"]
    out = lab.run("client", argv, timeout=seconds + 60).stdout
    found = []
    for line in out.splitlines():
        if line.startswith("> "):
            field = line.split()[-1]
            if dns._is_number(field):
                found.append(float(field) * 1000)
    return found


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * share) - 1))]


def stalls(values: list[float], slow_ms: float) -> list[tuple[int, int, float]]:
    """(first index, slow answers, worst ms) of each run of slow answers."""
    found: list[tuple[int, int, float]] = []
    start = last = -STALL_GAP - 1
    count, worst = 0, 0.0
    for index, value in enumerate(values):
        if value < slow_ms:
            continue
        if index - last > STALL_GAP:
            if count:
                found.append((start, count, worst))
            start, count, worst = index, 0, 0.0
        last = index
        count += 1
        worst = max(worst, value)
    if count:
        found.append((start, count, worst))
    return found


def report(server: str, mix: str, values: list[float], rate: int, slow_ms: float) -> str:
    if not values:
        return f"{mix:9s} {server:13s} no answers"
    ordered = sorted(values)
    runs = stalls(values, slow_ms)
    seconds = len(values) / rate
    slow = sum(1 for value in values if value >= slow_ms)
    spacing = [(b[0] - a[0]) / rate * 1000 for a, b in itertools.pairwise(runs)]
    line = (
        f"{mix:9s} {server:13s} n {len(values):6d}  p50 {percentile(ordered, 0.5):5.3f}  "
        f"p90 {percentile(ordered, 0.9):5.3f}  p99 {percentile(ordered, 0.99):5.3f}  "
        f"p99.9 {percentile(ordered, 0.999):6.3f}  max {ordered[-1]:6.2f} ms  "
        f">= {slow_ms} ms: {100 * slow / len(values):4.2f}%  stalls {len(runs) / seconds:5.1f}/s"
    )
    if runs:
        biggest = max(runs, key=lambda run: run[1])
        line += f", largest {biggest[1]} answers (worst {biggest[2]:.2f} ms)"
    if spacing:
        line += f", spacing median {statistics.median(spacing):.0f} ms"
    return line


def runs_line(on_cpu: float, runs: int, answers: int) -> str:
    """The daemon's runs (times the scheduler put one of its threads on a CPU: wake-ups, and returns
    after a preemption) per answer and its CPU time per run: a server that runs as often as another
    but costs more a run shows it here."""
    if not runs or not answers:
        return ""
    return f"  runs {runs / answers:4.2f}/answer, {on_cpu * 1e6 / runs:5.1f} us each"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--only", default="dnsguard,unbound")
    parser.add_argument("--mix", default="blocked,cached,pageload")
    parser.add_argument("--rate", type=int, default=10000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each starting with the next contender")
    parser.add_argument("--prime", type=int, default=3, help="seconds of full-speed load before each run")
    parser.add_argument("--slow-ms", type=float, default=0.3, help="an answer this slow or slower is slow")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run dnsguard from another checkout (a worktree of main, say) as `baseline`",
    )
    parser.add_argument(
        "--busy-poll", metavar="DURATION", help="also run dnsguard with performance.busy-poll (300us, say)"
    )
    parser.add_argument("--dump", help="directory to write each run's latencies to, one a line")
    parser.add_argument(
        "--probe", action="store_true", help="run dnsguard under bench/stall_probe.py and print its summary"
    )
    args = parser.parse_args()
    dns = load_bench("dns.py")
    stages = load_bench("rtt_stages.py")
    only = [server for server in args.only.split(",") if server]
    names = dns.load_names(args.names)
    with Lab() as lab:
        probed = _probe(lab) if args.probe else None
        pids = dns.start_servers(lab, names, only, busy_poll=args.busy_poll)
        if args.baseline:
            pids[dns.BASELINE] = dns.start_baseline(lab, args.baseline)
        files = dns.query_files(lab.log_dir, names)
        for server in pids:
            dns.dnsperf(lab, dns.PORTS[server], files["cached"], 3)  # warm every cache
        for round_number in range(args.repeat):
            # Each round starts with the next contender, as in bench/dns.py.
            shift = round_number % len(pids)
            order = [*list(pids)[shift:], *list(pids)[:shift]]
            for mix in args.mix.split(","):
                for server in order:
                    # At full speed first, as bench/dns.py's throughput run does before its latency run: every
                    # name of the mix is then cached or remembered, as it is when dns.py measures the tail.
                    dns.dnsperf(lab, dns.PORTS[server], files[mix], args.prime)
                    if probed and server == "dnsguard":
                        os.kill(probed[0].pid, signal.SIGUSR1)  # the probe counts from here
                        time.sleep(0.2)
                    cpu_before = sum(dns.cpu_seconds(pids[server]))
                    on_cpu_before, runs_before = stages.scheduled([pids[server]])
                    values = latencies(lab, dns, dns.PORTS[server], files[mix], args.seconds, args.rate)
                    cpu = sum(dns.cpu_seconds(pids[server])) - cpu_before
                    on_cpu, runs = stages.scheduled([pids[server]])
                    line = report(server, mix, values, args.rate, args.slow_ms)
                    line += f"  cpu {cpu * 1e6 / max(1, len(values)):5.1f} us/answer"
                    line += runs_line(on_cpu - on_cpu_before, runs - runs_before, len(values))
                    print(line, flush=True)
                    if probed and server == "dnsguard":
                        os.kill(probed[0].pid, signal.SIGUSR1)
                        time.sleep(0.2)
                        print(_last_summary(lab), end="", flush=True)
                    if args.dump:
                        Path(args.dump).mkdir(parents=True, exist_ok=True)
                        text = "\n".join(f"{value:.4f}" for value in values)
                        name = f"{server}-{mix}-{round_number + 1}.txt"
                        (Path(args.dump) / name).write_text(text + "\n")
    return 0


def _last_summary(lab: Lab) -> str:
    text = (lab.log_dir / "stall-probe.txt").read_text()
    return text.rstrip("-\n").rsplit("--\n", 1)[-1] + "\n"


def _probe(lab: Lab) -> list[subprocess.Popen[bytes]]:
    """Make the lab start dnsguard under bench/stall_probe.py; the list fills with what it started.

    The probe's summary of each fixed-rate run of dnsguard follows that run's line."""
    started: list[subprocess.Popen[bytes]] = []
    python = lab.python

    def probed(role: str, module: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        if module != "dnsguard":
            return python(role, module, *args, **kwargs)
        probe = Path(__file__).with_name("stall_probe.py")
        argv = [sys.executable, str(probe), str(lab.log_dir / "stall-probe.txt")]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = lab.popen(role, [*argv, *args], log_name=kwargs.get("log_name"), env=env)
        started.append(process)
        return process

    lab.python = probed  # type: ignore[method-assign]
    return started


if __name__ == "__main__":
    raise SystemExit(main())
