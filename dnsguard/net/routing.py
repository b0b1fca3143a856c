"""Addresses, routes and policy rules for the tunnel interface (pyroute2, asyncio).

Full tunnel without a routing loop, as wg-quick does it: the encrypted socket carries an
fwmark; `not fwmark M -> table T` sends every other packet to a table whose routes point at
the tunnel; `main suppress_prefixlength 0` lets the main table's specific routes (the LAN,
the uplink's own subnet) win over the tunnel's default. Every change is undone by
`RoutingPlan.remove`, which is also run before setting up, so a crashed run leaves nothing
that the next one does not clear.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dnsguard.errors import NetworkError

FIB_RULE_INVERT = 0x2
RT_TABLE_MAIN = 254
RTN_THROW = 9
# Our rules sit just before the kernel's 'from all lookup main' (32766), as wg-quick's do.
PRIORITY_SUPPRESS_MAIN = 32760
PRIORITY_TUNNEL = 32761


@dataclass
class RoutingPlan:
    """What the tunnel needs from the routing system."""

    interface: str
    addresses: list[str]
    mtu: int
    table: int
    fwmark: int
    prefixes: list[str] = field(default_factory=lambda: ["0.0.0.0/0", "::/0"])
    """Destinations that go into the tunnel."""
    exclude: list[str] = field(default_factory=list)
    """Destinations that never go into the tunnel (e.g. the server's own address, a LAN)."""
    exclude_local: bool = True

    @property
    def families(self) -> set[int]:
        return {
            socket.AF_INET if ipaddress.ip_network(p, strict=False).version == 4 else socket.AF_INET6
            for p in self.prefixes
        }

    async def apply(self) -> None:
        """Bring the interface up with its addresses and install routes and rules."""
        await self.remove(keep_link=True)
        try:
            async with AsyncIPRoute() as ipr:
                index = await _link_index(ipr, self.interface)
                if index is None:
                    raise NetworkError(f"interface {self.interface} does not exist")
                await ipr.link("set", index=index, mtu=self.mtu, state="up")
                for address in self.addresses:
                    await add_address(ipr, index, address)
                for prefix in self.prefixes:
                    net = ipaddress.ip_network(prefix, strict=False)
                    await ipr.route("replace", dst=str(net), oif=index, table=self.table, family=_family(net))
                for prefix in self.exclude:
                    net = ipaddress.ip_network(prefix, strict=False)
                    if _family(net) in self.families:
                        await ipr.route(
                            "replace", dst=str(net), type=RTN_THROW, table=self.table, family=_family(net)
                        )
                for family in self.families:
                    if self.exclude_local:
                        await ipr.rule(
                            "add",
                            family=family,
                            table=RT_TABLE_MAIN,
                            priority=PRIORITY_SUPPRESS_MAIN,
                            suppress_prefixlen=0,
                        )
                    await ipr.rule(
                        "add",
                        family=family,
                        table=self.table,
                        priority=PRIORITY_TUNNEL,
                        fwmark=self.fwmark,
                        flags=FIB_RULE_INVERT,
                    )
        except NetlinkError as exc:
            raise NetworkError(f"routing setup for {self.interface} failed: {exc}") from exc
        # Replies to marked packets must pass reverse-path checks with the mark (as wg-quick sets).
        _sysctl("net/ipv4/conf/all/src_valid_mark", "1")

    async def remove(self, keep_link: bool = False) -> None:
        """Delete our rules and the routes of our table; optionally the interface too. Idempotent."""
        async with AsyncIPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for priority in (PRIORITY_SUPPRESS_MAIN, PRIORITY_TUNNEL):
                    while True:
                        try:
                            await ipr.rule("del", family=family, priority=priority)
                        except NetlinkError:
                            break
                try:
                    routes = [r async for r in await ipr.route("dump", table=self.table, family=family)]
                except NetlinkError:
                    routes = []
                for route in routes:
                    with contextlib.suppress(NetlinkError):
                        await ipr.route(
                            "del",
                            table=self.table,
                            family=family,
                            dst_len=route["dst_len"],
                            dst=route.get("RTA_DST"),
                            type=route["type"],
                        )
            if not keep_link:
                index = await _link_index(ipr, self.interface)
                if index is not None:
                    with contextlib.suppress(NetlinkError):
                        await ipr.link("del", index=index)


IFA_F_NODAD = 0x02


async def add_address(ipr: AsyncIPRoute, index: int, address: str) -> None:
    """Add an address; IPv6 without duplicate address detection, so it can be bound at once."""
    iface = ipaddress.ip_interface(address)
    extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
    await ipr.addr("replace", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)


async def _link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    indexes = await ipr.link_lookup(ifname=name)
    return int(indexes[0]) if indexes else None


def _family(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    try:
        # Containers mount /proc/sys read-only; a value the operator already set is not an error.
        if path.read_text().strip() == value:
            return
        path.write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from exc


def set_forwarding(enabled: bool = True) -> None:
    """Enable IPv4 and IPv6 forwarding in the current network namespace."""
    _sysctl("net/ipv4/ip_forward", "1" if enabled else "0")
    _sysctl("net/ipv6/conf/all/forwarding", "1" if enabled else "0")
