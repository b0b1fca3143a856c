"""Configuration: YAML (close to blocky's conventions) and wg-quick files, loaded into dataclasses.

`load_config` is the one validation path: `dnsguard check`, every daemon's start and every reload call
it, so a file that `check` accepts is a file the daemons start with, and a reload applies exactly what
`check` would accept. Every error names file:line and the key; all of a file's errors come at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from dnsguard.config.addresses import is_ip
from dnsguard.config.loader import (
    ByteSize,
    ConfigWarning,
    Document,
    Duration,
    Problems,
    load_dataclass,
    load_document,
    parse_duration,
    read_text,
)
from dnsguard.config.managed import apply_managed_lists
from dnsguard.config.model import (
    EXAMPLE_PRIVATE_KEYS,
    ApiConfig,
    BlockingConfig,
    CacheConfig,
    ClientConfig,
    Config,
    FirewallConfig,
    GroupConfig,
    ListConfig,
    PeerConfig,
    RewriteConfig,
    ScheduleConfig,
    TunnelConfig,
    UpstreamsConfig,
)
from dnsguard.config.services import apply_services
from dnsguard.config.wgquick import parse_wg_quick
from dnsguard.errors import ConfigError, ConfigErrors


def _is_wg_quick(path: Path, text: str) -> bool:
    first = next(
        (line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")), ""
    )
    return path.suffix == ".conf" or first.lower() == "[interface]"


def is_url_source(source: str) -> bool:
    """A list source that is downloaded (the list builder fetches these; `check` does not)."""
    return source.startswith(("http://", "https://"))


def is_inline_source(source: str) -> bool:
    """A list source that is the rules themselves (YAML block text)."""
    return "\n" in source


def upstream_servers(config: Config) -> list[str]:
    """Where allowed queries go: `upstreams.servers`, else the tunnel's DNS addresses (wg-quick's DNS =)."""
    if config.upstreams.servers:
        return list(config.upstreams.servers)
    if config.tunnel is not None:
        return [entry for entry in config.tunnel.dns if is_ip(entry)]
    return []


def load_config(path: str | Path) -> Config:
    """Load and validate a dnsguard YAML file, or a wg-quick .conf (tunnel only).

    Raises ConfigError (ConfigErrors when there are several), each naming file:line and the key.
    """
    path = Path(path)
    text = read_text(path)
    document: Document | None = None
    if _is_wg_quick(path, text):
        tunnel, warnings = parse_wg_quick(text, str(path))
        config = Config(tunnel=tunnel)
        config.warnings.extend(warnings)
    else:
        config, document = load_document(text, Config, str(path))
    config.base_dir = str(path.resolve().parent)
    problems = Problems()
    if config.tunnel is not None and config.tunnel.wg_quick:
        wg_path = Path(config.base_dir) / config.tunnel.wg_quick
        try:
            wg_text = read_text(wg_path)
        except ConfigError as exc:
            message = f"{wg_path}: {exc.message}"
            problems.errors.append(document.error(message, "tunnel.wg-quick") if document else exc)
        else:
            with problems.check():  # errors inside the wg-quick file name its own lines
                _merge_wg_quick(config, config.tunnel, wg_text, str(wg_path))
    # Checks of the whole configuration: their keys are YAML paths, located in the document.
    whole = Problems()
    if config.tunnel is not None and not problems.errors:
        with whole.check():
            try:
                config.tunnel.check_complete()
            except ConfigError as exc:
                raise _prefixed(exc, "tunnel") from None
    services = Problems()
    with services.check():
        apply_services(config)  # first: the sources check below then covers the services' files
    for error in _flatten(services.errors):  # a catalogue file's own errors keep its file and line
        (problems if error.file else whole).errors.append(error)
    with whole.check():
        _check_list_sources(config)
    # Filtering forwards every allowed name: without an upstream (a tunnel daemon's default is the
    # tunnel's DNS =) those names would go unanswered.
    if (config.lists or config.groups or config.rewrites) and not upstream_servers(config):
        whole.errors.append(
            ConfigError(
                "no upstream servers (and no tunnel DNS address): allowed names could not be answered",
                key="upstreams.servers",
            )
        )
    with whole.check():
        apply_managed_lists(config)
    if config.tunnel is not None and config.tunnel.private_key in EXAMPLE_PRIVATE_KEYS:
        message = "a shipped example key, known to everyone: replace it with the output of `dnsguard keygen`"
        config.warnings.append(_warning_at(document, str(path), message, "tunnel.private-key"))
    for error in _flatten(whole.errors):
        if document is not None:
            problems.errors.append(document.error(error.message, error.key or ""))
        else:
            problems.errors.append(_wg_quick_error(config, error, str(path)))
    problems.raise_any()
    return config


def _wg_quick_error(config: Config, error: ConfigError, file: str) -> ConfigError:
    """An error about a tunnel read from a wg-quick file, at the file's line and key when it has them."""
    key = (error.key or "").removeprefix("tunnel.")
    lines = config.tunnel.wg_quick_lines if config.tunnel is not None else {}
    if key in lines:
        line, written = lines[key]
        return ConfigError(error.message, file=file, line=line, key=written)
    return ConfigError(error.message, file=file, key=error.key)


