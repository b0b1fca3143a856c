"""Configuration: YAML (close to blocky's conventions) and wg-quick files, loaded into dataclasses."""

from __future__ import annotations

from pathlib import Path

from dnsguard.config.loader import ByteSize, Duration, load_dataclass, parse_duration, read_text
from dnsguard.config.model import (
    ApiConfig,
    BlockingConfig,
    CacheConfig,
    Config,
    GroupConfig,
    ListConfig,
    PeerConfig,
    RewriteConfig,
    ScheduleConfig,
    TunnelConfig,
    UpstreamsConfig,
)
from dnsguard.config.wgquick import parse_wg_quick
from dnsguard.errors import ConfigError


def _is_wg_quick(path: Path, text: str) -> bool:
    first = next(
        (line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), ""
    )
    return path.suffix == ".conf" or first.lower() == "[interface]"


def load_config(path: str | Path) -> Config:
    """Load a dnsguard YAML file, or a wg-quick .conf (tunnel only); errors carry file:line:key."""
    path = Path(path)
    text = read_text(path)
    if _is_wg_quick(path, text):
        config = Config(tunnel=parse_wg_quick(text, str(path)))
    else:
        config = load_dataclass(text, Config, str(path))
    config.base_dir = str(path.resolve().parent)
    tunnel = config.tunnel
    if tunnel is not None and tunnel.wg_quick:
        wg_path = Path(config.base_dir) / tunnel.wg_quick
        from_file = parse_wg_quick(read_text(wg_path), str(wg_path))
        # Keys given in the YAML win over the wg-quick file's.
        for field in ("private_key", "listen_port", "mtu"):
            if getattr(tunnel, field) is None:
                setattr(tunnel, field, getattr(from_file, field))
        tunnel.address = tunnel.address or from_file.address
        tunnel.dns = tunnel.dns or from_file.dns
        tunnel.peers = tunnel.peers or from_file.peers
    return config


def config_summary(config: Config) -> dict[str, object]:
    """A short, secret-free description of a configuration (for `check` and logs)."""
    return {
        "lists": {name: len(lst.sources) for name, lst in config.lists.items()},
        "groups": {name: len(group.clients) for name, group in config.groups.items()},
        "rewrites": len(config.rewrites),
        "upstreams": list(config.upstreams.servers),
        "tunnel_peers": len(config.tunnel.peers) if config.tunnel else 0,
    }


__all__ = [
    "ApiConfig",
    "BlockingConfig",
    "ByteSize",
    "CacheConfig",
    "Config",
    "ConfigError",
    "Duration",
    "GroupConfig",
    "ListConfig",
    "PeerConfig",
    "RewriteConfig",
    "ScheduleConfig",
    "TunnelConfig",
    "UpstreamsConfig",
    "config_summary",
    "load_config",
    "parse_duration",
    "parse_wg_quick",
]
