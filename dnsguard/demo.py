"""`dnsguard demo`: build the namespace lab, run dnsguard in it, show what happens, tear down."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from dnsguard.errors import PrivilegeError
from dnsguard.lab import ADDRESSES, Lab, have_net_admin, lab_session


def _lookup(lab: Lab, role: str, name: str, server: str) -> tuple[str, str, float]:
    started = time.perf_counter()
    result = lab.dig(role, name, server)
    elapsed_ms = (time.perf_counter() - started) * 1000
    status = re.search(r"status: (\w+)", result.stdout)
    answers = [
        line.split()[-1]
        for line in result.stdout.splitlines()
        if line and not line.startswith(";") and len(line.split()) >= 5
    ]
    return (status.group(1) if status else "TIMEOUT"), ", ".join(answers) or "-", elapsed_ms


def _print_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))


def run_demo(keep: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    if not have_net_admin():
        raise PrivilegeError(
            "'dnsguard demo' builds network namespaces and needs CAP_NET_ADMIN: run it as root"
        )
    print("dnsguard demo: building the lab (namespaces client, server, internet, lanhost) ...")
    failures = 0
    with lab_session(lan=True) as lab:
        print(f"lab {lab.run_id} is up; every change happens inside its namespaces\n")
        rows = []
        for name in (f"www.{ADDRESSES.zone}", f"cloaked.{ADDRESSES.zone}", f"missing.{ADDRESSES.zone}"):
            status, answer, elapsed_ms = _lookup(lab, "client", name, ADDRESSES.dns4)
            rows.append(("client", name, ADDRESSES.dns4, status, answer, f"{elapsed_ms:.1f} ms"))
            failures += status == "TIMEOUT"
        _print_table(rows, ("from", "name", "resolver", "status", "answer", "time"))
        started = time.perf_counter()
        fetch = lab.run(
            "client",
            [
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                f"http://{ADDRESSES.http4}/bytes/100000",
            ],
            check=False,
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(
            f"\nHTTP GET http://{ADDRESSES.http4}/bytes/100000 from client: "
            f"{fetch.stdout.strip() or fetch.stderr.strip()} ({elapsed_ms:.0f} ms)"
        )
        failures += not fetch.stdout.startswith("200")
        if keep:
            client = lab.namespace("client")
            input(f"\nlab kept up; inspect with 'ip netns exec {client} ...'. Enter tears down: ")
    print("\nlab torn down: no namespace, link, route or rule is left behind")
    return 0 if failures == 0 else 1
