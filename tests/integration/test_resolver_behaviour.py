"""`dnsguard resolve` as a LAN's DNS: groups by MAC follow the neighbour table, special-use names stay local.

The resolver runs in the gateway namespace ('client'), the LAN device in 'lanhost'. The device first
has a parent's laptop MAC (unfiltered), then takes a child's tablet MAC on the same addresses, as a
DHCP server reusing an address would have it: the next query must be filtered.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab import dig_status as status
from dnsguard.lab.peers import DnsguardDaemon, start_resolver
from dnsguard.lab.scenario import SERVER_TUNNEL4, start_full_tunnel

ROOT = Path(__file__).resolve().parents[2]
LAPTOP = "02:00:5e:00:53:01"
TABLET = "02:00:5e:00:53:02"
ADULT = "www.xvideos.com"


def config() -> dict[str, object]:
    return {
        "resolver": {"listen": [f"{ADDRESSES.lan_gw4}:53", f"[{ADDRESSES.lan_gw6}]:53", "127.0.0.1:53"]},
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict", "timeout": "1s"},
        "lists": {"adult": {"sources": [str(ROOT / "blocklists" / "adult.txt")]}},
        "groups": {
            "default": {"block": ["adult"]},
            "kids": {"clients": [TABLET], "block": ["adult"]},
            "parents": {"clients": [LAPTOP], "filtering": False},
        },
        "loading": {"cache-dir": "/tmp/dnsguard-test-lists"},
        "cache": {"enabled": False},
        "api": {"listen": None},
        "reload": {"watch": False},
    }


def gateway_knows(lab: Lab, address: str, mac: str) -> bool:
    """Let the gateway hear from the device (an ARP or NDP request carries its MAC), then look."""
    family = "-6" if ":" in address else "-4"
    gateway = ADDRESSES.lan_gw6 if ":" in address else ADDRESSES.lan_gw4
    lab.sh("lanhost", f"ip {family} neigh flush dev eth0", check=False)
    lab.run("lanhost", ["ping", family, "-c1", "-W1", gateway], check=False)
    return mac in lab.sh("client", f"ip {family} neigh show {address}", check=False)


@pytest.fixture
def gateway() -> Iterator[tuple[Lab, DnsguardDaemon]]:
    with Lab(lan=True) as lab:
        lab.sh("lanhost", f"ip link set dev eth0 address {LAPTOP}")
        daemon = start_resolver(lab, config(), timeout=20)
        try:
            yield lab, daemon
        except Exception:
            print(daemon.log())
            raise


def test_a_device_that_takes_another_mac_moves_group_at_once(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, daemon = gateway
    for address, server in (
        (ADDRESSES.lan_host4, ADDRESSES.lan_gw4),
        (ADDRESSES.lan_host6, ADDRESSES.lan_gw6),
    ):
        lab.sh("lanhost", f"ip link set dev eth0 address {LAPTOP}")
        lab.wait_for(
            lambda a=address: gateway_knows(lab, a, LAPTOP), timeout=15, what=f"{address} as {LAPTOP}"
        )
        # The laptop's group does not filter (the first query may race the neighbour event).
        lab.wait_for(
            lambda s=server: answers(lab.dig("lanhost", ADULT, s).stdout) == [ADDRESSES.http4],
            timeout=10,
            what=f"the parents' group for {address}",
        )
        lab.sh("lanhost", f"ip link set dev eth0 address {TABLET}")
        lab.wait_for(
            lambda a=address: gateway_knows(lab, a, TABLET), timeout=15, what=f"{address} as {TABLET}"
        )
        # The kernel has the new MAC: the very next query is the child's, filtered.
        blocked = lab.dig("lanhost", ADULT, server).stdout
        assert answers(blocked) == ["0.0.0.0"], (address, blocked, daemon.log())


def test_special_use_names_are_answered_by_the_gateway(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, _ = gateway
    server = ADDRESSES.lan_gw4
    local = lab.dig("lanhost", "printer.local", server).stdout
    assert status(local) == "NXDOMAIN"
    reverse = lab.dig("lanhost", "20.1.168.192.in-addr.arpa", server, qtype="PTR").stdout
    assert status(reverse) == "NXDOMAIN"
    bare = lab.dig("lanhost", "nas", server).stdout
    assert status(bare) == "NXDOMAIN"
    assert answers(lab.dig("lanhost", "localhost", server).stdout) == ["127.0.0.1"]
    assert answers(lab.dig("lanhost", "localhost", server, qtype="AAAA").stdout) == ["::1"]
    # A public name still goes upstream.
    assert answers(lab.dig("lanhost", "example.org", server).stdout) == [ADDRESSES.http4]


def dnsguard(lab: Lab, role: str, *args: str, env: str = "") -> subprocess.CompletedProcess[str]:
    argv = ["env", *([env] if env else []), sys.executable, "-m", "dnsguard", *args]
    return lab.run(role, argv, check=False)


def test_status_is_live_for_client_and_server_and_a_taken_api_port_refuses_a_second_daemon() -> None:
    with Lab(lan=False) as lab:
        full = start_full_tunnel(lab, lan=False)
        try:
            run_dir = f"DNSGUARD_RUN_DIR={lab.log_dir / 'run-client'}"
            # `dnsguard status` finds the client by its interface, and asks its API.
            first = dnsguard(lab, "client", "status", "--json", env=run_dir)
            assert first.returncode == 0, first.stderr
            before = json.loads(first.stdout)
            assert before["kind"] == "client" and before["connection"]["state"] == "connected"
            assert before["connection"]["last_handshake_time"].startswith(time.strftime("%Y-", time.gmtime()))
            assert 0 <= before["connection"]["last_handshake_ago_seconds"] < 120
            lab.run("client", ["ping", "-c", "3", "-i", "0.2", SERVER_TUNNEL4])
            after = json.loads(dnsguard(lab, "client", "status", "--json", env=run_dir).stdout)
            assert after["tunnel"]["tx_bytes"] > before["tunnel"]["tx_bytes"]  # live, not as of connecting
            text = dnsguard(lab, "client", "status", env=run_dir).stdout
            assert "connection: connected, last handshake 20" in text and " ago)" in text
            # The server answers the same way.
            server = dnsguard(lab, "server", "status", "-c", str(full.server.config_path))
            assert server.returncode == 0, server.stderr
            assert server.stdout.startswith("server (dnsguard ") and "handshake 20" in server.stdout

            # A resolver started next to the client with the same API address must not run without it.
            second = lab.log_dir / "second.yaml"
            second.write_text(
                yaml.safe_dump(
                    {
                        "upstreams": {"servers": [ADDRESSES.dns4]},
                        "resolver": {"listen": ["127.0.0.1:5353"]},
                        "api": {"listen": "127.0.0.1:8053"},
                        "loading": {"cache-dir": "/tmp/dnsguard-test-lists"},
                    }
                )
            )
            refused = dnsguard(lab, "client", "resolve", "-c", str(second))
            assert refused.returncode == 1
            assert "Traceback" not in refused.stderr
            assert "dnsguard: cannot listen on 127.0.0.1:8053 for the api: the port is already in use" in (
                refused.stderr
            )
            # The one daemon behind that address is still the client: `pause -c` would reach only it.
            assert dnsguard(lab, "client", "status", "-c", str(second)).stdout.startswith("client (")
        except Exception:
            print(full.client.log())
            raise


def test_a_dns_port_held_by_another_server_names_it() -> None:
    """The most common install problem, with dnsmasq standing in for systemd-resolved's stub."""
    with Lab(services=False, ipv6=False) as lab:
        holder = lab.popen(
            "client",
            [
                *("dnsmasq", "--no-daemon", "--port=53", "--listen-address=127.0.0.1", "--bind-interfaces"),
                *("--no-resolv", "--no-hosts", "--conf-file=/dev/null"),
            ],
            log_name="dnsmasq",
        )
        lab.wait_for(
            lambda: "dnsmasq" in lab.sh("client", "ss -Hlupn sport = :53", check=False),
            timeout=10,
            what="dnsmasq on port 53",
        )
        path = lab.log_dir / "taken.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "upstreams": {"servers": [ADDRESSES.dns4]},
                    "resolver": {"listen": ["127.0.0.1:53"]},
                    "api": {"listen": None},
                    "loading": {"cache-dir": "/tmp/dnsguard-test-lists"},
                }
            )
        )
        refused = dnsguard(lab, "client", "resolve", "-c", str(path))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert (
            "dnsguard: cannot listen on 127.0.0.1:53 for DNS: the port is already in use by dnsmasq (pid "
            in refused.stderr
        ), refused.stderr
        lab.stop(holder)
