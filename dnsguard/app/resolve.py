"""`dnsguard resolve`: the filtering resolver service (listeners, core, upstreams, lists, reloads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dnsguard.app.api import Operations
from dnsguard.app.client_names import ClientDirectory
from dnsguard.app.common import (
    Background,
    Prepared,
    Reloader,
    install_signal_handlers,
    notify_systemd,
    run_daemon,
    setup_logging,
)
from dnsguard.app.dns_firewall import FirewallService
from dnsguard.app.lists import (
    DOH_LISTS,
    BuildResult,
    build,
    build_from,
    doh_urls_of,
    fetcher_for,
    list_urls_of,
    urls_of,
)
from dnsguard.app.observe import DnsObserver, ReloadCounter, TunnelObserver
from dnsguard.app.querylog import QueryLog
from dnsguard.app.resolver_build import (
    SocketSetup,
    host_networks,
    log_build,
    make_cache,
    make_conditional,
    make_forwarder,
    make_resolver,
    make_upstreams,
    settle_heap,
    uses_macs,
)
from dnsguard.config import Config, load_config
from dnsguard.dns.admission import ClientAdmission
from dnsguard.dns.cache import AnswerCache
from dnsguard.dns.resolver import Resolver
from dnsguard.errors import ConfigError
from dnsguard.net.dns_listeners import (
    DnsListeners,
    TcpSettings,
    admission_for,
    allowed_local_networks,
    tcp_settings,
)
from dnsguard.net.downloads import FetchResult
from dnsguard.net.forwarding import Forwarder
from dnsguard.net.upstream import UpstreamGroup
from dnsguard.policy.clients import MacLookup
from dnsguard.policy.engine import Policy

if TYPE_CHECKING:
    from dnsguard.net.neighbours import NeighbourTable

log = logging.getLogger("dnsguard.resolve")


@dataclass
class DnsState:
    """Everything a reload swaps in the resolver, built aside first: a failure leaves the current one."""

    config: Config
    built: BuildResult
    policy: Policy
    upstreams: UpstreamGroup | None
    conditional: dict[str, UpstreamGroup]
    cache: AnswerCache | None
    """The answer cache to use: a new one when the cache settings changed, else the current one."""
    replaces_upstreams: bool
    """False for a list refresh, which keeps the current upstream groups."""
    admission: tuple[ClientAdmission, TcpSettings] | None = None
    """The listeners' new limits (None: a list refresh, or no listeners)."""

    async def discard(self) -> None:
        """Release what was made for this state when it is not swapped in."""
        if self.replaces_upstreams:
            for group in [self.upstreams, *self.conditional.values()]:
                if group is not None:
                    await group.close()


def _cache_settings(config: Config) -> object:
    c = config.cache
    return (c.enabled, c.max_entries, c.min_ttl, c.max_ttl, c.max_negative_ttl, c.stale_max_age)


