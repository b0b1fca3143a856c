"""`dnsguard resolve`, `explain`, `lists update`: the filtering resolver and its tools."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from dnsguard.config import Config, load_config
from dnsguard.daemon.common import (
    install_signal_handlers,
    notify_systemd,
    reload_config,
    run_loop,
    setup_logging,
)
from dnsguard.daemon.dns_server import DnsListeners, admission_for, allowed_local_networks, tcp_settings
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.resolver import Resolver
from dnsguard.errors import ConfigError
from dnsguard.net.interfaces import connected_networks
from dnsguard.net.neighbours import NeighbourMonitor, NeighbourTable
from dnsguard.net.upstream import TransportOptions, UpstreamGroup
from dnsguard.ops.api import Operations
from dnsguard.ops.observe import DnsObserver, ReloadCounter, TunnelObserver
from dnsguard.policy.clients import MacLookup, is_mac
from dnsguard.policy.engine import Policy
from dnsguard.sources.build import BuildResult, build, build_sync, cached_downloads, fetcher_for, urls_of
from dnsguard.sources.fetch import FetchResult

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
) -> UpstreamGroup | None:
    """The upstream group of `servers` (default: upstreams.servers) under the configured strategy."""
    if servers is None:
        servers = config.upstreams.servers
    if not servers:
        return None
    options = TransportOptions(socket_setup=socket_setup) if socket_setup else None
    group = UpstreamGroup.from_specs(
        servers,
        options=options,
        strategy=config.upstreams.strategy,
        timeout=float(config.upstreams.timeout),
        on_query=observer.on_upstream if observer is not None else None,
    )
    if observer is not None:
        observer.know_upstreams([upstream.name for upstream in group.upstreams])
    return group


def make_conditional(
    config: Config, socket_setup: SocketSetup | None = None, observer: DnsObserver | None = None
) -> dict[str, UpstreamGroup]:
    """A group per upstreams.conditional zone, keyed as the resolver looks names up."""
    groups = {}
    for zone, servers in config.upstreams.conditional.items():
        group = make_upstreams(config, socket_setup, observer, servers)
        if group is not None:
            groups[zone.strip().lower().rstrip(".") or "."] = group
    return groups


def _uses_macs(config: Config) -> bool:
    return any(is_mac(client) for g in config.groups.values() for client in g.clients)


def make_resolver(
    config: Config,
    built: BuildResult,
    socket_setup: SocketSetup | None = None,
    observer: DnsObserver | None = None,
    mac_lookup: MacLookup | None = None,
) -> Resolver:
    resolver = Resolver(
        Policy(config, built.matcher, mac_lookup=mac_lookup),
        make_cache(config),
        make_upstreams(config, socket_setup, observer),
        query_log_size=config.api.query_log_size,
        extended_errors=config.blocking.extended_errors,
        cname_check=config.blocking.cname_check,
        serve_stale=config.cache.serve_stale,
        prefetch=config.cache.prefetch,
        max_udp_size=config.resolver.max_udp_size,
        conditional=make_conditional(config, socket_setup, observer),
    )
    if observer is not None:
        resolver.on_query = observer.on_query
    return resolver


def settle_heap() -> None:
    """Collect the garbage of a list build, then move what survived out of the collector's sight.

    A compiled matcher is millions of long-lived objects; without this, every full collection
    walks them all while queries wait, a latency spike per collection for objects that live until
    the next swap. Unfreezing first lets that collection free the previous matcher's cycles.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def log_build(built: BuildResult) -> None:
    for report in built.sources:
        if report.error:
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