def _warning_at(document: Document | None, file: str, message: str, key: str) -> ConfigWarning:
    if document is None:
        return ConfigWarning(message, file=file, key=key)
    located = document.error(message, key)
    return ConfigWarning(message, file=located.file, line=located.line, key=key)


def _flatten(errors: list[ConfigError]) -> list[ConfigError]:
    flat: list[ConfigError] = []
    for error in errors:
        flat.extend(error.errors if isinstance(error, ConfigErrors) else (error,))
    return flat


def _prefixed(error: ConfigError, prefix: str) -> ConfigError:
    found = [
        ConfigError(e.message, file=e.file, line=e.line, key=f"{prefix}.{e.key}" if e.key else prefix)
        for e in _flatten([error])
    ]
    return found[0] if len(found) == 1 else ConfigErrors(found)


def _merge_wg_quick(config: Config, tunnel: TunnelConfig, text: str, file: str) -> None:
    """Fill the tunnel from its wg-quick file; keys given in the YAML win over the file's."""
    from_file, warnings = parse_wg_quick(text, file)
    config.warnings.extend(warnings)
    for field in ("private_key", "listen_port", "mtu"):
        if getattr(tunnel, field) is None:
            setattr(tunnel, field, getattr(from_file, field))
    tunnel.address = tunnel.address or from_file.address
    tunnel.dns = tunnel.dns or from_file.dns
    tunnel.peers = tunnel.peers or from_file.peers


def _check_list_sources(config: Config) -> None:
    """Local list files exist and are regular files; URLs are well formed (not fetched here). The same
    for the firewall's DoH lists, which take the same sources."""
    problems = Problems()
    base = Path(config.base_dir)
    keyed = [
        (f"lists.{name}.sources[{index}]", source)
        for name, list_config in config.lists.items()
        for index, source in enumerate(list_config.sources)
    ]
    keyed += [
        (f"firewall.doh-lists[{i}]", source) for i, source in enumerate(config.firewall.doh_lists or [])
    ]
    for key, source in keyed:
        error = _source_problem(base, source)
        if error is not None:
            problems.errors.append(ConfigError(error, key=key))
    problems.raise_any()


def _source_problem(base: Path, source: str) -> str | None:
    """What is wrong with one list source, or None."""
    if is_inline_source(source):
        return None
    if is_url_source(source):
        try:
            host = urlsplit(source).hostname
        except ValueError as exc:
            host, reason = None, str(exc)
        else:
            reason = "no host"
        return None if host else f"{source!r} is not a URL: {reason}"
    if "://" in source:
        return f"{source!r}: only http:// and https:// sources are downloaded"
    path = base / source
    if not path.exists():
        return f"{source!r}: no such file ({path})"
    if not path.is_file():
        return f"{source!r} is not a regular file ({path})"
    if not os.access(path, os.R_OK):
        return f"{source!r} cannot be read ({path})"
    return None


def check_startable(config: Config, path: str | Path) -> None:
    """Refuse a valid file that no daemon starts with: `up` and `server` need a tunnel, `resolve` upstreams.

    Not part of load_config: tools (explain, tests) load partial files, and each daemon checks its own need.
    """
    if config.tunnel is None and not config.upstreams.servers:
        raise ConfigError(
            "neither a tunnel nor upstream servers: no daemon would start with this file"
            " (`up` and `server` need a tunnel, `resolve` needs upstreams)",
            file=str(path),
            key="upstreams.servers",
        )


def config_summary(config: Config) -> dict[str, object]:
    """A short, secret-free description of a configuration (for `check` and logs)."""
    return {
        "lists": {name: len(lst.sources) for name, lst in config.lists.items()},
        "groups": {name: len(group.clients) for name, group in config.groups.items()},
        "rewrites": len(config.rewrites),
        "upstreams": upstream_servers(config),
        "tunnel_peers": len(config.tunnel.peers) if config.tunnel else 0,
    }


__all__ = [
    "ApiConfig",
    "BlockingConfig",
    "ByteSize",
    "CacheConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "Duration",
    "FirewallConfig",
    "GroupConfig",
    "ListConfig",
    "PeerConfig",
    "RewriteConfig",
    "ScheduleConfig",
    "TunnelConfig",
    "UpstreamsConfig",
    "check_startable",
    "config_summary",
    "is_inline_source",
    "is_url_source",
    "load_config",
    "load_dataclass",
    "parse_duration",
    "parse_wg_quick",
    "upstream_servers",
]
