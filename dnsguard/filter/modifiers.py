"""AdGuard DNS rule modifiers: ``$dnstype``, ``$client``, ``$ctag``, ``$denyallow``, ``$dnsrewrite``.

A rule that carries one of them is a `SideRule` (see `side`): it applies to some queries only (a query
type, a client, a client tag, not under some domains) or answers with records instead of blocking. Such
rules are few in real lists, so they live beside the hash index rather than in it, and cost nothing to
groups whose lists hold none.

Values follow AdGuard's documented syntax:

- ``$dnstype=AAAA|~A``: record types by name (or ``TYPE65``), ``~`` excludes;
- ``$client=192.0.2.1|2001:db8::/32|[2001:db8::1]|'Frank\\'s laptop'``: addresses, CIDRs, IPv6 in
  brackets, client names (quoted when they hold spaces or punctuation); all values negated with ``~``
  or none; a comma inside a value is written ``\\,``;
- ``$ctag=device_phone|~user_child``: tags configured on clients and groups;
- ``$denyallow=a.example|b.example``: the rule does not apply to these domains and their subdomains;
- ``$dnsrewrite=192.0.2.1`` (A), ``=2001:db8::1`` (AAAA), ``=name.example`` (CNAME), ``=NXDOMAIN``,
  ``=REFUSED``, ``=NOERROR`` (no records), or the full form ``RCODE;TYPE;VALUE`` for A, AAAA, CNAME,
  TXT, MX (``10 mail.example``), PTR, HTTPS and SVCB (``1 . alpn=h2\\,h3 port=443 ipv4hint=...``;
  every RFC 9460 parameter: mandatory, alpn, no-default-alpn, port, ipv4hint, ech (base64),
  ipv6hint, dohpath, keyNNNNN).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import Final

from dnsguard.errors import DnsguardError

__all__ = [
    "DNS_MODIFIERS",
    "ClientValue",
    "ModifierError",
    "Rewrite",
    "parse_client_values",
    "parse_dnstypes",
    "parse_rewrite",
    "parse_tags",
    "split_modifiers",
    "split_values",
    "type_name",
    "wire_name",
]

DNS_MODIFIERS: Final = frozenset({"dnstype", "dnsrewrite", "client", "ctag", "denyallow"})

RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_SERVFAIL, RCODE_REFUSED = 0, 3, 2, 5
RCODES: Final = {"NOERROR": 0, "SERVFAIL": 2, "NXDOMAIN": 3, "REFUSED": 5}

TYPE_NUMBERS: Final = {
    "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "HINFO": 13, "MX": 15, "TXT": 16, "AAAA": 28,
    "SRV": 33, "NAPTR": 35, "DS": 43, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "SVCB": 64, "HTTPS": 65,
    "SPF": 99, "ANY": 255, "CAA": 257,
}  # fmt: skip
_TYPE_NAMES: Final = {number: name for name, number in TYPE_NUMBERS.items()}
_TAG: Final = re.compile(r"[a-z][a-z0-9_]*")
_GENERIC_TYPE: Final = re.compile(r"TYPE([0-9]{1,5})")
_SVC_KEYS: Final = {
    "mandatory": 0,
    "alpn": 1,
    "no-default-alpn": 2,
    "port": 3,
    "ipv4hint": 4,
    "ech": 5,
    "ipv6hint": 6,
    "dohpath": 7,
}
"""SvcParamKeys of RFC 9460 (dohpath: RFC 9461), and ``keyNNNNN`` for any other."""


class ModifierError(DnsguardError):
    """A modifier value that is not valid (the line is reported as malformed)."""


def type_name(number: int) -> str:
    """A record type's mnemonic (``TYPE99`` form for the unnamed)."""
    return _TYPE_NAMES.get(number, f"TYPE{number}")


def split_modifiers(text: str) -> list[tuple[str, str]]:
    """``a,b=c\\,d,~e`` -> [("a", ""), ("b", "c,d"), ("~e", "")]: names lower-cased, values as written.

    A backslash escapes the next character; quotes ('...' or "...") protect commas.
    """
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(c + text[i + 1])
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"" and current and current[-1] in ("=", "|", "~"):
            quote = c
        elif c == ",":
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(c)
        i += 1
    parts.append("".join(current))
    result = []
    for part in parts:
        name, _, value = part.partition("=")
        result.append((name.strip().lower(), value))
    return result


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def split_values(value: str, what: str) -> list[tuple[bool, str]]:
    """``a|~b`` -> [(False, "a"), (True, "b")], respecting quotes and escapes."""
    if not value:
        raise ModifierError(f"${what} without a value")
    out: list[tuple[bool, str]] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i <= len(value):
        c = value[i] if i < len(value) else "|"
        if c == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if quote:
            if c == quote and i < len(value):
                quote = ""
            else:
                current.append(c)
        elif c in "'\"" and (not current or current == ["~"]):
            quote = c
            current.append("\0")  # marks a quoted value
        elif c == "|":
            token = "".join(current).strip()
            negated = token.startswith("~")
            token = token[1:] if negated else token
            if not token:
                raise ModifierError(f"empty value in ${what}")
            out.append((negated, token))
            current = []
        else:
            current.append(c)
        i += 1
    if quote:
        raise ModifierError(f"unterminated quote in ${what}")
    return out


