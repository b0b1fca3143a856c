"""The whole product in the lab: dnsguard server, dnsguard client (gateway) and a LAN host behind it.

Used by `dnsguard demo`, the integration tests and the benchmarks, so they all exercise the same setup.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnsguard.config.shipped import shipped_path
from dnsguard.lab.netns import ADDRESSES, Lab
from dnsguard.lab.peers import DnsguardDaemon, WgPeer, WireguardGo, genkey, wait_ping

BLOCKLISTS = shipped_path("blocklists")
SERVER_TUNNEL4, CLIENT_TUNNEL4 = "100.64.0.1", "100.64.0.2"
SERVER_TUNNEL6, CLIENT_TUNNEL6 = "fd00::1", "fd00::2"
PORT = 51820
HARD_CODED_RESOLVER = "203.0.113.53"
"""An address no DNS server listens on: a client with it hard-coded only gets answers if intercepted."""


SERVER_ENDPOINT = f"{ADDRESSES.server_wan4}:{PORT}"


def server_tunnel(
    private_key: str,
    peers: list[dict[str, object]],
    *,
    addresses: tuple[str, ...] = (f"{SERVER_TUNNEL4}/24",),
    **extra: object,
) -> dict[str, object]:
    """A dnsguard server configuration's tunnel section on the lab's server address."""
    return {
        "tunnel": {
            "private-key": private_key,
            "listen-port": PORT,
            "address": list(addresses),
            "peers": peers,
            **extra,
        }
    }


def client_tunnel(
    private_key: str,
    server_public: str,
    allowed_ips: list[str],
    *,
    addresses: tuple[str, ...] = (f"{CLIENT_TUNNEL4}/32",),
    **extra: object,
) -> dict[str, object]:
    """A dnsguard client configuration's tunnel section pointing at the lab's server."""
    peer = {"public-key": server_public, "endpoint": SERVER_ENDPOINT, "allowed-ips": allowed_ips}
    return {"tunnel": {"private-key": private_key, "address": list(addresses), "peers": [peer], **extra}}


def wireguard_go_server(lab: Lab, private_key: str, client_public: str) -> WireguardGo:
    """wireguard-go as the server, with one peer at the client tunnel address."""
    return WireguardGo(
        lab,
        "server",
        private_key,
        [f"{SERVER_TUNNEL4}/24"],
        listen_port=PORT,
        peers=[WgPeer(client_public, [f"{CLIENT_TUNNEL4}/32"])],
    ).start()


def wireguard_go_client(
    lab: Lab,
    private_key: str,
    server_public: str,
    allowed_ips: list[str],
    *,
    role: str = "client",
    address: str = f"{CLIENT_TUNNEL4}/24",
    routes: tuple[str, ...] = (),
    keepalive: int = 0,
) -> WireguardGo:
    """wireguard-go as a client of the lab's server."""
    return WireguardGo(
        lab,
        role,
        private_key,
        [address],
        peers=[WgPeer(server_public, allowed_ips, endpoint=SERVER_ENDPOINT, persistent_keepalive=keepalive)],
        routes=list(routes),
    ).start()


@dataclass
class FullTunnel:
    lab: Lab
    server: DnsguardDaemon
    client: DnsguardDaemon


def client_config(
    private_key: str, server_public: str, *, lan: bool, extra: dict[str, object] | None = None
) -> dict[str, object]:
    lists_dir = BLOCKLISTS
    config: dict[str, object] = {
        "tunnel": {
            "private-key": private_key,
            "address": [f"{CLIENT_TUNNEL4}/32", f"{CLIENT_TUNNEL6}/128"],
            "dns": [ADDRESSES.dns4],
            "lan-interfaces": ["lan0"] if lan else [],
            "peers": [
                {
                    "public-key": server_public,
                    "endpoint": f"{ADDRESSES.server_wan4}:{PORT}",
                    "allowed-ips": ["0.0.0.0/0", "::/0"],
                    "persistent-keepalive": 25,
                }
            ],
        },
        "lists": {
            "ads": {"sources": [str(lists_dir / "ads-trackers.txt")]},
            "adult": {"sources": [str(lists_dir / "adult.txt")]},
        },
        "groups": {
            "default": {"block": ["ads"]},
            "lan-kids": {
                "clients": [f"{ADDRESSES.lan_host4}/32"],
                "block": ["ads", "adult"],
                "safe-search": True,
            },
        },
        "loading": {"cache-dir": "/tmp/dnsguard-lab-lists"},
    }
    config.update(extra or {})
    return config


def server_config(private_key: str, client_public: str, *, lan: bool) -> dict[str, object]:
    allowed = [f"{CLIENT_TUNNEL4}/32", f"{CLIENT_TUNNEL6}/128"]
    if lan:
        # Site-to-site: the gateway's LAN devices keep their own addresses inside the tunnel.
        allowed += ["192.0.2.0/24", "2001:db8:100::/64"]
    return {
        "tunnel": {
            "private-key": private_key,
            "listen-port": PORT,
            "address": [f"{SERVER_TUNNEL4}/24", f"{SERVER_TUNNEL6}/64"],
            "peers": [{"public-key": client_public, "allowed-ips": allowed, "name": "gateway"}],
        }
    }


def start_full_tunnel(
    lab: Lab, *, lan: bool = True, client_extra: dict[str, object] | None = None
) -> FullTunnel:
    """Start the server, then the client, and wait until the tunnel carries traffic."""
    (server_private, server_public), (client_private, client_public) = genkey(), genkey()
    server = DnsguardDaemon(
        lab, "server", "server", server_config(server_private, client_public, lan=lan)
    ).start()
    client = DnsguardDaemon(
        lab, "client", "up", client_config(client_private, server_public, lan=lan, extra=client_extra)
    ).start()
    wait_ping(lab, "client", SERVER_TUNNEL4, timeout=20)
    return FullTunnel(lab, server, client)
