"""Addresses, routes and policy rules for the tunnel interface (pyroute2, asyncio).

Full tunnel without a routing loop, as wg-quick does it: the encrypted socket carries an
fwmark; `not fwmark M -> table T` sends every other packet to a table whose routes point at
the tunnel; `main suppress_prefixlength 0` lets the main table's specific routes (the LAN,
the uplink's own subnet) win over the tunnel's default. Every change is undone by
the journal (net/journal.py): `apply` records each rule, route and sysctl before it adds or
sets it, and `undo` takes exactly those back, so a crashed run leaves nothing that the next
start does not clear, and nothing that was there before is touched. `RoutingPlan.remove` is
the blunt cleanup for `dnsguard down` when no state file is left.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dnsguard.errors import NetworkError
from dnsguard.net.netlink import route_socket

FIB_RULE_INVERT = 0x2
RT_TABLE_MAIN = 254
RTN_THROW = 9
# Our rules sit just before the kernel's 'from all lookup main' (32766), as wg-quick's do.
PRIORITY_SUPPRESS_MAIN = 32760
PRIORITY_TUNNEL = 32761
RTN_UNICAST = 1

Record = Callable[[dict[str, Any]], None]
"""Called with a description of a change before the change is made (the journal's `record`)."""


def _no_record(change: dict[str, Any]) -> None:
    return None


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

    async def apply(self, record: Record = _no_record) -> None:
        """Bring the interface up with its addresses and install routes and rules.

        Each route, rule and sysctl is passed to `record` before it is added or set. The interface
        and its addresses are not: the TUN is not persistent and takes them with it when we exit.
        """
        try:
            async with route_socket() as ipr:
                index = await _link_index(ipr, self.interface)
                if index is None:
                    raise NetworkError(f"interface {self.interface} does not exist")
                await ipr.link("set", index=index, mtu=self.mtu, state="up")
                for address in self.addresses:
                    await add_address(ipr, index, address)
                for prefix in self.prefixes:
                    net = ipaddress.ip_network(prefix, strict=False)
                    record(_route_change(net, self.table, RTN_UNICAST))
                    await ipr.route("replace", dst=str(net), oif=index, table=self.table, family=_family(net))
                for prefix in self.exclude:
                    net = ipaddress.ip_network(prefix, strict=False)
                    if _family(net) in self.families:
                        record(_route_change(net, self.table, RTN_THROW))
                        await ipr.route(
                            "replace", dst=str(net), type=RTN_THROW, table=self.table, family=_family(net)
                        )
                for family in sorted(self.families):
                    if self.exclude_local:
                        rule: dict[str, Any] = {
                            "family": family,
                            "table": RT_TABLE_MAIN,
                            "priority": PRIORITY_SUPPRESS_MAIN,
                            "suppress_prefixlen": 0,
                        }
                        record({"kind": "rule", **rule})
                        await _add_rule(ipr, rule)
                    rule = {
                        "family": family,
                        "table": self.table,
                        "priority": PRIORITY_TUNNEL,
                        "fwmark": self.fwmark,
                        "flags": FIB_RULE_INVERT,
                    }
                    record({"kind": "rule", **rule})
                    await _add_rule(ipr, rule)
        except (NetlinkError, OSError) as exc:
            raise NetworkError(f"routing setup for {self.interface} failed: {exc}") from exc
        # Replies to marked packets must pass reverse-path checks with the mark (as wg-quick sets).
        set_sysctl("net/ipv4/conf/all/src_valid_mark", "1", record)

    async def remove(self, keep_link: bool = False) -> None:
        """Delete our rules and the routes of our table; optionally the interface too. Idempotent."""
        try:
            await self._remove(keep_link)
        except (NetlinkError, OSError) as exc:
            raise NetworkError(f"routing removal for {self.interface} failed: {exc}") from exc

    async def _remove(self, keep_link: bool) -> None:
        async with route_socket() as ipr:
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


async def configure_interface(name: str, addresses: list[str], mtu: int, routes: list[str]) -> None:
    """Addresses, MTU and up; a route into the TUN for every peer prefix outside the interface subnets."""
    try:
        await _configure_interface(name, addresses, mtu, routes)
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"cannot configure {name}: {exc}") from exc


async def _configure_interface(name: str, addresses: list[str], mtu: int, routes: list[str]) -> None:
    async with route_socket() as ipr:
        indexes = await ipr.link_lookup(ifname=name)
        if not indexes:
            raise NetworkError(f"interface {name} does not exist")
        index = indexes[0]
        await ipr.link("set", index=index, mtu=mtu, state="up")
        subnets = []
        for address in addresses:
            subnets.append(ipaddress.ip_interface(address).network)
            await add_address(ipr, index, address)
        for prefix in routes:
            net = ipaddress.ip_network(prefix, strict=False)
            if any(net.version == s.version and net.subnet_of(s) for s in subnets):  # type: ignore[arg-type]
                continue
            try:
                await ipr.route("replace", dst=str(net), oif=index)
            except NetlinkError as exc:
                raise NetworkError(f"cannot route {net} into {name}: {exc}") from exc


