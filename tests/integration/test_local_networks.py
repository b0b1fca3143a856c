"""exclude-local-networks: the uplink's own network and gateway stay reachable beside the tunnel,
and nothing else leaves the uplink unencrypted."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import wait_ping
from dnsguard.lab.scenario import SERVER_TUNNEL4, FullTunnel, start_full_tunnel

PRINTER4 = "198.18.1.7"
PRINTER6 = "2001:db8:1::7"
"""A host on the client's uplink network (an address on the far end of the client's link)."""


@pytest.fixture
def tunnel() -> Iterator[FullTunnel]:
    with Lab() as lab:
        lab.sh("internet", f"ip addr add {PRINTER4}/24 dev c0", f"ip -6 addr add {PRINTER6}/64 dev c0 nodad")
        full = start_full_tunnel(lab, lan=False)
        full.client.stop()
        full.client.config["tunnel"]["exclude-local-networks"] = True  # type: ignore[index]
        full.client.start()
        wait_ping(lab, "client", SERVER_TUNNEL4, timeout=20)
        try:
            yield full
        except Exception:
            print(full.client.log())
            raise


def test_local_hosts_answer_and_the_rest_goes_only_through_the_tunnel(tunnel: FullTunnel) -> None:
    lab = tunnel.lab
    capture = lab.popen("client", ["tcpdump", "-i", "eth0", "-n", "-l", "-q", "not arp"], log_name="tcpdump")
    lab.wait_for(lambda: "listening on" in Path(capture.log_path).read_text(), timeout=10, what="tcpdump")  # type: ignore[attr-defined]
    for address in (ADDRESSES.client_gw4, PRINTER4, ADDRESSES.client_gw6, PRINTER6):
        lab.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "2", address])
    # Beyond the gateway: reached, and through the tunnel (the server's address is who asks).
    whoami = lab.run("client", ["curl", "-sS", "--max-time", "10", f"http://{ADDRESSES.http4}/whoami"])
    assert whoami.stdout.strip() == ADDRESSES.server_wan4
    lab.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "2", ADDRESSES.http4])
    # Forced out of the uplink without the mark, a packet to a non-local host is refused.
    forced = lab.run("client", ["ping", "-I", "eth0", "-c", "1", "-W", "1", ADDRESSES.http4], check=False)
    assert forced.returncode != 0, forced.stdout
    forced6 = lab.run("client", ["ping", "-I", "eth0", "-c", "1", "-W", "1", ADDRESSES.http6], check=False)
    assert forced6.returncode != 0, forced6.stdout
    time.sleep(0.5)
    lab.stop(capture)
    lines = [line for line in Path(capture.log_path).read_text().splitlines() if re.match(r"^\d\d:", line)]  # type: ignore[attr-defined]
    local = re.compile(
        rf"IP6? ({re.escape(ADDRESSES.client_wan4)}|{re.escape(ADDRESSES.client_wan6)}|fe80::[0-9a-f:]+) > "
        rf"({re.escape(ADDRESSES.client_gw4)}|{re.escape(PRINTER4)}|{re.escape(ADDRESSES.client_gw6)}|"
        rf"{re.escape(PRINTER6)}|fe80::[0-9a-f:]+|ff02::[0-9a-f:]+):"
    )
    reply = re.compile(
        rf"IP6? ({re.escape(ADDRESSES.client_gw4)}|{re.escape(PRINTER4)}|{re.escape(ADDRESSES.client_gw6)}|"
        rf"{re.escape(PRINTER6)}|fe80::[0-9a-f:]+) > "
    )
    tunnel_packet = re.compile(
        rf"IP ({re.escape(ADDRESSES.client_wan4)}\.\d+ > {re.escape(ADDRESSES.server_wan4)}\.51820|"
        rf"{re.escape(ADDRESSES.server_wan4)}\.51820 > {re.escape(ADDRESSES.client_wan4)}\.\d+): UDP"
    )
    assert any(PRINTER4 in line for line in lines) and any(tunnel_packet.search(line) for line in lines), (
        lines
    )
    other = [
        line for line in lines if not (local.search(line) or reply.search(line) or tunnel_packet.search(line))
    ]
    assert not other, "\n".join(other[:20])
    assert not any(ADDRESSES.http4 in line or ADDRESSES.http6 in line for line in lines)


def test_the_local_networks_follow_the_uplink(tunnel: FullTunnel) -> None:
    """A new prefix on the uplink (another network on the same link) becomes reachable beside the tunnel."""
    lab = tunnel.lab
    lab.sh("internet", "ip addr add 192.0.2.1/24 dev c0")
    assert lab.run(
        "client", ["ping", "-c", "1", "-W", "1", "-I", "eth0", "192.0.2.1"], check=False
    ).returncode
    lab.sh("client", "ip addr add 192.0.2.50/24 dev eth0")
    lab.wait_for(
        lambda: "local networks now" in tunnel.client.log() and "192.0.2.0/24" in tunnel.client.log(),
        timeout=10,
        what="the kill switch to let the new local network through",
    )
    lab.run("client", ["ping", "-c", "2", "-i", "0.2", "-W", "2", "192.0.2.1"])
    lab.sh("client", "ip addr del 192.0.2.50/24 dev eth0")
    lab.wait_for(
        lambda: "192.0.2.0/24" not in lab.sh("client", "nft list table inet dnsguard"),
        timeout=10,
        what="the kill switch to forget the removed network",
    )
