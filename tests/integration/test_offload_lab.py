"""Tunnel offloads in the lab: TCP both ways through dnsguard with offloads on one side, both, or none.

With offloads on one side only, the other side writes every packet whole to its TUN, so the
kernel there verifies every TCP checksum that the offloading side computed when it cut
super-packets into segments: a wrong checksum stalls the transfer. Data is compared by digest.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from dnsguard.lab import Lab
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import client_tunnel, server_tunnel, wireguard_go_client, wireguard_go_server

SERVER_TUNNEL, CLIENT_TUNNEL = "100.64.0.1", "100.64.0.2"
TRANSFER = Path(__file__).parent / "scripts" / "tcp_transfer.py"
SIZE = 24 << 20


def transfer(lab: Lab, sender: str, receiver: str, listen_role: str) -> None:
    """SIZE bytes from `sender` to `receiver` over TCP inside the tunnel, checked by digest."""
    listen_direction = "send" if listen_role == sender else "receive"
    connect_role = receiver if listen_role == sender else sender
    connect_direction = "receive" if listen_direction == "send" else "send"
    listener = lab.popen(
        listen_role,
        [sys.executable, str(TRANSFER), "listen", SERVER_TUNNEL, "9100", listen_direction, str(SIZE)],
        log_name="transfer-listen",
    )
    log_path: Path = listener.log_path  # type: ignore[attr-defined]
    lab.wait_for(lambda: "listening" in log_path.read_text(), timeout=10, what="the listener")
    result = lab.run(
        connect_role,
        [sys.executable, str(TRANSFER), "connect", SERVER_TUNNEL, "9100", connect_direction, str(SIZE)],
        timeout=90,
    )
    listener.wait(timeout=30)
    ours = result.stdout.split()
    theirs = log_path.read_text().split()[-2:]
    assert ours == theirs
    assert int(ours[0]) == SIZE


@pytest.mark.parametrize(
    ("client_offloads", "server_offloads"),
    [("on", "on"), ("on", "off"), ("off", "on")],
    ids=["both", "client-only", "server-only"],
)
def test_tcp_crosses_the_tunnel_both_ways_intact_with_offloads(
    client_offloads: str, server_offloads: str
) -> None:
    with Lab(services=False) as lab:
        (server_private, server_public), (client_private, client_public) = genkey(), genkey()
        peer = {"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"]}
        server = DnsguardDaemon(
            lab,
            "server",
            "server",
            server_tunnel(server_private, [peer]),
            env={"DNSGUARD_OFFLOADS": server_offloads},
        ).start()
        config = client_tunnel(client_private, server_public, ["100.64.0.0/24"], **{"kill-switch": False})
        client = DnsguardDaemon(
            lab, "client", "up", config, env={"DNSGUARD_OFFLOADS": client_offloads}
        ).start()
        wait_ping(lab, "client", SERVER_TUNNEL, timeout=30)
        transfer(lab, sender="client", receiver="server", listen_role="server")
        transfer(lab, sender="server", receiver="client", listen_role="server")
        time.sleep(0.2)
        for daemon, setting in ((client, client_offloads), (server, server_offloads)):
            assert daemon.process is not None
            text = Path(daemon.process.log_path).read_text()  # type: ignore[attr-defined]
            assert ("TUN offloads on" in text) == (setting == "on"), text[-2000:]


@pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed")
@pytest.mark.parametrize("dnsguard_role", ["client", "server"])
def test_dnsguard_with_offloads_carries_tcp_both_ways_with_wireguard_go(dnsguard_role: str) -> None:
    """wireguard-go checks nothing of ours but the encryption; its kernel verifies our segments."""
    with Lab(services=False) as lab:
        (server_private, server_public), (client_private, client_public) = genkey(), genkey()
        if dnsguard_role == "client":
            wireguard_go_server(lab, server_private, client_public)
            config = client_tunnel(client_private, server_public, ["100.64.0.0/24"], **{"kill-switch": False})
            daemon = DnsguardDaemon(lab, "client", "up", config, env={"DNSGUARD_OFFLOADS": "on"}).start()
        else:
            peer = {"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"]}
            daemon = DnsguardDaemon(
                lab,
                "server",
                "server",
                server_tunnel(server_private, [peer]),
                env={"DNSGUARD_OFFLOADS": "on"},
            ).start()
            wireguard_go_client(lab, client_private, server_public, ["100.64.0.0/24"])
        wait_ping(lab, "client", SERVER_TUNNEL, timeout=30)
        transfer(lab, sender="client", receiver="server", listen_role="server")
        transfer(lab, sender="server", receiver="client", listen_role="server")
        assert daemon.process is not None
        assert "TUN offloads on" in Path(daemon.process.log_path).read_text()  # type: ignore[attr-defined]
