"""The configuration model: typed dataclasses, one per YAML section, with defaults.

Keys are written in YAML with dashes (``safe-search``); underscores are accepted too. Every number
carries its allowed range in its type (``Annotated[..., Range(low, high, why)]``), checked by the binder;
a section's ``validate`` checks what a range cannot say (keys decode, specs parse, names are names).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from dnsguard.config.addresses import is_ip
from dnsguard.config.lan import ClientNamesConfig, DhcpConfig
from dnsguard.config.loader import ByteSize, ConfigWarning, Duration, Problems, Range
from dnsguard.dns.names import DomainName, fold_name
from dnsguard.errors import ConfigError
from dnsguard.wireguard.keys import PublicKey

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BlockMode = Literal["null_ip", "nxdomain", "nodata", "refused", "custom_ip"]

DAY = 86400
DEFAULT_CACHE_DIR = "/var/cache/dnsguard/lists"
TTL_RANGE = Range(0, 2**31 - 1, "RFC 2181 §8: a TTL is 0..2^31-1 seconds")
Ttl = Annotated[Duration, TTL_RANGE]
REFRESH_RANGE = Range(60, 365 * DAY, "seconds: at most one download of a list a minute")
PORT_OR_ANY_RANGE = Range(0, 65535, "a UDP port; 0 lets the system choose one")
KEEPALIVE_RANGE = Range(0, 65535, "seconds, as in wg(8); 0 is off")
FWMARK_RANGE = Range(1, 2**32 - 2, "a 32-bit firewall mark, not 0; the resolver's own sockets use mark + 1")
TABLE_RANGE = Range(1, 2**32 - 1, "a routing table id other than 0")
RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}
MTU_RANGE = Range(
    576, 8920, "576: the IPv4 minimum (RFC 791); 8920: a 9000-byte jumbo frame less WireGuard's 80 bytes"
)
IPV6_MIN_MTU = 1280
"""RFC 8200 §5: a link that carries IPv6 has an MTU of at least 1280."""
REKEY_RANGE = Range(1, 120, "seconds; WireGuard rekeys at 120 s and rejects a session after 180 s")
EXAMPLE_PRIVATE_KEYS = frozenset(
    {
        "wOnjbB2bKRKdhMiNylKJUF0uldStVCIRY9KNut+ltF8=",  # config/laptop.yaml
        "oGZVcBpQbKPe+ohLAPxFJtPEzuNPBcSJnCutuqMAyGU=",  # config/server.yaml
    }
)
"""The private keys of the shipped examples: valid, so the examples load, and published, so a tunnel
using one is open to anyone; `check` and the daemons warn about them."""
IFNAMSIZ = 16
"""Linux interface names are at most IFNAMSIZ - 1 = 15 bytes."""

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
_CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
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


def is_client_name(text: str) -> bool:
    """A name from `clients:` rather than an address: no IP, CIDR or MAC address looks like one."""
    value = text.strip()
    if (
        not _CLIENT_NAME_RE.match(value)
        or value.replace(".", "").isdigit()
        or _MAC_RE.match(value.lower().replace("-", ":"))
    ):
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return True
    return False


def check_tags(tags: list[str], key: str) -> list[str]:
    """Client tags as `$ctag` writes them: lower-case words of letters, digits and '_'."""
    checked = []
    for i, tag in enumerate(tags):
        value = str(tag).strip().lower()
        if not _TAG_RE.match(value):
            raise ConfigError(f"{tag!r} is not a tag (such as device_phone or user_child)", key=f"{key}[{i}]")
        checked.append(value)
    return checked


def check_ip(text: str, key: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address", key=key) from None


def check_name(text: str, key: str) -> DomainName:
    """A domain name (or `*.name`), folded into the form queries are compared in."""
    if len(text.strip().rstrip(".")) > 253 or not _NAME_RE.match(text.strip().lower()):
        raise ConfigError(f"{text!r} is not a domain name", key=key)
    return fold_name(text)


def check_prefix(text: str, key: str) -> None:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not an address or prefix", key=key) from None


def check_interface_name(text: str, key: str) -> None:
    """A name Linux accepts for a network interface."""
    if not 0 < len(text.encode()) < IFNAMSIZ or text in (".", "..") or any(c in text for c in "/: \t\n"):
        raise ConfigError(
            f"{text!r} is not an interface name (1..{IFNAMSIZ - 1} bytes, no '/', ':' or spaces)", key=key
        )


def check_public_key(text: str, key: str) -> PublicKey:
    """A peer's public key, canonical; the one place a configured key is read."""
    from dnsguard.wireguard.keys import parse_public_key

    try:
        return parse_public_key(text)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None


