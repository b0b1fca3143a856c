"""wg-quick .conf files, accepted as they are for the tunnel part of the configuration."""

from __future__ import annotations

import ipaddress

from dnsguard.config.model import PeerConfig, TunnelConfig
from dnsguard.errors import ConfigError

# Keys wg-quick runs or uses for its own bookkeeping; dnsguard does the equivalent itself and
# never executes hook commands from a tunnel file.
_IGNORED_INTERFACE_KEYS = {"preup", "postup", "predown", "postdown", "saveconfig", "table"}


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_wg_quick(text: str, file: str) -> TunnelConfig:
    """Parse a wg-quick configuration; errors name file:line and the key."""
    tunnel = TunnelConfig()
    section: str | None = None
    peer: dict[str, tuple[str, int]] = {}
    interface_seen = False

    def finish_peer() -> None:
        if section != "peer":
            return
        if "publickey" not in peer:
            raise ConfigError("a [Peer] needs PublicKey", file=file, line=peer_line, key="PublicKey")
        keepalive_text, keepalive_line = peer.get("persistentkeepalive", ("0", peer_line))
        if keepalive_text.lower() == "off":
            keepalive_text = "0"
        if not keepalive_text.isdigit() or int(keepalive_text) > 65535:
            raise ConfigError(
                f"{keepalive_text!r} is not 0..65535 or off",
                file=file,
                line=keepalive_line,
                key="PersistentKeepalive",
            )
        allowed = _split(peer.get("allowedips", ("", peer_line))[0])
        for prefix in allowed:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{prefix!r} is not a prefix", file=file, line=peer["allowedips"][1], key="AllowedIPs"
                ) from None
        tunnel.peers.append(
            PeerConfig(
                public_key=peer["publickey"][0],
                allowed_ips=allowed,
                endpoint=peer.get("endpoint", (None, 0))[0],
                preshared_key=peer.get("presharedkey", (None, 0))[0],
                persistent_keepalive=int(keepalive_text),
            )
        )

    peer_line = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            finish_peer()
            name = line[1:-1].strip().lower()
            if name not in ("interface", "peer"):
                raise ConfigError(f"unknown section [{line[1:-1]}]", file=file, line=number)
            if name == "interface":
                if interface_seen:
                    raise ConfigError("[Interface] given twice", file=file, line=number)
                interface_seen = True
            section, peer, peer_line = name, {}, number
            continue
        if "=" not in line:
            raise ConfigError(f"expected 'Key = Value', got {line!r}", file=file, line=number)
        key, value = (part.strip() for part in line.split("=", 1))
        lower = key.lower()
        if section is None:
            raise ConfigError("a key outside any section", file=file, line=number, key=key)
        if section == "peer":
            if lower not in ("publickey", "presharedkey", "endpoint", "allowedips", "persistentkeepalive"):
                raise ConfigError("unknown [Peer] key", file=file, line=number, key=key)
            peer[lower] = (value, number)
            continue
        try:
            if lower == "privatekey":
                tunnel.private_key = value
            elif lower == "address":
                tunnel.address.extend(_split(value))
                for address in _split(value):
                    ipaddress.ip_interface(address)
            elif lower == "dns":
                tunnel.dns.extend(_split(value))
            elif lower == "mtu":
                tunnel.mtu = int(value)
            elif lower == "listenport":
                tunnel.listen_port = int(value)
            elif lower == "fwmark":
                tunnel.fwmark = 0 if value == "off" else int(value, 0)
            elif lower not in _IGNORED_INTERFACE_KEYS:
                raise ConfigError("unknown [Interface] key", file=file, line=number, key=key)
        except ValueError as exc:
            raise ConfigError(f"bad value {value!r}: {exc}", file=file, line=number, key=key) from None
    finish_peer()
    if not interface_seen:
        raise ConfigError("no [Interface] section", file=file, line=1)
    if not tunnel.private_key:
        raise ConfigError("[Interface] needs PrivateKey", file=file, key="PrivateKey")
    try:
        tunnel.validate()
        for peer_config in tunnel.peers:
            peer_config.validate()
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, key=exc.key) from None
    return tunnel
