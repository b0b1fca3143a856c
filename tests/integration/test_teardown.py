"""The client leaves its network namespace as it found it: after a stop, a signal at any step of
start-up, or a crash followed by the next start or `dnsguard down`."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import SERVER_TUNNEL4, client_config, server_config

SNAPSHOT_COMMANDS = (
    "sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv4.conf.all.src_valid_mark",
    "ip rule",
    "ip -6 rule",
    "ip route show table all",
    "ip -6 route show table all",
    "nft list ruleset",
)
START_UP_STEPS = ("claimed", "kill-switch", "routes", "tunnel", "forwarding", "dns", "ready")
"""Every named point of the client's start-up (dnsguard.app.client.Client._step)."""


def snapshot(lab: Lab, role: str = "client") -> dict[str, str]:
    return {command: lab.sh(role, command) for command in SNAPSHOT_COMMANDS}


def assert_same(before: dict[str, str], after: dict[str, str], context: str) -> None:
    for command, text in before.items():
        assert after[command] == text, (
            f"{context}: `{command}` differs\nbefore:\n{text}\nafter:\n{after[command]}"
        )


def daemon_log(daemon: DnsguardDaemon) -> str:
    path = getattr(daemon.process, "log_path", None)
    return Path(path).read_text(errors="replace") if path else ""


