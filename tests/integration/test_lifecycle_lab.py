"""Reconnection in the lab: server restart, link flaps, a frozen client, a server that never answers."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, wait_ping
from dnsguard.lab.scenario import SERVER_TUNNEL4, start_full_tunnel

FAST_RECONNECT = {
    "reconnect": {
        "dead-peer-timeout": "1s",
        "probe-timeout": "1s",
        "handshake-timeout": "1s",
        "backoff-initial": "0.5s",
        "backoff-max": "1s",
        "debounce": "200ms",
    }
}


def client_status(lab: Lab, daemon: DnsguardDaemon) -> dict[str, object]:
    path = lab.log_dir / "run-client" / "dg0.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def full() -> Iterator[tuple[Lab, DnsguardDaemon, DnsguardDaemon]]:
    with Lab() as lab:
        tunnel = start_full_tunnel(lab, lan=False, client_extra=None)
        tunnel.client.config["tunnel"].update(FAST_RECONNECT)  # type: ignore[union-attr]
        tunnel.client.stop()
        client = DnsguardDaemon(lab, "client", "up", tunnel.client.config).start()
        wait_ping(lab, "client", SERVER_TUNNEL4)
        try:
            yield lab, tunnel.server, client
        except Exception:
            print(client.log())
            raise


def test_server_killed_and_restarted(full: tuple[Lab, DnsguardDaemon, DnsguardDaemon]) -> None:
    lab, server, client = full
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    time.sleep(3)
    server.start()
    recovered = wait_ping(lab, "client", SERVER_TUNNEL4, timeout=15)
    print(f"client back {recovered:.2f} s after the server came back")
    assert client.process is not None and client.process.poll() is None


def test_uplink_down_and_up(full: tuple[Lab, DnsguardDaemon, DnsguardDaemon]) -> None:
    lab, _, _ = full
    lab.sh("client", "ip link set eth0 down")
    time.sleep(2)
    # The tunnel stays up while the path is gone: nothing leaks, the TUN and its routes remain.
    assert "dg0" in lab.sh("client", "ip -o link")
    assert "not from all fwmark" in lab.sh("client", "ip rule")
    lab.sh("client", "ip link set eth0 up", f"ip route replace default via {ADDRESSES.client_gw4}")
    recovered = wait_ping(lab, "client", SERVER_TUNNEL4, timeout=20)
    print(f"tunnel usable {recovered:.2f} s after the link came back")


def test_frozen_client_reconnects_at_once_on_resume(full: tuple[Lab, DnsguardDaemon, DnsguardDaemon]) -> None:
    lab, _, client = full
    assert client.process is not None
    client.process.send_signal(signal.SIGSTOP)
    time.sleep(5)
    client.process.send_signal(signal.SIGCONT)
    lab.wait_for(lambda: "stalled for" in client.log(), timeout=5, what="the client to notice the stall")
    recovered = wait_ping(lab, "client", SERVER_TUNNEL4, timeout=10)
    print(f"tunnel usable {recovered:.2f} s after resume")


def test_server_that_never_answers_gives_bounded_retries(
    full: tuple[Lab, DnsguardDaemon, DnsguardDaemon],
) -> None:
    lab, server, client = full
    server.stop()
    capture = lab.popen(
        "client", ["tcpdump", "-i", "eth0", "-n", "-l", "-q", "udp port 51820"], log_name="tcpdump"
    )
    lab.run("client", ["ping", "-c", "30", "-i", "0.2", "-W", "1", SERVER_TUNNEL4], check=False, timeout=30)
    time.sleep(2)
    lab.stop(capture)
    initiations = [
        line
        for line in Path(capture.log_path).read_text().splitlines()  # type: ignore[attr-defined]
        if f"> {ADDRESSES.server_wan4}.51820: UDP, length 148" in line
    ]
    # About 8 s of a dead server with retries capped at 1 s + a 1 s handshake timeout: a few, never a storm.
    assert 0 < len(initiations) <= 12, len(initiations)
    status = client_status(lab, client)
    assert status.get("state") == "reasserting", (status, client.log())
    assert "dg0" in lab.sh("client", "ip -o link")


def test_burst_of_route_changes_gives_one_reconnection(
    full: tuple[Lab, DnsguardDaemon, DnsguardDaemon],
) -> None:
    lab, _, client = full
    gateway = ADDRESSES.client_gw4
    lab.sh(
        "client",
        "ip route del default",
        f"ip route add default via {gateway}",
        "ip route del default",
        f"ip route add default via {gateway}",
    )
    lab.wait_for(
        lambda: "reconnecting (path_change" in client.log(),
        timeout=5,
        what="a reconnection after the route changes",
    )
    wait_ping(lab, "client", SERVER_TUNNEL4, timeout=10)
    time.sleep(1.0)
    assert client.log().count("reconnecting (path_change") == 1, client.log()
    assert client.log().count("path change: default route") >= 2