def parse_dnstypes(value: str) -> tuple[frozenset[int], frozenset[int]]:
    """(types the rule applies to (empty: any), types it never applies to)."""
    include: set[int] = set()
    exclude: set[int] = set()
    for negated, token in split_values(value, "dnstype"):
        name = token.upper()
        number = TYPE_NUMBERS.get(name)
        if number is None:
            generic = _GENERIC_TYPE.fullmatch(name)
            if generic is None or not 0 < int(generic.group(1)) < 65536:
                raise ModifierError(f"unknown record type {token!r} in $dnstype")
            number = int(generic.group(1))
        (exclude if negated else include).add(number)
    return frozenset(include), frozenset(exclude)


@dataclass(frozen=True, slots=True)
class ClientValue:
    """One ``$client`` value: a network, or a client name (lower-cased)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    name: str

    def matches(
        self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, names: frozenset[str]
    ) -> bool:
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        return self.name in names


def parse_client_values(value: str) -> tuple[bool, tuple[ClientValue, ...]]:
    """(negated, values) of a ``$client`` modifier; AdGuard allows all values negated or none."""
    values = split_values(value, "client")
    negations = {negated for negated, _ in values}
    if len(negations) > 1:
        raise ModifierError("$client mixes negated and plain values")
    parsed = []
    for _, token in values:
        if token.startswith("\0"):
            text = token[1:]
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                parsed.append(ClientValue(None, text.strip().lower()))
                continue
            parsed.append(ClientValue(network, ""))
            continue
        text = token[1:-1] if token.startswith("[") and token.endswith("]") else token
        try:
            parsed.append(ClientValue(ipaddress.ip_network(text, strict=False), ""))
        except ValueError:
            if any(c in token for c in "[]/ ") or token.count(":") > 1:
                raise ModifierError(f"bad $client value {token!r}") from None
            parsed.append(ClientValue(None, token.lower()))
    return negations == {True}, tuple(parsed)


def parse_tags(value: str) -> tuple[frozenset[str], frozenset[str]]:
    """(tags of which a client needs one, tags a client must have none of) of a ``$ctag`` modifier."""
    include: set[str] = set()
    exclude: set[str] = set()
    for negated, token in split_values(value, "ctag"):
        tag = token.lower()
        if not _TAG.fullmatch(tag):
            raise ModifierError(f"bad tag {token!r} in $ctag")
        (exclude if negated else include).add(tag)
    return frozenset(include), frozenset(exclude)


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A ``$dnsrewrite`` answer: a response code, or one record of one type, or a CNAME target."""

    rcode: int
    rtype: int = 0
    """0 with NOERROR: an empty answer; otherwise the record type of `rdata` (or CNAME)."""
    rdata: bytes = b""
    cname: str = ""
    text: str = ""
    """The value as written (an exception with the same value disables this rewrite)."""


def wire_name(name: str) -> bytes:
    """A domain name in DNS wire format (uncompressed); '.' is the root."""
    name = name.strip().rstrip(".")
    if not name:
        return b"\0"
    out = bytearray()
    for label in name.encode("idna").split(b"."):
        if not label or len(label) > 63:
            raise ModifierError(f"bad name {name!r}")
        out += bytes((len(label),)) + label
    if len(out) > 254:
        raise ModifierError(f"name {name!r} longer than 253 characters")
    return bytes(out + b"\0")


def _address(text: str, version: int) -> bytes:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ModifierError(f"bad address {text!r} in $dnsrewrite") from None
    if address.version != version:
        raise ModifierError(f"{text!r} is not an IPv{version} address")
    return address.packed


def _txt(text: str) -> bytes:
    data = text.encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    return b"".join(bytes((len(chunk),)) + chunk for chunk in chunks)


def _mx(text: str) -> bytes:
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) > 65535:
        raise ModifierError(f"MX value {text!r} is not 'preference exchange'")
    return struct.pack(">H", int(parts[0])) + wire_name(parts[1])


