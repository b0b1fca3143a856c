#!/usr/bin/env python3
"""Tunnel throughput and latency: dnsguard vs wireguard-go vs OpenVPN, same lab, same run.

    sudo .venv/bin/python bench/tunnel.py [--seconds 10] [--repeat 3] [--only dnsguard,wireguard-go,openvpn]

Each contender gets a fresh lab (client and server namespaces joined through the 'internet'
namespace). iperf3 runs inside the tunnel (client -> server tunnel address) for TCP upload and
download; ping measures RTT. Results are medians of --repeat runs, and ratios to the anchors are
printed, because absolute numbers on a shared machine say little.

`dnsguard+dns` is the same dnsguard client with DNS filtering on (blocklists, an upstream, the
resolver in the client process and the nftables DNS redirect), for the cost of filtering on the
data path:

    sudo .venv/bin/python bench/tunnel.py --only dnsguard,dnsguard+dns,wireguard-go

`dnsguard+fw` adds the firewall fed by DNS to `dnsguard+dns` (the server's tunnel address, which iperf3
and ping reach, is an allowed prefix: every new connection walks the firewall's chain); `--firewall`
runs just those two, interleaved, for the firewall's cost:

    sudo .venv/bin/python bench/tunnel.py --firewall
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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


def setup_dnsguard(lab: Lab, filtering: dict[str, object] | None = None) -> None:
    (server_private, server_public), (client_private, client_public) = genkey(), genkey()
    peer = {"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"]}
    DnsguardDaemon(lab, "server", "server", server_tunnel(server_private, [peer])).start()
    config = client_tunnel(client_private, server_public, ["100.64.0.0/24"], **{"kill-switch": False})
    config.update(filtering or {})
    DnsguardDaemon(lab, "client", "up", config).start()
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


CONTENDERS: dict[str, Callable[[Lab], None]] = {
    "dnsguard": setup_dnsguard,
    "dnsguard+dns": setup_dnsguard_dns,
    "dnsguard+fw": setup_dnsguard_firewall,
    "wireguard-go": setup_wireguard_go,
    "openvpn": setup_openvpn,
}

RATIOS = [
    ("dnsguard", "wireguard-go"),
    ("dnsguard", "openvpn"),
    ("dnsguard+dns", "dnsguard"),
    ("dnsguard+fw", "dnsguard+dns"),
    ("dnsguard+dns", "wireguard-go"),
]


def iperf(lab: Lab, seconds: int, reverse: bool) -> float:
    argv = ["iperf3", "-c", SERVER_TUNNEL, "-t", str(seconds), "-J", "-O", "1"] + (["-R"] if reverse else [])
    result = lab.run("client", argv, timeout=seconds + 30)
    report = json.loads(result.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def rtt(lab: Lab, count: int = 50) -> float:
    out = lab.run("client", ["ping", "-c", str(count), "-i", "0.02", "-q", SERVER_TUNNEL], timeout=60).stdout
    # rtt min/avg/max/mdev = a/b/c/d ms
    return float(out.strip().splitlines()[-1].split("=")[1].split("/")[1])


def measure(name: str, seconds: int) -> dict[str, float]:
    with Lab(services=False) as lab:
        CONTENDERS[name](lab)
        wait_ping(lab, "client", SERVER_TUNNEL, timeout=30)
        lab.popen("server", ["iperf3", "-s", "-B", SERVER_TUNNEL], log_name="iperf3")
        time.sleep(0.5)
        return {
            "upload_mbps": iperf(lab, seconds, False),
            "download_mbps": iperf(lab, seconds, True),
            "rtt_ms": rtt(lab),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=",".join(CONTENDERS))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--firewall", action="store_true", help="only dnsguard+dns and dnsguard+fw")
    args = parser.parse_args()
    names = ["dnsguard+dns", "dnsguard+fw"] if args.firewall else [n for n in args.only.split(",") if n]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    # Interleave contenders so that a noisy moment on the machine hits all of them alike.
    for round_number in range(args.repeat):
        for name in names:
            result = measure(name, args.seconds)
            runs[name].append(result)
            print(
                f"round {round_number + 1} {name:13s} up {result['upload_mbps']:8.1f} Mbit/s  "
                f"down {result['download_mbps']:8.1f} Mbit/s  rtt {result['rtt_ms']:.3f} ms",
                flush=True,
            )
    medians = {n: {k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]} for n in names}
    print(f"\nmedian of {args.repeat} runs, {args.seconds} s each (iperf3 TCP inside the tunnel)")
    print(f"{'':14s}{'upload Mbit/s':>15s}{'download Mbit/s':>17s}{'RTT ms':>9s}")
    for name in names:
        m = medians[name]
        print(f"{name:14s}{m['upload_mbps']:15.1f}{m['download_mbps']:17.1f}{m['rtt_ms']:9.3f}")
    ratios = {}
    for subject, anchor in RATIOS:
        if subject in medians and anchor in medians:
            d, a = medians[subject], medians[anchor]
            ratios[f"{subject} / {anchor}"] = {key: d[key] / a[key] for key in d}
            print(
                f"{subject} / {anchor}: upload {d['upload_mbps'] / a['upload_mbps']:.2f}x, "
                f"download {d['download_mbps'] / a['download_mbps']:.2f}x, "
                f"RTT {d['rtt_ms'] / a['rtt_ms']:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": medians, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
