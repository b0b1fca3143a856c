#!/usr/bin/env python3
"""Where a tunnel's round trip goes, idle or under load: a ping timed at every interface it crosses.

    sudo .venv/bin/python bench/rtt_stages.py [--only dnsguard,wireguard-go] [--count 100] [--interval 0.02]
                                              [--rounds 1] [--baseline OTHER_CHECKOUT]
                                              [--load upload|download [--congestion cubic]]

The lab and the contenders are bench/tunnel.py's. tcpdump runs on both ends' tunnel interface and
uplink while the client pings the server's tunnel address (`--count` pings, `--interval` seconds apart,
so each daemon has been idle that long when a request arrives); all four captures read the same
kernel clock. Per ping, eight timestamps give seven stages: the client's daemon taking the request
from its TUN to its uplink (client send), the wire to the server, the server's daemon from uplink to
TUN (server receive), the server's kernel answering, and the way back (server send, wire, client
receive). Reported: the median of each stage and of the whole, and each stage's ratio to the last
contender's (the anchor: wireguard-go by default). A ping whose stamps do not line up (a packet a
capture missed, a handshake in between) is left out. The last column, `cpu per ping`, is the CPU time
of the tunnel's daemons at both ends over the pings (every thread's, from /proc), divided by the pings:
what a round trip costs them, with whatever they do between pings (timers, keeping warm, spinning).

--load upload|download runs an iperf3 transfer through the tunnel meanwhile (--congestion NAME for
its TCP): the ping then carries 400 bytes, so that its encrypted datagrams have a length of their own
for the uplink captures, and each stage shows where a packet waits behind the transfer. Pings are
matched by sequence number on the tunnel interfaces, so a datagram an uplink capture missed (one that
left at the end of a GSO train, captured whole) costs that ping alone:

    sudo .venv/bin/python bench/rtt_stages.py --only dnsguard,wireguard-go --load upload --congestion cubic

--rounds measures every contender that many times, interleaved, each round starting with the next
one (a noisy moment on a shared machine hits them alike), and reports each stage's median over all
the rounds' pings. --baseline adds dnsguard from another checkout (bench/tunnel.py's `baseline`),
ahead of the anchor, for a change measured against the code before it.
"""

from __future__ import annotations

import argparse
import bisect
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


CPU = "cpu per ping"
"""Microseconds of CPU the tunnel's daemons (both ends) used over the pings, per ping: what each
ping's round trip cost them, and whatever they do between pings (timers, keeping warm)."""


def scheduled(pids: list[int]) -> tuple[float, int]:
    """CPU seconds the processes' threads have run and the times the scheduler put one of them on a CPU
    (its wake-ups, and its returns after being preempted), from /proc/PID/task/TID/schedstat
    (nanoseconds: /proc/PID/stat counts in ticks of 10 ms, coarser than a few pings' work). Gone ones
    count 0."""
    nanoseconds = runs = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                on_cpu, _waited, slices = task.read_text().split()
                nanoseconds, runs = nanoseconds + int(on_cpu), runs + int(slices)
            except (OSError, ValueError):
                continue
    return nanoseconds / 1e9, runs


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds the processes' threads have run (`scheduled`)."""
    return scheduled(pids)[0]


def links(lab: Lab, namespace: str) -> tuple[str, str]:
    """(uplink, tunnel interface) of a lab namespace: eth0 and the one other non-loopback link."""
    names = re.findall(r"^\d+: ([^:@]+)", lab.run(namespace, ["ip", "-o", "link"]).stdout, re.M)
    tunnels = [name for name in names if name not in ("lo", "eth0")]
    if "eth0" not in names or len(tunnels) != 1:
        raise SystemExit(f"{namespace}: cannot tell the uplink and the tunnel apart in {names}")
    return "eth0", tunnels[0]


def stamps(path: Path) -> list[float]:
    return [float(line.split()[0]) for line in path.read_text().splitlines() if re.match(r"^\d+\.\d+ ", line)]