@dataclass
class ResolverService:
    """Listeners + resolver, with reload (SIGHUP, file change, API) and periodic list refresh.

    It never reads the configuration file: its daemon's Reloader does, and hands it a Config."""

    config: Config
    socket_setup: SocketSetup | None = None
    resolver: Resolver | None = None
    forwarder: Forwarder | None = None
    """The resolver with its upstream groups (the listeners' answerer)."""
    built: BuildResult | None = None
    reloads: ReloadCounter = field(default_factory=ReloadCounter)
    observer: DnsObserver = field(default_factory=DnsObserver)
    list_updated_at: dict[str, float] = field(default_factory=dict)
    """Wall-clock time of each URL list's last refresh in which every source downloaded or was unchanged."""
    list_update_failures: dict[str, int] = field(default_factory=dict)
    """Builds in which a source of the list failed or was rejected (its last good copy stayed), per list."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held from building a new state to swapping it in, so that two reloads never interleave."""
    local_networks: Callable[[], Awaitable[Sequence[str]]] = host_networks
    """What `allow-clients: [local-networks]` means for this daemon; re-read every 30 s."""
    tunnel_networks: list[str] = field(default_factory=list)
    """What `allow-clients: [tunnel]` means for this daemon."""
    listeners: DnsListeners | None = None
    neighbours: NeighbourTable | None = None
    """Address -> MAC, kept current from netlink while a group lists MAC addresses."""
    client_names: ClientDirectory | None = None
    firewall: FirewallService | None = None
    """The firewall fed by this resolver's answers, when `firewall.enabled` (see app/dns_firewall.py)."""
    querylog: QueryLog | None = None
    """The lasting query log (its hand-off runs even when it writes nothing: it counts the answers)."""

    def __post_init__(self) -> None:
        self._background = Background(log)
        """A reload's follow-ups: the query log's writer replaced, the previous upstreams closed."""

    async def start(self, listen: bool = True) -> None:
        # Start answering from cached list copies at once (a compiled index if the sources did not
        # change); fresh downloads follow in the background.
        self.built = await build(self.config, download=False)
        log_build(self.built)
        self._account_build(self.built)
        # Made before the resolver, so that the parts built with it can be handed `client_names.name_of`.
        self.client_names = ClientDirectory(
            self.config, self._mac_lookup(self.config), self._neighbour_addresses, self._group_name
        )
        self.client_names.start()
        self.resolver = make_resolver(
            self.config,
            self.built,
            self.socket_setup,
            self.observer,
            self._mac_lookup(self.config),
            self.client_names.name_of,
        )
        self.forwarder = make_forwarder(self.config, self.resolver, self.socket_setup, self.observer)
        self.querylog = QueryLog(self.resolver, self.config)
        self.querylog.start()
        settle_heap()
        if listen:
            self.listeners = DnsListeners(
                self.forwarder,
                self.config.resolver.listen,
                admission=admission_for(self.config.resolver, await self._allowed_networks()),
                tcp=tcp_settings(self.config.resolver),
                local_networks=self._allowed_networks,
            )
            await self.listeners.start()
        self._refresher = asyncio.create_task(self._refresh_loop())

    async def _allowed_networks(self, config: Config | None = None) -> list[str]:
        """The networks answered per address under a configuration (see allow-clients)."""
        resolver = (config or self.config).resolver
        local = await self.local_networks() if "local-networks" in resolver.allow_clients else []
        return allowed_local_networks(resolver, local, self.tunnel_networks)

    async def _refresh_loop(self) -> None:
        first = True
        while True:
            if urls_of(self.config):
                try:
                    await self.refresh_lists(force_rebuild=first)
                except Exception as exc:
                    log.error("list refresh failed; keeping the current lists: %s", exc)
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
        list_urls = set(list_urls_of(config))
        changed = any(r.status == "downloaded" for r in results.values() if r.url in list_urls)
        for result in results.values():
            if result.error:
                log.warning("list download %s: %s (%s)", result.url, result.error, result.status)
        self._account_refresh(config, results)
        if self.firewall is not None:
            await self.firewall.refresh_doh(results)
        if not (changed or force_rebuild):
            return
        async with self.lock:
            if self.config is not config:
                return  # a reload swapped in another configuration (and its lists) meanwhile
            state = await self.prepare(config, fetched=results)
            self.commit(state)

    def _account_refresh(self, config: Config, results: dict[str, FetchResult]) -> None:
        now = time.time()
        named = [(name, list_config.sources) for name, list_config in config.lists.items()]
        named.append((DOH_LISTS, doh_urls_of(config)))
        for name, sources in named:
            statuses = [results[s].status for s in sources if s in results]
            if not statuses:
                continue
            if all(status in ("downloaded", "not-modified") for status in statuses):
                self.list_updated_at[name] = now
            else:
                self.list_update_failures[name] = self.list_update_failures.get(name, 0) + 1

    def _account_build(self, built: BuildResult) -> None:
        """Count the lists whose local sources are served from a last good copy (or not at all)."""
        for report in built.sources:
            if report.status in ("kept", "error"):
                name = report.list_name
                self.list_update_failures[name] = self.list_update_failures.get(name, 0) + 1

    # -- building aside and swapping in --------------------------------------------------------

    async def prepare(self, new: Config, fetched: dict[str, FetchResult] | None = None) -> DnsState:
        """Build the state for `new` without touching the running one; raises what is wrong with it.

        With `fetched` (a list refresh), only the lists are new: the upstreams and cache stay.
        """
        if self.resolver is None or self.forwarder is None:
            raise ConfigError("the resolver is not running", key="resolver")
        if fetched is not None:
            built = await build_from(new, fetched, reuse=self.built)
        else:
            built = await build(new, download=False, reuse=self.built)
        policy = Policy(
            new,
            built.matcher,
            mac_lookup=self._mac_lookup(new),
            learned_names=self.client_names.name_of if self.client_names is not None else None,
        )
        cache = self.resolver.cache
        if _cache_settings(new) != _cache_settings(self.config):
            cache = make_cache(new)
        forwarder = self.forwarder
        if fetched is not None:
            return DnsState(
                new,
                built,
                policy,
                forwarder.upstreams,
                forwarder.conditional,
                cache,
                replaces_upstreams=False,
            )
        admission = None
        if self.listeners is not None:
            admission = (
                admission_for(new.resolver, await self._allowed_networks(new)),
                tcp_settings(new.resolver),
            )
        upstreams = make_upstreams(new, self.socket_setup, None)
        try:
            conditional = make_conditional(new, self.socket_setup, None)
        except BaseException:
            if upstreams is not None:
                await upstreams.close()
            raise
        return DnsState(new, built, policy, upstreams, conditional, cache, True, admission)

    def commit(self, state: DnsState) -> None:
        """Swap a prepared state in, in one step: nothing here awaits or can fail on bad input."""
        resolver, forwarder = self.resolver, self.forwarder
        assert resolver is not None and forwarder is not None
        old_groups = [forwarder.upstreams, *forwarder.conditional.values()]
        old_cache = resolver.cache
        state.policy.paused_until = resolver.policy.paused_until  # a pause survives reloads and list swaps
        state.policy.group_paused_until = resolver.policy.group_paused_until
        resolver.policy = state.policy
        resolver.cache = state.cache
        if state.cache is not None and state.cache is old_cache:
            # Answers cached under the old lists may now be blocked (or a rewrite may have changed).
            state.cache.flush()
        new = state.config
        resolver.extended_errors = new.blocking.extended_errors
        resolver.cname_check = new.blocking.cname_check
        resolver.serve_stale = new.cache.serve_stale
        resolver.prefetch = new.cache.prefetch
        resolver.max_udp_size = new.resolver.max_udp_size
        if state.admission is not None and self.listeners is not None:
            self.listeners.set_admission(*state.admission)
        if state.replaces_upstreams:
            forwarder.upstreams = state.upstreams
            forwarder.conditional = state.conditional
            for group in [state.upstreams, *state.conditional.values()]:
                if group is not None:
                    group.on_query = self.observer.on_upstream
                    self.observer.know_upstreams([u.name for u in group.upstreams])
        if state.replaces_upstreams and self.client_names is not None:
            self.client_names.reconfigure(new, self._mac_lookup(new))
        if state.replaces_upstreams and self.querylog is not None:
            self._background.spawn(self.querylog.reconfigure(new), "the query log's new settings")
        if new.resolver.listen != self.config.resolver.listen:
            log.warning("resolver.listen changed: takes effect after a restart")
        self.config = new
        self.built = state.built
        log_build(state.built)
        self._account_build(state.built)
        settle_heap(full=False)
        if state.replaces_upstreams:
            for group in old_groups:
                if group is not None:
                    # Closed in the background: queries in flight on the old group finish on it.
                    self._background.spawn(group.close(), "closing the previous upstreams")

    async def prepare_reload(self, new: Config) -> Prepared:
        """`prepare` for the shared reload path: the swap, and what to release if it does not happen."""
        state = await self.prepare(new)
        return Prepared(lambda: self.commit(state), state.discard)

    # -- groups by MAC ----------------------------------------------------------------------

    def _mac_lookup(self, config: Config) -> MacLookup | None:
        """The neighbour table's lookup when a group lists MACs (its monitor started on first need)."""
        if not uses_macs(config):
            return None
        if self.neighbours is None:
            # Imported on first use: pyroute2 costs about 9 MB of resident memory, paid only with MAC groups.
            from dnsguard.net.neighbours import NeighbourMonitor, NeighbourTable

            self.neighbours = NeighbourTable(self._neighbour_changed)
            self._neighbour_monitor = NeighbourMonitor(self.neighbours)
            self._neighbour_monitor.start()
        return self.neighbours.mac_of

    def _neighbour_addresses(self) -> list[str]:
        return self.neighbours.addresses() if self.neighbours is not None else []

    def _group_name(self, address: str) -> str:
        return self.resolver.policy.group_for(address).name if self.resolver is not None else ""

    def _neighbour_changed(self, address: str) -> None:
        """An address got another MAC: its queries follow the new MAC's group from the next one on."""
        resolver = self.resolver
        if resolver is not None and resolver.policy.client_moved(address):
            resolver.forget_plans()

    # -- pausing (API) ----------------------------------------------------------------------

    @property
    def paused_until(self) -> float:
        """Wall-clock end of a pause of blocking (API): the policy in use holds it; commit hands it on."""
        return self.resolver.policy.paused_until if self.resolver is not None else 0.0

    def pause(self, seconds: float, group: str | None = None) -> float:
        """Answer queries unfiltered for `seconds` (math.inf: until resumed), of every group or of one;
        rewrites still apply. Returns the end time."""
        until = time.time() + seconds
        if self.resolver is not None:
            if group is None:
                self.resolver.policy.paused_until = until
            else:
                self.resolver.policy.group_paused_until[group] = until
                self.resolver.forget_plans()  # replies remembered for the group's clients were filtered
        what = "blocking" if group is None else f"blocking for group {group}"
        log.warning("%s paused %s", what, "until resumed" if seconds == math.inf else f"for {seconds:.0f} s")
        return until

    def resume(self, group: str | None = None) -> None:
        """End a pause: the global one and every group's (group None), or one group's."""
        if self.resolver is not None:
            policy = self.resolver.policy
            if group is None:
                policy.paused_until = 0.0
                policy.group_paused_until.clear()
            else:
                policy.group_paused_until.pop(group, None)
        log.info("blocking resumed%s", "" if group is None else f" for group {group}")

    @property
    def blocking_enabled(self) -> bool:
        return time.time() >= self.paused_until

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._refresher.cancel()
        # A reload's follow-ups finish first: one of them may be starting the query log's writer.
        await self._background.drain()
        if self.client_names is not None:
            await self.client_names.close()
        if self.neighbours is not None:
            await self._neighbour_monitor.stop()
        if self.listeners is not None:
            await self.listeners.close()
        if self.querylog is not None:
            await self.querylog.close()
        if self.forwarder is not None:
            await self.forwarder.close()