IFA_F_NODAD = 0x02


async def add_address(ipr: AsyncIPRoute, index: int, address: str) -> None:
    """Add an address; IPv6 without duplicate address detection, so it can be bound at once."""
    iface = ipaddress.ip_interface(address)
    extra = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
    await ipr.addr("replace", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)


async def _add_rule(ipr: AsyncIPRoute, rule: dict[str, Any]) -> None:
    """Add a rule; the same rule already there (an earlier apply of this plan) is not an error."""
    try:
        await ipr.rule("add", **rule)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


async def _link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    indexes = await ipr.link_lookup(ifname=name)
    return int(indexes[0]) if indexes else None


def _family(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _route_change(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network, table: int, kind: int
) -> dict[str, Any]:
    return {"kind": "route", "family": _family(net), "dst": str(net), "table": table, "type": kind}


def set_sysctl(key: str, value: str, record: Record = _no_record) -> None:
    """Set a sysctl of the current network namespace, recording its previous value first."""
    path = Path("/proc/sys") / key
    try:
        previous = path.read_text().strip()
        # Containers mount /proc/sys read-only; a value the operator already set is not an error.
        if previous == value:
            return
        record({"kind": "sysctl", "key": key, "previous": previous})
        path.write_text(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {key.replace('/', '.')}={value}: {exc}") from exc


def set_forwarding(enabled: bool = True, record: Record = _no_record) -> None:
    """Enable IPv4 and IPv6 forwarding in the current network namespace."""
    set_sysctl("net/ipv4/ip_forward", "1" if enabled else "0", record)
    set_sysctl("net/ipv6/conf/all/forwarding", "1" if enabled else "0", record)


# Deleting what is already gone is success: undo also runs after a crash that happened between
# recording a change and making it, and routes through the TUN vanish with the TUN.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


async def undo(change: dict[str, Any]) -> None:
    """Take back one recorded rule, route or sysctl; raises NetworkError if it cannot be."""
    kind = change.get("kind")
    if kind == "sysctl":
        key, previous = str(change["key"]), str(change["previous"])
        try:
            (Path("/proc/sys") / key).write_text(previous)
        except OSError as exc:
            raise NetworkError(f"cannot restore {key.replace('/', '.')}={previous}: {exc}") from exc
        return
    attributes = {k: v for k, v in change.items() if k != "kind"}
    try:
        async with route_socket() as ipr:
            if kind == "rule":
                await ipr.rule("del", **attributes)
            elif kind == "route":
                await ipr.route("del", **attributes)
            else:
                raise NetworkError(f"unknown change {change!r} in the state file")
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise NetworkError(f"cannot undo {change}: {exc}") from exc
    except OSError as exc:
        raise NetworkError(f"cannot undo {change}: {exc}") from exc


@dataclass(frozen=True)
class LocalNetworks:
    """What 'exclude local networks' lets past the tunnel: the uplinks' own networks and gateways."""

    interfaces: tuple[str, ...]
    prefixes: tuple[str, ...]


LINK_LOCAL = ("169.254.0.0/16", "fe80::/10")


async def local_networks(tunnel_interface: str) -> LocalNetworks:
    """The uplinks (interfaces of the main table's default routes), their connected prefixes and gateways.

    Connected prefixes are the main table's routes on an uplink without a gateway (the kernel's
    routes for the addresses on the link); link-local prefixes are always local.
    """
    try:
        return await _local_networks(tunnel_interface)
    except (NetlinkError, OSError) as exc:
        raise NetworkError(f"cannot read the main routing table: {exc}") from exc


async def _local_networks(tunnel_interface: str) -> LocalNetworks:
    uplinks: set[int] = set()
    gateways: set[str] = set()
    connected: list[tuple[int, str]] = []
    async with route_socket() as ipr:
        names = {int(link["index"]): str(link.get("IFLA_IFNAME")) async for link in await ipr.link("dump")}
        for family in (socket.AF_INET, socket.AF_INET6):
            async for route in await ipr.route("dump", table=RT_TABLE_MAIN, family=family):
                if route.get("RTA_TABLE", RT_TABLE_MAIN) != RT_TABLE_MAIN or route["type"] != RTN_UNICAST:
                    continue
                oif = route.get("RTA_OIF")
                gateway = route.get("RTA_GATEWAY")
                destination = route.get("RTA_DST")
                if route["dst_len"] == 0:
                    if oif is not None:
                        uplinks.add(int(oif))
                    if gateway is not None:
                        gateways.add(str(ipaddress.ip_network(gateway)))
                elif gateway is None and oif is not None and destination is not None:
                    connected.append((int(oif), f"{destination}/{route['dst_len']}"))
    interfaces = sorted({names[i] for i in uplinks if i in names and names[i] != tunnel_interface})
    prefixes = {str(ipaddress.ip_network(p, strict=False)) for i, p in connected if i in uplinks}
    prefixes.update(gateways)
    prefixes.update(LINK_LOCAL)
    return LocalNetworks(tuple(interfaces), tuple(sorted(prefixes)))