def _svcb(text: str) -> bytes:
    parts = text.split()
    if len(parts) < 2 or not parts[0].isdigit() or int(parts[0]) > 65535:
        raise ModifierError(f"HTTPS value {text!r} is not 'priority target [key=value...]'")
    params: dict[int, bytes] = {}
    for item in parts[2:]:
        key, _, value = item.partition("=")
        number = _svc_key(key)
        if number in params:
            raise ModifierError(f"HTTPS parameter {key!r} given twice")
        if number == 0:
            keys = sorted({_svc_key(k) for k in value.split(",") if k})
            if not keys or 0 in keys:
                raise ModifierError(f"bad mandatory {value!r}")
            data = b"".join(struct.pack(">H", k) for k in keys)
        elif number == 5:
            try:
                data = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise ModifierError(f"ech {value!r} is not base64") from None
            if not data:
                raise ModifierError("ech without a value")
        elif number >= 7:
            data = value.encode()
            if number == 7 and "{?dns}" not in value:
                raise ModifierError(f"dohpath {value!r} has no {{?dns}} variable")
        elif number == 1:
            ids = [v.encode() for v in value.split(",") if v]
            if not ids or any(len(i) > 255 for i in ids):
                raise ModifierError(f"bad alpn {value!r}")
            data = b"".join(bytes((len(i),)) + i for i in ids)
        elif number == 2:
            data = b""
        elif number == 3:
            if not value.isdigit() or int(value) > 65535:
                raise ModifierError(f"bad port {value!r}")
            data = struct.pack(">H", int(value))
        else:
            data = b"".join(_address(v, 4 if number == 4 else 6) for v in value.split(","))
        params[number] = data
    mandatory = params.get(0, b"")
    for at in range(0, len(mandatory), 2):
        if int.from_bytes(mandatory[at : at + 2], "big") not in params:
            raise ModifierError("mandatory names a parameter the record does not have")
    body = b"".join(struct.pack(">HH", key, len(data)) + data for key, data in sorted(params.items()))
    return struct.pack(">H", int(parts[0])) + wire_name(parts[1]) + body


def _svc_key(text: str) -> int:
    key = text.lower()
    number = _SVC_KEYS.get(key)
    if number is None and key.startswith("key") and key[3:].isdigit() and int(key[3:]) < 65535:
        number = int(key[3:])
    if number is None:
        raise ModifierError(f"unsupported HTTPS parameter {text!r}")
    return number


def _record(rtype: int, value: str) -> Rewrite:
    text = value.strip()
    if rtype == 1:
        return Rewrite(RCODE_NOERROR, rtype, _address(text, 4), text=text)
    if rtype == 28:
        return Rewrite(RCODE_NOERROR, rtype, _address(text, 6), text=text)
    if rtype == 5:
        wire_name(text)
        return Rewrite(RCODE_NOERROR, rtype, cname=text.lower().rstrip("."), text=text)
    if rtype == 12:
        return Rewrite(RCODE_NOERROR, rtype, wire_name(text), text=text)
    if rtype == 16:
        return Rewrite(RCODE_NOERROR, rtype, _txt(value), text=value)
    if rtype == 15:
        return Rewrite(RCODE_NOERROR, rtype, _mx(text), text=text)
    if rtype in (64, 65):
        return Rewrite(RCODE_NOERROR, rtype, _svcb(text), text=text)
    raise ModifierError(f"$dnsrewrite of type {type_name(rtype)} is not supported")


def parse_rewrite(value: str) -> Rewrite:
    """A ``$dnsrewrite`` value, short or full form (see the module docstring)."""
    value = _unescape(value)
    if ";" in value:
        parts = value.split(";", 2)
        if len(parts) != 3:
            raise ModifierError(f"$dnsrewrite {value!r} is not RCODE;TYPE;VALUE")
        rcode_text, type_text, record = parts
        rcode = RCODES.get(rcode_text.strip().upper())
        if rcode is None:
            raise ModifierError(f"unknown response code {rcode_text!r} in $dnsrewrite")
        if rcode != RCODE_NOERROR or not type_text.strip():
            if type_text.strip() or record.strip():
                raise ModifierError(f"$dnsrewrite {rcode_text} takes no record")
            return Rewrite(rcode, text=value)
        rtype = TYPE_NUMBERS.get(type_text.strip().upper())
        if rtype is None:
            raise ModifierError(f"unknown record type {type_text!r} in $dnsrewrite")
        return _record(rtype, record)
    text = value.strip()
    if not text:
        raise ModifierError("$dnsrewrite without a value")
    rcode = RCODES.get(text.upper())
    if rcode is not None:
        return Rewrite(rcode, text=text)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return _record(5, text)
    return _record(1 if address.version == 4 else 28, text)
