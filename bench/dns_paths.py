#!/usr/bin/env python3
"""DNS throughput through the tunnel's interception vs a plain LAN socket: same resolver config, same run.

    sudo .venv/bin/python bench/dns_paths.py [--names 300000] [--seconds 10] [--repeat 3]

One lab with a LAN host behind the client. In the client namespace run, side by side,

- `dnsguard up` (full tunnel, gateway for lan0) whose nftables DNAT sends every query to port 53
  to its in-process resolver: dnsperf asks 203.0.113.53, an address no server listens on, so
  every answer came through the interception ("tunnel path");
- `dnsguard resolve` with the same lists, groups, blocking mode and cache, on a plain socket
  (192.0.2.1 and 127.0.0.1, port 5300, which the DNAT leaves alone) ("socket path").

dnsperf runs from the LAN host (gateway use) and from the client namespace itself (the machine's
own DNS), with the three query mixes of bench/dns.py (only blocked names, only cached names,
a page-load trace), imported from it so the mixes stay the same. Reported: QPS and p99 at a
fixed rate, medians of --repeat rounds, and tunnel/socket ratios (the aim: the tunnel path at
0.8x of the socket path or better). Absolute numbers depend on the machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from types import ModuleType

import yaml
from sibling import load_bench

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import (
    HARD_CODED_RESOLVER,
    SERVER_TUNNEL4,
    client_config,
    server_config,
)

SOCKET_PORT = 5300
PATHS = {
    # name: (dnsperf's namespace, server address, port)
    "lan tunnel": ("lanhost", HARD_CODED_RESOLVER, 53),
    "lan socket": ("lanhost", ADDRESSES.lan_gw4, SOCKET_PORT),
    "local tunnel": ("client", HARD_CODED_RESOLVER, 53),
    "local socket": ("client", "127.0.0.1", SOCKET_PORT),
}
PAIRS = [("lan tunnel", "lan socket"), ("local tunnel", "local socket")]


def bench_dns() -> ModuleType:
    return load_bench("dns.py")


HELPERS = bench_dns()


def resolver_sections(work: Path) -> dict[str, object]:
    """The filtering part both daemons share."""
    return {
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict"},
        "lists": {"bench": {"sources": [str(work / "blocked.txt")], "subdomains": True}},
        "groups": {"default": {"block": ["bench"]}},
        "blocking": {"mode": "null_ip"},
        # min-ttl: the lab's records live 300 s and a whole run takes longer; the cached mix must stay
        # cached in both daemons from the warm-up to the last round.
        "cache": {"max-entries": 100000, "min-ttl": "3600s"},
        "logging": {"level": "warning"},
        # dnsperf is one client asking far faster than any household: measure the path, not the limit.
        "resolver": {"rate-limit": {"queries-per-second": 0}},
    }


def start(lab: Lab, names: list[str]) -> None:
    work = lab.log_dir
    (work / "blocked.txt").write_text("\n".join(names) + "\n")
    shared = resolver_sections(work)
    (server_private, server_public), (client_private, client_public) = genkey(), genkey()
    DnsguardDaemon(lab, "server", "server", server_config(server_private, client_public, lan=True)).start()
    up = client_config(client_private, server_public, lan=True)
    for key in ("lists", "groups", "loading"):
        up.pop(key, None)
    up.update(shared)
    # The logging level keeps per-query logs off; the tunnel's own INFO lines are not on the hot path.
    DnsguardDaemon(lab, "client", "up", up).start()
    wait_ping(lab, "client", SERVER_TUNNEL4, timeout=30)
    resolve = dict(shared)
    resolve["resolver"] = {
        "listen": [f"{ADDRESSES.lan_gw4}:{SOCKET_PORT}", f"127.0.0.1:{SOCKET_PORT}"],
        "rate-limit": {"queries-per-second": 0},
    }
    # The tunnel daemon in the same namespace already holds the API's default address.
    resolve["api"] = {"listen": None}
    (work / "resolve.yaml").write_text(yaml.safe_dump(resolve))
    lab.python("client", "dnsguard", "resolve", "-c", str(work / "resolve.yaml"), log_name="dnsguard-resolve")
    for path, (role, server, port) in PATHS.items():
        lab.wait_for(
            lambda r=role, s=server, p=port: "NOERROR" in lab.dig(r, "example.org", s, port=p).stdout,
            timeout=180,
            what=f"an answer on the {path} path",
        )


def dnsperf(lab: Lab, path: str, queries: Path, seconds: int, rate: int | None = None) -> dict[str, float]:
    """bench/dns.py's dnsperf, from the path's namespace to the path's server."""
    role, server, port = PATHS[path]
    result: dict[str, float] = HELPERS.dnsperf(lab, port, queries, seconds, rate, role=role, server=server)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=5000, help="QPS of the p99 latency runs")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of the paths")
    parser.add_argument("--json")
    args = parser.parse_args()
    if shutil.which("dnsperf") is None:
        raise SystemExit("needs dnsperf: bash deploy/install.sh --test")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    names = HELPERS.load_names(args.names)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Lab(lan=True) as lab:
        started = time.monotonic()
        start(lab, names)
        print(f"{len(names)} blocked names loaded into both daemons in {time.monotonic() - started:.1f} s")
        files = HELPERS.query_files(lab.log_dir, names)
        for path in paths:  # warm both caches with the cached mix (and the page-load trace's misses)
            dnsperf(lab, path, files["cached"], 3)
            dnsperf(lab, path, files["pageload"], 3)
        # Rounds outermost and paths alternating, so a noisy moment on the machine hits all alike.
        for round_number in range(args.repeat):
            for mix, queries in files.items():
                for path in paths:
                    result = dnsperf(lab, path, queries, args.seconds)
                    result["p99_ms"] = dnsperf(lab, path, queries, 3, rate=args.latency_rate)["p99_ms"]
                    results.setdefault(mix, {}).setdefault(path, []).append(result)
                    print(
                        f"round {round_number + 1} {mix:9s} {path:13s} {result['qps']:9.0f} qps  "
                        f"p99 {result['p99_ms']:6.2f} ms  lost {result['lost']:.0f}",
                        flush=True,
                    )
    print(
        f"\nmedian of {args.repeat} runs of {args.seconds} s; dnsperf -c 8 -q 200, one thread; "
        f"p99 at {args.latency_rate} qps"
    )
    print(f"{'mix':10s}{'path':14s}{'qps':>9s}{'p99 ms':>9s}")
    summary: dict[str, dict[str, object]] = {}
    for mix, by_path in results.items():
        medians = {
            path: {key: statistics.median(r[key] for r in runs) for key in ("qps", "p99_ms")}
            for path, runs in by_path.items()
        }
        ratios = {
            f"{tunnel} / {socket}": medians[tunnel]["qps"] / medians[socket]["qps"]
            for tunnel, socket in PAIRS
            if tunnel in medians and socket in medians
        }
        # The same ratio taken within each round (the two runs were seconds apart), then the median:
        # less sensitive to a noisy minute on a shared machine.
        paired = {
            f"{tunnel} / {socket}": statistics.median(
                t["qps"] / s["qps"] for t, s in zip(by_path[tunnel], by_path[socket], strict=True)
            )
            for tunnel, socket in PAIRS
            if tunnel in by_path and socket in by_path
        }
        summary[mix] = {"medians": medians, "ratios": ratios, "paired_ratios": paired}
        for path, m in medians.items():
            print(f"{mix:10s}{path:14s}{m['qps']:9.0f}{m['p99_ms']:9.2f}")
        for pair, ratio in ratios.items():
            print(f"{mix:10s}QPS {pair}: {ratio:.2f}x (per-round ratios, median: {paired[pair]:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
