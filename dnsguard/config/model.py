"""The configuration model: typed dataclasses, one per YAML section, with defaults.

Keys are written in YAML with dashes (``safe-search``); underscores are accepted too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from dnsguard.config.loader import ByteSize, Duration
from dnsguard.errors import ConfigError

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BlockMode = Literal["null_ip", "nxdomain", "nodata", "refused", "custom_ip"]

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HHMM_RE = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")
_NAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?$"
)


def minutes_of_day(text: str, key: str) -> int:
    """Minutes since midnight from 'HH:MM' (24:00 allowed as the end of the day)."""
    match = _HHMM_RE.match(text.strip())
    if not match or (int(match.group(1)) == 24 and match.group(2) != "00"):
        raise ConfigError(f"{text!r} is not a time of day (HH:MM)", key=key)
    return int(match.group(1)) * 60 + int(match.group(2))


def parse_client_id(text: str, key: str) -> str:
    """Normalise a client identifier: an IP, a CIDR, or a MAC address."""
    value = text.strip().lower()
    if _MAC_RE.match(value.replace("-", ":")):
        return value.replace("-", ":")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address, a CIDR or a MAC address", key=key) from None


def check_ip(text: str, key: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address", key=key) from None


def check_name(text: str, key: str) -> None:
    if not _NAME_RE.match(text.strip().lower()):
        raise ConfigError(f"{text!r} is not a domain name", key=key)


@dataclass
class ListConfig:
    """A named blocklist (or allowlist) built from files, URLs or inline rules."""

    sources: list[str]
    """Paths (relative to the config file), http(s) URLs, or inline rules (text with a newline)."""
    allow: bool = False
    """True: the list's rules are exceptions that unblock names."""
    subdomains: bool | None = None
    """Whether plain-domain and hosts entries also cover subdomains (None: the format's default)."""
    refresh: Duration | None = None
    """Download interval for URL sources; None: the global lists.refresh."""
    description: str = ""

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("a list needs at least one source", key="sources")


@dataclass
class ScheduleConfig:
    """A weekly window during which extra lists are blocked (e.g. social media on school days)."""

    block: list[str]
    start: str
    end: str
    days: list[Weekday] = field(default_factory=lambda: list(WEEKDAYS))

    def validate(self) -> None:
        start = minutes_of_day(self.start, "start")
        end = minutes_of_day(self.end, "end")
        if start == end:
            raise ConfigError("start and end are the same time: the window would be empty", key="end")
        if not self.block:
            raise ConfigError("a schedule needs lists to block", key="block")

    @property
    def window(self) -> tuple[int, int]:
        """(start, end) in minutes since midnight; end < start means the window crosses midnight."""
        return minutes_of_day(self.start, "start"), minutes_of_day(self.end, "end")


@dataclass
class GroupConfig:
    """A group of clients with its own lists and options."""

    clients: list[str] = field(default_factory=list)
    """IP addresses, CIDRs and MAC addresses; the group named 'default' takes every other client."""
    block: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)
    schedules: list[ScheduleConfig] = field(default_factory=list)
    safe_search: bool = False
    filtering: bool = True
    """False: answer everything for this group (lists, schedules and safe search are skipped)."""
    block_mode: BlockMode | None = None

    def validate(self) -> None:
        self.clients = [parse_client_id(c, f"clients[{i}]") for i, c in enumerate(self.clients)]


@dataclass
class BlockingConfig:
    """How blocked names are answered, and the anti-bypass defaults."""

    mode: BlockMode = "null_ip"
    custom_ipv4: str = "0.0.0.0"
    custom_ipv6: str = "::"
    ttl: Duration = Duration(10)
    cname_check: bool = True
    """Block an answer when any CNAME target (or the answer's name) is blocked (CNAME cloaking)."""
    doh_canary: bool = True
    """Answer NXDOMAIN for use-application-dns.net so browsers keep using this resolver."""
    block_private_relay: bool = True
    """Answer NXDOMAIN for mask.icloud.com and mask-h2.icloud.com (iCloud Private Relay)."""
    extended_errors: bool = False
    """Add an RFC 8914 Extended DNS Error (Blocked) naming the list to blocked answers."""
    refuse_dot: bool = True
    """Tunnel daemons: refuse DNS over TLS (TCP 853) so clients fall back to plain DNS, which is filtered."""
    doh_endpoints: list[str] = field(default_factory=list)
    """Tunnel daemons: DNS-over-HTTPS server addresses whose TCP 443 is refused (browsers then fall back)."""

    def validate(self) -> None:
        for i, prefix in enumerate(self.doh_endpoints):
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{prefix!r} is not an address or prefix", key=f"doh-endpoints[{i}]"
                ) from None
        check_ip(self.custom_ipv4, "custom-ipv4")
        check_ip(self.custom_ipv6, "custom-ipv6")
        if ipaddress.ip_address(self.custom_ipv4).version != 4:
            raise ConfigError("custom-ipv4 must be an IPv4 address", key="custom-ipv4")
        if ipaddress.ip_address(self.custom_ipv6).version != 6:
            raise ConfigError("custom-ipv6 must be an IPv6 address", key="custom-ipv6")


