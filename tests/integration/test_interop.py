"""WireGuard interoperability in the lab: dnsguard against wireguard-go, in both directions."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab, dig_answers
from dnsguard.lab.peers import DnsguardDaemon, genkey, wait_ping
from dnsguard.lab.scenario import (
    client_tunnel,
    server_tunnel,
    wireguard_go_client,
    wireguard_go_server,
)

pytestmark = pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="wireguard-go is not installed")

SERVER_TUNNEL = "100.64.0.1"
CLIENT_TUNNEL = "100.64.0.2"
SERVER_TUNNEL6 = "fd00::1"
CLIENT_TUNNEL6 = "fd00::2"
ROOT = Path(__file__).resolve().parents[2]


def fetch_and_check(lab: Lab, role: str, size: int) -> None:
    """Download `size` bytes over HTTP from the lab web server and verify them end to end."""
    result = lab.run(
        role,
        [
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-D",
            "-",
            "-o",
            "/tmp/dg-fetch-" + lab.run_id,
            f"http://{ADDRESSES.http4}/bytes/{size}",
        ],
    )
    expected = next(
        line.split(":", 1)[1].strip()
        for line in result.stdout.splitlines()
        if line.lower().startswith("x-sha256")
    )
    with open("/tmp/dg-fetch-" + lab.run_id, "rb") as handle:
        body = handle.read()
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected


def nat_in_server_namespace(lab: Lab) -> None:
    """A stock WireGuard server's usual NAT, for the wireguard-go server case."""
    lab.sh("server", "sysctl -qw net.ipv4.ip_forward=1")
    lab.run(
        "server",
        ["nft", "-f", "-"],
        input=(
            "table ip labnat {\n chain post {\n  type nat hook postrouting priority srcnat;\n"
            '  ip saddr 100.64.0.0/24 oifname "eth0" masquerade\n }\n}\n'
        ),
    )


def move_uplink_address(lab: Lab, new_address: str) -> None:
    """The client's uplink gets a new address (as after a DHCP renewal on another network)."""
    lab.sh(
        "client",
        f"ip addr del {ADDRESSES.client_wan4}/24 dev eth0",
        f"ip addr add {new_address}/24 dev eth0",
        f"ip route replace default via {ADDRESSES.client_gw4}",
    )


@pytest.fixture
def keys() -> Iterator[dict[str, tuple[str, str]]]:
    yield {"server": genkey(), "client": genkey()}


def whoami(lab: Lab, role: str) -> str:
    return lab.run(
        role, ["curl", "-sS", "--max-time", "10", f"http://{ADDRESSES.http4}/whoami"]
    ).stdout.strip()


def test_dnsguard_client_with_wireguard_go_server(lab: Lab, keys: dict[str, tuple[str, str]]) -> None:
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    wireguard_go_server(lab, server_private, client_public)
    nat_in_server_namespace(lab)
    client = DnsguardDaemon(lab, "client", "up", client_tunnel(client_private, server_public, ["0.0.0.0/0"]))
    client.start()
    try:
        wait_ping(lab, "client", SERVER_TUNNEL)
        # Full tunnel: the web server sees the server's address, not the client's uplink.
        assert whoami(lab, "client") == ADDRESSES.server_wan4
        fetch_and_check(lab, "client", 5_000_000)
    except Exception:
        print(client.log())
        raise


def test_wireguard_go_client_with_dnsguard_server(lab: Lab, keys: dict[str, tuple[str, str]]) -> None:
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    peer = {
        "public-key": client_public,
        "allowed-ips": [f"{CLIENT_TUNNEL}/32", f"{CLIENT_TUNNEL6}/128"],
        "name": "wg-go",
    }
    server = DnsguardDaemon(
        lab,
        "server",
        "server",
        server_tunnel(server_private, [peer], addresses=(f"{SERVER_TUNNEL}/24", f"{SERVER_TUNNEL6}/64")),
    ).start()
    client = wireguard_go_client(
        lab,
        client_private,
        server_public,
        ["100.64.0.0/24", "fd00::/64", f"{ADDRESSES.http4}/32"],
        routes=(f"{ADDRESSES.http4}/32",),
    )
    lab.run("client", ["ip", "-6", "address", "add", f"{CLIENT_TUNNEL6}/64", "dev", client.interface])
    try:
        wait_ping(lab, "client", SERVER_TUNNEL)
        assert lab.run("client", ["ping", "-c", "1", "-W", "2", SERVER_TUNNEL6], check=False).returncode == 0
        assert whoami(lab, "client") == ADDRESSES.server_wan4  # NATed out by dnsguard's server
        fetch_and_check(lab, "client", 5_000_000)
    except Exception:
        print(server.log())
        raise