def _require_upstreams(config: Config) -> None:
    if not config.upstreams.servers:
        raise ConfigError("no upstream servers: allowed names could not be answered", key="upstreams.servers")


class ResolveDaemon:
    """`dnsguard resolve` as the operations side (metrics, API, file watch) sees it."""

    kind = "resolve"
    tunnel_shell = None
    connection = None

    def __init__(self, config_path: str, service: ResolverService) -> None:
        self.service = service
        self.tunnel_observer = TunnelObserver()
        self.reloader = Reloader(config_path, service.reloads, self._prepare, lock=service.lock)

    @property
    def config(self) -> Config:
        return self.service.config

    @property
    def config_path(self) -> str:
        return self.reloader.config_path

    @property
    def reloads(self) -> ReloadCounter:
        return self.service.reloads

    @property
    def dns_service(self) -> ResolverService:
        return self.service

    async def _prepare(self, new: Config) -> Prepared:
        _require_upstreams(new)
        prepared = await self.service.prepare_reload(new)
        firewall = self.service.firewall
        if firewall is None:
            return prepared

        def commit() -> None:
            prepared.commit()
            firewall.reconfigure_soon(new)

        return Prepared(commit, prepared.discard)

    async def reload(self) -> bool:
        """Re-read the configuration; anything wrong with it leaves everything as it was (False)."""
        return await self.reloader.reload()