@dataclass
class RewriteConfig:
    """A local answer: a name (or *.name) answered with addresses or a CNAME target."""

    name: str
    answer: list[str]
    ttl: Duration = Duration(300)

    def validate(self) -> None:
        check_name(self.name, "name")
        if not self.answer:
            raise ConfigError("a rewrite needs at least one answer", key="answer")
        kinds = set()
        for i, answer in enumerate(self.answer):
            try:
                ipaddress.ip_address(answer)
                kinds.add("ip")
            except ValueError:
                check_name(answer, f"answer[{i}]")
                kinds.add("name")
        if "name" in kinds and len(self.answer) > 1:
            raise ConfigError("a CNAME rewrite takes exactly one target name", key="answer")


@dataclass
class UpstreamsConfig:
    """Where allowed queries are forwarded."""

    servers: list[str] = field(default_factory=list)
    """e.g. 198.51.100.53, tcp:198.51.100.53, tls:dns.example#198.51.100.1, https://dns.example/dns-query"""
    strategy: Literal["strict", "random", "parallel_best"] = "parallel_best"
    timeout: Duration = Duration(2)
    conditional: dict[str, list[str]] = field(default_factory=dict)
    """Domain -> servers for that domain and its subdomains (e.g. the LAN's own zone)."""


@dataclass
class CacheConfig:
    """The answer cache."""

    enabled: bool = True
    max_entries: int = 100_000
    min_ttl: Duration = Duration(0)
    max_ttl: Duration = Duration(86400)
    max_negative_ttl: Duration = Duration(1800)
    serve_stale: bool = True
    """Answer from expired entries (RFC 8767) when every upstream fails."""
    stale_max_age: Duration = Duration(86400)
    prefetch: bool = True

    def validate(self) -> None:
        if self.max_entries < 0:
            raise ConfigError("must not be negative", key="max-entries")
        if self.min_ttl > self.max_ttl:
            raise ConfigError("min-ttl is larger than max-ttl", key="min-ttl")


@dataclass
class ListsLoadingConfig:
    """Downloading and refreshing list sources."""

    refresh: Duration = Duration(86400)
    cache_dir: str = "/var/cache/dnsguard/lists"
    timeout: Duration = Duration(30)
    max_size: ByteSize = ByteSize(64 * 1024 * 1024)
    min_ratio: float = 0.5
    """A download or list file with fewer than this fraction of the last good copy's rules is treated as
    truncated, and the last good copy stays (files: from 1000 rules on; 0 accepts any shrink)."""


CLIENT_NETWORK_KEYWORDS: tuple[str, ...] = ("loopback", "local-networks", "tunnel")
"""Words `allow-clients` accepts besides CIDRs; each daemon says what its local networks and tunnel are."""


def _check_networks(items: list[str], key: str, keywords: tuple[str, ...] = ()) -> None:
    for i, item in enumerate(items):
        if item in keywords:
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            words = f" or one of {', '.join(keywords)}" if keywords else ""
            raise ConfigError(f"{item!r} is not a CIDR{words}", key=f"{key}[{i}]") from None


@dataclass
class RateLimitConfig:
    """A token bucket per client; queries over it are dropped and counted, never answered."""

    queries_per_second: float = 200.0
    """Sustained rate per client (0 turns the limit off); far above what a household's devices do."""
    burst: int = 2000
    """Queries a quiet client may send at once (a page load asks for a few hundred names)."""
    exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients never rate-limited: by default the host's own programs."""
    remote_ipv4_prefix: int = 24
    """Clients of `allow-clients` CIDRs outside the local networks share a bucket per prefix."""
    remote_ipv6_prefix: int = 56

    def validate(self) -> None:
        if (
            not 0 <= self.queries_per_second <= 1_000_000
            or self.queries_per_second != self.queries_per_second
        ):
            raise ConfigError("must be 0..1000000", key="queries-per-second")
        if not 1 <= self.burst <= 1_000_000:
            raise ConfigError("must be 1..1000000", key="burst")
        if not 8 <= self.remote_ipv4_prefix <= 32:
            raise ConfigError("must be 8..32", key="remote-ipv4-prefix")
        if not 16 <= self.remote_ipv6_prefix <= 128:
            raise ConfigError("must be 16..128", key="remote-ipv6-prefix")
        _check_networks(self.exempt, "exempt")


