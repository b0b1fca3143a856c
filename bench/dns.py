#!/usr/bin/env python3
"""DNS resolver throughput: dnsguard resolve vs dnsmasq, same blocklist, same query mix, same run.

    sudo .venv/bin/python bench/dns.py [--names 300000] [--seconds 10] [--repeat 3]

Both servers run in one lab namespace with the same blocklist (the first --names distinct names of
real public lists, each blocking the name and its subdomains: dnsmasq `address=/name/#`, dnsguard
a domain list with `subdomains: true`) and the same upstream (the lab's authoritative server).
dnsperf sends three mixes: only blocked names, only cached names (warmed first), and a page-load
trace (blocked and cached mixed as a browser asks them). Reported: QPS, p99 latency, RSS, and
the dnsguard/dnsmasq ratios. Absolute numbers depend on the machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from dnsguard.lab import ADDRESSES, Lab

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIST_FILES = ["hagezi-pro-onlydomains.txt", "blp-phishing-domains.txt", "oisd-big-wildcard.txt"]
DNSGUARD_PORT, DNSMASQ_PORT = 5300, 5301


def load_names(limit: int) -> list[str]:
    names: dict[str, None] = {}
    for file_name in LIST_FILES:
        for line in (DATA / "blocklists" / file_name).read_text(errors="replace").splitlines():
            line = line.strip().lower()
            if not line or line[0] in "#!":
                continue
            name = line.removeprefix("*.")
            if "." in name and " " not in name:
                names[name] = None
                if len(names) >= limit:
                    return list(names)
    return list(names)


def query_files(work: Path, blocked: list[str]) -> dict[str, Path]:
    rng = random.Random(7)
    blocked_set = set(blocked)
    top = [n for n in (DATA / "queries" / "top-domains.txt").read_text().split() if not n.endswith(".arpa")]
    cached = [n for n in top if n not in blocked_set][:5000]
    trace = (DATA / "queries" / "pageload-hostnames.txt").read_text().split()
    mixes = {
        "blocked": [f"{name} A" for name in rng.sample(blocked, 20000)],
        "cached": [f"{name} A" for name in cached],
        "pageload": [f"{name} A" for name in trace],
    }
    files = {}
    for mix, lines in mixes.items():
        path = work / f"queries-{mix}.txt"
        path.write_text("\n".join(lines) + "\n")
        files[mix] = path
    return files


def start_servers(lab: Lab, names: list[str]) -> dict[str, int]:
    work = lab.log_dir
    (work / "blocked.txt").write_text("\n".join(names) + "\n")
    (work / "dnsmasq.conf").write_text("".join(f"address=/{name}/#\n" for name in names))
    config = {
        "resolver": {"listen": [f"127.0.0.1:{DNSGUARD_PORT}"]},
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict"},
        "lists": {"bench": {"sources": [str(work / "blocked.txt")], "subdomains": True}},
        "groups": {"default": {"block": ["bench"]}},
        "blocking": {"mode": "null_ip"},
        "cache": {"max-entries": 100000},
        "logging": {"level": "warning"},
    }
    import yaml

    (work / "dnsguard.yaml").write_text(yaml.safe_dump(config))
    guard = lab.python(
        "client", "dnsguard", "resolve", "-c", str(work / "dnsguard.yaml"), log_name="dnsguard"
    )
    masq = lab.popen(
        "client",
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            f"--port={DNSMASQ_PORT}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--server={ADDRESSES.dns4}",
            "--cache-size=10000",
            f"--conf-file={work}/dnsmasq.conf",
            "--dns-forward-max=1000",
        ],
        log_name="dnsmasq",
    )
    for port in (DNSGUARD_PORT, DNSMASQ_PORT):
        lab.wait_for(
            lambda p=port: "NOERROR" in lab.dig("client", "example.org", "127.0.0.1", port=p).stdout,
            timeout=120,
            what=f"the server on port {port}",
        )
    return {"dnsguard": guard.pid, "dnsmasq": masq.pid}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dnsperf(
    lab: Lab,
    port: int,
    queries: Path,
    seconds: int,
    rate: int | None = None,
    *,
    role: str = "client",
    server: str = "127.0.0.1",
) -> dict[str, float]:
    """Throughput at full load; with `rate`, per-query latencies at that fixed load (dnsperf -v).

    The same settings serve every DNS bench: 8 sockets, 200 outstanding queries, one thread.
    """
    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    argv += ["-c", "8", "-q", "200", "-T", "1", "-t", "2"]
    if rate:
        argv += ["-Q", str(rate), "-v"]
    return parse_dnsperf(lab.run(role, argv, timeout=seconds + 60).stdout)


def parse_dnsperf(out: str) -> dict[str, float]:
    """QPS, p99 latency (ms, from -v per-query lines when present) and lost queries of a dnsperf run."""
    lines = out.splitlines()
    qps = float(next(line for line in lines if "Queries per second" in line).split()[-1])
    lost = float(next(line for line in lines if "Queries lost" in line).split()[2])
    latencies = sorted(
        float(fields[-1])
        for line in lines
        if line.startswith("> ") and _is_number((fields := line.split())[-1])
    )
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else float("nan")
    return {"qps": qps, "p99_ms": p99, "lost": lost}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=10000, help="QPS of the p99 latency runs")
    parser.add_argument("--json")
    args = parser.parse_args()
    if shutil.which("dnsperf") is None or shutil.which("dnsmasq") is None:
        raise SystemExit("needs dnsperf and dnsmasq: bash deploy/install.sh --test")
    names = load_names(args.names)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Lab() as lab:
        started = time.monotonic()
        pids = start_servers(lab, names)
        print(f"{len(names)} blocked names loaded into both servers in {time.monotonic() - started:.1f} s")
        files = query_files(lab.log_dir, names)
        for port in (DNSGUARD_PORT, DNSMASQ_PORT):  # warm both caches with the cached mix
            dnsperf(lab, port, files["cached"], 3)
        for round_number in range(args.repeat):
            for mix, path in files.items():
                for server, port in (("dnsguard", DNSGUARD_PORT), ("dnsmasq", DNSMASQ_PORT)):
                    result = dnsperf(lab, port, path, args.seconds)
                    result["p99_ms"] = dnsperf(lab, port, path, 3, rate=args.latency_rate)["p99_ms"]
                    results.setdefault(mix, {}).setdefault(server, []).append(result)
                    print(
                        f"round {round_number + 1} {mix:9s} {server:9s} {result['qps']:9.0f} qps  "
                        f"p99 {result['p99_ms']:6.2f} ms  lost {result['lost']:.0f}",
                        flush=True,
                    )
        rss = {server: rss_mb(pid) for server, pid in pids.items()}
    print(
        f"\nmedian of {args.repeat} runs of {args.seconds} s; dnsperf -c 8 -q 200, one thread; "
        f"p99 at {args.latency_rate} qps"
    )
    print(
        f"{'mix':10s}{'dnsguard qps':>14s}{'dnsmasq qps':>13s}{'ratio':>7s}"
        f"{'p99 dg ms':>11s}{'p99 dm ms':>11s}"
    )
    summary = {}
    for mix, by_server in results.items():
        g = {k: statistics.median(r[k] for r in by_server["dnsguard"]) for k in ("qps", "p99_ms")}
        m = {k: statistics.median(r[k] for r in by_server["dnsmasq"]) for k in ("qps", "p99_ms")}
        summary[mix] = {"dnsguard": g, "dnsmasq": m, "ratio": g["qps"] / m["qps"]}
        print(
            f"{mix:10s}{g['qps']:14.0f}{m['qps']:13.0f}{g['qps'] / m['qps']:7.2f}{g['p99_ms']:11.2f}"
            f"{m['p99_ms']:11.2f}"
        )
    print(f"RSS: dnsguard {rss['dnsguard']:.0f} MB, dnsmasq {rss['dnsmasq']:.0f} MB ({len(names)} names)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "summary": summary, "rss_mb": rss}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
