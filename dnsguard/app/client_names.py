"""Client names for the daemons: the name core fed by lease files, the neighbour table and PTR lookups.

`ClientDirectory.name_of(address)` is what the query log, the API and the status show next to an
address. It answers from memory at once; when nothing names an address and `client-names.reverse-lookup`
is set, it starts a PTR lookup in the background (rate-limited by the core), whose answer names the
address from then on. GET /api/clients lists every address a source names or that asked recently.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from dnsguard.config import Config
from dnsguard.errors import DnsguardError
from dnsguard.lifecycle.clock import boottime
from dnsguard.net.lease_files import LeaseFiles
from dnsguard.net.reverse_lookup import lookup_ptr
from dnsguard.policy.client_names import ClientName, ClientNames, ReverseNames, canonical_address, ptr_name
from dnsguard.policy.clients import MacLookup, is_mac
from dnsguard.policy.leases import LeaseParse

if TYPE_CHECKING:
    from dnsguard.app.operated import Operated

log = logging.getLogger("dnsguard.names")

MAX_SEEN: Final = 4096
"""Recently seen client addresses listed by /api/clients even when nothing names them."""

GroupOf = Callable[[str], str]
ReverseLookup = Callable[[str, str], Awaitable[tuple[str | None, int]]]
"""(server, address) -> (PTR name or None, TTL); NetworkError when nothing answers."""
Neighbours = Callable[[], list[str]]


def lease_files(config: Config) -> list[str]:
    """The lease files names are read from: the `dhcp:` server's own first, then `client-names`."""
    paths = [config.dhcp.lease_file] if config.dhcp is not None else []
    return list(dict.fromkeys(paths + list(config.client_names.lease_files)))


def needs_neighbours(config: Config) -> bool:
    """Whether names need the neighbour table: a configured MAC, or leases to match IPv6 addresses by."""
    return bool(lease_files(config)) or any(
        is_mac(address) for client in config.clients.values() for address in client.addresses
    )


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


