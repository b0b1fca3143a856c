"""Path changes from netlink: links, addresses and routes of the uplinks (not of the tunnel itself).

Every relevant event calls `on_change`; debouncing is the lifecycle's job, so this stays a thin
edge. Events about the tunnel interface, our own routing table, link-local and multicast noise
are ignored, as is anything while the monitor is paused (our own setup changes routes too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pyroute2.netlink.rtnl import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from dnsguard.net.netlink import route_socket

log = logging.getLogger("dnsguard.monitor")

GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
RT_TABLE_MAIN = 254


IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
LinkKey = tuple[int, str]


def link_key(message: Any) -> LinkKey:
    """What of a link decides whether it can carry packets: admin up, running, carrier, operstate.

    RTM_NEWLINK also reports changes that do not (promiscuous mode when tcpdump starts, MTU,
    addresses of other layers); comparing this key tells them apart.
    """
    flags = int(message.get("flags", 0) or 0) & (IFF_UP | IFF_RUNNING | IFF_LOWER_UP)
    operstate = message.get("IFLA_OPERSTATE") or message.get_attr("IFLA_OPERSTATE") or ""
    return flags, str(operstate)


def is_relevant(
    message: Any, tunnel_index: int | None, own_table: int, links: dict[int, LinkKey] | None = None
) -> str | None:
    """A short description of a path change, or None for events that do not move the uplink.

    `links` (index -> link_key) holds the last state seen of each link; with it, a link event that
    leaves that state as it was is not a path change.
    """
    event = message.get("event", "")
    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
        index = message.get("index")
        if index == tunnel_index:
            return None
        if links is not None:
            if event == "RTM_DELLINK":
                links.pop(index, None)
            else:
                key = link_key(message)
                if links.get(index) == key:
                    return None
                links[index] = key
        name = message.get("IFLA_IFNAME") or message.get_attr("IFLA_IFNAME")
        operstate = message.get("IFLA_OPERSTATE") or message.get_attr("IFLA_OPERSTATE")
        state = (
            (operstate or "").lower()
            or message.get("state")
            or ("up" if message.get("flags", 0) & IFF_UP else "down")
        )
        return f"link {name} {state}"
    if event in ("RTM_NEWADDR", "RTM_DELADDR"):
        if message.get("index") == tunnel_index or message.get("scope", 0) >= 253:
            return None  # link-local and host-scope addresses never carry the tunnel
        address = message.get("IFA_ADDRESS") or message.get_attr("IFA_ADDRESS")
        return f"address {address} {'added' if event == 'RTM_NEWADDR' else 'removed'}"
    if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        table = message.get("RTA_TABLE") or message.get("table")
        if table != RT_TABLE_MAIN or table == own_table:
            return None
        if message.get("dst_len", 0) != 0 or message.get("RTA_OIF") == tunnel_index:
            return None  # only default routes decide which path the encrypted packets take
        return f"default route {'added' if event == 'RTM_NEWROUTE' else 'removed'}"
    return None


class PathMonitor:
    """Watches netlink and reports uplink changes."""

    def __init__(self, on_change: Callable[[str], None], *, tunnel_index: int | None, own_table: int) -> None:
        self.on_change = on_change
        self.tunnel_index = tunnel_index
        self.own_table = own_table
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with route_socket() as ipr:
                    await ipr.bind(GROUPS)
                    links = {link.get("index"): link_key(link) async for link in await ipr.link("dump")}
                    async for message in ipr.get():
                        what = is_relevant(message, self.tunnel_index, self.own_table, links)
                        if what is not None:
                            log.info("path change: %s", what)
                            self.on_change(what)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # netlink socket errors: log, wait, watch again
                log.warning("netlink monitor failed (%s); restarting in 1 s", exc)
                await asyncio.sleep(1.0)
