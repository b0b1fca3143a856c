#!/usr/bin/env python3
"""A VPN server with many peers: dnsguard server vs wireguard-go, same lab, same run.

    sudo .venv/bin/python bench/server_peers.py [--peers 50] [--rounds 10] [--streams 8] [--seconds 10]

The server holds --peers peers, each with its own tunnel address (100.64.1.x/32).

- Handshake storm: every peer initiates at the same moment, as after a server restart, from its own
  source address (so per-address rate limits see what many real clients would give them). The peers are
  dnsguard's own sans-I/O WireGuard core, driven by this script in worker mode inside the client
  namespace. A storm is over when every peer completed its handshake; it is repeated --rounds times,
  1.2 s apart (the server's load window). Reported: the median time a storm takes, the handshakes a
  second that makes, and the server's CPU milliseconds per handshake (from /proc, over all rounds).
  dnsguard's server runs with `performance.keep-warm` off unless --keep-warm says otherwise: its
  default (1 s) wakes an idle server every few milliseconds for a second after each storm, and those
  ticks, not the handshakes, would then be most of the storms' CPU (0.7-1.1 ms a handshake against
  0.40-0.47 without them, on the 2-core bench machine).
- Aggregate throughput: --streams of the same peers run wireguard-go in the client namespace and
  iperf3 each to its own iperf3 server on the server's tunnel address, at once. Reported: the sum of
  what the servers received, the server's CPU seconds per GB carried, and what the server namespace
  dropped meanwhile (UDP receive buffers full, packets dropped on the tunnel device); then the
  streams' round trip (the median of their senders' mean RTT, as iperf3 measures it: what a queue in
  front of the server adds), the slowest and the fastest stream, and their retransmissions.

--repeat N runs every contender N times, each round starting with the next contender (a noisy
moment on a shared machine then hits them alike), and reports each figure's median as well.

Ratios dnsguard/wireguard-go are the result; absolute numbers depend on the machine. --baseline
CHECKOUT adds dnsguard from another checkout (a worktree of main, say) as `baseline`; the contender
`dnsguard+codel` (in --only) is dnsguard's server with `performance.receive-codel` on.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sibling import load_bench

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, WgPeer, WireguardGo, genkey
from dnsguard.lab.scenario import PORT, SERVER_ENDPOINT, server_tunnel

SERVER_TUNNEL = "100.64.0.1"
CONTENDERS = ("dnsguard", "wireguard-go")
"""--only's default; `dnsguard+codel` may be named too."""
DNSGUARD = ("dnsguard", "dnsguard+codel", "baseline")
CLOCK_TICKS = 100  # USER_HZ: the unit of /proc/PID/stat's utime and stime on Linux


def peer_tunnel(index: int) -> str:
    return f"100.64.1.{10 + index}"


def peer_source(index: int) -> str:
    """The client-namespace address peer `index` sends from (the lab's client subnet is 198.18.1.0/24)."""
    return f"198.18.1.{20 + index}"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def drops(lab: Lab) -> dict[str, int]:
    """The server namespace's loss counters: datagrams its UDP sockets dropped for a full receive buffer,
    and packets dropped on its interfaces other than eth0 and lo (a tunnel device whose reader fell
    behind drops on transmit)."""
    snmp = lab.run("server", ["cat", "/proc/net/snmp"]).stdout.splitlines()
    udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
    counters = dict(zip(udp[0], udp[1], strict=True)) if len(udp) >= 2 else {}
    links = json.loads(lab.run("server", ["ip", "-j", "-s", "link", "show"]).stdout)
    tunnel = sum(
        link["stats64"]["tx"]["dropped"] + link["stats64"]["rx"]["dropped"]
        for link in links
        if link["ifname"] not in ("lo", "eth0") and "stats64" in link
    )
    return {"udp_rcvbuf": int(counters.get("RcvbufErrors", 0)), "tunnel_device": tunnel}


# -- the storm worker: runs inside the client namespace ----------------------------------------


