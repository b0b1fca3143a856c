"""The LAN sections: where client names come from (`client-names:`) and the LAN's DHCP server (`dhcp:`).

The `dhcp:` section becomes a dnsmasq configuration file (dnsguard.config.dnsmasq). dnsmasq reads that
file line by line and splits values at commas, so every value that reaches it is checked here against a
strict pattern: a client could otherwise send a host name such as "x\\ndhcp-script=/tmp/evil" through a
copy-pasted lease, and a configuration author a comma that shifts every later field.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from dnsguard.config.loader import Duration, Problems, Range
from dnsguard.errors import ConfigError

HOST_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
"""One DNS label (RFC 1123 §2.1): what dnsmasq hands out as a host name and puts in its lease file."""
DOMAIN_RE = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,15}$")
"""Linux interface names (IFNAMSIZ - 1 bytes), narrowed to what is safe on a dnsmasq line."""
_PATH_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f,]")
LEASE_TIME_RANGE = Range(120, 365 * 86400, "seconds; dnsmasq's shortest lease is 2 minutes")
DEFAULT_LEASE_FILE = "/var/lib/dnsguard-dhcp/dhcp.leases"
"""In the StateDirectory of deploy/systemd/dnsguard-dhcp.service."""


def check_address(text: str, key: str, version: int | None = None) -> str:
    """An IP address in its canonical form (of `version` when given)."""
    try:
        address = ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address", key=key) from None
    if version is not None and address.version != version:
        raise ConfigError(f"{text!r} is not an IPv{version} address", key=key)
    return str(address)


def check_path(text: str, key: str) -> str:
    """A file path that fits on one dnsmasq line: no control characters or commas."""
    if not text or _PATH_FORBIDDEN.search(text):
        raise ConfigError(f"{text!r} is not a usable file path (no commas or control characters)", key=key)
    return text


@dataclass
class ClientNamesConfig:
    """Where client names come from besides `clients:` (which wins over all of these)."""

    lease_files: list[str] = field(default_factory=list)
    """DHCP lease files: dnsmasq's, ISC dhcpd's dhcpd.leases or Kea's CSV (the format is recognised).
    The `dhcp:` section's own lease file is read without being listed here."""
    reverse_lookup: str | None = None
    """The LAN's own resolver (e.g. the router), asked for PTR names of clients nothing else names."""
    reverse_lookup_rate: Annotated[float, Range(0.1, 100, "PTR queries per second")] = 2.0
    """At most this many reverse lookups a second (a burst of new clients waits its turn)."""
    poll_interval: Annotated[Duration, Range(0.5, 3600, "seconds between looks at the lease files")] = (
        Duration(5)
    )
    """How often the lease files are checked for changes (a stat each); a new lease is named this soon."""

    def validate(self) -> None:
        problems = Problems()
        for i, path in enumerate(self.lease_files):
            with problems.check():
                check_path(path, f"lease-files[{i}]")
        if self.reverse_lookup is not None:
            with problems.check():
                self.reverse_lookup = check_address(self.reverse_lookup, "reverse-lookup")
        problems.raise_any()


@dataclass
class DhcpHostConfig:
    """A static lease: this MAC address always gets this address (and name)."""

    mac: str
    address: str | None = None
    name: str | None = None

    def validate(self) -> None:
        mac = self.mac.strip().lower().replace("-", ":")
        if not _MAC_RE.fullmatch(mac):
            raise ConfigError(f"{self.mac!r} is not a MAC address", key="mac")
        self.mac = mac
        if self.address is not None:
            self.address = check_address(self.address, "address", 4)
        if self.name is not None and not HOST_NAME_RE.fullmatch(self.name):
            raise ConfigError(
                f"{self.name!r} is not a host name (letters, digits and '-', at most 63)", key="name"
            )
        if self.address is None and self.name is None:
            raise ConfigError("a static lease needs an address or a name", key="address")


@dataclass
class DhcpIpv6Config:
    """IPv6 on the LAN: router advertisements that name dnsguard as the DNS server (RDNSS, RFC 8106)."""

    mode: Literal["slaac", "ra-stateless", "ra-only"] = "ra-stateless"
    """slaac: addresses from the advertised prefix; ra-stateless: the same, plus stateless DHCPv6 for
    the DNS server; ra-only: advertisements only (the other two answer DHCPv6 information requests)."""
    dns: list[str] = field(default_factory=list)
    """IPv6 addresses of dnsguard on the LAN, sent in RDNSS and DHCPv6: without them an IPv6 device
    asks whatever resolver its router advertises and goes around the filter."""

    def validate(self) -> None:
        if not self.dns:
            raise ConfigError("name dnsguard's IPv6 address on the LAN", key="dns")
        problems = Problems()
        checked = []
        for i, address in enumerate(self.dns):
            with problems.check():
                checked.append(check_address(address, f"dns[{i}]", 6))
        problems.raise_any()
        self.dns = checked


@dataclass
class DhcpConfig:
    """The LAN's DHCP server: dnsmasq in DHCP-only mode, its file generated by `dnsguard dhcp-config`."""

    interface: str
    range_start: str
    range_end: str
    dns: list[str]
    """dnsguard's IPv4 addresses on the LAN, handed out as the DNS servers."""
    router: str | None = None
    """The default gateway handed out; None: dnsmasq's own address on the interface."""
    netmask: str | None = None
    lease_time: Annotated[Duration, LEASE_TIME_RANGE] = Duration(12 * 3600)
    domain: str | None = None
    """The LAN's domain (e.g. home.arpa), sent to clients and appended to their names."""
    hosts: list[DhcpHostConfig] = field(default_factory=list)
    lease_file: str = DEFAULT_LEASE_FILE
    """Where dnsmasq keeps its leases; client names are read from it."""
    ipv6: DhcpIpv6Config | None = None

    def validate(self) -> None:
        problems = Problems()
        if not _INTERFACE_RE.fullmatch(self.interface):
            problems.errors.append(
                ConfigError(f"{self.interface!r} is not an interface name", key="interface")
            )
        with problems.check():
            self.range_start = check_address(self.range_start, "range-start", 4)
        with problems.check():
            self.range_end = check_address(self.range_end, "range-end", 4)
        if not self.dns:
            problems.errors.append(ConfigError("name dnsguard's address on the LAN", key="dns"))
        checked = []
        for i, address in enumerate(self.dns):
            with problems.check():
                checked.append(check_address(address, f"dns[{i}]", 4))
        self.dns = checked
        if self.router is not None:
            with problems.check():
                self.router = check_address(self.router, "router", 4)
        if self.netmask is not None:
            with problems.check():
                self.netmask = check_address(self.netmask, "netmask", 4)
        if self.domain is not None:
            domain = self.domain.strip().lower().rstrip(".")
            if len(domain) > 253 or not DOMAIN_RE.fullmatch(domain):
                problems.errors.append(ConfigError(f"{self.domain!r} is not a domain name", key="domain"))
            self.domain = domain
        with problems.check():
            check_path(self.lease_file, "lease-file")
        problems.raise_any()
        if ipaddress.IPv4Address(self.range_start) > ipaddress.IPv4Address(self.range_end):
            raise ConfigError("range-start is after range-end", key="range-start")
        seen: dict[str, int] = {}
        for i, host in enumerate(self.hosts):
            if host.mac in seen:
                raise ConfigError(f"the same MAC address as hosts[{seen[host.mac]}]", key=f"hosts[{i}].mac")
            seen[host.mac] = i
