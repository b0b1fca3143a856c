"""Client MAC addresses from the kernel's neighbour table, kept in memory from netlink events.

Per-device policy by MAC asks "which MAC has this address now?" for every query it has not seen
from that address; that question is answered from `NeighbourTable`, a dict, so the answer path never
waits on a file, a subprocess or a socket. `NeighbourMonitor` keeps the table current: it dumps the
IPv4 and IPv6 neighbour tables once, then applies every RTM_NEWNEIGH and RTM_DELNEIGH as it comes,
and calls `on_change(address)` when an address gets another MAC, a first one, or loses its own, so
the policy moves that address to its new group at once (a child's tablet taking the address a
parent's laptop had must not keep the laptop's unfiltered group).

The netlink socket is read with the event loop's `add_reader` and parsed with pyroute2's rtnetlink
marshal, not through pyroute2's socket classes: the monitor sends its own dump requests and, when the
kernel drops events (ENOBUFS), reads the whole table again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE
from pyroute2.netlink.rtnl import RTM_GETNEIGH, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from dnsguard.errors import NetworkError
from dnsguard.net.netlink import READS_PER_WAKEUP

log = logging.getLogger("dnsguard.neighbours")

NUD_INCOMPLETE: Final = 0x01
NUD_FAILED: Final = 0x20
_NO_MAC: Final = NUD_INCOMPLETE | NUD_FAILED
"""States in which the entry's link-layer address is not (or no longer) the host's."""
_ZERO_MAC: Final = "00:00:00:00:00:00"
RECEIVE_BUFFER: Final = 1 << 20
"""A busy LAN's burst of neighbour events fits; an overrun (ENOBUFS) is repaired by a new dump."""
_DUMP_HEADER: Final = struct.Struct("=LHHLL")
_NDMSG: Final = struct.Struct("=BxxxiHBB")

OnChange = Callable[[str], None]


class NeighbourTable:
    """Address -> MAC, as the kernel's neighbour table last said; read on the answer path."""

    def __init__(self, on_change: OnChange | None = None) -> None:
        self._entries: dict[str, tuple[str, int]] = {}
        """address -> (MAC, interface index)."""
        self.on_change = on_change
        self.changes = 0
        """How many times an address got another MAC (or a first one, or lost it)."""

    def mac_of(self, address: str) -> str | None:
        """The MAC the kernel has for an IPv4 or IPv6 neighbour, or None."""
        entry = self._entries.get(address)
        if entry is None and "%" in address:  # a link-local source comes with its zone: fe80::1%lan0
            entry = self._entries.get(address.partition("%")[0])
        return entry[0] if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, address: str, mac: str, interface: int = 0) -> bool:
        """Record a usable entry; True (and on_change called) when the address's MAC is a new one."""
        mac = mac.lower()
        before = self._entries.get(address)
        self._entries[address] = (mac, interface)
        if before is not None and before[0] == mac:
            return False
        self._changed(address)
        return True

    def forget(self, address: str, interface: int | None = None) -> bool:
        """Drop an entry (deleted or failed); one on another interface than `interface` is kept."""
        before = self._entries.get(address)
        if before is None or (interface is not None and before[1] != interface):
            return False
        del self._entries[address]
        self._changed(address)
        return True

    def addresses(self) -> list[str]:
        return list(self._entries)

    def _changed(self, address: str) -> None:
        self.changes += 1
        if self.on_change is not None:
            self.on_change(address)


def neighbour_update(message: Any) -> tuple[str, str | None, int] | None:
    """(address, MAC or None when the entry is gone or unusable, interface) of a neighbour message.

    None for messages that are not about a neighbour's address (the dump's end, errors).
    """
    event = message.get("event")
    if event not in ("RTM_NEWNEIGH", "RTM_DELNEIGH"):
        return None
    address = message.get_attr("NDA_DST")
    if not address:
        return None
    interface = int(message.get("ifindex") or 0)
    mac = message.get_attr("NDA_LLADDR")
    state = int(message.get("state") or 0)
    if event == "RTM_DELNEIGH" or not mac or mac == _ZERO_MAC or state & _NO_MAC:
        return str(address), None, interface
    return str(address), str(mac).lower(), interface


def _header(message: Any, key: str) -> Any:
    try:
        return message["header"][key]
    except (KeyError, TypeError):
        return None


class NeighbourMonitor:
    """Feeds a NeighbourTable from netlink (see the module docstring); start() inside the event loop."""

    def __init__(self, table: NeighbourTable) -> None:
        self.table = table
        self._sock: socket.socket | None = None
        self._marshal = MarshalRtnl()
        self._sequence = 0
        self._dumping: set[str] | None = None
        """Addresses seen since the last dump request; None when no dump is under way."""
        self.resyncs = 0

    def start(self) -> None:
        """Open the netlink socket, ask for the current table, and apply events as they come."""
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
            )
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, RTMGRP_NEIGH))
        except OSError as exc:
            raise NetworkError(f"cannot watch the neighbour table (netlink): {exc.strerror or exc}") from None
        self._sock = sock
        self._request_dump()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    async def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def _request_dump(self) -> None:
        assert self._sock is not None
        self._sequence += 1
        # struct ndmsg with family AF_UNSPEC: the IPv4 and the IPv6 tables in one dump.
        body = _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _DUMP_HEADER.pack(
            _DUMP_HEADER.size + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, self._sequence, 0
        )
        self._dumping = set()
        try:
            self._sock.send(header + body)
        except OSError as exc:
            self._dumping = None
            log.warning("cannot ask for the neighbour table: %s", exc.strerror or exc)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(READS_PER_WAKEUP):  # what is left wakes the reader again
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # Events were lost: read the whole table again and drop what it no longer has.
                    self.resyncs += 1
                    log.info("neighbour events overran the socket buffer; reading the table again")
                    self._request_dump()
                    continue
                log.warning("neighbour monitor: %s", exc.strerror or exc)
                return
            self.handle(self._marshal.parse(data))

    def handle(self, messages: Iterable[Any]) -> None:
        """Apply parsed netlink messages (a dump's part or events) to the table."""
        for message in messages:
            if _header(message, "type") == NLMSG_DONE:
                self._dump_done(message)
                continue
            update = neighbour_update(message)
            if update is None:
                continue
            address, mac, interface = update
            if self._dumping is not None:
                self._dumping.add(address)
            if mac is None:
                self.table.forget(address, interface)
            else:
                self.table.learn(address, mac, interface)

    def _dump_done(self, message: Any) -> None:
        if self._dumping is None or _header(message, "sequence_number") != self._sequence:
            return
        seen, self._dumping = self._dumping, None
        for address in self.table.addresses():
            if address not in seen:
                self.table.forget(address)