@dataclass
class ResolverService:
    """Listeners + resolver, with reload (SIGHUP) and periodic list refresh."""

    config_path: str
    config: Config
    socket_setup: SocketSetup | None = None
    resolver: Resolver | None = None
    built: BuildResult | None = None
    reloads: ReloadCounter = field(default_factory=ReloadCounter)
    observer: DnsObserver = field(default_factory=DnsObserver)
    list_updated_at: dict[str, float] = field(default_factory=dict)
    """Wall-clock time of each URL list's last refresh in which every source downloaded or was unchanged."""
    list_update_failures: dict[str, int] = field(default_factory=dict)
    paused_until: float = 0.0
    """Wall-clock time until which blocking is paused (API); survives reloads and list swaps."""
    local_networks: Callable[[], Awaitable[Sequence[str]]] = connected_networks
    """What `allow-clients: [local-networks]` means for this daemon; re-read every 30 s."""
    tunnel_networks: list[str] = field(default_factory=list)
    """What `allow-clients: [tunnel]` means for this daemon."""
    listeners: DnsListeners | None = None
    neighbours: NeighbourTable | None = None
    """Address -> MAC, kept current from netlink while a group lists MAC addresses."""

    async def start(self, listen: bool = True) -> None:
        # Start answering from cached list copies at once; fresh downloads follow in the background.
        self.built = await build(self.config, download=False)
        log_build(self.built)
        self.resolver = make_resolver(
            self.config, self.built, self.socket_setup, self.observer, self._mac_lookup(self.config)
        )
        settle_heap()
        if listen:
            self.listeners = DnsListeners(
                self.resolver,
                self.config.resolver.listen,
                admission=admission_for(self.config.resolver, await self._allowed_networks()),
                tcp=tcp_settings(self.config.resolver),
                local_networks=self._allowed_networks,
            )
            await self.listeners.start()
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _allowed_networks(self) -> list[str]:
        """The networks answered per address under the current configuration (see allow-clients)."""
        resolver = self.config.resolver
        local = await self.local_networks() if "local-networks" in resolver.allow_clients else []
        return allowed_local_networks(resolver, local, self.tunnel_networks)

    async def _refresh_loop(self) -> None:
        first = True
        while True:
            if urls_of(self.config):
                try:
                    await self.refresh_lists(force_rebuild=first)
                except Exception:
                    log.exception("list refresh failed; keeping the current lists")
            first = False
            await asyncio.sleep(float(self.config.loading.refresh))

    async def refresh_lists(self, force_rebuild: bool = False) -> None:
        """Download list updates; rebuild and swap the matcher only if something changed."""
        config = self.config
        fetcher = fetcher_for(
            config,
            progress=lambda url, got, total: log.info(
                "downloading %s: %d of %s bytes", url, got, total or "?"
            ),
        )
        results = await fetcher.fetch_all(urls_of(config))
        changed = any(r.status == "downloaded" for r in results.values())
        for result in results.values():
            if result.error:
                log.warning("list download %s: %s (%s)", result.url, result.error, result.status)
        self._account_refresh(config, results)
        if changed or force_rebuild:
            built = await asyncio.to_thread(build_sync, config, results)
            self._swap(config, built)

    def _account_refresh(self, config: Config, results: dict[str, FetchResult]) -> None:
        now = time.time()
        for name, list_config in config.lists.items():
            statuses = [results[s].status for s in list_config.sources if s in results]
            if not statuses:
                continue
            if all(status in ("downloaded", "not-modified") for status in statuses):
                self.list_updated_at[name] = now
            else:
                self.list_update_failures[name] = self.list_update_failures.get(name, 0) + 1

    def _swap(self, config: Config, built: BuildResult) -> None:
        log_build(built)
        self.built = built
        if self.resolver is None:
            return
        policy = Policy(config, built.matcher, mac_lookup=self._mac_lookup(config))
        policy.paused_until = self.paused_until
        self.resolver.policy = policy
        if self.resolver.cache is not None:
            self.resolver.cache.flush()
        settle_heap()

    # -- groups by MAC ----------------------------------------------------------------------

    def _mac_lookup(self, config: Config) -> MacLookup | None:
        """The neighbour table's lookup when a group lists MACs (its monitor started on first need)."""
        if not _uses_macs(config):
            return None
        if self.neighbours is None:
            self.neighbours = NeighbourTable(self._neighbour_changed)
            self._neighbour_monitor = NeighbourMonitor(self.neighbours)
            self._neighbour_monitor.start()
        return self.neighbours.mac_of

    def _neighbour_changed(self, address: str) -> None:
        """An address got another MAC: its queries follow the new MAC's group from the next one on."""
        resolver = self.resolver
        if resolver is not None and resolver.policy.client_moved(address):
            resolver.forget_plans()

    # -- pausing (API) ----------------------------------------------------------------------

    def pause(self, seconds: float) -> float:
        """Answer every query unfiltered for `seconds` (rewrites still apply); returns the end time."""
        self.paused_until = time.time() + seconds
        if self.resolver is not None:
            self.resolver.policy.paused_until = self.paused_until
        log.warning("blocking paused for %.0f s", seconds)
        return self.paused_until

    def resume(self) -> None:
        self.paused_until = 0.0
        if self.resolver is not None:
            self.resolver.policy.paused_until = 0.0
        log.info("blocking resumed")

    @property
    def blocking_enabled(self) -> bool:
        return time.time() >= self.paused_until

    async def reload(self) -> bool:
        """Re-read the configuration; a bad file keeps the last good configuration and says why."""
        new, error = reload_config(self.config_path, self.config)
        if error is not None:
            self.reloads.failed(error)
            log.error("configuration reload failed, keeping the last good one: %s", error)
            return False
        return await self.apply(new)

    async def apply(self, new: Config) -> bool:
        """Switch to a new configuration if its lists and policy build; otherwise keep the current one."""
        try:
            built = await build(new, download=False)
            Policy(new, built.matcher)
        except ConfigError as exc:
            error: str | None = str(exc)
        else:
            error = None
        if error is not None:
            self.reloads.failed(error)
            log.error("configuration reload failed, keeping the last good one: %s", error)
            return False
        old_listen = self.config.resolver.listen
        self.config = new
        if self.listeners is not None:
            admission = admission_for(new.resolver, await self._allowed_networks())
            self.listeners.set_admission(admission, tcp_settings(new.resolver))
        self._swap(new, built)
        if self.resolver is not None:
            old_upstreams = self.resolver.upstreams
            old_conditional = self.resolver.conditional
            self.resolver.upstreams = make_upstreams(new, self.socket_setup, self.observer)
            self.resolver.conditional = make_conditional(new, self.socket_setup, self.observer)
            self.resolver.extended_errors = new.blocking.extended_errors
            self.resolver.cname_check = new.blocking.cname_check
            self.resolver.serve_stale = new.cache.serve_stale
            self.resolver.prefetch = new.cache.prefetch
            self.resolver.max_udp_size = new.resolver.max_udp_size
            if old_upstreams is not None:
                await old_upstreams.close()
            for group in old_conditional.values():
                await group.close()
        if new.resolver.listen != old_listen:
            log.warning("resolver.listen changed: takes effect after a restart")
        self.reloads.succeeded()
        log.info("configuration reloaded")
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._refresher.cancel()
        if self.neighbours is not None:
            await self._neighbour_monitor.stop()
        if self.listeners is not None:
            await self.listeners.close()
        if self.resolver is not None:
            await self.resolver.close()
            if self.resolver.upstreams is not None:
                await self.resolver.upstreams.close()
            for group in self.resolver.conditional.values():
                await group.close()


