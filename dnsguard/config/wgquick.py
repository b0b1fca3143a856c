"""wg-quick .conf files, read as wg(8) and wg-quick(8) read them, for the tunnel part of the configuration.

As in wg(8), `AllowedIPs` lines of one peer add up, and so do wg-quick's `Address` and `DNS` lines: a
provider's file with `AllowedIPs = 0.0.0.0/0` and `AllowedIPs = ::/0` on two lines routes both families.
Keys that wg-quick acts on but dnsguard does not (hook commands, SaveConfig, Table) are returned as
warnings with their line: dnsguard never runs commands from a tunnel file, never writes it back, and
routes through its own table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dnsguard.config.addresses import is_ip, parse_hostport
from dnsguard.config.loader import ConfigWarning, Problems, Range
from dnsguard.config.model import (
    FWMARK_RANGE,
    KEEPALIVE_RANGE,
    MTU_RANGE,
    PORT_OR_ANY_RANGE,
    PeerConfig,
    TunnelConfig,
    check_key,
    check_name,
    check_prefix,
)
from dnsguard.errors import ConfigError
from dnsguard.wireguard.keys import PublicKey

_HOOKS = {"preup": "PreUp", "postup": "PostUp", "predown": "PreDown", "postdown": "PostDown"}
_NOT_APPLIED = {
    **{hook: "not run: dnsguard never runs commands from a tunnel file" for hook in _HOOKS},
    "saveconfig": "ignored: dnsguard never writes the tunnel file back",
    "table": "ignored: dnsguard routes through its own table (tunnel.table, 51820 unless set in YAML)",
}
_INTERFACE_KEYS = {"privatekey", "address", "dns", "mtu", "listenport", "fwmark"}
_PEER_KEYS = {"publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"}

Entry = tuple[str, int, str]
"""A value, its line, and its key as written."""
Check = Callable[[Entry, Callable[[str], object]], bool]


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _integer(value: str, bounds: Range, *, base: int = 10) -> int:
    try:
        number = int(value, base)
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    bounds.check(number)
    return number


class _Section:
    """The keys of one [Interface] or [Peer]: each key's values with their lines, in file order."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.values: dict[str, list[Entry]] = {}
        """lowercase key -> [(value, line, key as written)]"""

    def add(self, key: str, value: str, line: int) -> None:
        self.values.setdefault(key.lower(), []).append((value, line, key))

    def last(self, key: str) -> Entry | None:
        """A key that does not accumulate: its last value wins, as in wg(8)."""
        found = self.values.get(key)
        return found[-1] if found else None


def parse_wg_quick(text: str, file: str) -> tuple[TunnelConfig, list[ConfigWarning]]:
    """Parse a wg-quick configuration; every error names file:line and the key, warnings likewise."""
    problems = Problems()
    warnings: list[ConfigWarning] = []
    interface: _Section | None = None
    peers: list[_Section] = []
    current: _Section | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            if name == "interface":
                if interface is not None:
                    problems.errors.append(ConfigError("[Interface] given twice", file=file, line=number))
                interface = current = _Section(number)
            elif name == "peer":
                current = _Section(number)
                peers.append(current)
            else:
                problems.errors.append(ConfigError(f"unknown section [{line[1:-1]}]", file=file, line=number))
                current = None
            continue
        if "=" not in line:
            message = f"expected 'Key = Value', got {line!r}"
            problems.errors.append(ConfigError(message, file=file, line=number))
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if current is None:
            problems.errors.append(ConfigError("a key outside any section", file=file, line=number, key=key))
            continue
        lower = key.lower()
        known = _PEER_KEYS if current is not interface else _INTERFACE_KEYS | set(_NOT_APPLIED)
        if lower not in known:
            kind = "[Interface]" if current is interface else "[Peer]"
            problems.errors.append(ConfigError(f"unknown {kind} key", file=file, line=number, key=key))
            continue
        if lower in _NOT_APPLIED:
            warnings.append(ConfigWarning(_NOT_APPLIED[lower], file=file, line=number, key=key))
            continue
        current.add(key, value, number)

    tunnel = TunnelConfig()
    if interface is None:
        problems.errors.append(ConfigError("no [Interface] section", file=file, line=1))
    else:
        _read_interface(interface, tunnel, warnings, problems, file)
    for section in peers:
        peer = _read_peer(section, problems, file)
        if peer is not None:
            public = section.last("publickey")
            if public is not None:
                tunnel.wg_quick_lines[f"peers[{len(tunnel.peers)}].public-key"] = public[1:]
            tunnel.peers.append(peer)
    problems.raise_any()
    return tunnel, warnings