@dataclass
class TcpLimitsConfig:
    """DNS over TCP (RFC 7766): connection slots and timeouts."""

    max_connections: int = 256
    max_per_client: int = 16
    idle_timeout: Duration = Duration(10)
    """Time a connection may take to send its next whole message (not reset by each byte)."""
    max_lifetime: Duration = Duration(120)
    """A connection is closed after this long, once its pending answers are sent."""

    def validate(self) -> None:
        if not 1 <= self.max_connections <= 65535:
            raise ConfigError("must be 1..65535", key="max-connections")
        if not 1 <= self.max_per_client <= self.max_connections:
            raise ConfigError("must be 1..max-connections", key="max-per-client")
        if not 0.1 <= self.idle_timeout <= 3600:
            raise ConfigError("must be 100ms..1h", key="idle-timeout")
        if not self.idle_timeout <= self.max_lifetime <= 86400:
            raise ConfigError("must be idle-timeout..1d", key="max-lifetime")


@dataclass
class SpecialUseConfig:
    """Names answered by the resolver itself, never forwarded (see dnsguard.policy.special).

    A zone listed in upstreams.conditional is forwarded to its servers instead.
    """

    local_answers: bool = True
    """localhost (loopback), NXDOMAIN for invalid, test, local, onion, home.arpa and wpad.<label>."""
    private_reverse: bool = True
    """NXDOMAIN for reverse lookups of private and special ranges (RFC 6303; Pi-hole's bogus-priv)."""
    single_label: bool = True
    """NXDOMAIN for address lookups of names without a dot (Pi-hole's domain-needed)."""


@dataclass
class ResolverConfig:
    """The resolver's own sockets (for `dnsguard resolve`, the LAN DNS of a gateway) and their limits."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:53"])
    allow_clients: list[str] = field(default_factory=lambda: list(CLIENT_NETWORK_KEYWORDS))
    """Who gets answers (others get nothing): CIDRs, `loopback`, `local-networks` (the prefixes of the
    host's interfaces for `resolve`, of `lan-interfaces` and the host's own addresses for `up`) and
    `tunnel` (the tunnel's addresses, and for `server` its peers' allowed IPs)."""
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    max_udp_size: int = 1232
    """Largest UDP reply, whatever size the client's EDNS allows (DNS Flag Day 2020); larger get TC."""
    max_upstream_per_client: int = 64
    """Queries of one client waiting for an upstream at once; more are dropped and counted."""
    tcp: TcpLimitsConfig = field(default_factory=TcpLimitsConfig)
    special_use: SpecialUseConfig = field(default_factory=SpecialUseConfig)

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

        for i, item in enumerate(self.listen):
            parse_hostport(item, 53, f"listen[{i}]")
        _check_networks(self.allow_clients, "allow-clients", CLIENT_NETWORK_KEYWORDS)
        if not 512 <= self.max_udp_size <= 4096:
            raise ConfigError("must be 512..4096", key="max-udp-size")
        if not 1 <= self.max_upstream_per_client <= 4096:
            raise ConfigError("must be 1..4096", key="max-upstream-per-client")


@dataclass
class PeerConfig:
    """A WireGuard peer (wg-quick [Peer])."""

    public_key: str
    allowed_ips: list[str] = field(default_factory=list)
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: int = 0
    name: str = ""
    group: str | None = None
    """Server side: the policy group whose filtering applies to this peer's DNS."""

    def validate(self) -> None:
        for i, prefix in enumerate(self.allowed_ips):
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ConfigError(f"{prefix!r} is not a prefix", key=f"allowed-ips[{i}]") from None
        if not 0 <= self.persistent_keepalive <= 65535:
            raise ConfigError("must be 0..65535 seconds", key="persistent-keepalive")


@dataclass
class ReconnectConfig:
    """How the client notices a lost tunnel and reconnects (see dnsguard.lifecycle)."""

    handshake_timeout: Duration = Duration(5)
    dead_peer_timeout: Duration = Duration(15)
    """After sending, no authenticated packet for this long starts a probe handshake."""
    probe_timeout: Duration = Duration(5)
    idle_probe_interval: Duration = Duration(0)
    """With no packet from the server for this long, probe even when idle (0: off)."""
    debounce: Duration = Duration(0.5)
    backoff_initial: Duration = Duration(1)
    backoff_max: Duration = Duration(30)
    give_up_after: Duration | None = None
    """Stop reconnecting after this long (None: never; the TUN and kill switch stay up meanwhile)."""