def check_key(text: str, key: str, what: str) -> None:
    """A WireGuard key as `wg` accepts it (44 characters of canonical base64)."""
    from dnsguard.wireguard.keys import decode_key

    try:
        decode_key(text, what=what)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None


def check_upstream(text: str, key: str) -> None:
    """An upstream spec, parsed by the parser the daemon builds its transports with."""
    from dnsguard.dns.upstream_spec import parse_upstream

    parse_upstream(text, key=key)


@dataclass
class ListConfig:
    """A named blocklist (or allowlist) built from files, URLs or inline rules."""

    sources: list[str]
    """Paths (relative to the config file), http(s) URLs, or inline rules (text with a newline)."""
    allow: bool = False
    """True: the list's rules are exceptions that unblock names."""
    subdomains: bool | None = None
    """Whether plain-domain and hosts entries also cover subdomains (None: the format's default)."""
    refresh: Annotated[Duration, REFRESH_RANGE] | None = None
    """Download interval for URL sources; None: the global lists.refresh."""
    description: str = ""

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("a list needs at least one source", key="sources")


@dataclass
class ScheduleConfig:
    """A weekly window during which extra lists are blocked (e.g. social media on school days)."""

    start: str
    end: str
    block: list[str] = field(default_factory=list)
    blocked_services: list[str] = field(default_factory=list)
    """Service ids or categories of the services catalogue (see dnsguard.config.services)."""
    days: list[Weekday] = field(default_factory=lambda: list(WEEKDAYS))

    def validate(self) -> None:
        start = minutes_of_day(self.start, "start")
        end = minutes_of_day(self.end, "end")
        if start == end:
            raise ConfigError("start and end are the same time: the window would be empty", key="end")
        if not self.block and not self.blocked_services:
            raise ConfigError("a schedule needs lists or services to block", key="block")

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
    blocked_services: list[str] = field(default_factory=list)
    """Service ids or categories (youtube, games) of the services catalogue, blocked like lists."""
    schedules: list[ScheduleConfig] = field(default_factory=list)
    safe_search: bool = False
    filtering: bool = True
    """False: answer everything for this group (lists, schedules and safe search are skipped)."""
    block_mode: BlockMode | None = None
    tags: list[str] = field(default_factory=list)
    """Tags every client of the group carries, for `$ctag` rules (device_phone, user_child...)."""

    def validate(self) -> None:
        self.tags = check_tags(self.tags, "tags")
        problems = Problems()
        clients = []
        for i, client in enumerate(self.clients):
            with problems.check():
                if is_client_name(client):
                    clients.append(client.strip())  # a name from `clients:`; Config.validate expands it
                else:
                    clients.append(parse_client_id(client, f"clients[{i}]"))
        problems.raise_any()
        self.clients = clients


@dataclass
class ClientConfig:
    """A known device: its name, shown wherever it appears, and the tags `$ctag` rules match."""

    addresses: list[str] = field(default_factory=list)
    """IP addresses, CIDRs and MAC addresses of the device."""
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        self.tags = check_tags(self.tags, "tags")
        problems = Problems()
        addresses = []
        for i, address in enumerate(self.addresses):
            with problems.check():
                addresses.append(parse_client_id(address, f"addresses[{i}]"))
        problems.raise_any()
        self.addresses = addresses


