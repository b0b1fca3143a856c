"""Why the firewall fed by DNS would refuse or pass a connection: the decision `explain` and the API show.

The kernel decides (dnsguard.net.dns_firewall); this walks the same order on the same inputs, so an
operator can ask about an address without sending a packet: DoH endpoint, allowed prefix, handed out
by an answer still within TTL + grace, else refused (only counted in learn mode).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dnsguard.config.model import Config
from dnsguard.errors import ConfigError

LINK_LOCAL = ("169.254.0.0/16", "fe80::/10")


def read_address_list(text: str) -> list[str]:
    """Addresses and prefixes of a list file: one a line, `#` starts a comment; bad lines are skipped."""
    return parse_address_list(text)[0]


def parse_address_list(text: str) -> tuple[list[str], int]:
    """The addresses and prefixes of a list file, and how many lines were neither (skipped)."""
    entries = []
    malformed = 0
    for line in text.splitlines():
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        try:
            entries.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            malformed += 1
    return entries, malformed


def _within(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefixes: list[str]) -> str | None:
    for prefix in prefixes:
        network = ipaddress.ip_network(prefix, strict=False)
        if network.version == address.version and address in network:
            return prefix
    return None


def filtered_client(config: Config, client: str | None) -> bool:
    """Whether the firewall looks at this client's connections (None: the gateway itself)."""
    firewall = config.firewall
    if firewall.all_groups:
        return True
    if client is None:
        return "default" in firewall.groups
    address = ipaddress.ip_address(client)
    for name in firewall.groups:
        group = config.groups.get(name)
        if group is None:
            continue
        for entry in group.clients:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue  # a MAC address: the kernel rule matches by source address only
    return False


def explain_address(
    config: Config,
    address: str,
    client: str | None,
    seconds_left: float | None,
    doh: list[str],
    allowed: list[str] | None = None,
) -> dict[str, Any]:
    """The verdict on a new connection from `client` to `address`, and the reason, as the kernel decides."""
    try:
        target = ipaddress.ip_address(address)
        if client is not None:
            ipaddress.ip_address(client)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    firewall = config.firewall
    learn = firewall.mode == "learn"
    refused = "counted (learn mode)" if learn else "refused"

    def verdict(result: str, reason: str, **extra: Any) -> dict[str, Any]:
        return {"address": address, "client": client, "verdict": result, "reason": reason, **extra}

    if not firewall.enabled:
        return verdict("allowed", "the firewall is off")
    if not filtered_client(config, client):
        return verdict("allowed", "the client is in no filtered group")
    doh_match = _within(target, doh)
    if doh_match is not None:
        return verdict(refused, "known DoH endpoint", prefix=doh_match)
    allow = [*(allowed if allowed is not None else firewall.allow), *LINK_LOCAL]
    allow_match = _within(target, allow)
    if allow_match is not None:
        return verdict("allowed", "allowed prefix", prefix=allow_match)
    if seconds_left is not None:
        return verdict("allowed", "handed out by a DNS answer", seconds_left=int(seconds_left))
    return verdict(refused, "not handed out by any DNS answer within its TTL + grace")
