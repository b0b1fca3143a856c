"""DHCP lease files read into (address, MAC, host name) leases: dnsmasq, ISC dhcpd and Kea.

A lease file is written by another program from what clients sent it: a host name is whatever a
device chose to announce, and the file may be caught half-written. So every parser here takes bytes
and returns what it could read plus a count of what it could not; nothing in a file raises. Host names
are kept only when they are one DNS label (RFC 1123), since they are shown in the API, the dashboard
and the terminal; others leave the lease nameless and are counted.

Formats (the newest lease of an address wins; files are appended to as leases change):
- dnsmasq (dnsmasq's lease.c): `expiry MAC address hostname client-id` per line, expiry 0 meaning
  infinite; after a `duid` line, IPv6 leases as `expiry IAID address hostname DUID`.
- ISC dhcpd (dhcpd.leases(5)): `lease ADDRESS { ends W YYYY/MM/DD HH:MM:SS; hardware ethernet MAC;
  client-hostname "NAME"; binding state active; }` blocks, `ends never` for infinite.
- Kea (memfile CSV): a header row naming the columns (address, hwaddr, expire, hostname, state...);
  state 0 is a live lease; commas inside values are escaped as `&#x2c`.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from typing import Final, Literal

from dnsguard.config.lan import HOST_NAME_RE

LeaseFormat = Literal["dnsmasq", "isc", "kea"]

MAX_LEASE_FILE_SIZE: Final = 8 * 1024 * 1024
"""Bytes of one lease file read at most: a /16 of dnsmasq leases is about 5 MB; the rest is ignored
and counted, so a runaway file costs bounded memory and parse time (65,536 dnsmasq leases parse in
about a second here, in a worker thread; a household's few dozen take well under a millisecond)."""
MAX_LEASES: Final = 65536
"""Leases kept from one file (a /16); more are counted as errors."""
MAX_EXAMPLES: Final = 3

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")
"""Dotted quads as servers write them: no leading zeros (which some parsers read as octal)."""
_IPV6_RE = re.compile(r"^[0-9a-f:.]{2,45}$")
_ISC_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{};]|[^\s{};"#]+')
"""Quoted strings, comments (`ends epoch N; # Thu Dec ...` with db-time-format local), braces, words."""
_ISC_TIME = re.compile(r"^(\d{4})/(\d{1,2})/(\d{1,2})$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})$")


@dataclass(frozen=True, slots=True)
class Lease:
    address: str
    mac: str = ""
    """Lower case with colons; empty for IPv6 leases, which are keyed by DUID."""
    hostname: str = ""
    expires: float | None = None
    """Epoch seconds; None: never."""


@dataclass(slots=True)
class LeaseParse:
    """What a lease file held: live leases by address, and how many entries could not be read."""

    format: LeaseFormat | None
    leases: dict[str, Lease] = field(default_factory=dict)
    errors: int = 0
    examples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(what[:120])

    def add(self, lease: Lease) -> None:
        if lease.address not in self.leases and len(self.leases) >= MAX_LEASES:
            self.error(f"more than {MAX_LEASES} leases")
            return
        if lease.address in self.leases:
            del self.leases[lease.address]  # re-inserted: the dict's order is the file's newest order
        self.leases[lease.address] = lease


def _mac(text: str) -> str | None:
    value = text.strip().lower().replace("-", ":")
    return value if _MAC_RE.fullmatch(value) else None


def _address(text: str) -> str | None:
    """A canonical IPv4 or IPv6 address, or None (parsed by hand: ipaddress is slow on 65k lines)."""
    value = text.strip().lower()
    if _IPV4_RE.fullmatch(value):
        return value
    if ":" in value and _IPV6_RE.fullmatch(value):
        import ipaddress  # only for IPv6, whose text forms are many

        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return None
    return None


def _hostname(text: str, parse: LeaseParse) -> str:
    if text in ("", "*"):
        return ""
    label = text.split(".", 1)[0]  # a fully qualified name is shown by its first label
    if HOST_NAME_RE.fullmatch(label):
        return label.lower()
    parse.error(f"host name {text!r} is not a DNS label")
    return ""


def detect_format(text: str) -> LeaseFormat | None:
    """The format of a lease file from its first meaningful line; None for an empty file."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("address,"):
            return "kea"
        first = stripped.split(None, 1)[0]
        if first.isdigit() or first == "duid":
            return "dnsmasq"
        return "isc"
    return None


def parse_leases(data: bytes, now: float, format: LeaseFormat | None = None) -> LeaseParse:
    """The live leases of a lease file's bytes at `now` (epoch seconds); the format is detected."""
    truncated = len(data) > MAX_LEASE_FILE_SIZE
    text = data[:MAX_LEASE_FILE_SIZE].decode("utf-8", errors="replace")
    if truncated:
        text = text[: text.rfind("\n") + 1]  # the cut line would be read as a short, wrong one
    format = format or detect_format(text)
    parse = LeaseParse(format)
    if truncated:
        parse.error(f"file larger than {MAX_LEASE_FILE_SIZE} bytes: the rest is not read")
    if format == "dnsmasq":
        _parse_dnsmasq(text, now, parse)
    elif format == "isc":
        _parse_isc(text, now, parse)
    elif format == "kea":
        _parse_kea(text, now, parse)
    return parse


def _parse_dnsmasq(text: str, now: float, parse: LeaseParse) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "duid":
            continue
        if len(fields) < 4 or not fields[0].isdigit() or len(fields[0]) > 12:
            parse.error(f"line {number}: {line.strip()!r}")
            continue
        address = _address(fields[2])
        if address is None:
            parse.error(f"line {number}: {fields[2]!r} is not an address")
            continue
        mac = ""
        if ":" not in address:
            found = _mac(fields[1])
            if found is None:
                parse.error(f"line {number}: {fields[1]!r} is not a MAC address")
                continue
            mac = found
        expiry = int(fields[0])
        if expiry and expiry <= now:
            continue
        parse.add(Lease(address, mac, _hostname(fields[3], parse), float(expiry) if expiry else None))


def _isc_time(tokens: list[str]) -> float | str | None:
    """`ends` of a lease: epoch seconds, None for never, or an error text."""
    if tokens[:1] == ["never"]:
        return None
    if tokens[:1] == ["epoch"] and len(tokens) > 1 and tokens[1].isdigit():
        return float(tokens[1])
    if len(tokens) < 3:
        return "short time"
    date, clock = _ISC_TIME.fullmatch(tokens[1]), _CLOCK.fullmatch(tokens[2])
    if date is None or clock is None:
        return f"time {' '.join(tokens[:3])!r}"
    try:
        values = [int(group) for group in (*date.groups(), *clock.groups())]
        return float(calendar.timegm((*values, 0, 0, 0)))  # dhcpd writes UTC
    except (OverflowError, ValueError):
        return f"time {' '.join(tokens[:3])!r}"


def _parse_isc(text: str, now: float, parse: LeaseParse) -> None:
    tokens = [token for token in _ISC_TOKEN.findall(text) if not token.startswith("#")]
    i, count = 0, len(tokens)
    while i < count:
        if tokens[i] != "lease":
            # Other top-level statements (server-duid, authoring-byte-order...) end at ';' or a block.
            i = _skip_statement(tokens, i)
            continue
        if i + 2 >= count or tokens[i + 2] != "{":
            parse.error(f"lease without a block near token {i}")
            i += 1
            continue
        written = tokens[i + 1]
        address = _address(written)
        end = _block_end(tokens, i + 3)
        if end is None:
            parse.error(f"lease {written!r}: the file ends inside its block")
            return
        body = tokens[i + 3 : end]
        i = end + 1
        if address is None:
            parse.error(f"lease {written!r}: not an address")
            continue
        _isc_lease(address, body, now, parse)


def _skip_statement(tokens: list[str], i: int) -> int:
    while i < len(tokens) and tokens[i] not in (";", "{"):
        i += 1
    if i < len(tokens) and tokens[i] == "{":
        end = _block_end(tokens, i + 1)
        return len(tokens) if end is None else end + 1
    return i + 1


def _block_end(tokens: list[str], i: int) -> int | None:
    """Index of the '}' that closes the block whose body starts at `i` (blocks nest in dhcpd.leases)."""
    depth = 1
    while i < len(tokens):
        if tokens[i] == "{":
            depth += 1
        elif tokens[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _isc_lease(address: str, body: list[str], now: float, parse: LeaseParse) -> None:
    mac, hostname, state = "", "", "active"
    expires: float | None = None
    statement: list[str] = []
    depth = 0
    for token in body:
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            statement = []
        elif depth:
            continue
        elif token != ";":
            statement.append(token)
            continue
        words = statement
        statement = []
        if words[:1] == ["ends"]:
            when = _isc_time(words[1:])
            if isinstance(when, str):
                parse.error(f"lease {address}: {when}")
                return
            expires = when
        elif words[:2] == ["hardware", "ethernet"] and len(words) > 2:
            mac = _mac(words[2]) or ""
            if not mac:
                parse.error(f"lease {address}: {words[2]!r} is not a MAC address")
        elif words[:1] == ["client-hostname"] and len(words) > 1:
            hostname = _hostname(_unquote(words[1]), parse)
        elif words[:2] == ["binding", "state"] and len(words) > 2:
            state = words[2]
    if state != "active" or (expires is not None and expires <= now):
        parse.leases.pop(address, None)  # a later entry (freed, expired) ends the earlier one
        return
    parse.add(Lease(address, mac, hostname, expires))


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return token[1:-1]
    return token


def _parse_kea(text: str, now: float, parse: LeaseParse) -> None:
    lines = text.splitlines()
    header = [name.strip() for name in lines[0].split(",")] if lines else []
    columns = {name: index for index, name in enumerate(header)}
    if "address" not in columns:
        parse.error("no address column in the header")
        return
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        if line.startswith("address,"):  # a file appended to after a restart repeats the header
            continue
        fields = [value.replace("&#x2c", ",") for value in line.split(",")]
        if len(fields) < len(header):
            parse.error(f"line {number}: {len(fields)} of {len(header)} columns")
            continue

        row = {name: fields[index].strip() for name, index in columns.items()}
        address = _address(row["address"])
        if address is None:
            parse.error(f"line {number}: {row['address']!r} is not an address")
            continue
        expire, state = row.get("expire", ""), row.get("state") or "0"
        if not expire.isdigit() or not state.isdigit() or len(expire) > 12:
            parse.error(f"line {number}: expire {expire!r}, state {state!r}")
            continue
        if state != "0" or (int(expire) and int(expire) <= now):
            parse.leases.pop(address, None)
            continue
        mac = _mac(row.get("hwaddr", "")) or ""
        expires = float(expire) if int(expire) else None
        parse.add(Lease(address, mac, _hostname(row.get("hostname", "").rstrip("."), parse), expires))