def test_rekey_with_short_timers_keeps_traffic_flowing(lab: Lab, keys: dict[str, tuple[str, str]]) -> None:
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    wg = wireguard_go_server(lab, server_private, client_public)
    client = DnsguardDaemon(
        lab,
        "client",
        "up",
        client_tunnel(client_private, server_public, ["100.64.0.0/24"], **{"rekey-after-time": "2s"}),
    ).start()
    try:
        wait_ping(lab, "client", SERVER_TUNNEL)
        first = wg.latest_handshake(client_public)
        # 8 s of continuous pings across several 2 s rekeys: none may be lost.
        result = lab.run("client", ["ping", "-c", "40", "-i", "0.2", "-W", "1", SERVER_TUNNEL], timeout=30)
        assert " 0% packet loss" in result.stdout, result.stdout
        assert wg.latest_handshake(client_public) > first
    except Exception:
        print(client.log())
        raise


def test_roaming_client_address_change_with_wireguard_go_server(
    lab: Lab, keys: dict[str, tuple[str, str]]
) -> None:
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    wg = wireguard_go_server(lab, server_private, client_public)
    DnsguardDaemon(
        lab, "client", "up", client_tunnel(client_private, server_public, ["100.64.0.0/24"])
    ).start()
    wait_ping(lab, "client", SERVER_TUNNEL)
    assert ADDRESSES.client_wan4 in wg.show()
    new_address = "198.18.1.3"
    move_uplink_address(lab, new_address)
    wait_ping(lab, "client", SERVER_TUNNEL, timeout=20)
    assert f"{new_address}:" in wg.show()


def test_roaming_wireguard_go_client_with_dnsguard_server(lab: Lab, keys: dict[str, tuple[str, str]]) -> None:
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    server = DnsguardDaemon(
        lab,
        "server",
        "server",
        server_tunnel(
            server_private, [{"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"]}]
        ),
    ).start()
    wireguard_go_client(lab, client_private, server_public, ["100.64.0.0/24"])
    wait_ping(lab, "client", SERVER_TUNNEL)
    move_uplink_address(lab, "198.18.1.4")
    try:
        # The server can only answer at the new address if it followed the authenticated packets there.
        wait_ping(lab, "client", SERVER_TUNNEL, timeout=20)
        lab.wait_for(
            lambda: "roamed to 198.18.1.4" in server.log(), timeout=5, what="the server to log roaming"
        )
    except Exception:
        print(server.log())
        raise