ECHO = re.compile(r"^(\d+\.\d+) .*ICMP echo (request|reply), id \d+, seq (\d+)")


def echo_stamps(path: Path) -> dict[tuple[str, int], float]:
    """When each echo request and reply (by sequence number) crossed a tunnel interface."""
    seen: dict[tuple[str, int], float] = {}
    for line in path.read_text().splitlines():
        match = ECHO.match(line)
        if match:
            seen.setdefault((match[2], int(match[3])), float(match[1]))
    return seen


def first_between(times: list[float], start: float, end: float) -> float | None:
    """The first of the sorted `times` inside (start, end), or None."""
    index = bisect.bisect_right(times, start)
    return times[index] if index < len(times) and times[index] < end else None


def ping_points(
    client_inner: dict[tuple[str, int], float],
    server_inner: dict[tuple[str, int], float],
    client_outer: list[float],
    server_outer: list[float],
    sequence: int,
) -> list[float] | None:
    """A ping's eight stamps, in order, or None when one is missing.

    The tunnel interfaces see every echo by its sequence number. An encrypted datagram has no number:
    the request's is the first one each uplink capture saw after the request left the client's tunnel
    interface and before it reached the server's (the reply's the other way round), so a datagram the
    capture missed costs that ping alone.
    """
    try:
        sent, arrived = client_inner["request", sequence], server_inner["request", sequence]
        answered, returned = server_inner["reply", sequence], client_inner["reply", sequence]
    except KeyError:
        return None
    outbound = [first_between(client_outer, sent, arrived), first_between(server_outer, sent, arrived)]
    inbound = [
        first_between(server_outer, answered, returned),
        first_between(client_outer, answered, returned),
    ]
    points = [sent, outbound[0], outbound[1], arrived, answered, inbound[0], inbound[1], returned]
    if any(point is None for point in points):
        return None
    present = [point for point in points if point is not None]
    return present if present == sorted(present) else None


LOADED_PING_SIZE = 400
"""Under load the ping carries this many bytes of data, so its encrypted datagram has a length of its
own among the transfer's: 20 + 8 + 400 bytes of IPv4 and ICMP, padded to 432 by WireGuard, in 16 bytes
of header and 16 of tag, 8 of UDP and 20 of IPv4."""
LOADED_DATAGRAM = 20 + 8 + 16 + 432 + 16