@dataclass
class BlockingConfig:
    """How blocked names are answered, and the anti-bypass defaults."""

    mode: BlockMode = "null_ip"
    custom_ipv4: str = "0.0.0.0"
    custom_ipv6: str = "::"
    ttl: Ttl = Duration(10)
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
        problems = Problems()
        for i, prefix in enumerate(self.doh_endpoints):
            with problems.check():
                check_prefix(prefix, f"doh-endpoints[{i}]")
        problems.raise_any()
        check_ip(self.custom_ipv4, "custom-ipv4")
        check_ip(self.custom_ipv6, "custom-ipv6")
        if ipaddress.ip_address(self.custom_ipv4).version != 4:
            raise ConfigError("custom-ipv4 must be an IPv4 address", key="custom-ipv4")
        if ipaddress.ip_address(self.custom_ipv6).version != 6:
            raise ConfigError("custom-ipv6 must be an IPv6 address", key="custom-ipv6")


FirewallMode = Literal["enforce", "learn"]
GRACE_RANGE = Range(0, DAY, "seconds added to an answer's TTL before its addresses are refused again")


@dataclass
class FirewallConfig:
    """New connections only to addresses a DNS answer handed out (see docs): `up` for the host and its
    LAN, `server` for its peers, `resolve` for what leaves `interface`."""

    enabled: bool = False
    mode: FirewallMode = "enforce"
    """enforce: refuse the connection; learn: only count what enforce would refuse."""
    grace: Annotated[Duration, GRACE_RANGE] = Duration(300)
    """Added to the TTL: how long an address stays open after the answer that handed it out expires."""
    groups: list[str] = field(default_factory=lambda: ["all"])
    """The groups whose clients are filtered, or [all]; the gateway's own traffic counts as `default`."""
    allow: list[str] = field(default_factory=list)
    """Addresses and prefixes always reachable (besides the local networks, which never pass the tunnel)."""
    interface: str | None = None
    """`dnsguard resolve` only: the interface (the uplink) whose new connections are filtered; `up` filters
    what leaves through its tunnel."""
    refuse_doh: bool = True
    """Refuse the known DoH endpoints (`doh-lists` and blocking.doh-endpoints) even after a lookup handed
    them out."""
    doh_lists: list[str] | None = None
    """Files of DoH endpoint addresses: paths (relative to the config file), http(s) URLs refreshed like
    the blocklists, or inline text; None: the shipped blocklists/doh-resolvers.txt."""

    def validate(self) -> None:
        problems = Problems()
        for i, prefix in enumerate(self.allow):
            with problems.check():
                check_prefix(prefix, f"allow[{i}]")
        problems.raise_any()
        if not self.groups:
            raise ConfigError("name the filtered groups, or [all]", key="groups")
        if self.interface is not None:
            check_interface_name(self.interface, "interface")
        if "all" in self.groups and len(self.groups) > 1:
            raise ConfigError("`all` already names every group", key="groups")

    @property
    def all_groups(self) -> bool:
        return "all" in self.groups


@dataclass
class RewriteConfig:
    """A local answer: a name (or *.name) answered with addresses or a CNAME target."""

    name: DomainName
    answer: list[str]
    """Addresses, or one CNAME target (a DomainName once validated)."""
    ttl: Ttl = Duration(300)

    def validate(self) -> None:
        self.name = check_name(self.name, "name")
        if not self.answer:
            raise ConfigError("a rewrite needs at least one answer", key="answer")
        kinds = set()
        for i, answer in enumerate(self.answer):
            try:
                ipaddress.ip_address(answer)
                kinds.add("ip")
            except ValueError:
                self.answer[i] = check_name(answer, f"answer[{i}]")
                kinds.add("name")
        if "name" in kinds and len(self.answer) > 1:
            raise ConfigError("a CNAME rewrite takes exactly one target name", key="answer")


