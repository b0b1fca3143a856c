"""Who may ask the resolver, and how much: the checks a query passes before anything is parsed.

A DNS listener on a reachable address is a target: a client that floods it can starve everyone
else, and a spoofed source turns its answers into a flood at a victim. So every datagram and every
TCP message first passes `ClientAdmission.admit`, which costs one dict lookup for a client seen
before (the verdict and the bucket key are remembered per source address) and a token-bucket
update:

- Clients outside the allowed networks get nothing at all: an answer, even REFUSED, would make the
  resolver a reflector for spoofed sources.
- Each client has a token bucket (rate `queries_per_second`, depth `burst`). Clients of the local
  networks count per address; clients of other allowed networks count per /24 (IPv4) or /56 (IPv6),
  the blocks one subscriber usually holds, so one household cannot multiply its share by address
  hopping. Queries over the rate are dropped and counted, never answered (an answer is what a flood
  of spoofed queries wants).
- Each client may have `max_upstream_per_client` queries waiting for an upstream and
  `max_tcp_per_client` TCP connections; one client filling the shared in-flight slots would turn
  everyone else's cache misses into SERVFAIL.

Pure: addresses and `now` in, verdicts out; the listeners are the shell.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ADMIT: Final = 0
OUTSIDE: Final = 1
"""The source is outside every allowed network: drop without an answer."""
RATE_LIMITED: Final = 2

MAX_REMEMBERED_CLIENTS: Final = 65536
"""Source addresses whose verdict is remembered; a full table is cleared (a flood of spoofed sources
can only cost a re-evaluation, ~2 us each, never memory)."""
MAX_BUCKETS: Final = 65536
"""Token buckets kept; when full, buckets idle long enough to be full again are forgotten (a
forgotten bucket comes back full, so forgetting never changes a verdict)."""


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """Limits per client; the defaults are far above what a household's devices do.

    A page load asks for a few hundred names within a second or two (A, AAAA and HTTPS for each
    host), a busy device averages under one query a second; `burst` covers the first, the rate covers
    a device that is busy all day with room to spare.
    """

    queries_per_second: float = 200.0
    """Sustained queries per second per client (0: no rate limit)."""
    burst: int = 2000
    """Queries a client may send at once after being quiet."""
    remote_ipv4_prefix: int = 24
    """Clients outside the local networks share a bucket per IPv4 prefix of this length."""
    remote_ipv6_prefix: int = 56
    max_upstream_per_client: int = 64
    """Queries of one client waiting for an upstream at once; more are dropped and counted."""
    max_tcp_per_client: int = 16
    """Open TCP connections of one client; more are closed at once."""


@dataclass(slots=True)
class AdmissionStats:
    """What admission refused, as exported (dnsguard_dns_refused_total{reason})."""

    outside: int = 0
    rate_limited: int = 0
    upstream_limit: int = 0
    tcp_limit: int = 0
    tcp_full: int = 0
    """TCP connections closed because every slot was taken (counted by the listener)."""

    def as_reasons(self) -> dict[str, int]:
        return {
            "not_allowed": self.outside,
            "rate_limited": self.rate_limited,
            "upstream_limit": self.upstream_limit,
            "tcp_client_limit": self.tcp_limit,
            "tcp_full": self.tcp_full,
        }


REFUSAL_REASONS: Final = tuple(AdmissionStats().as_reasons())


_UNKNOWN: Final = "?"  # not an address, a prefix or "": a source whose verdict is not remembered yet


def _networks(items: Iterable[IPNetwork | str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


@dataclass
class ClientAdmission:
    """Allow list, per-client token buckets and per-client caps, for one daemon's listeners.

    `local` networks (loopback, the LAN, the tunnel) are allowed and rate-limited per address;
    `remote` networks are allowed and rate-limited per prefix; `exempt` networks skip the rate limit.
    """

    settings: AdmissionSettings = field(default_factory=AdmissionSettings)
    local: Sequence[IPNetwork | str] = ()
    remote: Sequence[IPNetwork | str] = ()
    exempt: Sequence[IPNetwork | str] = ()
    stats: AdmissionStats = field(default_factory=AdmissionStats)

    def __post_init__(self) -> None:
        self._local = _networks(self.local)
        self._remote = _networks(self.remote)
        self._exempt = _networks(self.exempt)
        # source address -> bucket key, "" for exempt, None for outside
        self._verdicts: dict[str, str | None] = {}
        self._buckets: dict[str, list[float]] = {}
        self._upstream: dict[str, int] = {}
        self._tcp: dict[str, int] = {}

    def set_networks(
        self,
        local: Sequence[IPNetwork | str],
        remote: Sequence[IPNetwork | str] | None = None,
        exempt: Sequence[IPNetwork | str] | None = None,
    ) -> None:
        """Replace the allowed networks (the addresses of the host changed, or a reload)."""
        self._local = _networks(local)
        if remote is not None:
            self._remote = _networks(remote)
        if exempt is not None:
            self._exempt = _networks(exempt)
        self._verdicts = {}

    @property
    def networks(self) -> tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]:
        """The local and remote networks in force."""
        return self._local, self._remote

    def key_of(self, address: str) -> str | None:
        """The client's bucket key: the address, its prefix, "" when exempt, None when not allowed."""
        key = self._verdicts.get(address, _UNKNOWN)
        if key != _UNKNOWN:
            return key
        key = self._classify(address)
        if len(self._verdicts) >= MAX_REMEMBERED_CLIENTS:
            self._verdicts.clear()
        self._verdicts[address] = key
        return key

    def _classify(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self._local):
            key = str(ip)
        elif any(ip in network for network in self._remote):
            prefix = self.settings.remote_ipv4_prefix if ip.version == 4 else self.settings.remote_ipv6_prefix
            key = str(ipaddress.ip_network((ip, prefix), strict=False))
        else:
            return None
        if any(ip in network for network in self._exempt):
            return ""
        return key

    def admit(self, address: str, now: float) -> str | None:
        """The client's key when this query may be answered; None (counted) when it must be dropped.

        `now` is any monotonic clock in seconds; the listeners read it once per batch of datagrams.
        """
        key = self._verdicts.get(address, _UNKNOWN)
        if key == _UNKNOWN:
            key = self.key_of(address)
        if key is None:
            self.stats.outside += 1
            return None
        if not key:
            return key
        rate = self.settings.queries_per_second
        if rate <= 0:
            return key
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full_buckets(now)
            self._buckets[key] = [self.settings.burst - 1.0, now]
            return key
        tokens = bucket[0] + (now - bucket[1]) * rate
        burst = float(self.settings.burst)
        if tokens > burst:
            tokens = burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.stats.rate_limited += 1
            return None
        bucket[0] = tokens - 1.0
        return key

    def verdict(self, address: str, now: float) -> int:
        """ADMIT, OUTSIDE or RATE_LIMITED, spelled out for tests and readers (the listeners call `admit`)."""
        outside, limited = self.stats.outside, self.stats.rate_limited
        if self.admit(address, now) is not None:
            return ADMIT
        if self.stats.outside > outside:
            return OUTSIDE
        assert self.stats.rate_limited > limited
        return RATE_LIMITED

    def _forget_full_buckets(self, now: float) -> None:
        rate = self.settings.queries_per_second
        refill = self.settings.burst / rate if rate > 0 else 0.0
        idle = [key for key, (_, last) in self._buckets.items() if now - last >= refill]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()  # every client is busy: all come back full, none is refused wrongly

    # -- per-client caps --------------------------------------------------------------------

    def begin_upstream(self, key: str) -> bool:
        """Take one of the client's upstream slots; False (counted) when it holds them all."""
        held = self._upstream.get(key, 0)
        if key and held >= self.settings.max_upstream_per_client:
            self.stats.upstream_limit += 1
            return False
        self._upstream[key] = held + 1
        return True

    def end_upstream(self, key: str) -> None:
        held = self._upstream.get(key, 0) - 1
        if held > 0:
            self._upstream[key] = held
        else:
            self._upstream.pop(key, None)

    def open_tcp(self, key: str) -> bool:
        """Count a new TCP connection of the client; False (counted) when it has too many."""
        held = self._tcp.get(key, 0)
        if key and held >= self.settings.max_tcp_per_client:
            self.stats.tcp_limit += 1
            return False
        self._tcp[key] = held + 1
        return True

    def close_tcp(self, key: str) -> None:
        held = self._tcp.get(key, 0) - 1
        if held > 0:
            self._tcp[key] = held
        else:
            self._tcp.pop(key, None)

    @property
    def upstream_in_flight(self) -> int:
        return sum(self._upstream.values())

    @property
    def tcp_open(self) -> int:
        return sum(self._tcp.values())
