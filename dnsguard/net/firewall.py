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
from typing import Any

from dnsguard.errors import NetworkError

KILL_SWITCH_TABLE = "dnsguard"
NAT_TABLE = "dnsguard_nat"
TABLE_FAMILY = "inet"


def table_change(name: str) -> dict[str, str]:
    """The journal entry for one of our tables, recorded before the table is first loaded."""
    return {"kind": "nft-table", "family": TABLE_FAMILY, "name": name}


def _nft(script: str) -> None:
    if shutil.which("nft") is None:
        raise NetworkError("nft (nftables) is not installed")
    try:
        result = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"nft (nftables) could not run: {exc}") from exc
    if result.returncode != 0:
        raise NetworkError(f"nftables rejected the rule set: {result.stderr.strip()}")


def _table_exists(family: str, name: str) -> bool:
    try:
        result = subprocess.run(
            ["nft", "list", "table", family, name], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"nft (nftables) could not run: {exc}") from exc
    return result.returncode == 0


def delete_table(family: str, name: str) -> None:
    """Delete one of our tables if present."""
    if shutil.which("nft") is not None and _table_exists(family, name):
        _nft(f"delete table {family} {name}\n")


def _set(addresses: Sequence[str], version: int) -> str:
    networks = [ipaddress.ip_network(a, strict=False) for a in addresses]
    # nft refuses overlapping intervals in one set (a gateway inside its connected prefix).
    same_version: list[Any] = [n for n in networks if n.version == version]
    nets = [str(n) for n in ipaddress.collapse_addresses(same_version)]
    return "{ " + ", ".join(nets) + " }" if nets else ""


@dataclass
class KillSwitch:
    """Nothing leaves except through the tunnel, the marked encrypted socket, or what is excluded.

    Loopback, DHCP and IPv6 neighbour discovery stay open so the uplink keeps working. DNS needs no
    hole of its own: the kernel redirects queries to the resolver's socket, the host's own are answered
    over loopback, LAN devices' by their (open) LAN interface, and upstream queries go through the tunnel.
    """

    tunnel_interface: str
    fwmark: int
    exclude: list[str] = field(default_factory=list)
    lan_interfaces: list[str] = field(default_factory=list)
    local_interfaces: list[str] = field(default_factory=list)
    """Uplinks whose own networks stay reachable ('exclude local networks'): the routing rule
    `main suppress_prefixlength 0` sends `local_prefixes` to them, so the kill switch lets exactly
    those through, and only by those interfaces."""
    local_prefixes: list[str] = field(default_factory=list)

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
        if self.local_interfaces:
            interfaces = "{ " + ", ".join(f'"{i}"' for i in self.local_interfaces) + " }"
            for version, keyword in ((4, "ip daddr"), (6, "ip6 daddr")):
                local = _set(self.local_prefixes, version)
                if local:
                    lines.append(f"    oifname {interfaces} {keyword} {local} accept")
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


DNS_TABLE = "dnsguard_dns"
RESOLVER_MARK_OFFSET = 1
"""The resolver's own upstream sockets carry fwmark + 1: still routed into the tunnel (only the
tunnel mark itself bypasses it) but recognisable, so their queries are not redirected back."""


@dataclass
class DnsRedirect:
    """Every DNS query (UDP and TCP port 53, whatever resolver address it names) goes to our resolver.

    Kernel-terminated with DNAT: locally generated queries in the nat output hook, queries from
    LAN devices (gateway) or from tunnel peers (server) in prerouting. The client address the
    resolver sees is the real one, so per-device policy works, and conntrack turns the replies
    back into answers from the address the client asked. DoT (TCP 853) is refused with a reset.
    """

    listen4: str | None
    listen6: str | None
    resolver_mark: int
    output_interface: str | None = None
    """Client: redirect local queries that would leave through this interface (the tunnel)."""
    input_interfaces: list[str] = field(default_factory=list)
    """Gateway LAN interfaces (client) or the tunnel interface (server): redirect forwarded queries."""
    port: int = 53
    refuse_dot: bool = True
    refused_addresses: list[str] = field(default_factory=list)
    """Known DoH endpoints: TCP 443 to them is refused."""

    def _redirects(self, match: str) -> list[str]:
        rules = []
        for proto in ("udp", "tcp"):
            if self.listen4:
                rules.append(
                    f"    {match} meta nfproto ipv4 {proto} dport 53 dnat ip to {self.listen4}:{self.port}"
                )
            if self.listen6:
                rules.append(
                    f"    {match} meta nfproto ipv6 {proto} dport 53 dnat ip6 to [{self.listen6}]:{self.port}"
                )
        return rules

    def _refusals(self, match: str) -> list[str]:
        rules = []
        if self.refuse_dot:
            rules.append(f"    {match} tcp dport 853 reject with tcp reset")
        for version, keyword in ((4, "ip daddr"), (6, "ip6 daddr")):
            addresses = _set(self.refused_addresses, version)
            if addresses:
                rules.append(f"    {match} {keyword} {addresses} tcp dport 443 reject with tcp reset")
        return rules

    def ruleset(self) -> str:
        own = f"meta mark != {self.resolver_mark}"
        lines = [f"table inet {DNS_TABLE} {{"]
        if self.output_interface:
            match = f'{own} oifname "{self.output_interface}"'
            lines += [
                "  chain output_nat {",
                "    type nat hook output priority -100; policy accept;",
                *self._redirects(match),
                "  }",
                "  chain output_filter {",
                "    type filter hook output priority -10; policy accept;",
                *self._refusals(match),
                "  }",
            ]
        if self.input_interfaces:
            interfaces = "{ " + ", ".join(f'"{i}"' for i in self.input_interfaces) + " }"
            match = f"iifname {interfaces}"
            lines += [
                "  chain prerouting_nat {",
                "    type nat hook prerouting priority dstnat; policy accept;",
                *self._redirects(match),
                "  }",
                "  chain forward_filter {",
                "    type filter hook forward priority -10; policy accept;",
                *self._refusals(match),
                "  }",
            ]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def apply(self) -> None:
        _nft(f"add table inet {DNS_TABLE}\ndelete table inet {DNS_TABLE}\n" + self.ruleset())

    @staticmethod
    def remove() -> None:
        delete_table("inet", DNS_TABLE)
