#!/usr/bin/env python3
"""Tunnel throughput and latency: dnsguard vs wireguard-go vs OpenVPN, same lab, same run.

    sudo .venv/bin/python bench/tunnel.py [--seconds 10] [--repeat 3] [--only dnsguard,wireguard-go,openvpn]

Each contender gets a fresh lab (client and server namespaces joined through the 'internet'
namespace). iperf3 runs inside the tunnel (client -> server tunnel address) for TCP upload and
download; ping measures RTT at idle and during the upload and the download (under load). Beside
throughput, the CPU seconds the contender's daemons (client and server, from /proc/PID/stat) spent
per GB carried: it is steadier than Mbit/s on a shared machine. Results are medians of --repeat
rounds (the contenders take turns, each round starting with the next one), and ratios to the anchors
are printed, because absolute numbers on a shared machine say little. An iperf3 run that fails is
retried once, then reported as failed.

`dnsguard-nooffload` is dnsguard with DNSGUARD_OFFLOADS=off in both daemons (no TUN offloads, no
UDP GSO/GRO: one packet per TUN read and write, sendmmsg/recvmmsg on the UDP side).

`dnsguard-openssl-choice` is dnsguard with OPENSSL_ia32cap=":~0x0" in both daemons: OpenSSL's own
ChaCha20-Poly1305 code for this CPU, where dnsguard may have masked AVX-512 (app/aead_tuning.py).

--udp runs iperf3 with UDP instead (1300-byte datagrams at an unlimited rate; what arrives counts):
every received datagram is one TUN write on the receiving side.

    sudo .venv/bin/python bench/tunnel.py --udp --only dnsguard,dnsguard-nooffload,wireguard-go

`dnsguard+dns` is the same dnsguard client with DNS filtering on (blocklists, an upstream, the
resolver in the client process and the nftables DNS redirect), for the cost of filtering on the
data path:

    sudo .venv/bin/python bench/tunnel.py --only dnsguard,dnsguard+dns,wireguard-go

`dnsguard+fw` adds the firewall fed by DNS to `dnsguard+dns` (the server's tunnel address, which iperf3
and ping reach, is an allowed prefix: every new connection walks the firewall's chain); `--firewall`
runs just those two, interleaved, for the firewall's cost:

    sudo .venv/bin/python bench/tunnel.py --firewall

--congestion NAME runs iperf3 with that TCP congestion control (`-C`). The loaded RTT depends on it:
BBR paces and keeps the queues short, a loss-based one (cubic, most systems' default) grows its window
until something drops, so the ping waits behind whatever queue the path lets build:

    sudo .venv/bin/python bench/tunnel.py --only dnsguard,wireguard-go,openvpn --congestion cubic

--ecn sets net.ipv4.tcp_ecn=1 in the lab's namespaces, so iperf3's TCP negotiates ECN: where the
tunnel's queues would drop, dnsguard marks CE instead, and the retransmits each run prints fall:

    sudo .venv/bin/python bench/tunnel.py --only dnsguard --congestion cubic --ecn

--baseline CHECKOUT adds `baseline`: dnsguard from another checkout (e.g. `git worktree add --detach DIR
main`), set up as `dnsguard` is and interleaved with the others, for a change measured against the
code before it in the same run:

    sudo .venv/bin/python bench/tunnel.py --only dnsguard --baseline /path/to/worktree
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import (
    BLOCKLISTS,
    client_tunnel,
    server_tunnel,
    wireguard_go_client,
    wireguard_go_server,
)

SERVER_TUNNEL, CLIENT_TUNNEL = "100.64.0.1", "100.64.0.2"


def setup_dnsguard(
    lab: Lab, filtering: dict[str, object] | None = None, env: dict[str, str] | None = None
) -> None:
    (server_private, server_public), (client_private, client_public) = genkey(), genkey()
    peer = {"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"]}
    DnsguardDaemon(
        lab, "server", "server", server_tunnel(server_private, [peer]), env=dict(env or {})
    ).start()
    config = client_tunnel(client_private, server_public, ["100.64.0.0/24"], **{"kill-switch": False})
    config.update(filtering or {})
    DnsguardDaemon(lab, "client", "up", config, env=dict(env or {})).start()
    if filtering:
        # Filtering must really be on: a query to an address in the tunnel that nobody serves is
        # answered by the redirect.
        lab.wait_for(
            lambda: "0.0.0.0" in lab.dig("client", "www.doubleclick.net", "100.64.0.53").stdout,
            timeout=30,
            what="dnsguard's DNS redirect to answer",
        )


DNS_FILTERING: dict[str, object] = {
    "upstreams": {"servers": [ADDRESSES.dns4]},
    "lists": {
        "ads": {"sources": [str(BLOCKLISTS / "ads-trackers.txt")]},
        "adult": {"sources": [str(BLOCKLISTS / "adult.txt")]},
    },
    "groups": {"default": {"block": ["ads", "adult"]}},
    "loading": {"cache-dir": "/tmp/dnsguard-lab-lists"},
}


def setup_dnsguard_dns(lab: Lab) -> None:
    setup_dnsguard(lab, DNS_FILTERING)


def setup_dnsguard_firewall(lab: Lab) -> None:
    setup_dnsguard(lab, {**DNS_FILTERING, "firewall": {"enabled": True, "allow": [f"{SERVER_TUNNEL}/32"]}})


def setup_dnsguard_nooffload(lab: Lab) -> None:
    setup_dnsguard(lab, env={"DNSGUARD_OFFLOADS": "off"})


def setup_dnsguard_openssl_choice(lab: Lab) -> None:
    setup_dnsguard(lab, env={"OPENSSL_ia32cap": ":~0x0"})  # masks nothing: dnsguard keeps a set value


def setup_wireguard_go(lab: Lab) -> None:
    (server_private, server_public), (client_private, client_public) = genkey(), genkey()
    wireguard_go_server(lab, server_private, client_public)
    wireguard_go_client(lab, client_private, server_public, ["100.64.0.0/24"])


def setup_openvpn(lab: Lab) -> None:
    """OpenVPN 2.6 peer-to-peer with TLS and peer fingerprints (its documented quick setup), AES-256-GCM."""
    fingerprints = {}
    for role in ("server", "client"):
        key, cert = lab.log_dir / f"ovpn-{role}.key", lab.log_dir / f"ovpn-{role}.crt"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-nodes",
                "-subj",
                f"/CN={role}",
            ],
            check=True,
            capture_output=True,
        )
        out = subprocess.run(
            ["openssl", "x509", "-fingerprint", "-sha256", "-noout", "-in", str(cert)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        fingerprints[role] = out.strip().split("=", 1)[1]
    common = ["openvpn", "--dev", "tun0", "--proto", "udp", "--data-ciphers", "AES-256-GCM", "--verb", "1"]
    lab.popen(
        "server",
        [
            *common,
            "--tls-server",
            "--dh",
            "none",
            "--local",
            ADDRESSES.server_wan4,
            "--port",
            "1194",
            "--cert",
            str(lab.log_dir / "ovpn-server.crt"),
            "--key",
            str(lab.log_dir / "ovpn-server.key"),
            "--peer-fingerprint",
            fingerprints["client"],
            "--ifconfig",
            SERVER_TUNNEL,
            CLIENT_TUNNEL,
        ],
        log_name="openvpn-server",
    )
    lab.popen(
        "client",
        [
            *common,
            "--tls-client",
            "--remote",
            ADDRESSES.server_wan4,
            "1194",
            "--nobind",
            "--cert",
            str(lab.log_dir / "ovpn-client.crt"),
            "--key",
            str(lab.log_dir / "ovpn-client.key"),
            "--peer-fingerprint",
            fingerprints["server"],
            "--ifconfig",
            CLIENT_TUNNEL,
            SERVER_TUNNEL,
        ],
        log_name="openvpn-client",
    )


def baseline_env(checkout: str) -> dict[str, str]:
    """The environment that makes a lab daemon import dnsguard from another checkout (a worktree of
    main, say): PYTHONPATH names it, and PYTHONSAFEPATH keeps the working directory (this checkout,
    perhaps) off the front of its sys.path."""
    source = Path(checkout).resolve()
    if not (source / "dnsguard" / "cli.py").exists():
        raise SystemExit(f"--baseline {checkout}: not a dnsguard checkout")
    return {"PYTHONPATH": str(source), "PYTHONSAFEPATH": "1"}


def baseline_contender(checkout: str) -> Callable[[Lab], None]:
    """dnsguard from another checkout, set up as `dnsguard` is (its daemons in baseline_env)."""
    env = baseline_env(checkout)
    return lambda lab: setup_dnsguard(lab, env=env)


BASELINE = "baseline"


CONTENDERS: dict[str, Callable[[Lab], None]] = {
    "dnsguard": setup_dnsguard,
    "dnsguard-nooffload": setup_dnsguard_nooffload,
    "dnsguard-openssl-choice": setup_dnsguard_openssl_choice,
    "dnsguard+dns": setup_dnsguard_dns,
    "dnsguard+fw": setup_dnsguard_firewall,
    "wireguard-go": setup_wireguard_go,
    "openvpn": setup_openvpn,
}

RATIOS = [
    ("dnsguard", BASELINE),
    ("dnsguard", "dnsguard-nooffload"),
    ("dnsguard", "dnsguard-openssl-choice"),
    ("dnsguard", "wireguard-go"),
    ("dnsguard", "openvpn"),
    ("dnsguard+dns", "dnsguard"),
    ("dnsguard+fw", "dnsguard+dns"),
    ("dnsguard+dns", "wireguard-go"),
]


FIGURES = (
    "upload_mbps",
    "download_mbps",
    "cpu_s_per_gb",
    "rtt_idle_ms",
    "rtt_loaded_ms",
    "rtt_loaded_down_ms",
    "retransmits_up",
    "retransmits_down",
)


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds of the processes, from /proc/PID/stat (gone ones count 0)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / ticks


UDP_ARGS = ["-u", "-b", "0", "-l", "1300"]
"""iperf3 for --udp: 1300-byte datagrams (1328 bytes of IPv4, inside the tunnel's MTU), unlimited rate."""


def iperf_once(
    lab: Lab, seconds: int, reverse: bool, udp: bool = False, congestion: str | None = None
) -> tuple[float, int, int | None] | str:
    """(Mbit/s, bytes received, TCP retransmits) of one iperf3 run, or why it failed."""
    argv = ["iperf3", "-c", SERVER_TUNNEL, "-t", str(seconds), "-J", "-O", "1"] + (["-R"] if reverse else [])
    argv += UDP_ARGS if udp else []
    argv += ["-C", congestion] if congestion else []
    try:
        result = lab.run("client", argv, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired:
        return "iperf3 timed out"
    try:
        report = json.loads(result.stdout)
        received = report["end"]["sum_received"]  # with UDP too, from iperf3 3.10 (Debian 12 has 3.12)
        retransmits = report["end"].get("sum_sent", {}).get("retransmits")  # TCP only
        return float(received["bits_per_second"]) / 1e6, int(received["bytes"]), retransmits
    except (ValueError, KeyError, TypeError):
        error = ""
        if result.stdout.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                error = str(json.loads(result.stdout).get("error", ""))
        return f"iperf3 exited {result.returncode}: {error or result.stderr.strip() or 'no report'}"


def iperf(
    lab: Lab, seconds: int, reverse: bool, pids: list[int], udp: bool = False, congestion: str | None = None
) -> tuple[float, int, float, int | None] | None:
    """(Mbit/s, bytes, daemons' CPU seconds, TCP retransmits) of a run, retried once; None (reported)
    if both fail."""
    for attempt in (1, 2):
        before = cpu_seconds(pids)
        outcome = iperf_once(lab, seconds, reverse, udp, congestion)
        if not isinstance(outcome, str):
            return outcome[0], outcome[1], cpu_seconds(pids) - before, outcome[2]
        print(f"  {'download' if reverse else 'upload'} attempt {attempt} failed: {outcome}", flush=True)
        time.sleep(1)
    return None


def parse_ping(out: str) -> float | None:
    # rtt min/avg/max/mdev = a/b/c/d ms
    for line in reversed(out.strip().splitlines()):
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[1])
    return None


def rtt(lab: Lab, count: int = 50) -> float | None:
    ping = ["ping", "-c", str(count), "-i", "0.02", "-q", SERVER_TUNNEL]
    return parse_ping(lab.run("client", ping, timeout=60, check=False).stdout)


def measure(
    name: str, seconds: int, udp: bool = False, congestion: str | None = None, ecn: bool = False
) -> dict[str, float | None]:
    with Lab(services=False) as lab:
        if ecn:  # the namespaces' own TCP settings: iperf3's connections ask for ECN
            for namespace in ("client", "server"):
                lab.run(namespace, ["sysctl", "-qw", "net.ipv4.tcp_ecn=1"])
        CONTENDERS[name](lab)
        wait_ping(lab, "client", SERVER_TUNNEL, timeout=30)
        daemons = [process.pid for process in lab._processes]
        lab.popen("server", ["iperf3", "-s", "-B", SERVER_TUNNEL], log_name="iperf3")
        time.sleep(0.5)
        idle = rtt(lab)
        pinger = loaded_ping(lab, seconds, "upload")
        upload = iperf(lab, seconds, False, daemons, udp, congestion)
        loaded = loaded_rtt(pinger, seconds)
        pinger = loaded_ping(lab, seconds, "download")
        download = iperf(lab, seconds, True, daemons, udp, congestion)
        loaded_down = loaded_rtt(pinger, seconds)
        done = [run for run in (upload, download) if run is not None]
        carried = sum(run[1] for run in done)
        return {
            "upload_mbps": upload[0] if upload else None,
            "download_mbps": download[0] if download else None,
            "cpu_s_per_gb": sum(run[2] for run in done) / (carried / 1e9) if carried else None,
            "rtt_idle_ms": idle,
            "rtt_loaded_ms": loaded,
            "rtt_loaded_down_ms": loaded_down,
            "retransmits_up": upload[3] if upload else None,
            "retransmits_down": download[3] if download else None,
        }


def loaded_ping(lab: Lab, seconds: int, during: str) -> subprocess.Popen[bytes]:
    """A ping every 0.2 s through the tunnel for as long as an iperf3 run lasts."""
    return lab.popen(
        "client",
        ["ping", "-c", str(seconds * 5), "-i", "0.2", "-q", SERVER_TUNNEL],
        log_name=f"ping-{during}",
    )


def loaded_rtt(pinger: subprocess.Popen[bytes], seconds: int) -> float | None:
    try:
        pinger.wait(timeout=seconds + 5)
    except subprocess.TimeoutExpired:
        pinger.kill()
    return parse_ping(Path(pinger.log_path).read_text())  # type: ignore[attr-defined]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio_of(subject: float | None, anchor: float | None) -> float | None:
    return subject / anchor if subject is not None and anchor else None


def show(value: float | None, width: int, digits: int = 1, missing: str = "failed") -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{missing:>{width}s}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--firewall", action="store_true", help="only dnsguard+dns and dnsguard+fw")
    parser.add_argument(
        "--udp", action="store_true", help="iperf3 UDP (1300-byte datagrams, unlimited rate) instead of TCP"
    )
    parser.add_argument(
        "--congestion",
        metavar="NAME",
        help="TCP congestion control for iperf3 (-C), e.g. cubic; default: the namespace's (its sysctl)",
    )
    parser.add_argument(
        "--ecn",
        action="store_true",
        help="TCP in the lab's namespaces asks for ECN (net.ipv4.tcp_ecn=1): marks instead of drops",
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run dnsguard from another checkout (a worktree of main, say) as `baseline`",
    )
    args = parser.parse_args()
    names = ["dnsguard+dns", "dnsguard+fw"] if args.firewall else [n for n in args.only.split(",") if n]
    if args.baseline:
        CONTENDERS[BASELINE] = baseline_contender(args.baseline)
        names.append(BASELINE)
    runs: dict[str, list[dict[str, float | None]]] = {n: [] for n in names}
    # Interleave contenders so that a noisy moment on the machine hits all of them alike, each round
    # starting with the next one: none always runs first (or right after another).
    for round_number in range(args.repeat):
        shift = round_number % len(names)
        for name in [*names[shift:], *names[:shift]]:
            result = measure(name, args.seconds, args.udp, args.congestion, args.ecn)
            runs[name].append(result)
            print(
                f"round {round_number + 1} {name:18s} up {show(result['upload_mbps'], 8)} Mbit/s  "
                f"down {show(result['download_mbps'], 8)} Mbit/s  "
                f"cpu {show(result['cpu_s_per_gb'], 6, 2)} s/GB  "
                f"rtt idle {show(result['rtt_idle_ms'], 6, 3)} ms  "
                f"loaded up {show(result['rtt_loaded_ms'], 6, 3)} "
                f"down {show(result['rtt_loaded_down_ms'], 6, 3)} ms  "
                f"retransmits {show(result['retransmits_up'], 0, 0, '-')} up "
                f"{show(result['retransmits_down'], 0, 0, '-')} down",
                flush=True,
            )
    medians = {n: {key: median([r[key] for r in runs[n]]) for key in FIGURES} for n in names}
    what = "UDP, 1300-byte datagrams at an unlimited rate, as received" if args.udp else "TCP"
    what += f", congestion control {args.congestion}" if args.congestion and not args.udp else ""
    what += ", ECN" if args.ecn and not args.udp else ""
    print(f"\nmedian of {args.repeat} runs, {args.seconds} s each (iperf3 {what} inside the tunnel)")
    print(
        f"{'':19s}{'up Mbit/s':>10s}{'down Mbit/s':>12s}{'CPU s/GB':>10s}"
        f"{'RTT idle ms':>12s}{'RTT up ms':>12s}{'RTT down ms':>12s}{'retr up':>9s}{'retr down':>10s}"
    )
    for name in names:
        m = medians[name]
        print(
            f"{name:19s}{show(m['upload_mbps'], 10)}{show(m['download_mbps'], 12)}"
            f"{show(m['cpu_s_per_gb'], 10, 2)}"
            f"{show(m['rtt_idle_ms'], 12, 3)}{show(m['rtt_loaded_ms'], 12, 3)}"
            f"{show(m['rtt_loaded_down_ms'], 12, 3)}"
            f"{show(m['retransmits_up'], 9, 0, '-')}{show(m['retransmits_down'], 10, 0, '-')}"
        )
    ratios: dict[str, dict[str, Any]] = {}
    for subject, anchor in RATIOS:
        if subject in medians and anchor in medians:
            d, a = medians[subject], medians[anchor]
            ratio = {key: ratio_of(d[key], a[key]) for key in FIGURES}
            ratios[f"{subject} / {anchor}"] = ratio
            print(
                f"{subject} / {anchor}: upload {show(ratio['upload_mbps'], 0, 2)}x, "
                f"download {show(ratio['download_mbps'], 0, 2)}x, "
                f"CPU/GB {show(ratio['cpu_s_per_gb'], 0, 2)}x, "
                f"RTT idle {show(ratio['rtt_idle_ms'], 0, 2)}x, "
                f"loaded up {show(ratio['rtt_loaded_ms'], 0, 2)}x, "
                f"down {show(ratio['rtt_loaded_down_ms'], 0, 2)}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
