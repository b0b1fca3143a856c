"""The host's addresses and connected prefixes, read over netlink (for the resolver's allow list)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from dnsguard.errors import NetworkError

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _read_addresses() -> list[tuple[str, Interface]]:
    # pyroute2's synchronous IPRoute runs its own event loop, so this runs in a worker thread: the
    # daemon's loop may be uvloop, which cannot carry netlink sockets.
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
            found = []
            for message in ipr.get_addr():
                address = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
                if address is None:
                    continue
                interface = ipaddress.ip_interface(f"{address.split('%')[0]}/{message['prefixlen']}")
                found.append((names.get(message["index"]) or "", interface))
            return found
    except (OSError, NetlinkError, ValueError) as exc:
        raise NetworkError(f"cannot read the interface addresses: {exc}") from exc


async def _addresses() -> list[tuple[str, Interface]]:
    """(interface name, address with prefix) for every address of this network namespace."""
    return await asyncio.to_thread(_read_addresses)


async def connected_networks(interfaces: Sequence[str] | None = None) -> list[str]:
    """The prefixes of the named interfaces' addresses (every interface when None), as CIDRs.

    Link-local prefixes are included: a LAN device's own link-local source is as local as its
    global one.
    """
    seen: dict[str, None] = {}
    for name, interface in await _addresses():
        if interfaces is None or name in interfaces:
            seen[str(interface.network)] = None
    return list(seen)


async def host_addresses() -> list[str]:
    """Every address of the host as a single-address CIDR (its own queries come from one of them)."""
    seen: dict[str, None] = {}
    for _, interface in await _addresses():
        seen[str(ipaddress.ip_network(interface.ip))] = None
    return list(seen)