async def _serve(config_path: str, config: Config) -> None:
    service = ResolverService(config)
    await service.start()
    if config.firewall.enabled:
        interface = config.firewall.interface
        assert interface is not None  # checked by run_resolve
        service.firewall = FirewallService(config, interface, [])
        await service.firewall.start()
        assert service.resolver is not None
        service.resolver.on_addresses = service.firewall.on_addresses
        assert service.forwarder is not None
        service.forwarder.before_answer = service.firewall.before_answer
    daemon = ResolveDaemon(config_path, service)
    operations = Operations(daemon)
    await operations.start()
    notify_systemd("READY=1\nSTATUS=answering DNS")
    stop = asyncio.Event()
    install_signal_handlers(stop, daemon.reload)
    try:
        await stop.wait()
    finally:
        await operations.close()
        if service.firewall is not None:
            await service.firewall.close()
        await service.close()


def run_resolve(config_path: str) -> int:
    config = load_config(config_path)
    setup_logging(config)
    try:
        _require_upstreams(config)
        if config.firewall.enabled and config.firewall.interface is None:
            raise ConfigError(
                "`dnsguard resolve` filters connections leaving one interface: name it",
                key="firewall.interface",
            )
    except ConfigError as exc:
        raise ConfigError(exc.message, file=config_path, key=exc.key) from None
    run_daemon(_serve(config_path, config), config.performance.busy_poll, uvloop=True)
    return 0
