"""Cryptokey routing: a longest-prefix-match table from IPv4/IPv6 prefixes to peers.

One dict per prefix length, probed from the longest length present down; a lookup costs one dict probe per
distinct prefix length in use (a client with 0.0.0.0/0 pays one), instead of a walk down a 32/128-level trie.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dnsguard.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Value = TypeVar("Value")


def parse_network(text: str | Network) -> Network:
    """Parse '10.0.0.0/8', 'fd00::1/128' or a bare address; host bits are cleared as `wg` does."""
    if isinstance(text, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return text
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"not an IP prefix: {text!r}") from None


class _Family(Generic[Value]):
    __slots__ = ("bits", "levels", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, Value]] = {}
        # (shift, table) pairs, longest prefix first: a lookup keys each table by address >> shift.
        self.levels: list[tuple[int, dict[int, Value]]] = []

    def rebuild_levels(self) -> None:
        self.levels = [
            (self.bits - length, table)
            for length, table in sorted(self.tables.items(), reverse=True)
            if table
        ]

    def lookup(self, address: int) -> Value | None:
        for shift, table in self.levels:
            value = table.get(address >> shift)
            if value is not None:
                return value
        return None


class AllowedIPs(Generic[Value]):
    """Maps prefixes to values (peers); a prefix belongs to the value that inserted it last.

    lookup_v4(address_int) and lookup_v6(address_int) are the longest-prefix matches on integers.
    """

    __slots__ = ("_v4", "_v6", "lookup_v4", "lookup_v6")

    def __init__(self) -> None:
        self._v4: _Family[Value] = _Family(32)
        self._v6: _Family[Value] = _Family(128)
        # Bound straight to the families: one call per lookup on the data path instead of two.
        self.lookup_v4: Callable[[int], Value | None] = self._v4.lookup
        self.lookup_v6: Callable[[int], Value | None] = self._v6.lookup

    def _family(self, network: Network) -> _Family[Value]:
        return self._v4 if network.version == 4 else self._v6

    def insert(self, network: Network, value: Value) -> Value | None:
        """Route `network` to `value`, taking it over; return the previous owner, if any."""
        family = self._family(network)
        table = family.tables.setdefault(network.prefixlen, {})
        fresh_level = not table
        key = int(network.network_address) >> (family.bits - network.prefixlen)
        previous_owner = table.get(key)
        table[key] = value
        if fresh_level:
            family.rebuild_levels()
        return previous_owner

    def remove(self, network: Network, value: Value) -> None:
        """Drop `network` if `value` owns it."""
        family = self._family(network)
        table = family.tables.get(network.prefixlen)
        key = int(network.network_address) >> (family.bits - network.prefixlen)
        if table is not None and table.get(key) is value:
            del table[key]
            if not table:
                family.rebuild_levels()

    def remove_value(self, value: Value) -> None:
        """Drop every prefix `value` owns."""
        for network in list(self.networks_of(value)):
            self.remove(network, value)

    def networks_of(self, value: Value) -> Iterator[Network]:
        """Every prefix routed to `value`."""
        for family, build in ((self._v4, ipaddress.IPv4Network), (self._v6, ipaddress.IPv6Network)):
            for length, table in family.tables.items():
                for key, owner in table.items():
                    if owner is value:
                        yield build((key << (family.bits - length), length))

    def lookup(self, address: bytes) -> Value | None:
        """The value owning the longest prefix containing a 4- or 16-byte address."""
        if len(address) == 4:
            return self._v4.lookup(int.from_bytes(address, "big"))
        if len(address) == 16:
            return self._v6.lookup(int.from_bytes(address, "big"))
        return None

    def sole_owner(self, version: int) -> Value | None:
        """The value routing every address of an IP version (its only prefix is /0), else None."""
        family = self._v4 if version == 4 else self._v6
        if len(family.levels) == 1 and family.levels[0][0] == family.bits and len(family.levels[0][1]) == 1:
            return next(iter(family.levels[0][1].values()))
        return None