class ResolveDaemon:
    """`dnsguard resolve` as the operations side (metrics, API, file watch) sees it."""

    kind = "resolve"
    tunnel_shell = None
    connection = None

    def __init__(self, service: ResolverService) -> None:
        self.service = service
        self.tunnel_observer = TunnelObserver()

    @property
    def config(self) -> Config:
        return self.service.config

    @property
    def config_path(self) -> str:
        return self.service.config_path

    @property
    def reloads(self) -> ReloadCounter:
        return self.service.reloads

    @property
    def dns_service(self) -> ResolverService:
        return self.service

    async def reload(self) -> bool:
        return await self.service.reload()


async def _serve(config_path: str, config: Config) -> None:
    service = ResolverService(config_path, config)
    await service.start()
    daemon = ResolveDaemon(service)
    operations = Operations(daemon)
    await operations.start()
    notify_systemd("READY=1\nSTATUS=answering DNS")
    stop = asyncio.Event()
    install_signal_handlers(stop, lambda: asyncio.ensure_future(service.reload()))
    try:
        await stop.wait()
    finally:
        await operations.close()
        await service.close()


def run_resolve(config_path: str) -> int:
    config = load_config(config_path)
    setup_logging(config)
    if not config.upstreams.servers:
        raise ConfigError(
            "no upstream servers: allowed names could not be answered",
            file=config_path,
            key="upstreams.servers",
        )
    run_loop(_serve(config_path, config))
    return 0


def run_explain(config_path: str, name: str, client: str | None) -> int:
    config = load_config(config_path)
    built = build_sync(config, cached_downloads(config))
    policy = Policy(config, built.matcher)
    canonical = name.rstrip(".").lower()
    with contextlib.suppress(UnicodeError):
        canonical = canonical.encode("idna").decode("ascii")
    print(policy.explain(canonical, client or "", time.time()))
    return 0


def run_lists_update(config_path: str) -> int:
    config = load_config(config_path)
    urls = urls_of(config)
    if not urls:
        print("no list sources are URLs; nothing to download")
        return 0
    fetcher = fetcher_for(
        config, progress=lambda url, got, total: print(f"  {url}: {got / 1e6:.1f} MB", flush=True)
    )
    results = asyncio.run(fetcher.fetch_all(urls))
    failed = 0
    for url, result in results.items():
        print(f"{result.status:13s} {url}" + (f"  ({result.error})" if result.error else ""))
        failed += result.status == "failed"
    return 1 if failed else 0
