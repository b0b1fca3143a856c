"""Upstream specs: the pure parsing of strings such as ``tls:dns.example#198.51.100.1``.

Configuration checking and the upstream transports (dnsguard/net/upstream/) both parse specs here, so a
spec that `dnsguard check` accepts is one the daemon can reach, and vice versa. No I/O.

Spec syntax (``parse_upstream``), close to blocky's:

- ``198.51.100.53``, ``198.51.100.53:5353``, ``2001:db8::53``, ``[2001:db8::53]:53``: plain DNS over UDP
  with a retry over TCP when the reply is truncated; ``udp:`` and ``tcp+udp:`` prefixes mean the same.
- ``tcp:198.51.100.53[:port]``: plain DNS over TCP only.
- ``tls:dns.example[:853]`` or ``tcp-tls:...``: DNS over TLS (RFC 7858).
- ``https://dns.example[:443]/dns-query``: DNS over HTTPS (RFC 8484); the path defaults to ``/dns-query``.
- ``#ip[,ip...]`` after a DoT or DoH hostname pins its addresses (``tls:dns.example#198.51.100.1``): the TLS
  server name and the HTTP Host stay the hostname, no DNS lookup happens. Without a pin the hostname is
  resolved by the system resolver, which for a daemon that is itself the system resolver means: pin it.
- ``udp://``, ``tcp://``, ``tls://`` (AdGuard style) and ``dns:`` are accepted too. Plain DNS needs an IP.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from dnsguard.config.addresses import is_ip, is_ipv6, split_hostport
from dnsguard.errors import ConfigError

__all__ = ["DEFAULT_PORTS", "Scheme", "UpstreamSpec", "UpstreamSpecError", "parse_upstream"]


class UpstreamSpecError(ConfigError):
    """An upstream spec string does not parse; the message names the spec and what is wrong with it."""


class Scheme(enum.StrEnum):
    """How an upstream is reached."""

    UDP = "udp"  # UDP, falling back to TCP for truncated replies
    TCP = "tcp"
    TLS = "tls"
    HTTPS = "https"


DEFAULT_PORTS: dict[Scheme, int] = {Scheme.UDP: 53, Scheme.TCP: 53, Scheme.TLS: 853, Scheme.HTTPS: 443}
_SCHEME_ALIASES: dict[str, Scheme] = {
    "udp": Scheme.UDP,
    "tcp+udp": Scheme.UDP,
    "dns": Scheme.UDP,
    "tcp": Scheme.TCP,
    "tls": Scheme.TLS,
    "tcp-tls": Scheme.TLS,
    "https": Scheme.HTTPS,
}
_SCHEME_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?(.*)$", re.DOTALL)
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """A parsed upstream: scheme, host (IP or, for DoT/DoH, a name), port, DoH path, pinned addresses."""

    scheme: Scheme
    host: str
    port: int
    path: str = ""
    addresses: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Stable label for logs and metrics, without pinned addresses (e.g. ``udp:198.51.100.53:53``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme is Scheme.HTTPS:
            port = "" if self.port == 443 else f":{self.port}"
            return f"https://{host}{port}{self.path}"
        return f"{self.scheme.value}:{host}:{self.port}"

    def __str__(self) -> str:
        pins = "#" + ",".join(self.addresses) if self.addresses else ""
        return self.name + pins


def parse_upstream(
    text: str, *, file: str | None = None, line: int | None = None, key: str | None = None
) -> UpstreamSpec:
    """Parse one upstream spec (syntax in the module docstring); UpstreamSpecError says what is wrong."""

    def fail(reason: str) -> UpstreamSpecError:
        return UpstreamSpecError(f"bad upstream {text!r}: {reason}", file=file, line=line, key=key)

    raw = text.strip()
    if not raw:
        raise fail("empty")
    if any(character.isspace() for character in raw):
        raise fail("contains whitespace")
    body, hash_sign, pins_text = raw.partition("#")
    addresses: tuple[str, ...] = ()
    if hash_sign:
        pins = [pin.strip() for pin in pins_text.split(",")]
        if not pins_text or any(not pin for pin in pins):
            raise fail("empty pinned address after '#'")
        for pin in pins:
            if not is_ip(pin):
                raise fail(f"pinned address {pin!r} is not an IP address")
        addresses = tuple(str(ipaddress.ip_address(pin)) for pin in pins)

    scheme = Scheme.UDP
    rest = body
    match = _SCHEME_PREFIX.match(body)
    # "host:port" looks like "scheme:rest" too; a purely numeric rest is a port, and an IPv6 literal's first
    # group never parses as a scheme we know, so only known scheme names (or "x://") are taken as schemes.
    if match and not is_ip(body) and not (match.group(2) is None and match.group(3).isdigit()):
        name = match.group(1).lower()
        if name not in _SCHEME_ALIASES:
            if name == "http":
                raise fail("DNS over HTTPS needs https:// (RFC 8484)")
            supported = ", ".join(sorted(_SCHEME_ALIASES))
            raise fail(f"unsupported protocol {name!r} (supported: {supported})")
        scheme = _SCHEME_ALIASES[name]
        rest = match.group(3)

    if scheme is Scheme.HTTPS:
        host, port, path = _parse_https(body, fail)
    else:
        host, port = split_hostport(rest, DEFAULT_PORTS[scheme], fail)
        if rest.startswith("[") and not is_ipv6(host):
            raise fail("expected [IPv6 address]")
        path = ""
    host_is_ip = is_ip(host)
    if host_is_ip:
        host = str(ipaddress.ip_address(host))
    elif not _is_hostname(host):
        raise fail(f"{host!r} is neither an IP address nor a host name")
    if scheme in (Scheme.UDP, Scheme.TCP) and not host_is_ip:
        raise fail("plain DNS needs an IP address (a name would need DNS to reach DNS); use tls: or https:")
    if addresses and host_is_ip:
        raise fail("pinned addresses only make sense for a host name")
    if addresses and scheme in (Scheme.UDP, Scheme.TCP):
        raise fail("pinned addresses are for tls: and https:// upstreams")
    return UpstreamSpec(scheme, host, port, path, addresses)


def _parse_https(body: str, fail: Callable[[str], UpstreamSpecError]) -> tuple[str, int, str]:
    try:
        url = urlsplit(body)
        port = url.port or 443
    except ValueError as error:
        raise fail(str(error)) from None
    if url.username is not None or url.password is not None:
        raise fail("credentials in a DoH URL are not supported")
    host = url.hostname or ""
    if not host:
        raise fail("missing host")
    path = url.path or "/dns-query"
    if url.query:
        path = f"{path}?{url.query}"
    if url.fragment:
        raise fail("unexpected fragment")
    return host, port, path


def _is_hostname(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))