def storm_worker(spec_path: str) -> int:
    """Drive every peer's handshake at once, --rounds times; print one JSON line of storm times."""
    from dnsguard.wireguard.device import Device
    from dnsguard.wireguard.events import HandshakeCompleted

    spec = json.loads(Path(spec_path).read_text())
    endpoint = (spec["server"], spec["port"])
    selector = selectors.DefaultSelector()
    peers = []
    for index, private in enumerate(spec["privates"]):
        device = Device(private)
        device.add_peer(spec["server_public"], endpoint=endpoint, allowed_ips=[f"{SERVER_TUNNEL}/32"])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((peer_source(index), 0))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, (device, sock))
        peers.append((device, sock))
    storms, incomplete = [], 0
    for _ in range(spec["rounds"]):
        started = time.monotonic()
        for device, sock in peers:
            device.force_handshake(time.monotonic())
            for data, address in device.datagrams_to_send():
                sock.sendto(data, address)
        waiting = set(range(len(peers)))
        deadline = started + 10.0
        index_of = {id(device): i for i, (device, _) in enumerate(peers)}
        while waiting and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                device, sock = key.data
                while True:
                    try:
                        data, address = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    now = time.monotonic()
                    device.receive_datagram(data, address, now)
                    for out, to in device.datagrams_to_send():
                        sock.sendto(out, to)
                    while (event := device.next_event()) is not None:
                        if isinstance(event, HandshakeCompleted):
                            waiting.discard(index_of[id(device)])
            now = time.monotonic()
            for device, sock in peers:  # retries after a cookie reply, as a real peer's timers send
                timer = device.get_timer()
                if timer is not None and timer <= now:
                    device.handle_timer(now)
                    for out, to in device.datagrams_to_send():
                        sock.sendto(out, to)
        storms.append(time.monotonic() - started)
        incomplete += len(waiting)
        time.sleep(1.2)
    print(json.dumps({"storms": storms, "incomplete": incomplete}), flush=True)
    return 0


# -- the bench ---------------------------------------------------------------------------------


def start_server(
    lab: Lab,
    contender: str,
    private: str,
    publics: list[str],
    keep_warm: str = "0",
    env: dict[str, str] | None = None,
) -> int:
    """The server with every peer; returns the pid whose CPU time counts. `env`: the dnsguard
    server's extra environment (another checkout's, for the baseline)."""
    if contender in DNSGUARD:
        peers: list[dict[str, object]] = [
            {"public-key": key, "allowed-ips": [f"{peer_tunnel(i)}/32"]} for i, key in enumerate(publics)
        ]
        config = server_tunnel(private, peers, addresses=(f"{SERVER_TUNNEL}/16",))
        config["logging"] = {"level": "warning"}
        performance: dict[str, object] = {"keep-warm": keep_warm}
        if contender == "dnsguard+codel":  # named only here: a baseline's checkout may not know it
            performance["receive-codel"] = True
        config["performance"] = performance
        daemon = DnsguardDaemon(lab, "server", "server", config, env=env or {}).start()
        assert daemon.process is not None
        return daemon.process.pid
    server = WireguardGo(
        lab,
        "server",
        private,
        [f"{SERVER_TUNNEL}/16"],
        listen_port=PORT,
        peers=[WgPeer(key, [f"{peer_tunnel(i)}/32"]) for i, key in enumerate(publics)],
    ).start()
    assert server.process is not None
    # `ip netns exec` starts wireguard-go, which forks itself into the background process that works.
    found = lab.run("server", ["pgrep", "-n", "-x", "wireguard-go"]).stdout.split()
    return int(found[0]) if found else server.process.pid