@dataclass
class UpstreamsConfig:
    """Where allowed queries are forwarded."""

    servers: list[str] = field(default_factory=list)
    """e.g. 198.51.100.53, tcp:198.51.100.53, tls:dns.example#198.51.100.1, https://dns.example/dns-query"""
    strategy: Literal["strict", "random", "parallel_best"] = "parallel_best"
    timeout: Annotated[Duration, Range(0.01, 60, "seconds; a DNS client gives up within a few")] = Duration(2)
    conditional: dict[DomainName, list[str]] = field(default_factory=dict)
    """Domain -> servers for that domain and its subdomains (e.g. the LAN's own zone)."""

    def validate(self) -> None:
        problems = Problems()
        for i, server in enumerate(self.servers):
            with problems.check():
                check_upstream(server, f"servers[{i}]")
        conditional: dict[DomainName, list[str]] = {}
        for zone, servers in self.conditional.items():
            with problems.check():
                conditional[check_name(zone, f"conditional.{zone}")] = servers
            if not servers:
                problems.errors.append(ConfigError("a zone needs a server", key=f"conditional.{zone}"))
            for i, server in enumerate(servers):
                with problems.check():
                    check_upstream(server, f"conditional.{zone}[{i}]")
        problems.raise_any()
        self.conditional = conditional


@dataclass
class ServicesConfig:
    """The catalogue of blocked services that groups name (see dnsguard.config.services)."""

    catalogue: str | None = None
    """Directory of service lists (<id>.txt), relative to this file; None: the one shipped with dnsguard."""


@dataclass
class CacheConfig:
    """The answer cache."""

    enabled: bool = True
    max_entries: Annotated[
        int, Range(0, 10_000_000, "0 turns the cache off; each entry is a whole reply")
    ] = 10_000
    """Answers kept (Pi-hole's default). An entry costs about 0.9 KB, a little more once asked again
    (its last reply is kept whole: about 0.2 KB for a two-address answer), so a client asking for
    distinct names fills at most ~9 MB; a household's working set is a few thousand names."""
    min_ttl: Ttl = Duration(0)
    max_ttl: Ttl = Duration(86400)
    max_negative_ttl: Ttl = Duration(1800)
    serve_stale: bool = True
    """Answer from expired entries (RFC 8767) when every upstream fails."""
    stale_max_age: Ttl = Duration(86400)
    prefetch: bool = True

    def validate(self) -> None:
        if self.min_ttl > self.max_ttl:
            raise ConfigError("min-ttl is larger than max-ttl", key="min-ttl")


@dataclass
class ListsLoadingConfig:
    """Downloading and refreshing list sources."""

    refresh: Annotated[Duration, REFRESH_RANGE] = Duration(DAY)
    cache_dir: str = field(default_factory=lambda: os.environ.get("DNSGUARD_CACHE_DIR", DEFAULT_CACHE_DIR))
    """Downloaded copies and compiled lists; DNSGUARD_CACHE_DIR moves the default (tests, a user's runs)."""
    timeout: Annotated[Duration, Range(1, 3600, "seconds for one download")] = Duration(30)
    max_size: Annotated[ByteSize, Range(1024, 4 * 1024**3, "bytes of one list; 1K..4G")] = ByteSize(
        64 * 1024 * 1024
    )
    min_ratio: Annotated[float, Range(0, 1, "a fraction")] = 0.5
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

    queries_per_second: Annotated[float, Range(0, 1_000_000, "queries a second; 0 turns the limit off")] = (
        200.0
    )
    """Sustained rate per client; far above what a household's devices do."""
    burst: Annotated[int, Range(1, 1_000_000, "queries")] = 2000
    """Queries a quiet client may send at once (a page load asks for a few hundred names)."""
    exempt: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Clients never rate-limited: by default the host's own programs."""
    remote_ipv4_prefix: Annotated[int, Range(8, 32, "an IPv4 prefix length")] = 24
    """Clients of `allow-clients` CIDRs outside the local networks share a bucket per prefix."""
    remote_ipv6_prefix: Annotated[int, Range(16, 128, "an IPv6 prefix length")] = 56

    def validate(self) -> None:
        _check_networks(self.exempt, "exempt")


