"""The filtering resolver's parts made from a configuration: cache, upstreams, core, forwarder."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable, Sequence

from dnsguard.app.client_names import needs_neighbours
from dnsguard.app.lists import BuildResult
from dnsguard.app.observe import DnsObserver
from dnsguard.config import Config
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.resolver import Resolver
from dnsguard.dns.upstream_spec import parse_upstream
from dnsguard.errors import ConfigError
from dnsguard.net.forwarding import Forwarder
from dnsguard.net.interfaces import connected_networks
from dnsguard.net.upstream import TransportOptions, UpstreamGroup, create_upstream
from dnsguard.policy.clients import MacLookup, is_mac
from dnsguard.policy.engine import Policy

log = logging.getLogger("dnsguard.resolve")

SocketSetup = Callable[[socket.socket], None]


def make_cache(config: Config) -> AnswerCache | None:
    c = config.cache
    if not c.enabled or c.max_entries == 0:
        return None
    return AnswerCache(
        max_entries=c.max_entries,
        min_ttl=int(c.min_ttl),
        max_ttl=int(c.max_ttl),
        negative_max_ttl=int(c.max_negative_ttl),
        stale_max_age=float(c.stale_max_age),
    )


def make_upstreams(
    config: Config,
    socket_setup: SocketSetup | None = None,
    observer: DnsObserver | None = None,
    servers: list[str] | None = None,
    key: str = "upstreams.servers",
) -> UpstreamGroup | None:
    """The upstream group of `servers` (default: upstreams.servers) under the configured strategy."""
    if servers is None:
        servers = config.upstreams.servers
    if not servers:
        return None
    options = TransportOptions(socket_setup=socket_setup) if socket_setup else None
    # Parsed one by one so that a bad spec names its key (upstreams.servers[i]) and so its line.
    specs = [parse_upstream(spec, key=f"{key}[{i}]") for i, spec in enumerate(servers)]
    try:
        group = UpstreamGroup(
            [create_upstream(spec, options) for spec in specs],
            strategy=config.upstreams.strategy,
            timeout=float(config.upstreams.timeout),
            on_query=observer.on_upstream if observer is not None else None,
        )
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"upstreams.{exc.key}" if exc.key else "upstreams") from None
    except ValueError as exc:
        raise ConfigError(str(exc), key="upstreams.timeout") from None
    if observer is not None:
        observer.know_upstreams([upstream.name for upstream in group.upstreams])
    return group


def make_conditional(
    config: Config, socket_setup: SocketSetup | None = None, observer: DnsObserver | None = None
) -> dict[str, UpstreamGroup]:
    """A group per upstreams.conditional zone, keyed as the resolver looks names up."""
    groups: dict[str, UpstreamGroup] = {}
    for zone, servers in config.upstreams.conditional.items():
        group = make_upstreams(config, socket_setup, observer, servers, key=f"upstreams.conditional.{zone}")
        if group is not None:
            groups[zone] = group  # folded by the configuration
    return groups


async def host_networks() -> Sequence[str]:
    """The prefixes of the host's interfaces (`local-networks` for `dnsguard resolve`)."""
    return await connected_networks()


def uses_macs(config: Config) -> bool:
    groups = any(is_mac(client) for g in config.groups.values() for client in g.clients)
    return groups or needs_neighbours(config)


def make_resolver(
    config: Config,
    built: BuildResult,
    socket_setup: SocketSetup | None = None,
    observer: DnsObserver | None = None,
    mac_lookup: MacLookup | None = None,
    learned_names: Callable[[str], str] | None = None,
) -> Resolver:
    """The resolver core for `config`: policy, cache and settings, no upstreams (see make_forwarder)."""
    resolver = Resolver(
        Policy(config, built.matcher, mac_lookup=mac_lookup, learned_names=learned_names),
        make_cache(config),
        query_log_size=config.api.query_log_size,
        extended_errors=config.blocking.extended_errors,
        cname_check=config.blocking.cname_check,
        serve_stale=config.cache.serve_stale,
        prefetch=config.cache.prefetch,
        max_udp_size=config.resolver.max_udp_size,
    )
    if observer is not None:
        resolver.on_query = observer.on_query
    return resolver


def make_forwarder(
    config: Config,
    resolver: Resolver,
    socket_setup: SocketSetup | None = None,
    observer: DnsObserver | None = None,
) -> Forwarder:
    """The resolver core with the upstream groups of `config`: what the listeners answer with."""
    conditional = make_conditional(config, socket_setup, observer)
    return Forwarder(resolver, make_upstreams(config, socket_setup, observer), conditional)


def settle_heap(*, full: bool = True) -> None:
    """Collect the garbage of a list build, then move what survived out of the collector's sight.

    A compiled matcher and the daemon's modules are hundreds of thousands of long-lived objects; without
    this, every full collection walks them all while queries wait. `full` (at start) first unfreezes
    everything, so that collection also sees what an earlier freeze hid: it walks the whole heap, about
    20 ms here. A swap uses ``full=False``: it collects only what was made since the last freeze (the new
    state's garbage), which costs about a millisecond; the state it replaced is freed by reference
    counting as soon as the swap drops it (a mapped index holds no reference cycle; a unit test checks
    that the old matcher dies without a collection).
    """
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


def log_build(built: BuildResult) -> None:
    for report in built.sources:
        if report.status == "kept":
            log.warning(
                "list %s: %s: %s; its last good copy (%d rules) stays in use",
                report.list_name,
                report.location,
                report.error,
                report.rules,
            )
        elif report.error:
            log.warning(
                "list %s: %s: %s (%s)", report.list_name, report.location, report.error, report.status
            )
        if report.malformed:
            log.info(
                "list %s: %s: %d malformed lines, e.g. %s",
                report.list_name,
                report.location,
                report.malformed,
                "; ".join(report.examples[:2]),
            )
    total = sum(r.rules for r in built.sources)
    log.info("lists compiled: %d rules from %d sources in %.2f s", total, len(built.sources), built.seconds)
