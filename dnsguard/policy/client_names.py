"""Names for client addresses, merged from the configuration, DHCP leases and reverse lookups.

Priority, highest first (the first source that names an address wins):
1. `clients:` in the configuration: an entry's IP address or CIDR (longest prefix first), then its MAC
   address, matched through the neighbour table (whichever address that MAC has now) or through the
   MAC of the address's DHCP lease. The owner wrote it; nothing a device announces overrides it.
2. DHCP leases: the host name of the address's lease; or, for an address without a lease (a device's
   IPv6 addresses beside its IPv4 lease), the host name of the lease of the same MAC address.
3. Reverse lookups (PTR) sent to the LAN's own resolver, cached by `ReverseNames`.

`ClientNames.lookup` is a handful of dict probes (a scan of the configured CIDRs, a few in a household)
and is called on the answer path; everything that does I/O (reading lease files, sending PTR queries)
happens in the edges, which hand their results in.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from dnsguard.policy.clients import MacLookup, is_mac
from dnsguard.policy.leases import Lease

NEGATIVE_TTL: Final = 300.0
"""Seconds before an address the LAN's resolver could not name is asked about again."""
MIN_TTL: Final = 60.0
"""A PTR answer is kept at least this long: a TTL of 0 must not turn each query into a lookup."""
MAX_TTL: Final = 86400.0
MAX_REVERSE_ENTRIES: Final = 4096
"""Addresses whose reverse name is remembered; the oldest is dropped first (a /20 of clients)."""
MAX_PENDING: Final = 32
"""Reverse lookups in flight at once."""
_PTR_NAME_RE = re.compile(
    r"^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


@dataclass(frozen=True, slots=True)
class ClientName:
    """A client address's name and where it came from ('config', 'lease', 'ptr'; '' when unnamed)."""

    name: str = ""
    source: str = ""
    mac: str = ""


def canonical_address(address: str) -> str | None:
    """An address as the sources key it: canonical text, without a zone (fe80::1%lan0 -> fe80::1)."""
    try:
        return str(ipaddress.ip_address(address.partition("%")[0]))
    except ValueError:
        return None


def ptr_name(text: str) -> str | None:
    """A name from a PTR answer, without the final dot, or None when it is not a host name."""
    name = text.rstrip(".")
    if not name or len(name) > 253 or not _PTR_NAME_RE.fullmatch(name):
        return None
    return name.lower()


class ReverseNames:
    """Names from PTR answers with their TTLs, and when to send the next question (rate-limited).

    The shell asks `due(address, now)` on the answer path; True means "send a PTR query now" and marks
    the address pending until `answered` or `failed`. Questions are a token bucket of `rate` per second
    (burst `burst`): a hundred devices appearing at once are named over a minute, not in one burst at
    the router. An expired name is still shown until its refresh is answered.
    """

    def __init__(self, rate: float = 2.0, burst: int = 10, max_entries: int = MAX_REVERSE_ENTRIES) -> None:
        if rate <= 0 or burst < 1 or max_entries < 1:
            raise ValueError("rate, burst and max_entries must be positive")
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """address -> (name or '' for none, expiry on the caller's clock)."""
        self._pending: set[str] = set()
        self._tokens = float(burst)
        self._filled_at: float | None = None
        self.queries = 0
        self.answers = 0
        self.failures = 0
        self.limited = 0

    def name(self, address: str) -> str:
        entry = self._entries.get(address)
        return entry[0] if entry is not None else ""

    def due(self, address: str, now: float) -> bool:
        """True when a PTR query for `address` should be sent now (then it is pending)."""
        entry = self._entries.get(address)
        if (entry is not None and now < entry[1]) or address in self._pending:
            return False
        if len(self._pending) >= MAX_PENDING or not self._take_token(now):
            self.limited += 1
            return False
        self._pending.add(address)
        self.queries += 1
        return True

    def _take_token(self, now: float) -> bool:
        if self._filled_at is not None:
            self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def answered(self, address: str, name: str | None, ttl: float, now: float) -> None:
        """The PTR answer for `address`: a name (None: no usable name, kept as negative)."""
        self._pending.discard(address)
        if name is None:
            self._store(address, "", now + NEGATIVE_TTL)
            self.failures += 1
            return
        self.answers += 1
        self._store(address, name, now + min(MAX_TTL, max(MIN_TTL, ttl)))

    def failed(self, address: str, now: float) -> None:
        """No answer (timeout, refused): the address is asked about again after NEGATIVE_TTL."""
        self.answered(address, None, 0, now)

    def _store(self, address: str, name: str, expiry: float) -> None:
        self._entries.pop(address, None)  # re-inserted: the oldest entry is the first dropped
        self._entries[address] = (name, expiry)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def named(self) -> dict[str, str]:
        """address -> name of every address with a remembered name."""
        return {address: name for address, (name, _) in self._entries.items() if name}


class ClientNames:
    """Merges the name sources (see the module docstring) into `lookup(address)`."""

    def __init__(
        self,
        clients: Mapping[str, Sequence[str]],
        mac_lookup: MacLookup | None = None,
        reverse: ReverseNames | None = None,
    ) -> None:
        """`clients`: name -> identifiers (IP, CIDR or MAC, normalised as `clients:` loads them)."""
        self.mac_lookup = mac_lookup
        self.reverse = reverse
        self._by_address: dict[str, str] = {}
        self._by_network: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        self._by_mac: dict[str, str] = {}
        for name, identifiers in clients.items():
            for identifier in identifiers:
                if is_mac(identifier):
                    self._by_mac[identifier.lower().replace("-", ":")] = name
                    continue
                network = ipaddress.ip_network(identifier, strict=False)
                if network.num_addresses == 1:
                    self._by_address[str(network.network_address)] = name
                else:
                    self._by_network.append((network, name))
        self._by_network.sort(key=lambda item: -item[0].prefixlen)
        self._lease_files: dict[str, Mapping[str, Lease]] = {}
        self._leases: dict[str, Lease] = {}
        self._lease_by_mac: dict[str, Lease] = {}

    @property
    def configured_addresses(self) -> list[str]:
        return list(self._by_address)

    @property
    def configured_macs(self) -> set[str]:
        return set(self._by_mac)

    def set_leases(self, source: str, leases: Mapping[str, Lease], order: Sequence[str] = ()) -> None:
        """Replace the leases read from `source`; `order` lists the sources, the first one winning."""
        if leases:
            self._lease_files[source] = leases
        else:
            self._lease_files.pop(source, None)
        ranked = [s for s in order if s in self._lease_files] + [
            s for s in self._lease_files if s not in order
        ]
        merged: dict[str, Lease] = {}
        by_mac: dict[str, Lease] = {}
        for name in reversed(ranked):  # the first source is applied last, so it wins
            for lease in self._lease_files[name].values():
                merged[lease.address] = lease
                if lease.mac and lease.hostname:
                    by_mac[lease.mac] = lease
        self._leases = merged
        self._lease_by_mac = by_mac

    def adopt_leases(self, other: ClientNames, order: Sequence[str]) -> None:
        """Take `other`'s leases of the sources in `order` (a reload keeps names until files are re-read)."""
        for source in order:
            if source in other._lease_files:
                self.set_leases(source, other._lease_files[source], order)

    def leases(self) -> Iterable[Lease]:
        return self._leases.values()

    def lookup(self, address: str) -> ClientName:
        """The name of a client address (canonical text, as `canonical_address` gives it)."""
        lease = self._leases.get(address)
        mac = (self.mac_lookup(address) if self.mac_lookup is not None else None) or (
            lease.mac if lease is not None else ""
        )
        name = self._by_address.get(address)
        if name is None and self._by_network:
            name = self._configured_network(address)
        if name is None and mac:
            name = self._by_mac.get(mac)
        if name is not None:
            return ClientName(name, "config", mac)
        if lease is not None and lease.hostname:
            return ClientName(lease.hostname, "lease", mac)
        if mac:
            same_device = self._lease_by_mac.get(mac)
            if same_device is not None:
                return ClientName(same_device.hostname, "lease", mac)
        if self.reverse is not None:
            reverse = self.reverse.name(address)
            if reverse:
                return ClientName(reverse, "ptr", mac)
        return ClientName("", "", mac)

    def _configured_network(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for network, name in self._by_network:
            if ip.version == network.version and ip in network:
                return name
        return None
