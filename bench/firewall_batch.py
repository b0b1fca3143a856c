#!/usr/bin/env python3
"""Cost of one batch of firewall elements: the libnftables context against a new `nft -f -` process.

    sudo .venv/bin/python bench/firewall_batch.py [--batch 50] [--rounds 200]

Runs in a lab namespace: the firewall table (dnsguard.net.dns_firewall) is loaded there, then the
same add/refresh transaction of --batch addresses is sent --rounds times through each backend.
Reported: milliseconds per batch (median) for each, and their ratio.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time

from dnsguard.dns.handed_out import Element
from dnsguard.net.dns_firewall import DnsFirewallRules, Nftables, _run_nft, element_script


def measure(batch: int, rounds: int) -> None:
    nft = Nftables()
    if nft.backend != "libnftables":
        raise SystemExit("libnftables is not installed: nothing to compare")
    nft.run(DnsFirewallRules("dgbench0", [1, 2]).script())
    base = int(ipaddress.ip_address("198.18.0.0"))
    scripts = [
        element_script(
            Element(str(ipaddress.ip_address(base + (r * batch + i) % 65536)), 4, 60) for i in range(batch)
        )
        for r in range(rounds)
    ]
    timings: dict[str, list[float]] = {"libnftables": [], "nft -f -": []}
    for script in scripts:
        started = time.perf_counter()
        nft.run(script)
        timings["libnftables"].append(time.perf_counter() - started)
        started = time.perf_counter()
        _run_nft(script, json_output=False)
        timings["nft -f -"].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    for name, value in medians.items():
        print(f"{name:12s} {value:7.3f} ms per batch of {batch}")
    print(f"nft -f - / libnftables: {medians['nft -f -'] / medians['libnftables']:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        measure(args.batch, args.rounds)
        return 0
    from dnsguard.lab import Lab

    with Lab() as lab:
        argv = [
            sys.executable,
            __file__,
            "--inside",
            "--batch",
            str(args.batch),
            "--rounds",
            str(args.rounds),
        ]
        print(lab.run("client", argv, timeout=300).stdout, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