def run_down(lab: Lab, role: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """`dnsguard down` inside a namespace, with the state directory the lab's clients use."""
    argv = [
        "env",
        f"DNSGUARD_RUN_DIR={run_dir}",
        sys.executable,
        "-m",
        "dnsguard",
        "down",
        "--interface",
        "dg0",
    ]
    return lab.run(role, argv, check=False)


@pytest.fixture
def gateway() -> Iterator[tuple[Lab, dict[str, object], dict[str, object]]]:
    """A lab with a LAN host behind the client, a running server, and the client's configuration."""
    with Lab(lan=True) as lab:
        (server_private, server_public), (client_private, client_public) = genkey(), genkey()
        server = DnsguardDaemon(
            lab, "server", "server", server_config(server_private, client_public, lan=True)
        )
        server.start()
        yield lab, client_config(client_private, server_public, lan=True), server.config


def test_stop_restores_the_namespace_and_the_lan_no_longer_leaves_in_clear(
    gateway: tuple[Lab, dict[str, object], dict[str, object]],
) -> None:
    lab, config, _ = gateway
    before = snapshot(lab)
    assert "net.ipv4.ip_forward = 0" in before[SNAPSHOT_COMMANDS[0]]
    client = DnsguardDaemon(lab, "client", "up", config).start()
    wait_ping(lab, "client", SERVER_TUNNEL4, timeout=20)
    wait_ping(lab, "lanhost", ADDRESSES.http4, timeout=10)
    during = snapshot(lab)
    assert "net.ipv4.ip_forward = 1" in during[SNAPSHOT_COMMANDS[0]]
    assert "table inet dnsguard" in during["nft list ruleset"]
    assert client.stop() == 0, daemon_log(client)
    assert_same(before, snapshot(lab), "after stop")
    assert not list((lab.log_dir / "run-client").glob("*.json")), "the state file was left behind"

    capture = lab.popen("client", ["tcpdump", "-i", "eth0", "-n", "-l", "-q", "not arp"], log_name="tcpdump")
    lab.wait_for(lambda: "listening on" in Path(capture.log_path).read_text(), timeout=10, what="tcpdump")  # type: ignore[attr-defined]
    lab.run("lanhost", ["ping", "-c", "3", "-i", "0.2", "-W", "1", ADDRESSES.http4], check=False)
    lab.run("lanhost", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", ADDRESSES.http6], check=False)
    lab.run("lanhost", ["curl", "-sS", "--max-time", "2", f"http://{ADDRESSES.http4}/"], check=False)
    # The client's own packet proves the capture sees the uplink.
    lab.run("client", ["ping", "-c", "1", "-W", "1", ADDRESSES.client_gw4])
    time.sleep(0.5)
    lab.stop(capture)
    lines = Path(capture.log_path).read_text().splitlines()  # type: ignore[attr-defined]
    assert any(f"{ADDRESSES.client_wan4} > {ADDRESSES.client_gw4}" in line for line in lines), lines
    lan = [line for line in lines if ADDRESSES.lan_host4 in line or ADDRESSES.lan_host6 in line]
    assert not lan, "\n".join(lan)


def test_a_signal_at_any_step_of_start_up_leaves_nothing(
    gateway: tuple[Lab, dict[str, object], dict[str, object]],
) -> None:
    lab, config, _ = gateway
    before = snapshot(lab)
    for step in START_UP_STEPS:
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            client = DnsguardDaemon(lab, "client", "up", config, env={"DNSGUARD_PAUSE_AT": step})
            client.start(wait_for_interface=None)
            lab.wait_for(
                lambda c=client, s=step: f"start-up paused at {s}" in daemon_log(c),  # type: ignore[misc]
                timeout=20,
                what=f"the client to reach {step}",
            )
            if step != "claimed":
                # The test proves something only if the client had changed the namespace by then.
                assert snapshot(lab) != before, step
            assert client.process is not None
            client.process.send_signal(stop_signal)
            assert client.process.wait(timeout=15) == 0, daemon_log(client)
            assert "Traceback" not in daemon_log(client), daemon_log(client)
            assert_same(before, snapshot(lab), f"{stop_signal.name} at {step}")


@pytest.mark.parametrize("recover", ["next start", "dnsguard down"])
def test_a_crash_is_undone_by_the_next_start_or_by_down(
    gateway: tuple[Lab, dict[str, object], dict[str, object]], recover: str
) -> None:
    lab, config, _ = gateway
    before = snapshot(lab)
    client = DnsguardDaemon(lab, "client", "up", config).start()
    assert client.process is not None
    client.process.send_signal(signal.SIGKILL)
    client.process.wait(timeout=10)
    crashed = snapshot(lab)
    assert "table inet dnsguard" in crashed["nft list ruleset"]
    assert "net.ipv4.ip_forward = 1" in crashed[SNAPSHOT_COMMANDS[0]]
    if recover == "next start":
        again = DnsguardDaemon(lab, "client", "up", config).start()
        wait_ping(lab, "client", SERVER_TUNNEL4, timeout=20)
        assert "undoing" in daemon_log(again)
        assert again.stop() == 0
    else:
        down = run_down(lab, "client", lab.log_dir / "run-client")
        assert down.returncode == 0, down.stderr
    assert_same(before, snapshot(lab), f"crash, then {recover}")


def test_down_only_stops_the_client_of_its_own_namespace() -> None:
    with Lab(extra_client=True) as lab:
        (server_private, server_public) = genkey()
        shared = {"DNSGUARD_RUN_DIR": str(lab.log_dir / "run-shared")}
        clients = []
        peers = []
        for role in ("client", "client2"):
            private, public = genkey()
            config = client_config(private, server_public, lan=False)
            if role == "client2":
                config["tunnel"]["address"] = ["100.64.0.3/32", "fd00::3/128"]  # type: ignore[index]
            peers.append((public, config))
            clients.append(DnsguardDaemon(lab, role, "up", config, env=shared))
        server_conf = server_config(server_private, peers[0][0], lan=False)
        server_conf["tunnel"]["peers"].append(  # type: ignore[index]
            {"public-key": peers[1][0], "allowed-ips": ["100.64.0.3/32", "fd00::3/128"]}
        )
        DnsguardDaemon(lab, "server", "server", server_conf).start()
        for client in clients:
            client.start()
        files = sorted(os.listdir(lab.log_dir / "run-shared"))
        assert len([f for f in files if re.match(r"dg0\.netns-\d+\.json$", f)]) == 2, files
        down = run_down(lab, "client", lab.log_dir / "run-shared")
        assert down.returncode == 0, down.stderr
        assert clients[0].process is not None and clients[0].process.wait(timeout=10) == 0
        assert clients[1].process is not None and clients[1].process.poll() is None
        status = lab.run(
            "client2",
            [
                "env",
                f"DNSGUARD_RUN_DIR={lab.log_dir / 'run-shared'}",
                sys.executable,
                "-m",
                "dnsguard",
                "status",
            ],
        )
        # `status` asks the client of its own namespace through that client's API.
        assert f"pid {clients[1].process.pid})" in status.stdout, status.stdout
        gone = lab.run(
            "client",
            [
                "env",
                f"DNSGUARD_RUN_DIR={lab.log_dir / 'run-shared'}",
                sys.executable,
                "-m",
                "dnsguard",
                "status",
            ],
            check=False,
        )
        assert gone.returncode != 0 and "no running client for dg0 in this network namespace" in gone.stderr
        wait_ping(lab, "client2", SERVER_TUNNEL4, timeout=10)
        assert "dg0" in lab.sh("client2", "ip -o link")


def test_a_signal_at_random_moments_of_start_up_leaves_nothing(
    gateway: tuple[Lab, dict[str, object], dict[str, object]],
) -> None:
    """Between the named steps too: inside a netlink exchange, an nft load, the resolver's start."""
    lab, config, _ = gateway
    before = snapshot(lab)
    chooser = random.Random(20261204)
    run_dir = lab.log_dir / "run-client"
    during = 0
    for _ in range(6):
        client = DnsguardDaemon(lab, "client", "up", config)
        client.start(wait_for_interface=None)
        # The state file appears when the client claims it, before its first change: start-up
        # (about 0.2 s here) begins then.
        lab.wait_for(
            lambda: list(run_dir.glob("dg0.netns-*.json")), timeout=20, what="the state file", interval=0.005
        )
        delay = chooser.uniform(0.0, 0.3)
        time.sleep(delay)
        assert client.process is not None
        client.process.send_signal(signal.SIGTERM)
        assert client.process.wait(timeout=15) == 0, daemon_log(client)
        assert "Traceback" not in daemon_log(client), daemon_log(client)
        stopped_starting = "stopped during start-up" in daemon_log(client)
        during += stopped_starting
        print(f"SIGTERM {delay:.3f} s after the claim{' (during start-up)' if stopped_starting else ''}")
        assert_same(before, snapshot(lab), f"SIGTERM {delay:.3f} s after the claim")
    assert during, "no signal landed during start-up: the test proved nothing"


def test_a_stopped_server_leaves_its_namespace_as_it_found_it() -> None:
    """Forwarding, NAT and routes of the server's namespace: a VPN server's stop restores them too."""
    with Lab() as lab:
        (server_private, _), (_, client_public) = genkey(), genkey()
        before = snapshot(lab, "server")
        assert "net.ipv4.ip_forward = 0" in before[SNAPSHOT_COMMANDS[0]]
        server = DnsguardDaemon(
            lab, "server", "server", server_config(server_private, client_public, lan=False)
        ).start()
        during = snapshot(lab, "server")
        assert "net.ipv4.ip_forward = 1" in during[SNAPSHOT_COMMANDS[0]], daemon_log(server)
        assert server.stop() == 0, daemon_log(server)
        assert_same(before, snapshot(lab, "server"), "after the server stopped")