@dataclass
class TcpLimitsConfig:
    """DNS over TCP (RFC 7766): connection slots and timeouts."""

    max_connections: Annotated[int, Range(1, 65535, "connections")] = 256
    max_per_client: Annotated[int, Range(1, 65535, "connections, at most max-connections")] = 16
    idle_timeout: Annotated[Duration, Range(0.1, 3600, "seconds")] = Duration(10)
    """Time a connection may take to send its next whole message (not reset by each byte)."""
    max_lifetime: Annotated[Duration, Range(0.1, DAY, "seconds, at least idle-timeout")] = Duration(120)
    """A connection is closed after this long, once its pending answers are sent."""

    def validate(self) -> None:
        if self.max_per_client > self.max_connections:
            raise ConfigError("must be at most max-connections", key="max-per-client")
        if self.max_lifetime < self.idle_timeout:
            raise ConfigError("must be at least idle-timeout", key="max-lifetime")


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
    max_udp_size: Annotated[int, Range(512, 4096, "bytes; 512 is DNS's own minimum")] = 1232
    """Largest UDP reply, whatever size the client's EDNS allows (DNS Flag Day 2020); larger get TC."""
    max_upstream_per_client: Annotated[int, Range(1, 4096, "queries")] = 64
    """Queries of one client waiting for an upstream at once; more are dropped and counted."""
    tcp: TcpLimitsConfig = field(default_factory=TcpLimitsConfig)
    special_use: SpecialUseConfig = field(default_factory=SpecialUseConfig)

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

        for i, item in enumerate(self.listen):
            parse_hostport(item, 53, f"listen[{i}]")
        _check_networks(self.allow_clients, "allow-clients", CLIENT_NETWORK_KEYWORDS)


@dataclass
class PeerConfig:
    """A WireGuard peer (wg-quick [Peer])."""

    public_key: PublicKey
    allowed_ips: list[str] = field(default_factory=list)
    endpoint: str | None = None
    preshared_key: str | None = None
    persistent_keepalive: Annotated[int, KEEPALIVE_RANGE] = 0
    name: str = ""
    group: str | None = None
    """Server side: the policy group whose filtering applies to this peer's DNS."""

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

        problems = Problems()
        with problems.check():
            self.public_key = check_public_key(self.public_key, "public-key")
        if self.preshared_key is not None:
            with problems.check():
                check_key(self.preshared_key, "preshared-key", "a preshared key")
        for i, prefix in enumerate(self.allowed_ips):
            with problems.check():
                check_prefix(prefix, f"allowed-ips[{i}]")
        if self.endpoint is not None:
            with problems.check():
                parse_hostport(self.endpoint, 51820, "endpoint")
        problems.raise_any()