def _checker(problems: Problems, file: str) -> Check:
    """A function that runs one value's check and records a failure at the value's line."""

    def check(entry: Entry, test: Callable[[str], object]) -> bool:
        value, line, key = entry
        try:
            test(value)
        except ConfigError as exc:
            problems.errors.append(ConfigError(exc.message, file=file, line=line, key=key))
            return False
        except ValueError as exc:
            problems.errors.append(ConfigError(f"bad value {value!r}: {exc}", file=file, line=line, key=key))
            return False
        return True

    return check


def _read_interface(
    section: _Section, tunnel: TunnelConfig, warnings: list[ConfigWarning], problems: Problems, file: str
) -> None:
    check = _checker(problems, file)
    private = section.last("privatekey")
    if private is None:
        problems.errors.append(ConfigError("[Interface] needs PrivateKey", file=file, line=section.line))
    elif check(private, lambda v: check_key(v, "PrivateKey", "a private key")):
        tunnel.private_key = private[0]
    for entry in section.values.get("address", []):
        for address in _split(entry[0]):
            if check((address, entry[1], entry[2]), ipaddress.ip_interface):
                tunnel.address.append(address)
    for entry in section.values.get("dns", []):
        for server in _split(entry[0]):
            # As wg-quick: an address is a resolver, anything else a search domain.
            if is_ip(server) or check((server, entry[1], entry[2]), lambda v: check_name(v, "DNS")):
                tunnel.dns.append(server)
    mtu = section.last("mtu")
    if mtu is not None and check(mtu, lambda v: _integer(v, MTU_RANGE)):
        tunnel.mtu = int(mtu[0])
        tunnel.wg_quick_lines["mtu"] = mtu[1:]
    port = section.last("listenport")
    if port is not None and check(port, lambda v: _integer(v, PORT_OR_ANY_RANGE)):
        tunnel.listen_port = int(port[0])
    mark = section.last("fwmark")
    if mark is not None and mark[0].lower() == "off":
        message = f"'off' ignored: dnsguard always marks its tunnel socket (tunnel.fwmark, {tunnel.fwmark})"
        warnings.append(ConfigWarning(message, file=file, line=mark[1], key=mark[2]))
    elif mark is not None and check(mark, lambda v: _integer(v, FWMARK_RANGE, base=0)):
        tunnel.fwmark = int(mark[0], 0)


def _read_peer(section: _Section, problems: Problems, file: str) -> PeerConfig | None:
    check = _checker(problems, file)
    ok = True
    public = section.last("publickey")
    if public is None:
        problems.errors.append(ConfigError("a [Peer] needs PublicKey", file=file, line=section.line))
        ok = False
    else:
        ok = check(public, lambda v: check_key(v, "PublicKey", "a public key")) and ok
    preshared = section.last("presharedkey")
    if preshared is not None:
        ok = check(preshared, lambda v: check_key(v, "PresharedKey", "a preshared key")) and ok
    endpoint = section.last("endpoint")
    if endpoint is not None:
        ok = check(endpoint, lambda v: parse_hostport(v, 51820, "Endpoint")) and ok
    allowed: list[str] = []
    for entry in section.values.get("allowedips", []):  # every line adds, as in wg(8)
        for prefix in _split(entry[0]):
            if check((prefix, entry[1], entry[2]), lambda v: check_prefix(v, "AllowedIPs")):
                allowed.append(prefix)
            else:
                ok = False
    keepalive = 0
    keepalive_entry = section.last("persistentkeepalive")
    if keepalive_entry is not None and keepalive_entry[0].lower() != "off":
        if check(keepalive_entry, lambda v: _integer(v, KEEPALIVE_RANGE)):
            keepalive = int(keepalive_entry[0])
        else:
            ok = False
    if not ok or public is None:
        return None
    return PeerConfig(
        public_key=PublicKey(public[0].strip()),  # checked above
        allowed_ips=allowed,
        endpoint=endpoint[0] if endpoint else None,
        preshared_key=preshared[0] if preshared else None,
        persistent_keepalive=keepalive,
    )
