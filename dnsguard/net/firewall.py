"""nftables: the client's kill switch and the server's NAT, each one table replaced atomically.

Rules are loaded with `nft -f -` in one transaction (delete + add in the same batch), so there
is never a moment with half a rule set, and removal is a single `delete table`.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from dnsguard.errors import NetworkError

KILL_SWITCH_TABLE = "dnsguard"
NAT_TABLE = "dnsguard_nat"


def _nft(script: str) -> None:
    if shutil.which("nft") is None:
        raise NetworkError("nft (nftables) is not installed")
    result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetworkError(f"nftables rejected the rule set: {result.stderr.strip()}")


def _table_exists(family: str, name: str) -> bool:
    result = subprocess.run(
        ["nft", "list", "table", family, name], capture_output=True, text=True, timeout=30
    )
    return result.returncode == 0


def delete_table(family: str, name: str) -> None:
    """Delete one of our tables if present."""
    if shutil.which("nft") is not None and _table_exists(family, name):
        _nft(f"delete table {family} {name}\n")


def _set(addresses: Sequence[str], version: int) -> str:
    nets = [str(ipaddress.ip_network(a, strict=False)) for a in addresses]
    nets = [n for n in nets if ipaddress.ip_network(n).version == version]
    return "{ " + ", ".join(nets) + " }" if nets else ""


@dataclass
class KillSwitch:
    """Nothing leaves except through the tunnel, the marked encrypted socket, or what is excluded.

    Loopback, DHCP and IPv6 neighbour discovery stay open so the uplink keeps working; DNS
    answers for blocked names come from dnsguard itself over the TUN, so they need no hole.
    """

    tunnel_interface: str
    fwmark: int
    exclude: list[str] = field(default_factory=list)
    lan_interfaces: list[str] = field(default_factory=list)

    def ruleset(self) -> str:
        lines = [
            f"table inet {KILL_SWITCH_TABLE} {{",
            "  chain output {",
            "    type filter hook output priority 0; policy drop;",
            '    oifname "lo" accept',
            f'    oifname "{self.tunnel_interface}" accept',
            f"    meta mark {self.fwmark} accept",
            "    udp sport 68 udp dport 67 accept",
            "    udp sport 546 udp dport 547 accept",
            "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
        ]
        for version, keyword in ((4, "ip daddr"), (6, "ip6 daddr")):
            excluded = _set(self.exclude, version)
            if excluded:
                lines.append(f"    {keyword} {excluded} accept")
        for interface in self.lan_interfaces:
            lines.append(f'    oifname "{interface}" accept')
        lines += ["    reject with icmpx admin-prohibited", "  }"]
        lines += [
            "  chain forward {",
            "    type filter hook forward priority 0; policy drop;",
            f'    oifname "{self.tunnel_interface}" tcp flags syn tcp option maxseg size set rt mtu',
            f'    oifname "{self.tunnel_interface}" accept',
            f'    iifname "{self.tunnel_interface}" ct state established,related accept',
        ]
        for version, keyword in ((4, "ip daddr"), (6, "ip6 daddr")):
            excluded = _set(self.exclude, version)
            if excluded:
                lines.append(f"    {keyword} {excluded} accept")
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        """Install (or atomically replace) the kill switch."""
        script = (
            f"add table inet {KILL_SWITCH_TABLE}\ndelete table inet {KILL_SWITCH_TABLE}\n" + self.ruleset()
        )
        _nft(script)

    @staticmethod
    def remove() -> None:
        delete_table("inet", KILL_SWITCH_TABLE)


@dataclass
class ServerNat:
    """Masquerade peers' traffic leaving the server, and clamp MSS to the tunnel's MTU."""

    tunnel_interface: str
    peer_prefixes: list[str]

    def ruleset(self) -> str:
        lines = [
            f"table inet {NAT_TABLE} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
        ]
        for version, keyword in ((4, "ip saddr"), (6, "ip6 saddr")):
            sources = _set(self.peer_prefixes, version)
            if sources:
                lines.append(f'    {keyword} {sources} oifname != "{self.tunnel_interface}" masquerade')
        lines += [
            "  }",
            "  chain forward {",
            "    type filter hook forward priority 0; policy accept;",
            "    tcp flags syn tcp option maxseg size set rt mtu",
            "  }",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        _nft(f"add table inet {NAT_TABLE}\ndelete table inet {NAT_TABLE}\n" + self.ruleset())

    @staticmethod
    def remove() -> None:
        delete_table("inet", NAT_TABLE)
