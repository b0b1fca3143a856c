"""Parsing of host:port strings used across the configuration."""

from __future__ import annotations

import ipaddress

from dnsguard.errors import ConfigError


def parse_hostport(text: str, default_port: int, key: str = "", *, any_port: bool = False) -> tuple[str, int]:
    """'198.51.100.1', '198.51.100.1:5353', '[2001:db8::1]:53' or '2001:db8::1' to (host, port).

    With any_port, port 0 (a free port chosen at bind time) is accepted.
    """
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: missing ']'", key=key or None)
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{text!r}: expected ':port' after ']'", key=key or None)
            port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not (0 if any_port else 1) <= int(port_text) < 65536:
            raise ConfigError(f"{text!r}: bad port {port_text!r}", key=key or None)
        port = int(port_text)
    if not host:
        raise ConfigError(f"{text!r}: missing host", key=key or None)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if value.count(":") > 1 and not value.startswith("["):
            raise ConfigError(f"{text!r} is not an address", key=key or None) from None
    return host, port


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
