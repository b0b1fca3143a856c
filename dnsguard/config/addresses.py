"""Parsing of host:port strings used across the configuration."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dnsguard.errors import ConfigError, DnsguardError


def split_hostport(
    text: str, default_port: int, fail: Callable[[str], DnsguardError], *, any_port: bool = False
) -> tuple[str, int]:
    """'198.51.100.1', 'host:5353', '[2001:db8::1]:53' or '2001:db8::1' to (host, port): the one grammar.

    `fail` turns a one-line message into the caller's error (a ConfigError naming the key, an upstream
    spec error). A name is not resolved or checked here; with any_port, port 0 (a free port chosen at
    bind time) is accepted.
    """
    value = text.strip()
    host, port_text = value, None
    if value.startswith("["):
        host, bracket, tail = value[1:].partition("]")
        if not bracket:
            raise fail("missing ']' (expected [IPv6 address])")
        if tail:
            if not tail.startswith(":"):
                raise fail(f"unexpected {tail!r} after ']'")
            port_text = tail[1:]
    elif value.count(":") > 1:
        if not is_ipv6(value):
            raise fail(f"{value!r} is not an IPv6 address (write [address]:port to give a port)")
    elif ":" in value:
        host, _, port_text = value.partition(":")
    if not host:
        raise fail("missing host")
    if port_text is None:
        return host, default_port
    lowest = 0 if any_port else 1
    if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise fail(f"bad port {port_text!r} (a number from {lowest} to 65535)")
    return host, int(port_text)


def parse_hostport(text: str, default_port: int, key: str = "", *, any_port: bool = False) -> tuple[str, int]:
    """split_hostport for a configuration value: errors are ConfigErrors naming `key`."""
    return split_hostport(
        text,
        default_port,
        lambda message: ConfigError(f"{text!r}: {message}", key=key or None),
        any_port=any_port,
    )


def is_ipv6(text: str) -> bool:
    """True for an IPv6 address literal."""
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
