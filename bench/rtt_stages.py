#!/usr/bin/env python3
"""Where an idle tunnel's round trip goes: a ping's request and reply timed at every interface they cross.

    sudo .venv/bin/python bench/rtt_stages.py [--only dnsguard,wireguard-go] [--count 100] [--interval 0.02]
                                              [--rounds 1] [--baseline OTHER_CHECKOUT]

The lab and the contenders are bench/tunnel.py's. tcpdump runs on both ends' tunnel interface and
uplink while the client pings the server's tunnel address (`--count` pings, `--interval` seconds apart,
so each daemon has been idle that long when a request arrives); all four captures read the same
kernel clock. Per ping, eight timestamps give seven stages: the client's daemon taking the request
from its TUN to its uplink (client send), the wire to the server, the server's daemon from uplink to
TUN (server receive), the server's kernel answering, and the way back (server send, wire, client
receive). Reported: the median of each stage and of the whole, and each stage's ratio to the last
contender's (the anchor: wireguard-go by default). A ping whose stamps do not line up (a packet a
capture missed, a handshake in between) is left out.

--rounds measures every contender that many times, interleaved (a noisy moment on a shared machine
hits them alike), and reports each stage's median over all the rounds' pings. --baseline adds dnsguard
from another checkout (bench/tunnel.py's `baseline`), ahead of the anchor, for a change measured
against the code before it.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from sibling import load_bench

from dnsguard.lab import Lab
from dnsguard.lab.peers import wait_ping

STAGES = (
    "client send",
    "wire out",
    "server receive",
    "server kernel",
    "server send",
    "wire back",
    "client receive",
)


def links(lab: Lab, namespace: str) -> tuple[str, str]:
    """(uplink, tunnel interface) of a lab namespace: eth0 and the one other non-loopback link."""
    names = re.findall(r"^\d+: ([^:@]+)", lab.run(namespace, ["ip", "-o", "link"]).stdout, re.M)
    tunnels = [name for name in names if name not in ("lo", "eth0")]
    if "eth0" not in names or len(tunnels) != 1:
        raise SystemExit(f"{namespace}: cannot tell the uplink and the tunnel apart in {names}")
    return "eth0", tunnels[0]


def stamps(path: Path) -> list[float]:
    return [float(line.split()[0]) for line in path.read_text().splitlines() if re.match(r"^\d+\.\d+ ", line)]


def measure(tunnel: object, name: str, count: int, interval: float) -> dict[str, list[float]]:
    """Each stage's microseconds (and the total's) for every ping whose stamps line up."""
    contenders, server_tunnel = tunnel.CONTENDERS, tunnel.SERVER_TUNNEL  # type: ignore[attr-defined]
    with Lab(services=False) as lab:
        contenders[name](lab)
        wait_ping(lab, "client", server_tunnel, timeout=30)
        captures = {}
        for namespace in ("client", "server"):
            uplink, inner = links(lab, namespace)
            # Outer datagrams: data only (a keepalive is 32 bytes of payload, a ping's request far more).
            for role, device, expression in (
                ("outer", uplink, "udp and greater 100"),
                ("inner", inner, "icmp"),
            ):
                argv = ["tcpdump", "-i", device, "-n", "-tt", "-l", "--immediate-mode", expression]
                process = lab.popen(namespace, argv, log_name=f"tcpdump-{namespace}-{role}")
                captures[namespace, role] = (process, Path(process.log_path))  # type: ignore[attr-defined]
        time.sleep(1.5)
        ping = ["ping", "-c", str(count), "-i", str(interval), "-q", server_tunnel]
        lab.run("client", ping, timeout=count * interval + 30, check=False)
        time.sleep(0.5)
        for process, _ in captures.values():
            process.terminate()
            process.wait(timeout=10)
        seen = {key: stamps(path) for key, (_, path) in captures.items()}
    order = [("client", "inner"), ("client", "outer"), ("server", "outer"), ("server", "inner")]
    if len({len(seen[key]) for key in order}) != 1 or len(seen[order[0]]) != 2 * count:
        print(f"{name}: captures saw {[len(seen[key]) for key in order]} packets, not {2 * count} each")
    pings = min(len(seen[key]) for key in order) // 2
    stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    for index in range(pings):
        request = [seen[key][2 * index] for key in order]
        reply = [seen[key][2 * index + 1] for key in reversed(order)]
        points = request + reply
        if points != sorted(points):
            continue  # a packet lost or an extra one: this ping's stamps do not line up
        for stage, start, end in zip(STAGES, points, points[1:], strict=False):
            stages[stage].append((end - start) * 1e6)
        stages["total"].append((points[-1] - points[0]) * 1e6)
    return stages


def median_of(values: list[float] | None) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="dnsguard,wireguard-go")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="also run dnsguard from another checkout")
    args = parser.parse_args()
    tunnel = load_bench("tunnel.py")
    names = args.only.split(",")
    unknown = [name for name in names if name not in tunnel.CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {', '.join(tunnel.CONTENDERS)}")
    if args.baseline:
        tunnel.CONTENDERS[tunnel.BASELINE] = tunnel.baseline_contender(args.baseline)
        names.insert(max(len(names) - 1, 0), tunnel.BASELINE)
    pings: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for round_number in range(args.rounds):
        for name in names:
            for stage, values in measure(tunnel, name, args.count, args.interval).items():
                pings[name].setdefault(stage, []).extend(values)
            total = pings[name].get("total")
            print(f"round {round_number + 1} {name}: median total so far {median_of(total)} us", flush=True)
    results = {
        name: {stage: statistics.median(values) for stage, values in found.items()}
        if found.get("total")
        else None
        for name, found in pings.items()
    }
    width = max(len(f"{name} / {names[-1]}") for name in names) + 2
    pinged = f"{args.count} pings" + (f" x {args.rounds} rounds" if args.rounds > 1 else "")
    print(f"\nmedian microseconds per stage, ping every {args.interval} s, {pinged}")
    print(" " * width + "".join(f"{stage:>16s}" for stage in (*STAGES, "total")))
    for name, result in results.items():
        cells = (
            "".join(f"{result[stage]:16.0f}" for stage in (*STAGES, "total"))
            if result
            else "  no ping lined up"
        )
        print(f"{name:<{width}s}{cells}")
    anchor = results[names[-1]]
    for name, result in results.items():
        if name == names[-1] or result is None or anchor is None:
            continue
        ratios = "".join(f"{result[stage] / anchor[stage]:15.2f}x" for stage in (*STAGES, "total"))
        print(f"{name + ' / ' + names[-1]:<{width}s}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
