"""Which group a client belongs to: by IP address, CIDR (longest prefix wins) or MAC address.

A MAC address is known through the neighbour table, which changes under the policy (a device takes
an address another device had): `forget(address)` drops what was worked out for that address, and
the neighbour edge (dnsguard.net.neighbours) calls it through the daemon on every change.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

MacLookup = Callable[[str], str | None]
"""IP address -> MAC address (an in-memory neighbour map: it is called on the answer path) or None."""

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.IGNORECASE)


def is_mac(text: str) -> bool:
    """True for a MAC address written aa:bb:cc:dd:ee:ff or aa-bb-cc-dd-ee-ff."""
    return len(text) == 17 and _MAC_RE.match(text) is not None


class ClientGroups:
    """Maps client addresses to group names; the 'default' group takes everyone else."""

    def __init__(
        self,
        members: dict[str, list[str]],
        default: str | None = "default",
        mac_lookup: MacLookup | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.default = default
        self.mac_lookup = mac_lookup
        self._macs: dict[str, str] = {}
        # One dict per prefix length, longest first: a lookup is at most 33 (IPv4) or 129 probes,
        # and in practice a handful because only the lengths in use are kept.
        self._by_length: dict[int, list[tuple[int, dict[int, str]]]] = {4: [], 6: []}
        tables: dict[tuple[int, int], dict[int, str]] = {}
        for group, identifiers in members.items():
            for identifier in identifiers:
                if is_mac(identifier):
                    self._macs[identifier.lower().replace("-", ":")] = group
                    continue
                network = ipaddress.ip_network(identifier, strict=False)
                key = (network.version, network.prefixlen)
                tables.setdefault(key, {})[int(network.network_address)] = group
        for (version, length), table in sorted(tables.items(), key=lambda item: -item[0][1]):
            self._by_length[version].append((length, table))
        self._cache: dict[str, str | None] = {}
        self._cache_size = cache_size

    def group_of(self, address: str) -> str | None:
        """The group of a client address (cached; `forget(address)` when its neighbour entry changes)."""
        cached = self._cache.get(address, self)
        if cached is not self:
            return cached  # type: ignore[return-value]
        group = self._lookup(address)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[address] = group
        return group

    def _lookup(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return self.default
        value = int(ip)
        bits = 32 if ip.version == 4 else 128
        for length, table in self._by_length[ip.version]:
            group = table.get(value >> (bits - length) << (bits - length) if length else 0)
            if group is not None:
                return group
        if self._macs and self.mac_lookup is not None:
            mac = self.mac_lookup(address)
            if mac is not None:
                return self.group_of_mac(mac)
        return self.default

    def group_of_mac(self, mac: str) -> str | None:
        """The group a MAC address is listed in, else the default group."""
        return self._macs.get(mac.lower().replace("-", ":"), self.default)

    def forget(self, address: str | None = None) -> None:
        """Drop the cached lookup of `address` (its neighbour entry changed), or of every address."""
        if address is None:
            self._cache.clear()
        else:
            self._cache.pop(address, None)
