"""Pieces shared by the client and server daemons: config to device, endpoints, signals, logging."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from dnsguard.config import Config, PeerConfig, TunnelConfig, load_config
from dnsguard.config.addresses import parse_hostport
from dnsguard.errors import ConfigError
from dnsguard.wireguard.device import Device

log = logging.getLogger("dnsguard")

DEFAULT_PORT = 51820
DEFAULT_MTU = 1420


def resolve_endpoint(text: str) -> tuple[str, int]:
    """'host:port' (name or address) to a numeric (address, port); names resolve via the system."""
    host, port = parse_hostport(text, DEFAULT_PORT, "Endpoint")
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve endpoint {host!r}: {exc}", key="Endpoint") from None
    address = infos[0][4]
    return str(address[0]), int(address[1])


def peer_arguments(peer: PeerConfig) -> dict[str, object]:
    """Keyword arguments of Device.add_peer / update_peer for a configured peer."""
    return {
        "preshared_key": peer.preshared_key,
        "allowed_ips": peer.allowed_ips,
        "endpoint": resolve_endpoint(peer.endpoint) if peer.endpoint else None,
        "persistent_keepalive": peer.persistent_keepalive,
    }


def build_device(tunnel: TunnelConfig, now: float, state_dir: Path | None = None) -> Device:
    """A WireGuard device with the configured identity and peers."""
    if not tunnel.private_key:
        raise ConfigError("the tunnel needs a private key", key="tunnel.private-key")
    last_timestamp = b""
    if state_dir is not None:
        try:
            last_timestamp = (state_dir / "last-timestamp").read_bytes()
        except OSError:
            last_timestamp = b""
    device = Device(
        tunnel.private_key,
        rekey_after_time=tunnel.rekey_after_time,
        listen_port=tunnel.listen_port,
        mtu=tunnel.mtu or DEFAULT_MTU,
        last_timestamp=last_timestamp,
    )
    for peer in tunnel.peers:
        device.add_peer(peer.public_key, now=now, **peer_arguments(peer))  # type: ignore[arg-type]
    return device


def sync_peers(device: Device, tunnel: TunnelConfig, now: float) -> tuple[int, int, int]:
    """Make the device's peers match the configuration; untouched peers keep their sessions.

    Returns (added, removed, updated).
    """
    wanted = {peer.public_key: peer for peer in tunnel.peers}
    from dnsguard.wireguard.keys import decode_key, encode_key

    canonical = {encode_key(decode_key(key, what="peer public key")): peer for key, peer in wanted.items()}
    added = removed = updated = 0
    for key in list(device.peers):
        if key not in canonical:
            device.remove_peer(key)
            removed += 1
    for key, peer in canonical.items():
        arguments = peer_arguments(peer)
        if key in device.peers:
            device.update_peer(key, now=now, **arguments)  # type: ignore[arg-type]
            updated += 1
        else:
            device.add_peer(key, now=now, **arguments)  # type: ignore[arg-type]
            added += 1
    return added, removed, updated


def require_tunnel(config: Config) -> TunnelConfig:
    if config.tunnel is None:
        raise ConfigError("this command needs a 'tunnel' section (or a wg-quick .conf)", key="tunnel")
    return config.tunnel


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.logging.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level.upper())
    # Every daemon calls this once at start, right after load_config: the place to say what the
    # configuration asks for that dnsguard does not apply (wg-quick hooks, Table, SaveConfig...).
    for warning in config.warnings:
        log.warning("%s", warning)


def run_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when installed (lower wake-up latency), else asyncio.

    Only for code without netlink: pyroute2's asyncio sockets are AF_NETLINK, which uvloop's
    datagram transport refuses, so the tunnel daemons stay on the asyncio loop.
    """
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    uvloop.run(coroutine)


def notify_systemd(state: str) -> None:
    """Send an sd_notify message (e.g. "READY=1") when systemd started us as Type=notify; else nothing."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)


def install_signal_handlers(stop: asyncio.Event, reload: Callable[[], object]) -> None:
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)


def reload_config(path: str, current: Config) -> tuple[Config, str | None]:
    """The new configuration, or the current one and the reason when the file is bad."""
    try:
        return load_config(path), None
    except ConfigError as exc:
        return current, str(exc)
