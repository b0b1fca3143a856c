"""`dnsguard demo`: the real system in a namespace lab, with a table of what happened, then teardown.

dnsguard server runs in the 'server' namespace, `dnsguard up` (full tunnel, gateway mode) in the
'client' namespace, and a LAN host sits behind the client. Lookups are made from the client and
from the LAN host, to the configured resolver and to a hard-coded one that does not exist, and an
HTTP download goes through the tunnel.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path

from dnsguard.errors import PrivilegeError
from dnsguard.lab import ADDRESSES, Lab, dig_answers, dig_status, have_net_admin, lab_session
from dnsguard.lab.scenario import CLIENT_TUNNEL4, HARD_CODED_RESOLVER, start_full_tunnel

METRICS_PORT = 9153


def _lookup(lab: Lab, role: str, name: str, server: str, tcp: bool = False) -> tuple[str, str, str]:
    result = lab.dig(role, name, server, tcp=tcp)
    query_time = re.search(r"Query time: (\d+) msec", result.stdout)
    elapsed = f"{query_time.group(1)} ms" if query_time else "-"
    return dig_status(result.stdout), ", ".join(dig_answers(result.stdout)) or "-", elapsed


def _print_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


LOOKUPS = [
    # (from, name, resolver, tcp, what it shows)
    ("client", "www.doubleclick.net", CLIENT_TUNNEL4, False, "blocked (ads list)"),
    ("client", f"www.{ADDRESSES.zone}", CLIENT_TUNNEL4, False, "allowed, resolved through the tunnel"),
    ("client", "ads.doubleclick.net", HARD_CODED_RESOLVER, False, "hard-coded resolver: intercepted"),
    ("client", "example.org", HARD_CODED_RESOLVER, True, "DNS over TCP: intercepted"),
    ("client", f"cloaked.{ADDRESSES.zone}", CLIENT_TUNNEL4, False, "CNAME to a tracker: blocked"),
    ("client", "use-application-dns.net", HARD_CODED_RESOLVER, False, "DoH canary: NXDOMAIN"),
    ("lanhost", "www.pornhub.com", HARD_CODED_RESOLVER, False, "LAN device in 'lan-kids': adult blocked"),
    ("lanhost", "www.google.com", HARD_CODED_RESOLVER, False, "LAN device: safe search enforced"),
    ("client", "www.pornhub.com", HARD_CODED_RESOLVER, False, "gateway itself ('default'): allowed"),
]


def _metrics_summary(lab: Lab) -> str:
    """A few of the client's Prometheus metrics, as an operator would scrape them."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    text = lab.run("client", ["curl", "-sS", "--max-time", "5", url], check=False).stdout

    def total(name: str, **labels: str) -> int:
        return int(
            sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == name and labels.items() <= sample.labels.items()
            )
        )

    return (
        f"\nmetrics of the client ({url}, scraped in its namespace): "
        f"{total('dnsguard_dns_queries_total', result='blocked')} of "
        f"{total('dnsguard_dns_queries_total')} queries blocked; "
        f"{total('dnsguard_tunnel_packets_total', direction='tx')} packets, "
        f"{total('dnsguard_tunnel_bytes_total', direction='tx')} encrypted bytes sent; "
        f"connected={total('dnsguard_tunnel_state', state='connected')}"
    )


def run_demo(keep: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    if not have_net_admin():
        raise PrivilegeError(
            "'dnsguard demo' builds network namespaces and needs CAP_NET_ADMIN: run it as root"
        )
    print("dnsguard demo: building the lab (namespaces client, server, internet, lanhost) ...")
    failures = 0
    with lab_session(lan=True) as lab:
        print(
            f"lab {lab.run_id}: starting 'dnsguard server' and 'dnsguard up' (full tunnel, gateway mode) ..."
        )
        started = time.perf_counter()
        tunnel = start_full_tunnel(lab, client_extra={"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}})
        print(f"tunnel up in {time.perf_counter() - started:.1f} s\n")
        rows = []
        for role, name, server, tcp, what in LOOKUPS:
            status, answer, elapsed = _lookup(lab, role, name, server, tcp)
            rows.append((role, name, server + ("/tcp" if tcp else ""), status, answer, elapsed, what))
            failures += status == "TIMEOUT"
        _print_table(rows, ("from", "name", "resolver", "status", "answer", "time", "what it shows"))
        size = 2_000_000
        started = time.perf_counter()
        fetch = lab.run(
            "lanhost",
            [
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-D",
                "-",
                "-o",
                f"/tmp/{lab.run_id}.bin",
                f"http://{ADDRESSES.http4}/bytes/{size}",
            ],
            check=False,
        )
        fetch_seconds = time.perf_counter() - started
        expected = re.search(r"(?i)x-sha256: (\w+)", fetch.stdout)
        body_path = Path(f"/tmp/{lab.run_id}.bin")
        body = body_path.read_bytes() if body_path.exists() else b""
        body_path.unlink(missing_ok=True)
        intact = expected is not None and hashlib.sha256(body).hexdigest() == expected.group(1)
        whoami = lab.run(
            "lanhost", ["curl", "-sS", "--max-time", "5", f"http://{ADDRESSES.http4}/whoami"], check=False
        ).stdout.strip()
        print(
            f"\nHTTP from the LAN host through the tunnel: {len(body)} bytes "
            f"in {fetch_seconds * 1000:.0f} ms, checksum {'ok' if intact else 'WRONG'}; "
            f"the web server saw {whoami or '?'} (the VPN server's address)"
        )
        failures += not intact
        print(_metrics_summary(lab))
        if keep:
            client = lab.namespace("client")
            input(f"\nlab kept up; inspect with 'ip netns exec {client} ...'. Enter tears down: ")
        tunnel.client.stop()
        tunnel.server.stop()
    print("\nlab torn down: no namespace, link, route, rule or firewall table is left behind")
    return 0 if failures == 0 else 1
