"""The routing and firewall edges, exercised inside a lab namespace: set up, idempotent, gone after."""

from __future__ import annotations

import sys
from pathlib import Path

from dnsguard.lab import ADDRESSES, Lab

SCRIPT = str(Path(__file__).parent / "scripts" / "net_setup.py")


def _state(lab: Lab) -> dict[str, str]:
    return {
        "rules4": lab.sh("client", "ip -4 rule"),
        "rules6": lab.sh("client", "ip -6 rule"),
        "table": lab.run("client", ["ip", "route", "show", "table", "all"]).stdout,
        "links": lab.sh("client", "ip -o link"),
        "nft": lab.sh("client", "nft list ruleset"),
    }


def test_a_crashed_run_is_cleaned_by_the_next_start(lab: Lab) -> None:
    before = _state(lab)
    left = lab.run("client", [sys.executable, SCRIPT, "leave"])
    assert left.returncode == 0
    leftover = _state(lab)
    assert "not from all fwmark 0xca6c lookup 51820" in leftover["rules4"]
    assert "table inet dnsguard" in leftover["nft"]
    lab.run("client", [sys.executable, SCRIPT, "clean"])
    assert _state(lab) == before


def test_unmarked_traffic_goes_to_the_tunnel_and_marked_traffic_does_not(lab: Lab) -> None:
    a = ADDRESSES
    result = lab.run("client", [sys.executable, SCRIPT, "clean", a.http4, a.client_gw4, a.server_wan4])
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert "dev dg0" in lines[f"{a.http4} unmarked"]
    assert "dev eth0" in lines[f"{a.http4} marked"]
    # The uplink's own subnet stays reachable (main table, suppress_prefixlength 0) ...
    assert "dev eth0" in lines[f"{a.client_gw4} unmarked"]
    # ... and an excluded prefix (the server) bypasses the tunnel.
    assert "dev eth0" in lines[f"{a.server_wan4} unmarked"]