@dataclass
class ReconnectConfig:
    """How the client notices a lost tunnel and reconnects (see dnsguard.lifecycle)."""

    handshake_timeout: Annotated[Duration, Range(0.1, 3600, "seconds")] = Duration(5)
    dead_peer_timeout: Annotated[Duration, Range(0.1, 3600, "seconds")] = Duration(15)
    """After sending, no authenticated packet for this long starts a probe handshake."""
    probe_timeout: Annotated[Duration, Range(0.1, 3600, "seconds")] = Duration(5)
    idle_probe_interval: Annotated[Duration, Range(0, DAY, "seconds; 0 is off")] = Duration(0)
    """With no packet from the server for this long, probe even when idle (0: off)."""
    debounce: Annotated[Duration, Range(0, 60, "seconds")] = Duration(0.5)
    backoff_initial: Annotated[Duration, Range(0.01, 3600, "seconds")] = Duration(1)
    backoff_max: Annotated[Duration, Range(0.01, DAY, "seconds")] = Duration(30)
    give_up_after: Annotated[Duration, Range(1, 2**31 - 1, "seconds")] | None = None
    """Stop reconnecting after this long (None: never; the TUN and kill switch stay up meanwhile)."""

    def validate(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("backoff-max is shorter than backoff-initial", key="backoff-max")


@dataclass
class TunnelConfig:
    """The WireGuard interface (wg-quick [Interface]) and its peers; or a wg-quick file."""

    private_key: str | None = None
    address: list[str] = field(default_factory=list)
    listen_port: Annotated[int, PORT_OR_ANY_RANGE] | None = None
    mtu: Annotated[int, MTU_RANGE] | None = None
    dns: list[str] = field(default_factory=list)
    """Resolvers (the upstreams when `upstreams.servers` is empty) and search domains, as in wg-quick."""
    peers: list[PeerConfig] = field(default_factory=list)
    wg_quick: str | None = None
    """Path of a wg-quick .conf that provides the interface and peers."""
    interface: str = "dg0"
    fwmark: Annotated[int, FWMARK_RANGE] = 51820
    table: Annotated[int, TABLE_RANGE] = 51820
    kill_switch: bool = True
    exclude_local_networks: bool = True
    include: list[str] = field(default_factory=list)
    """Only these prefixes go into the tunnel (empty: everything, as AllowedIPs says)."""
    exclude: list[str] = field(default_factory=list)
    lan_interfaces: list[str] = field(default_factory=list)
    """Gateway mode: traffic entering on these interfaces is routed into the tunnel."""
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    rekey_after_time: Annotated[Duration, REKEY_RANGE] = Duration(120)
    """Session age at which the initiator rekeys; the protocol's 120 s (lower only to test rekeying)."""
    wg_quick_lines: dict[str, tuple[int, str]] = field(default_factory=dict, init=False, compare=False)
    """For a tunnel read from a wg-quick file: YAML key ('mtu', 'peers[0].public-key') -> (line, key as
    written there), so that errors found after reading name the file's line."""

    def validate(self) -> None:
        """Each value on its own; what needs the wg-quick file merged in is in `check_complete`."""
        problems = Problems()
        if self.private_key is not None:
            with problems.check():
                check_key(self.private_key, "private-key", "a private key")
        for i, address in enumerate(self.address):
            try:
                ipaddress.ip_interface(address)
            except ValueError:
                problems.errors.append(
                    ConfigError(f"{address!r} is not an address with prefix", key=f"address[{i}]")
                )
        for i, entry in enumerate(self.dns):
            if not is_ip(entry):
                with problems.check():
                    check_name(entry, f"dns[{i}]")  # wg-quick: a name in DNS is a search domain
        for key, prefixes in (("include", self.include), ("exclude", self.exclude)):
            for i, prefix in enumerate(prefixes):
                with problems.check():
                    check_prefix(prefix, f"{key}[{i}]")
        with problems.check():
            check_interface_name(self.interface, "interface")
        for i, name in enumerate(self.lan_interfaces):
            with problems.check():
                check_interface_name(name, f"lan-interfaces[{i}]")
        if self.table in RESERVED_TABLES:
            problems.errors.append(
                ConfigError(f"{self.table} is the kernel's {RESERVED_TABLES[self.table]} table", key="table")
            )
        problems.raise_any()

    def check_complete(self) -> None:
        """What the daemon needs from the whole tunnel (YAML and wg-quick file merged); keys as in YAML."""
        problems = Problems()
        if not self.private_key:
            problems.errors.append(ConfigError("the tunnel needs a private key", key="private-key"))
        has_ipv6 = any(ipaddress.ip_interface(address).version == 6 for address in self.address)
        if self.mtu is not None and has_ipv6 and self.mtu < IPV6_MIN_MTU:
            problems.errors.append(
                ConfigError(
                    f"{self.mtu} is below {IPV6_MIN_MTU}, the minimum MTU of a link that carries IPv6"
                    " (RFC 8200 §5), and the tunnel has an IPv6 address",
                    key="mtu",
                )
            )
        seen: dict[PublicKey, int] = {}
        for i, peer in enumerate(self.peers):
            if peer.public_key in seen:  # canonical since PeerConfig.validate
                problems.errors.append(
                    ConfigError(
                        f"the same public key as peers[{seen[peer.public_key]}]", key=f"peers[{i}].public-key"
                    )
                )
            seen.setdefault(peer.public_key, i)
        problems.raise_any()


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
    query_log_size: Annotated[int, Range(0, 1_000_000, "entries kept in memory; 0 is off")] = 1000

    def validate(self) -> None:
        from dnsguard.config.addresses import parse_hostport

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
    interval: Annotated[Duration, Range(0.1, DAY, "seconds between looks at the files")] = Duration(2)
    """How often the files are checked."""


@dataclass
class LoggingConfig:
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass
class PerformanceConfig:
    """How the daemon trades CPU for latency."""

    busy_poll: Annotated[Duration, Range(0, 0.01, "seconds, at most 10ms; 0 is off")] = Duration(0)
    """While queries or packets come densely (on average closer together than this), the event loop polls
    this long after each before it sleeps: answers come sooner at a moderate rate, and the time between
    them is spent polling, on CPU (net/busy_poll.py; the daemon then runs on asyncio's loop, not uvloop).
    A reload changes it, or turns it off; turning it on takes a restart. 0 is off, as Linux's
    net.core.busy_poll."""
    keep_warm: Annotated[Duration, Range(0, 60, "seconds, at most 60s; 0 is off")] = Duration(1)
    """For this long after a tunnel's last packet, `up` and `server` wake every few milliseconds to run
    the data path's code on throwaway data, so that the next packet of a tunnel used now and then (a
    ping, a keystroke, a game's updates) finds it in the CPU's caches: a shorter round trip for an
    idle tunnel, for a few hundred short wake-ups a second while traffic comes and none once it stops
    (app/tunnel.py). A reload changes it; 0 is off."""
    receive_codel: bool = False
    """CoDel on what the peers send while it waits in the tunnel's UDP socket (wireguard/codel.py's
    ArrivalCoDel): when that wait has stood above 5 ms for 100 ms, transport datagrams are dropped as
    they are read, and the peers that send the most lose the most: on a server, the peers' uploads
    share it more evenly (README gives the figures). A reload turns it on or off."""


@dataclass
class ManagedListsConfig:
    """Where the names allowed and blocked through the API (dashboard, `dnsguard allow`) are kept."""

    directory: str | None = "/var/lib/dnsguard"
    """Directory of managed-allow.txt and managed-block.txt (relative: to the config file); null: off.
    The default is the daemon's state directory: the systemd units keep /etc read-only."""

    def validate(self) -> None:
        if self.directory is not None and not self.directory.strip():
            raise ConfigError("give a directory, or null to turn managed lists off", key="directory")


QueryLogPrivacy = Literal["full", "names-only", "anonymised", "off"]


@dataclass
class QueryLogRetention:
    """How much of the lasting query log is kept: the oldest queries go first when any limit is passed."""

    max_age: Annotated[Duration, Range(3600, 366 * DAY, "seconds; 1h..366d")] = Duration(7 * DAY)
    max_rows: Annotated[int, Range(1000, 1_000_000_000, "rows: a query, or one repeated within a second")] = (
        5_000_000
    )
    max_size: Annotated[ByteSize, Range(1024**2, 1024**4, "bytes of the database file; 1M..1T")] = ByteSize(
        1024**3
    )


@dataclass
class QueryLogConfig:
    """The lasting query log: every answered query in an SQLite database (dnsguard/app/querylog.py)."""

    enabled: bool = False
    """Off by default: a daemon writes nothing to disk until its configuration says where."""
    path: str = "/var/lib/dnsguard/querylog.sqlite"
    """The database file (relative: to the config file); its directory must exist."""
    privacy: QueryLogPrivacy = "full"
    """full; names-only (no client address); anonymised (IPv4 /24, IPv6 /48); off (nothing written)."""
    retention: QueryLogRetention = field(default_factory=QueryLogRetention)
    queue: Annotated[
        int, Range(1000, 1_000_000, "distinct queries waiting for the writer; more are dropped")
    ] = 100_000

    def validate(self) -> None:
        if not self.path.strip():
            raise ConfigError("give the database file", key="path")


@dataclass
class Config:
    """A whole dnsguard configuration file."""

    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    upstreams: UpstreamsConfig = field(default_factory=UpstreamsConfig)
    lists: dict[str, ListConfig] = field(default_factory=dict)
    loading: ListsLoadingConfig = field(default_factory=ListsLoadingConfig)
    groups: dict[str, GroupConfig] = field(default_factory=dict)
    clients: dict[str, ClientConfig] = field(default_factory=dict)
    """Known devices by name; a group's `clients` may name them."""
    client_names: ClientNamesConfig = field(default_factory=ClientNamesConfig)
    dhcp: DhcpConfig | None = None
    """The LAN's DHCP server (gateway mode): see `dnsguard dhcp-config`."""
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    """A firewall fed by DNS answers (tunnel client and gateway)."""
    services: ServicesConfig = field(default_factory=ServicesConfig)
    rewrites: list[RewriteConfig] = field(default_factory=list)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tunnel: TunnelConfig | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    managed_lists: ManagedListsConfig = field(default_factory=ManagedListsConfig)
    """The lists that `dnsguard allow` / `block` and the dashboard write (see dnsguard/config/managed.py)."""
    querylog: QueryLogConfig = field(default_factory=QueryLogConfig)
    base_dir: str = field(default=".", init=False)
    """Directory of the file the configuration came from; relative list paths start there."""
    warnings: list[ConfigWarning] = field(default_factory=list, init=False)
    """What the files say that dnsguard does not apply (wg-quick hooks...); `check` prints, daemons log."""

    def validate(self) -> None:
        self._check_clients()
        for group_name, group in self.groups.items():
            for kind, names in (("block", group.block), ("allow", group.allow)):
                for i, list_name in enumerate(names):
                    self._check_list(list_name, f"groups.{group_name}.{kind}[{i}]")
            for s, schedule in enumerate(group.schedules):
                for i, list_name in enumerate(schedule.block):
                    self._check_list(list_name, f"groups.{group_name}.schedules[{s}].block[{i}]")
        for i, group_name in enumerate(self.firewall.groups):
            if group_name not in ("all", "default") and group_name not in self.groups:
                known = ", ".join(sorted(self.groups)) or "none defined"
                raise ConfigError(
                    f"no group named {group_name!r} (groups: {known})", key=f"firewall.groups[{i}]"
                )
        seen: dict[str, str] = {}
        for group_name, group in self.groups.items():
            for client in group.clients:
                if client in seen:
                    raise ConfigError(
                        f"client {client} is already in group {seen[client]!r}",
                        key=f"groups.{group_name}.clients",
                    )
                seen[client] = group_name

    def _check_clients(self) -> None:
        """Client names are well formed and own distinct addresses; groups naming them get the addresses."""
        owners: dict[str, str] = {}
        for client_name, client in self.clients.items():
            if not is_client_name(client_name):
                raise ConfigError(
                    f"{client_name!r} is not a client name (letters, digits, '.', '_', '-'; not an address)",
                    key=f"clients.{client_name}",
                )
            for address in client.addresses:
                if address in owners:
                    raise ConfigError(
                        f"{address} is already client {owners[address]!r}",
                        key=f"clients.{client_name}.addresses",
                    )
                owners[address] = client_name
        for group_name, group in self.groups.items():
            expanded: list[str] = []
            for entry in group.clients:
                if not is_client_name(entry):
                    expanded.append(entry)
                elif entry in self.clients:
                    expanded.extend(self.clients[entry].addresses)
                else:
                    known = ", ".join(sorted(self.clients)) or "none defined"
                    raise ConfigError(
                        f"no client named {entry!r} (clients: {known})", key=f"groups.{group_name}.clients"
                    )
            group.clients = expanded

    def _check_list(self, name: str, key: str) -> None:
        if name not in self.lists:
            known = ", ".join(sorted(self.lists)) or "none defined"
            raise ConfigError(f"no list named {name!r} (lists: {known})", key=key)