def measure(
    tunnel: object,
    name: str,
    count: int,
    interval: float,
    load: str | None = None,
    congestion: str | None = None,
) -> dict[str, list[float]]:
    """Each stage's microseconds (and the total's) for every ping whose stamps line up.

    With `load` ("upload" or "download") an iperf3 transfer runs through the tunnel the whole time.
    """
    contenders, server_tunnel = tunnel.CONTENDERS, tunnel.SERVER_TUNNEL  # type: ignore[attr-defined]
    with Lab(services=False) as lab:
        contenders[name](lab)
        wait_ping(lab, "client", server_tunnel, timeout=30)
        daemons = [process.pid for process in lab._processes]
        captures = {}
        # Outer datagrams: data only (a keepalive is 32 bytes of payload, a ping's request far more);
        # under load, only those of the ping's own length.
        outer = f"udp and ip[2:2] == {LOADED_DATAGRAM}" if load else "udp and greater 100"
        for namespace in ("client", "server"):
            uplink, inner = links(lab, namespace)
            for role, device, expression in (("outer", uplink, outer), ("inner", inner, "icmp")):
                argv = ["tcpdump", "-i", device, "-n", "-tt", "-l", "--immediate-mode", expression]
                process = lab.popen(namespace, argv, log_name=f"tcpdump-{namespace}-{role}")
                captures[namespace, role] = (process, Path(process.log_path))  # type: ignore[attr-defined]
        time.sleep(1.5)
        transfer = None
        if load:
            lab.popen("server", ["iperf3", "-s", "-B", server_tunnel], log_name="iperf3-server")
            time.sleep(0.5)
            seconds = int(count * interval) + 4
            argv = ["iperf3", "-c", server_tunnel, "-t", str(seconds)] + (
                ["-R"] if load == "download" else []
            )
            argv += ["-C", congestion] if congestion else []
            transfer = lab.popen("client", argv, log_name="iperf3-client")
            time.sleep(1.5)
        ping = ["ping", "-c", str(count), "-i", str(interval), "-q", server_tunnel]
        if load:
            ping[1:1] = ["-s", str(LOADED_PING_SIZE)]
        cpu_before = cpu_seconds(daemons)
        lab.run("client", ping, timeout=count * interval + 30, check=False)
        cpu = cpu_seconds(daemons) - cpu_before
        if transfer is not None:
            transfer.wait(timeout=60)
        time.sleep(0.5)
        for process, _ in captures.values():
            process.terminate()
            process.wait(timeout=10)
        client_inner = echo_stamps(captures["client", "inner"][1])
        server_inner = echo_stamps(captures["server", "inner"][1])
        client_outer = stamps(captures["client", "outer"][1])
        server_outer = stamps(captures["server", "outer"][1])
    stages: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "total")}
    stages[CPU] = [cpu * 1e6 / count]
    lined_up = 0
    for sequence in range(1, count + 1):
        points = ping_points(client_inner, server_inner, client_outer, server_outer, sequence)
        if points is None:
            continue  # a packet a capture missed, or a handshake in between
        lined_up += 1
        for stage, start, end in zip(STAGES, points, points[1:], strict=False):
            stages[stage].append((end - start) * 1e6)
        stages["total"].append((points[-1] - points[0]) * 1e6)
    if lined_up < count:
        print(f"{name}: {lined_up} of {count} pings had all eight stamps")
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
    parser.add_argument(
        "--load",
        choices=("upload", "download"),
        help="an iperf3 transfer runs through the tunnel meanwhile (WireGuard contenders only)",
    )
    parser.add_argument("--congestion", metavar="NAME", help="with --load: iperf3's TCP congestion control")
    args = parser.parse_args()
    tunnel = load_bench("tunnel.py")
    names = args.only.split(",")
    unknown = [name for name in names if name not in tunnel.CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {', '.join(tunnel.CONTENDERS)}")
    if args.load and "openvpn" in names:
        raise SystemExit("--load finds the ping's datagrams by WireGuard's framing: leave openvpn out")
    if args.baseline:
        tunnel.CONTENDERS[tunnel.BASELINE] = tunnel.baseline_contender(args.baseline)
        names.insert(max(len(names) - 1, 0), tunnel.BASELINE)
    pings: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for round_number in range(args.rounds):
        shift = round_number % len(names)  # each round starts with the next contender
        for name in [*names[shift:], *names[:shift]]:
            measured = measure(tunnel, name, args.count, args.interval, args.load, args.congestion)
            for stage, values in measured.items():
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
    during = (
        f", during an iperf3 {args.load}" + (f" ({args.congestion})" if args.congestion else "")
        if args.load
        else ""
    )
    print(f"\nmedian microseconds per stage, ping every {args.interval} s, {pinged}{during}")
    columns = (*STAGES, "total", CPU)
    print(" " * width + "".join(f"{stage:>16s}" for stage in columns))
    for name, result in results.items():
        cells = "".join(f"{result[stage]:16.0f}" for stage in columns) if result else "  no ping lined up"
        print(f"{name:<{width}s}{cells}")
    anchor = results[names[-1]]
    for name, result in results.items():
        if name == names[-1] or result is None or anchor is None:
            continue
        ratios = "".join(f"{result[stage] / anchor[stage]:15.2f}x" for stage in columns)
        print(f"{name + ' / ' + names[-1]:<{width}s}{ratios}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