def test_server_reload_adds_and_removes_peers_without_dropping_others(
    keys: dict[str, tuple[str, str]],
) -> None:
    (server_private, server_public), (first_private, first_public) = keys["server"], keys["client"]
    second_private, second_public = genkey()
    with Lab(extra_client=True) as lab:
        peer_first = {"public-key": first_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"], "name": "first"}
        peer_second = {"public-key": second_public, "allowed-ips": ["100.64.0.3/32"], "name": "second"}
        config = server_tunnel(server_private, [peer_first])
        server = DnsguardDaemon(lab, "server", "server", config).start()
        wireguard_go_client(lab, first_private, server_public, ["100.64.0.0/24"], keepalive=1)
        wireguard_go_client(
            lab,
            second_private,
            server_public,
            ["100.64.0.0/24"],
            role="client2",
            address="100.64.0.3/24",
            keepalive=1,
        )
        wait_ping(lab, "client", SERVER_TUNNEL)
        second_ping = ["ping", "-c", "1", "-W", "1", SERVER_TUNNEL]
        assert lab.run("client2", second_ping, check=False).returncode != 0  # not a peer yet
        pinger = lab.popen("client", ["ping", "-i", "0.1", "-c", "60", SERVER_TUNNEL], log_name="ping-first")
        config["tunnel"]["peers"] = [peer_first, peer_second]  # type: ignore[index]
        server.reload()
        try:
            wait_ping(lab, "client2", SERVER_TUNNEL, timeout=15)
            config["tunnel"]["peers"] = [peer_first]  # type: ignore[index]
            server.reload()
            lab.wait_for(
                lambda: lab.run("client2", second_ping, check=False).returncode != 0,
                timeout=10,
                what="the removed peer to lose the tunnel",
            )
            pinger.wait(timeout=30)
            summary = Path(pinger.log_path).read_text()  # type: ignore[attr-defined]
            # The first peer's session survived both reloads: its pings never stopped.
            assert " 0% packet loss" in summary, summary
        except Exception:
            print(server.log())
            raise


def stock_peer_of_a_dnsguard_server(
    lab: Lab,
    keys: dict[str, tuple[str, str]],
    peer: dict[str, object],
    settings: dict[str, object],
    routes: tuple[str, ...],
) -> DnsguardDaemon:
    """A dnsguard server with DNS filtering (`settings` on top of an upstream and a list cache) and
    one wireguard-go peer (`peer`: more of its server-side entry) that routes `routes` through it."""
    (server_private, server_public), (client_private, client_public) = keys["server"], keys["client"]
    config = server_tunnel(
        server_private, [{"public-key": client_public, "allowed-ips": [f"{CLIENT_TUNNEL}/32"], **peer}]
    )
    config.update(
        {"upstreams": {"servers": [ADDRESSES.dns4]}, "loading": {"cache-dir": "/tmp/dnsguard-test-lists"}}
    )
    config.update(settings)
    server = DnsguardDaemon(lab, "server", "server", config).start()
    wireguard_go_client(lab, client_private, server_public, ["100.64.0.0/24", *routes], routes=routes)
    return server


def test_dnsguard_server_filters_dns_of_a_stock_wireguard_client(
    lab: Lab, keys: dict[str, tuple[str, str]]
) -> None:
    """A peer running plain wireguard-go gets its DNS filtered by the server, by the peer's group."""
    server = stock_peer_of_a_dnsguard_server(
        lab,
        keys,
        {"group": "phones"},
        {
            "lists": {
                "ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]},
                "adult": {"sources": [str(ROOT / "blocklists" / "adult.txt")]},
            },
            "groups": {"default": {"block": ["ads"]}, "phones": {"block": ["ads", "adult"]}},
            "blocking": {"doh-endpoints": [f"{ADDRESSES.http4}/32"]},
        },
        routes=("203.0.113.0/24", f"{ADDRESSES.http4}/32"),
    )
    try:
        wait_ping(lab, "client", SERVER_TUNNEL)
        # DNS= of a stock app points at the server's tunnel address; a hard-coded resolver is caught too.
        for resolver in (SERVER_TUNNEL, "203.0.113.53"):
            assert dig_answers(lab.dig("client", "www.doubleclick.net", resolver).stdout) == ["0.0.0.0"]
            assert dig_answers(lab.dig("client", "www.pornhub.com", resolver).stdout) == ["0.0.0.0"]
            assert dig_answers(lab.dig("client", "example.org", resolver).stdout) == [ADDRESSES.http4]
        # The DoH endpoint's port 443 is refused at once; other ports to it still work.
        doh = lab.run(
            "client", ["curl", "-sS", "--max-time", "3", f"https://{ADDRESSES.http4}/"], check=False
        )
        assert doh.returncode == 7, doh.stderr
        assert (
            lab.run("client", ["curl", "-sS", "--max-time", "5", f"http://{ADDRESSES.http4}/"]).returncode
            == 0
        )
    except Exception:
        print(server.log())
        raise


def test_dnsguard_server_firewall_lets_a_stock_peer_reach_only_what_dns_handed_out(
    lab: Lab, keys: dict[str, tuple[str, str]]
) -> None:
    """`firewall:` on the server: a wireguard-go peer's new connections need an address the server's
    resolver handed out; the tunnel's own prefix stays open."""
    server = stock_peer_of_a_dnsguard_server(
        lab,
        keys,
        {},
        {"firewall": {"enabled": True, "refuse-doh": False}},
        routes=(f"{ADDRESSES.http4}/32",),
    )
    url = f"http://{ADDRESSES.http4}/whoami"

    def curl() -> int:
        return lab.run(
            "client", ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", url], check=False
        ).returncode

    try:
        wait_ping(lab, "client", SERVER_TUNNEL)
        assert curl() == 7  # refused at once by the server (TCP reset), not a timeout
        assert dig_answers(lab.dig("client", "example.org", SERVER_TUNNEL).stdout) == [ADDRESSES.http4]
        assert curl() == 0
        assert ADDRESSES.http4 in lab.sh("server", "nft list set inet dnsguard_fw handed4")
    except Exception:
        print(server.log())
        raise
    server.stop()
    assert "dnsguard_fw" not in lab.sh("server", "nft list tables")
