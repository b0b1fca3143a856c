#!/usr/bin/env python3
"""How a dnsguard server shares its sends between peers: one peer downloading over many connections
beside one downloading over one.

    sudo .venv/bin/python bench/peer_fairness.py [--streams 8] [--seconds 8] [--rounds 3]
                                                 [--baseline OTHER_CHECKOUT]

The lab's `client` and `client2` namespaces each run `dnsguard up` as a peer of one `dnsguard server`
(tunnel addresses 100.64.0.2 and 100.64.0.3), each with an iperf3 server on its tunnel address. From
the server's namespace, iperf3 sends to the first peer over --streams connections and to the second
over one, at once, for --seconds: both downloads pass through the server's send queues. Reported per
round: each peer's Mbit/s and the second peer's share of the sum. With the server's queues taking
turns by destination the share is near one half wherever the server is what limits the two; by flow
alone it is near 1 / (streams + 1). --baseline runs the same rounds with dnsguard from another
checkout (e.g. `git worktree add --detach DIR <commit>`), turn about with this one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sibling import load_bench

from dnsguard.lab import Lab
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import client_tunnel, server_tunnel

SERVER_TUNNEL = "100.64.0.1"
PEERS = ("100.64.0.2", "100.64.0.3")
ROLES = ("client", "client2")


def start(lab: Lab, env: dict[str, str]) -> None:
    """The server with both peers, and each peer's `dnsguard up` in its namespace."""
    server_private, server_public = genkey()
    keys = [genkey() for _ in PEERS]
    peers = [
        {"public-key": public, "allowed-ips": [f"{address}/32"]}
        for (_, public), address in zip(keys, PEERS, strict=True)
    ]
    DnsguardDaemon(lab, "server", "server", server_tunnel(server_private, peers), env=env).start()
    for role, address, (private, _) in zip(ROLES, PEERS, keys, strict=True):
        config = client_tunnel(
            private, server_public, ["100.64.0.0/24"], addresses=(f"{address}/32",), **{"kill-switch": False}
        )
        DnsguardDaemon(lab, role, "up", config, name=role, env=env).start()
    for role, address in zip(ROLES, PEERS, strict=True):
        wait_ping(lab, role, SERVER_TUNNEL, timeout=30)
        lab.popen(role, ["iperf3", "-s", "-B", address], log_name=f"iperf3-{role}")
        lab.wait_for(
            lambda role=role: bool(lab.run(role, ["ss", "-Hltn", "sport = :5201"]).stdout.strip()),
            timeout=10,
            what=f"iperf3 to listen in {role}",
        )


def one_round(lab: Lab, streams: int, seconds: int) -> tuple[float, float]:
    """Both downloads at once: (first peer's Mbit/s, second peer's)."""
    runs = []
    for address, parallel in zip(PEERS, (streams, 1), strict=True):
        argv = ["iperf3", "-c", address, "-t", str(seconds), "-P", str(parallel), "-J"]
        runs.append(lab.popen("server", argv, log_name=f"download-{address}"))
    rates = []
    for run in runs:
        run.wait(timeout=seconds + 60)
        report = json.loads(Path(run.log_path).read_text())  # type: ignore[attr-defined]
        rates.append(report["end"]["sum_received"]["bits_per_second"] / 1e6)
    return rates[0], rates[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=8, help="the first peer's connections")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="dnsguard from another checkout, turn about")
    args = parser.parse_args()
    checkouts: dict[str, dict[str, str]] = {"dnsguard": {}}
    if args.baseline:
        checkouts["baseline"] = load_bench("tunnel.py").baseline_env(args.baseline)
    shares: dict[str, list[float]] = {label: [] for label in checkouts}
    sums: dict[str, list[float]] = {label: [] for label in checkouts}
    labels = list(checkouts)
    for round_number in range(args.rounds):
        # Each round starts with the next checkout: none always runs first.
        shift = round_number % len(labels)
        for label in labels[shift:] + labels[:shift]:
            with Lab(extra_client=True, services=False) as lab:
                start(lab, checkouts[label])
                first, second = one_round(lab, args.streams, args.seconds)
            share = second / (first + second)
            shares[label].append(share)
            sums[label].append(first + second)
            print(
                f"round {round_number + 1} {label:9s} peer with {args.streams} streams {first:7.1f} Mbit/s, "
                f"peer with 1 {second:7.1f} Mbit/s, sum {first + second:7.1f}, its share {share:.3f}",
                flush=True,
            )
    for label in labels:
        print(
            f"{label:9s} median share of the peer with one stream {statistics.median(shares[label]):.3f}, "
            f"median sum {statistics.median(sums[label]):.1f} Mbit/s"
        )
    print(f"by flow alone it would be about {1 / (args.streams + 1):.3f}, by peer 0.5")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