def storm(lab: Lab, server_public: str, privates: list[str], rounds: int) -> dict[str, object]:
    for index in range(len(privates)):
        lab.run("client", ["ip", "address", "add", f"{peer_source(index)}/24", "dev", "eth0"], check=False)
    spec = lab.log_dir / "storm.json"
    spec.write_text(
        json.dumps(
            {
                "server": ADDRESSES.server_wan4,
                "port": PORT,
                "server_public": server_public,
                "privates": privates,
                "rounds": rounds,
            }
        )
    )
    argv = [sys.executable, str(Path(__file__).resolve()), "--storm-worker", str(spec)]
    result = lab.run("client", argv, timeout=rounds * 15 + 60)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def throughput(
    lab: Lab, server_public: str, privates: list[str], streams: int, seconds: int
) -> tuple[float, list[dict[str, Any]]]:
    """Mbit/s summed over `streams` wireguard-go peers sending at once, and each stream's iperf3 report."""
    for index in range(streams):
        address = peer_tunnel(index)
        client = WireguardGo(
            lab,
            "client",
            privates[index],
            [f"{address}/32"],
            peers=[WgPeer(server_public, [f"{SERVER_TUNNEL}/32"], endpoint=SERVER_ENDPOINT)],
            interface=f"wgp{index}",
        ).start()
        table = str(1000 + index)
        lab.run("client", ["ip", "rule", "add", "from", address, "lookup", table])
        lab.run("client", ["ip", "route", "replace", SERVER_TUNNEL, "dev", client.interface, "table", table])
    for index in range(streams):
        iperf = ["iperf3", "-s", "-p", str(5201 + index), "-B", SERVER_TUNNEL]
        lab.popen("server", iperf, log_name="iperf3-s")
    for index in range(streams):
        ping = ["ping", "-c", "1", "-W", "1", "-I", peer_tunnel(index), SERVER_TUNNEL]

        def answers(ping: list[str] = ping) -> bool:
            return lab.run("client", ping, check=False).returncode == 0

        lab.wait_for(answers, timeout=20, what=f"the tunnel of peer {index}")
    runs = [
        subprocess.Popen(
            lab.command(
                "client",
                [
                    *("iperf3", "-c", SERVER_TUNNEL, "-B", peer_tunnel(index), "-p", str(5201 + index)),
                    *("-t", str(seconds), "-J"),
                ],
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(streams)
    ]
    total = 0.0
    reports = []
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 60)
        report = json.loads(out)
        total += float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
        reports.append(report)
    return total, reports


def bench(contender: str, args: argparse.Namespace) -> dict[str, float]:
    server_private, server_public = genkey()
    keys = [genkey() for _ in range(args.peers)]
    privates, publics = [k[0] for k in keys], [k[1] for k in keys]
    with Lab(services=False, ipv6=False) as lab:
        env = load_bench("tunnel.py").baseline_env(args.baseline) if contender == "baseline" else None
        pid = start_server(lab, contender, server_private, publics, args.keep_warm, env)
        cpu_before = cpu_seconds(pid)
        storms = storm(lab, server_public, privates, args.rounds)
        cpu_storm = cpu_seconds(pid) - cpu_before
        times = list(storms["storms"])  # type: ignore[call-overload]
        handshakes = args.peers * args.rounds - int(storms["incomplete"])  # type: ignore[call-overload]
        median = statistics.median(times)
        cpu_before = cpu_seconds(pid)
        dropped_before = drops(lab)
        mbits, reports = throughput(lab, server_public, privates, args.streams, args.seconds)
        cpu_data = cpu_seconds(pid) - cpu_before
        dropped = {name: count - dropped_before[name] for name, count in drops(lab).items()}
        gigabytes = mbits * args.seconds / 8 / 1000
        return {
            "storm_s": median,
            "handshakes_per_s": args.peers / median,
            "incomplete": float(storms["incomplete"]),  # type: ignore[arg-type]
            "cpu_ms_per_handshake": 1000 * cpu_storm / max(1, handshakes),
            "mbits": mbits,
            "cpu_s_per_gb": cpu_data / gigabytes if gigabytes else float("nan"),
            "udp_rcvbuf_drops": float(dropped["udp_rcvbuf"]),
            "tunnel_device_drops": float(dropped["tunnel_device"]),
            **streams_summary(reports),
        }


def streams_summary(reports: list[dict[str, Any]]) -> dict[str, float]:
    """The streams' median round trip (ms), the slowest and the fastest stream (Mbit/s) and their
    retransmissions, from iperf3's JSON reports."""
    each = [float(report["end"]["sum_received"]["bits_per_second"]) / 1e6 for report in reports]
    rtts = [
        float(stream["sender"].get("mean_rtt", "nan")) / 1000
        for report in reports
        for stream in report["end"]["streams"]
    ]
    return {
        "rtt_ms": statistics.median(rtts) if rtts else float("nan"),
        "slowest_mbits": min(each, default=float("nan")),
        "fastest_mbits": max(each, default=float("nan")),
        "spread": max(each) / min(each) if each and min(each) > 0 else float("nan"),
        "retransmits": float(sum(report["end"]["sum_sent"].get("retransmits", 0) for report in reports)),
    }


def summary(contender: str, result: dict[str, float], args: argparse.Namespace) -> str:
    return (
        f"{contender:14s} storm of {args.peers}: {result['storm_s'] * 1000:7.1f} ms "
        f"({result['handshakes_per_s']:6.0f} handshakes/s, {result['incomplete']:.0f} incomplete), "
        f"{result['cpu_ms_per_handshake']:.2f} CPU ms/handshake; {args.streams} streams "
        f"{result['mbits']:7.1f} Mbit/s, {result['cpu_s_per_gb']:.2f} CPU s/GB; server drops: "
        f"{result['udp_rcvbuf_drops']:.0f} UDP receive buffer, {result['tunnel_device_drops']:.0f} "
        f"tunnel device; streams' RTT {result['rtt_ms']:.1f} ms, each {result['slowest_mbits']:.0f}-"
        f"{result['fastest_mbits']:.0f} Mbit/s (spread {result['spread']:.1f}x), "
        f"{result['retransmits']:.0f} retransmits"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument(
        "--keep-warm",
        default="0",
        metavar="DURATION",
        help="dnsguard server's performance.keep-warm (its default is 1s; here 0, off)",
    )
    parser.add_argument("--baseline", metavar="CHECKOUT", help="also run dnsguard from another checkout")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every contender, each starting with the next"
    )
    parser.add_argument("--json")
    parser.add_argument("--storm-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.storm_worker:
        return storm_worker(args.storm_worker)
    if not 1 <= args.peers <= 200 or not 1 <= args.streams <= min(args.peers, 32):
        raise SystemExit("--peers takes 1..200 and --streams 1..min(peers, 32)")
    contenders = [contender for contender in args.only.split(",") if contender]
    if unknown := set(contenders) - {*CONTENDERS, "dnsguard+codel"}:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))}")
    if args.baseline:
        contenders.append("baseline")
    runs: dict[str, list[dict[str, float]]] = {contender: [] for contender in contenders}
    for number in range(args.repeat):
        shift = number % len(contenders)  # each round starts with the next contender
        for contender in [*contenders[shift:], *contenders[:shift]]:
            result = bench(contender, args)
            runs[contender].append(result)
            prefix = f"round {number + 1} " if args.repeat > 1 else ""
            print(prefix + summary(contender, result, args), flush=True)
    results = {
        contender: {key: statistics.median(run[key] for run in done) for key in done[0]}
        for contender, done in runs.items()
    }
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} rounds")
        for contender, result in results.items():
            print(summary(contender, result, args), flush=True)
    against_dnsguard = {  # another dnsguard server: what its data path changes
        "throughput": "mbits",
        "streams' RTT": "rtt_ms",
        "slowest stream": "slowest_mbits",
        "spread": "spread",
        "CPU per GB": "cpu_s_per_gb",
    }
    ratios = {
        "wireguard-go": {
            "handshakes/s": "handshakes_per_s",
            "CPU per handshake": "cpu_ms_per_handshake",
            "throughput": "mbits",
            "CPU per GB": "cpu_s_per_gb",
        },
        "baseline": against_dnsguard,
        "dnsguard+codel": against_dnsguard,
    }
    for other, figures in ratios.items():
        if "dnsguard" in results and other in results:
            g, o = results["dnsguard"], results[other]
            shown = ", ".join(f"{label} {g[key] / o[key]:.2f}x" for label, key in figures.items())
            print(f"dnsguard / {other}: {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": results, "rounds": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