class ClientDirectory:
    """The names of client addresses for one daemon; see the module docstring."""

    def __init__(
        self,
        config: Config,
        mac_lookup: MacLookup | None = None,
        neighbours: Neighbours | None = None,
        group_of: GroupOf | None = None,
        clock: Callable[[], float] = boottime,
        reverse_lookup: ReverseLookup = lookup_ptr,
    ) -> None:
        self.mac_lookup = mac_lookup
        self.neighbours = neighbours
        self.group_of = group_of
        self.clock = clock
        self.reverse_lookup = reverse_lookup
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._canonical: dict[str, str] = {}
        """Address as given -> canonical text ('' for what is not an address)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._leases: LeaseFiles | None = None
        self.reverse: ReverseNames | None = None
        self.reverse_server: str | None = None
        self.config = config
        self.names = self._build(config)

    def _build(self, config: Config) -> ClientNames:
        settings = config.client_names
        if settings.reverse_lookup is None:
            self.reverse = None
        elif self.reverse is None or self.reverse.rate != settings.reverse_lookup_rate:
            self.reverse = ReverseNames(rate=settings.reverse_lookup_rate)
        self.reverse_server = settings.reverse_lookup
        clients = {name: client.addresses for name, client in config.clients.items()}
        return ClientNames(clients, self.mac_lookup, self.reverse)

    # -- serving ------------------------------------------------------------------------------

    def lookup(self, address: str) -> ClientName:
        """The name of `address` now; may start a background PTR lookup for an unnamed one."""
        canonical = self._canonical.get(address)
        if canonical is None:
            # ipaddress costs microseconds a call; the answer path sees the same few addresses again.
            canonical = canonical_address(address) or ""
            if len(self._canonical) >= MAX_SEEN:
                self._canonical.clear()
            self._canonical[address] = canonical
        if not canonical:
            return ClientName()
        self._note(canonical)
        found = self.names.lookup(canonical)
        if not found.name and self.reverse is not None and self.reverse_server is not None:
            self._maybe_reverse(canonical)
        return found

    def name_of(self, address: str) -> str:
        """The name shown for a client address; empty when no source names it."""
        return self.lookup(address).name

    def _note(self, address: str) -> None:
        seen = self._seen
        if address in seen:
            seen.move_to_end(address)
            return
        seen[address] = None
        if len(seen) > MAX_SEEN:
            seen.popitem(last=False)

    def _maybe_reverse(self, address: str) -> None:
        reverse, server = self.reverse, self.reverse_server
        assert reverse is not None and server is not None
        ip = ipaddress.ip_address(address)
        if ip.is_loopback or ip.is_unspecified or not reverse.due(address, self.clock()):
            return
        try:
            task = asyncio.get_running_loop().create_task(self._reverse(reverse, server, address))
        except RuntimeError:  # no event loop (a tool outside the daemon): nothing is sent
            reverse.failed(address, self.clock())
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reverse(self, reverse: ReverseNames, server: str, address: str) -> None:
        try:
            name, ttl = await self.reverse_lookup(server, address)
        except DnsguardError as exc:
            log.debug("reverse lookup of %s: %s", address, exc)
            reverse.failed(address, self.clock())
            return
        reverse.answered(address, ptr_name(name) if name is not None else None, ttl, self.clock())

    # -- sources ------------------------------------------------------------------------------

    def _leases_read(self, path: str, parse: LeaseParse) -> None:
        self.names.set_leases(path, parse.leases, order=lease_files(self.config))

    def start(self) -> None:
        """Start reading the lease files (inside the event loop)."""
        self._start_leases(self.config)

    def _start_leases(self, config: Config) -> None:
        paths = lease_files(config)
        if paths:
            self._leases = LeaseFiles(
                paths, self._leases_read, interval=float(config.client_names.poll_interval)
            )
            self._leases.start()

    def reconfigure(self, config: Config, mac_lookup: MacLookup | None) -> None:
        """Take a reloaded configuration in one step: its configured names now, its lease files re-read."""
        if self._leases is not None:
            self._leases.cancel()
            self._leases = None
        self.config = config
        self.mac_lookup = mac_lookup
        names = self._build(config)
        names.adopt_leases(self.names, lease_files(config))
        self.names = names
        self._start_leases(config)

    async def close(self) -> None:
        if self._leases is not None:
            await self._leases.stop()
            self._leases = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- operations ---------------------------------------------------------------------------

    def snapshot(self, extra: Sequence[str] = ()) -> list[dict[str, str]]:
        """Every address a source names or that asked recently (plus `extra`), sorted by address."""
        names = self.names
        addresses: set[str] = set(self._seen)
        addresses.update(names.configured_addresses)
        addresses.update(lease.address for lease in names.leases())
        if self.reverse is not None:
            addresses.update(self.reverse.named())
        if self.neighbours is not None and self.mac_lookup is not None:
            macs = names.configured_macs | {lease.mac for lease in names.leases() if lease.mac}
            addresses.update(a for a in self.neighbours() if self.mac_lookup(a) in macs)
        for address in extra:
            canonical = canonical_address(address)
            if canonical is not None:
                addresses.add(canonical)
        entries = []
        for address in sorted(addresses, key=_sort_key):
            found = names.lookup(address)
            entries.append(
                {
                    "address": address,
                    "name": found.name,
                    "source": found.source,
                    "mac": found.mac,
                    "group": self.group_of(address) if self.group_of is not None else "",
                }
            )
        return entries

    def summary(self) -> dict[str, Any]:
        """For /api/status: how many client addresses are known, and how many each source names."""
        entries = self.snapshot()
        named: dict[str, int] = {"config": 0, "lease": 0, "ptr": 0}
        for entry in entries:
            if entry["source"]:
                named[entry["source"]] += 1
        return {"known": len(entries), "named": named}

    def lease_files_status(self) -> list[dict[str, Any]]:
        if self._leases is None:
            return []
        return [
            {
                "path": state.path,
                "format": state.format,
                "leases": state.leases,
                "errors": state.errors,
                "error": state.error,
            }
            for state in self._leases.files.values()
        ]


def clients_route(daemon: Operated) -> web.RouteDef:
    """GET /api/clients: every known client address with its name, name source, MAC and group."""

    async def clients(request: web.Request) -> web.Response:
        service = daemon.dns_service
        directory = getattr(service, "client_names", None) if service is not None else None
        if service is None or directory is None:
            return web.json_response({"error": "DNS filtering is not running in this daemon"}, status=409)
        recent = [entry.client for entry in service.resolver.recent_queries()] if service.resolver else []
        return web.json_response(
            {"clients": directory.snapshot(recent), "lease_files": directory.lease_files_status()}
        )

    return web.get("/api/clients", clients)