@dataclass
class TunnelConfig:
    """The WireGuard interface (wg-quick [Interface]) and its peers; or a wg-quick file."""

    private_key: str | None = None
    address: list[str] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int | None = None
    dns: list[str] = field(default_factory=list)
    peers: list[PeerConfig] = field(default_factory=list)
    wg_quick: str | None = None
    """Path of a wg-quick .conf that provides the interface and peers."""
    interface: str = "dg0"
    fwmark: int = 51820
    table: int = 51820
    kill_switch: bool = True
    exclude_local_networks: bool = True
    include: list[str] = field(default_factory=list)
    """Only these prefixes go into the tunnel (empty: everything, as AllowedIPs says)."""
    exclude: list[str] = field(default_factory=list)
    lan_interfaces: list[str] = field(default_factory=list)
    """Gateway mode: traffic entering on these interfaces is routed into the tunnel."""
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    rekey_after_time: Duration = Duration(120)
    """Session age at which the initiator rekeys; the protocol's 120 s (lower only to test rekeying)."""

    def validate(self) -> None:
        for i, address in enumerate(self.address):
            try:
                ipaddress.ip_interface(address)
            except ValueError:
                raise ConfigError(f"{address!r} is not an address with prefix", key=f"address[{i}]") from None
        for key, prefixes in (("include", self.include), ("exclude", self.exclude)):
            for i, prefix in enumerate(prefixes):
                try:
                    ipaddress.ip_network(prefix, strict=False)
                except ValueError:
                    raise ConfigError(f"{prefix!r} is not a prefix", key=f"{key}[{i}]") from None
        if self.mtu is not None and not 576 <= self.mtu <= 9000:
            raise ConfigError("must be 576..9000", key="mtu")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class MetricsConfig:
    """Prometheus exposition."""

    listen: str | None = None
    """host:port for /metrics; None: off."""

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

        if self.listen is not None:
            parse_hostport(self.listen, 9153, "listen", any_port=True)


@dataclass
class ApiConfig:
    """The HTTP API."""

    listen: str | None = "127.0.0.1:8053"
    """host:port; None: off."""
    token: str | None = None
    """Bearer token; required when listen is not a loopback address, checked on every request when set."""
    query_log_size: int = 1000

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

        if self.query_log_size < 0:
            raise ConfigError("must be 0 or more", key="query-log-size")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("use a token of at least 16 characters", key="token")
        if self.listen is not None:
            host, _ = parse_hostport(self.listen, 8053, "listen", any_port=True)
            if not is_loopback(host) and not self.token:
                raise ConfigError(
                    f"the API listens on {host}, which is not loopback: set api.token", key="token"
                )


@dataclass
class ReloadConfig:
    """When the daemon re-reads its configuration besides SIGHUP."""

    watch: bool = True
    """Reload when the configuration file or a local list file changes."""
    interval: Duration = Duration(2)
    """How often the files are checked."""

    def validate(self) -> None:
        if float(self.interval) <= 0:
            raise ConfigError("must be positive", key="interval")


@dataclass
class LoggingConfig:
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass
class Config:
    """A whole dnsguard configuration file."""

    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    upstreams: UpstreamsConfig = field(default_factory=UpstreamsConfig)
    lists: dict[str, ListConfig] = field(default_factory=dict)
    loading: ListsLoadingConfig = field(default_factory=ListsLoadingConfig)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    rewrites: list[RewriteConfig] = field(default_factory=list)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tunnel: TunnelConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    base_dir: str = field(default=".", init=False)
    """Directory of the file the configuration came from; relative list paths start there."""

    def validate(self) -> None:
        for group_name, group in self.groups.items():
            for kind, names in (("block", group.block), ("allow", group.allow)):
                for i, list_name in enumerate(names):
                    self._check_list(list_name, f"groups.{group_name}.{kind}[{i}]")
            for s, schedule in enumerate(group.schedules):
                for i, list_name in enumerate(schedule.block):
                    self._check_list(list_name, f"groups.{group_name}.schedules[{s}].block[{i}]")
        seen: dict[str, str] = {}
        for group_name, group in self.groups.items():
            for client in group.clients:
                if client in seen:
                    raise ConfigError(
                        f"client {client} is already in group {seen[client]!r}",
                        key=f"groups.{group_name}.clients",
                    )
                seen[client] = group_name

    def _check_list(self, name: str, key: str) -> None:
        if name not in self.lists:
            known = ", ".join(sorted(self.lists)) or "none defined"
            raise ConfigError(f"no list named {name!r} (lists: {known})", key=key)
