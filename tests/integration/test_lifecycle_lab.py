"""Reconnection in the lab: server restart, link flaps, a frozen client, a simulated suspend, a server
that never answers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, wait_ping
from dnsguard.lab.scenario import SERVER_TUNNEL4, start_full_tunnel
from dnsguard.lab.suspend import simulate_suspend
from dnsguard.wireguard.constants import REKEY_TIMEOUT

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
    # One state file per network namespace and interface; the lab's client has one of each.
    paths = list((lab.log_dir / "run-client").glob("dg0.netns-*.json"))
    return json.loads(paths[0].read_text()) if paths else {}


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


@pytest.fixture
def suspendable() -> Iterator[tuple[Lab, DnsguardDaemon, Path]]:
    """A full tunnel whose client runs under the lab's suspend launcher (a CLOCK_BOOTTIME it can jump)."""
    with Lab() as lab:
        tunnel = start_full_tunnel(lab, lan=False)
        tunnel.client.stop()
        offset_file = lab.log_dir / "boottime-offset"
        client = DnsguardDaemon(
            lab,
            "client",
            "up",
            tunnel.client.config,
            entry=("dnsguard.lab.suspend", "--offset-file", str(offset_file)),
        ).start()
        wait_ping(lab, "client", SERVER_TUNNEL4)
        try:
            yield lab, client, offset_file
        except Exception:
            print(client.log())
            raise


def capture_tunnel_udp(lab: Lab) -> subprocess.Popen[bytes]:
    """tcpdump of the client's encrypted traffic, wall-clock timestamps; ready when this returns."""
    capture = lab.popen(
        "client", ["tcpdump", "-tt", "-i", "eth0", "-n", "-l", "-q", "udp port 51820"], log_name="tcpdump"
    )
    lab.wait_for(lambda: "listening on" in capture_text(capture), timeout=10, what="tcpdump to start")
    # tcpdump turning on promiscuous mode is a link change that the path monitor reports: let the
    # reconnection it causes finish before the interesting part starts.
    time.sleep(1.5)
    wait_ping(lab, "client", SERVER_TUNNEL4)
    return capture


def capture_text(capture: subprocess.Popen[bytes]) -> str:
    return Path(capture.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def handshake_times(capture: subprocess.Popen[bytes], after: float) -> tuple[list[float], list[float]]:
    """Wall-clock times of the initiations the client sent and the responses it got, after `after`."""
    initiations, responses = [], []
    for line in capture_text(capture).splitlines():
        fields = line.split()
        if len(fields) < 2 or not fields[0].replace(".", "").isdigit() or float(fields[0]) < after:
            continue
        if f"> {ADDRESSES.server_wan4}.51820: UDP, length 148" in line:
            initiations.append(float(fields[0]))
        elif line.endswith("UDP, length 92") and f"IP {ADDRESSES.server_wan4}.51820 >" in line:
            responses.append(float(fields[0]))
    return initiations, responses


@pytest.mark.parametrize(
    "slept",
    [
        pytest.param(130.0, id="sessions-due-for-rekey"),
        pytest.param(600.0, id="sessions-past-key-erasure"),
    ],
)
def test_idle_client_rehandshakes_at_once_after_suspend(
    suspendable: tuple[Lab, DnsguardDaemon, Path], slept: float
) -> None:
    """Frozen, then CLOCK_BOOTTIME jumps as after a real sleep: the wake itself starts the handshake.

    No traffic is sent around the wake, so neither data nor the 5 s retransmit timer can be what
    triggers the handshake; without wake handling the next one would come from a timer that slept.
    """
    lab, client, offset_file = suspendable
    assert client.process is not None
    capture = capture_tunnel_udp(lab)
    woke = simulate_suspend(client.process.pid, offset_file, slept, frozen_for=2.0)
    lab.wait_for(
        lambda: "woke from suspend" in client.log(), timeout=5, what="the client to notice the suspend"
    )
    lab.wait_for(
        lambda: handshake_times(capture, woke)[1], timeout=10, what="a handshake response after the wake"
    )
    initiations, responses = handshake_times(capture, woke)
    print(
        f"slept {slept:.0f} s: handshake initiated {(initiations[0] - woke) * 1000:.1f} ms and "
        f"completed {(responses[0] - woke) * 1000:.1f} ms after the wake"
    )
    # A generous bound: what matters is that the handshake did not wait for a protocol timer.
    assert initiations[0] - woke < REKEY_TIMEOUT
    gap = float(client.log().split("woke from suspend for ")[1].split()[0])
    assert gap >= slept
    lab.run("client", ["ping", "-c", "2", "-W", "2", SERVER_TUNNEL4])
    status = client_status(lab, client)
    assert status.get("state") == "connected", status
    assert status.get("reconnects", {}).get("wake") == 1, status  # type: ignore[union-attr]


def test_traffic_flows_again_right_after_suspend(suspendable: tuple[Lab, DnsguardDaemon, Path]) -> None:
    """A ping running across the suspend: its replies resume soon after the wake (latency printed)."""
    lab, client, offset_file = suspendable
    assert client.process is not None
    ping = lab.popen(
        "client", ["ping", "-D", "-n", "-i", "0.05", "-c", "200", "-W", "5", SERVER_TUNNEL4], log_name="ping"
    )
    time.sleep(1.0)
    woke = simulate_suspend(client.process.pid, offset_file, 300.0, frozen_for=2.0)
    lab.wait_for(
        lambda: "woke from suspend" in client.log(), timeout=5, what="the client to notice the suspend"
    )
    ping.wait(timeout=30)
    replies = [
        float(line[1 : line.index("]")])
        for line in capture_text(ping).splitlines()
        if line.startswith("[") and "bytes from" in line
    ]
    after_wake = [at for at in replies if at >= woke]
    assert after_wake, capture_text(ping)[-2000:]
    print(f"first ping reply {(after_wake[0] - woke) * 1000:.1f} ms after the wake")
    # Generous: ping's own 50 ms interval and a noisy machine are in this figure.
    assert after_wake[0] - woke < REKEY_TIMEOUT


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
