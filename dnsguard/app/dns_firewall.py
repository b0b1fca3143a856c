"""The firewall fed by DNS, composed: the resolver's answers -> HandedOut -> batches -> the kernel's sets.

The resolver calls `FirewallService.on_addresses` for each upstream answer (a dictionary look-up per
address). A client connects as soon as it has the answer, so an answer that hands out a new address
waits (`before_answer`, asyncio only: the serving loop goes on) for the kernel update that adds it: a
task sends everything pending as one nftables transaction in a worker thread (about a millisecond), and
whatever arrives meanwhile goes in the next one (group commit: the busier, the bigger the batch).
Refreshes of known addresses wait for nobody; they go out with the next batch, at most BATCH_INTERVAL
later. Cache hits cost nothing here: the first answer's timeout covers every copy the cache hands out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dnsguard.app.common import Background, one_line
from dnsguard.app.lists import fetcher_for, is_inline, is_url
from dnsguard.config import Config
from dnsguard.config.addresses import is_ip
from dnsguard.config.shipped import shipped_path
from dnsguard.dns.handed_out import HandedOut
from dnsguard.dns.upstream_spec import parse_upstream
from dnsguard.errors import DnsguardError
from dnsguard.lifecycle.clock import boottime
from dnsguard.net.dns_firewall import (
    FIREWALL_TABLE,
    DnsFirewallRules,
    FakeNftables,
    Nftables,
    doh_script,
    element_script,
    firewall_present,
    kernel_seconds_left,
    read_counters,
)
from dnsguard.net.downloads import FetchResult
from dnsguard.policy.clients import is_mac
from dnsguard.policy.firewall import explain_address, parse_address_list

log = logging.getLogger("dnsguard.firewall")

BATCH_INTERVAL = 0.05
BATCH_SIZE = 256
COUNTER_INTERVAL = 5.0
"""Seconds between reads of the kernel's counters (the API and metrics show the last read)."""
DOH_LIST = "blocklists/doh-resolvers.txt"


@dataclass(frozen=True, slots=True)
class DohSource:
    """What one source of `firewall.doh-lists` gave at the last read (the API shows these)."""

    source: str
    status: str
    """'ok'; for a URL the download's status ('downloaded', 'not-modified', 'cached', 'failed');
    'kept' when it could not be read and its last good addresses stay."""
    addresses: int = 0
    malformed: int = 0
    """Lines that are neither an address nor a prefix: skipped."""
    error: str | None = None


def doh_sources(config: Config) -> list[str]:
    """The sources of known DoH endpoints (none with refuse-doh off; the shipped file by default)."""
    if not config.firewall.refuse_doh:
        return []
    if config.firewall.doh_lists is None:
        return [str(shipped_path(DOH_LIST))]
    return list(config.firewall.doh_lists)


@dataclass
class DohLists:
    """The known DoH endpoints of `firewall.doh-lists`, with the last good addresses of every source: a
    source that cannot be read (a failed download without a cached copy, a missing file) keeps them."""

    last_good: dict[str, list[str]] = field(default_factory=dict)
    reports: list[DohSource] = field(default_factory=list)

    def read(self, config: Config, fetched: dict[str, FetchResult] | None = None) -> list[str]:
        """Every source's addresses, then `blocking.doh-endpoints` (empty with refuse-doh off). URL
        sources are read from `fetched`, else from their cached copies (no network access here)."""
        if not config.firewall.refuse_doh:
            self.reports = []
            return []
        base = Path(config.base_dir)
        max_size = int(config.loading.max_size)
        fetcher = fetcher_for(config)
        addresses: list[str] = []
        reports = []
        for source in doh_sources(config):
            status, error = "ok", None
            try:
                if is_inline(source):
                    text = source
                elif is_url(source):
                    fetch = (fetched or {}).get(source)
                    if fetch is None:
                        path, _ = fetcher.cached(source)
                        fetch = FetchResult(source, path, "cached") if path else _NOT_DOWNLOADED
                    status, error = fetch.status, fetch.error
                    if fetch.path is None:
                        raise OSError(error or "not downloaded")
                    text = _read_bounded(fetch.path, max_size)
                else:
                    text = _read_bounded(base / source, max_size)
            except OSError as exc:
                kept = self.last_good.get(source, [])
                addresses += kept
                reports.append(DohSource(source, "kept", len(kept), 0, error or str(exc)))
                continue
            entries, malformed = parse_address_list(text)
            self.last_good[source] = entries
            addresses += entries
            reports.append(DohSource(source, status, len(entries), malformed, error))
        self.reports = reports
        return list(dict.fromkeys([*addresses, *config.blocking.doh_endpoints]))


_NOT_DOWNLOADED = FetchResult("", None, "failed", error="not downloaded yet: run 'dnsguard lists update'")


def _read_bounded(path: Path, max_size: int) -> str:
    with path.open("rb") as handle:
        data = handle.read(max_size + 1)
    if len(data) > max_size:
        raise OSError(f"{path}: over the {max_size}-byte limit")
    return data.decode("utf-8", errors="replace")


def doh_endpoints(config: Config) -> list[str]:
    """Known DoH endpoints: `firewall.doh-lists` (cached copies of URLs) and `blocking.doh-endpoints`."""
    return DohLists().read(config)


def allowed_prefixes(config: Config) -> list[str]:
    """Always reachable: `firewall.allow`, the tunnel's own prefixes, the addresses of `rewrites:` and the
    resolver's own upstreams."""
    allowed = list(config.firewall.allow)
    if config.tunnel is not None:
        allowed += [str(ipaddress.ip_interface(a).network) for a in config.tunnel.address]
    for rewrite in config.rewrites:
        allowed += [answer for answer in rewrite.answer if is_ip(answer)]
    # The resolver's own upstreams (in `up` its sockets are marked and pass anyway; `resolve` has no mark).
    for spec in [*config.upstreams.servers, *(s for c in config.upstreams.conditional.values() for s in c)]:
        try:
            upstream = parse_upstream(spec)
        except DnsguardError:
            continue
        allowed += [a for a in (upstream.host, *upstream.addresses) if is_ip(a)]
    return list(dict.fromkeys(allowed))


def explain_in_kernel(config: Config, address: str, client: str | None) -> str:
    """`dnsguard explain ADDRESS`: the verdict from the configuration and the kernel's handed-out set of
    the running daemon in this network namespace (one line, then the reason's details)."""
    nft = Nftables()
    try:
        running = firewall_present(nft)
        left = kernel_seconds_left(nft, address) if running else None
    finally:
        nft.close()
    result = explain_address(config, address, client, left, doh_endpoints(config), allowed_prefixes(config))
    who = f"from {client}" if client else "from this host"
    lines = [f"{address} {who}: {result['verdict']}: {result['reason']}"]
    if "prefix" in result:
        lines.append(f"  matching {result['prefix']}")
    if "seconds_left" in result:
        lines.append(f"  open for {result['seconds_left']} s more")
    if config.firewall.enabled and not running:
        lines.append("  (no firewall table in this network namespace: is `dnsguard up` running?)")
    return "\n".join(lines)


def firewall_rules(
    config: Config,
    tunnel_interface: str,
    marks: list[int],
    doh: list[str] | None = None,
    *,
    server: bool = False,
) -> DnsFirewallRules:
    """The rules of `up` (marks given: the tunnel's and the resolver's), of `resolve` (no marks: what is
    forwarded from any interface to `firewall.interface` is filtered, as the host's own), or of `server`
    (what its peers send in through `tunnel_interface`; `config` is the resolver's view, where a peer's
    group holds its allowed IPs). `doh`: the DoH endpoints as read (None: read them now)."""
    firewall = config.firewall
    lan = list(config.tunnel.lan_interfaces) if config.tunnel is not None and not server else []
    lan_clients: list[str] | None = None
    lan_macs: list[str] = []
    if not firewall.all_groups:
        lan_clients = []
        for name in firewall.groups:
            group = config.groups.get(name)
            if group is not None:
                lan_clients += [c for c in group.clients if not is_mac(c)]
                lan_macs += [c for c in group.clients if is_mac(c)]  # normalised by the configuration
        if server and "default" in firewall.groups and config.tunnel is not None:
            # A peer without a group is in the default group.
            lan_clients += [p for peer in config.tunnel.peers if not peer.group for p in peer.allowed_ips]
    return DnsFirewallRules(
        tunnel_interface,
        marks,
        enforce=firewall.mode == "enforce",
        host=not server and (firewall.all_groups or "default" in firewall.groups),
        lan_interfaces=lan,
        forward_from_any=not marks and not server,
        lan_clients=lan_clients,
        lan_macs=list(dict.fromkeys(lan_macs)),
        from_peers=server,
        allow=allowed_prefixes(config),
        doh=doh_endpoints(config) if doh is None else doh,
    )


@dataclass
class FirewallService:
    config: Config
    tunnel_interface: str
    marks: list[int]
    server: bool = False
    """`dnsguard server`: its peers' connections are filtered (see firewall_rules)."""
    handed: HandedOut = field(init=False)
    batches: int = 0
    elements_sent: int = 0
    failures: int = 0
    doh_updates: int = 0
    doh_failures: int = 0
    """Replacements of the DoH sets sent, and refused by the kernel (the old set stays)."""
    counters: dict[str, int] = field(default_factory=dict)
    """The kernel's packet counters at the last read: refused, learned, doh_refused."""
    nft: Nftables | FakeNftables = field(default_factory=Nftables)

    def __post_init__(self) -> None:
        self.handed = HandedOut(grace=int(self.config.firewall.grace))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_update: asyncio.Future[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        """Resolved when the kernel update being sent now is done (an answer may hand out its addresses)."""
        self.doh_lists = DohLists()
        self._reconfigurations = Background(log)
        self._rules_lock = asyncio.Lock()
        """Held while the table or its DoH sets are replaced: a reload and a refresh never interleave."""
        self.rules = firewall_rules(
            self.config,
            self.tunnel_interface,
            self.marks,
            self.doh_lists.read(self.config),
            server=self.server,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.nft.run, self.rules.script())
        self._task = asyncio.create_task(self._flush_loop())
        log.info(
            "firewall fed by DNS: %s mode on %s (%s)",
            self.config.firewall.mode,
            self.tunnel_interface,
            self.nft.backend,
        )

    def on_addresses(self, addresses: tuple[bytes, ...], ttl: int) -> None:
        handed = self.handed
        handed.add(addresses, ttl, boottime())
        if len(handed.pending) >= BATCH_SIZE:
            self._wake.set()

    async def _flush_loop(self) -> None:
        counters_read = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BATCH_INTERVAL)
            self._wake.clear()
            if self._closing:
                return
            await self.flush()
            if loop.time() - counters_read >= COUNTER_INTERVAL:
                counters_read = loop.time()
                self.counters = await asyncio.to_thread(read_counters, self.nft)

    def before_answer(self) -> Awaitable[None] | None:
        """What an upstream answer waits for: the next kernel update while addresses are pending."""
        if not self.handed.pending:
            in_flight = self._in_flight
            return None if in_flight is None else asyncio.shield(in_flight)
        if self._next_update is None:
            self._next_update = asyncio.get_running_loop().create_future()
        self._wake.set()
        # Shielded: a cancelled query must not cancel the update other answers wait for.
        return asyncio.shield(self._next_update)

    async def flush(self) -> None:
        elements = self.handed.take()
        done, self._next_update = self._next_update, None
        if not elements:
            if done is not None and not done.done():
                done.set_result(None)
            return
        if done is None:
            done = asyncio.get_running_loop().create_future()
        self._in_flight = done
        try:
            await asyncio.to_thread(lambda: self.nft.run(element_script(elements)))
            self.batches += 1
            self.elements_sent += len(elements)
        except DnsguardError as exc:
            self.failures += 1
            self.handed.forget(elements)
            log.warning("firewall: %d addresses not added: %s", len(elements), exc)
        finally:
            self._in_flight = None
            if not done.done():
                done.set_result(None)

    def reconfigure_soon(self, config: Config) -> None:
        """`reconfigure` after a reload's commit, in the background: replacing the table runs in a worker
        thread; a failure is logged and the old table stays."""
        self._reconfigurations.spawn(
            self.reconfigure(config), "firewall: the new configuration was not applied"
        )

    async def reconfigure(self, config: Config) -> None:
        """A reload: a new rule set replaces the table in one step, then the live elements go back in.
        When only the DoH endpoints changed, their sets alone are replaced (see `refresh_doh`)."""
        async with self._rules_lock:
            doh = await asyncio.to_thread(self.doh_lists.read, config)
            rules = firewall_rules(config, self.tunnel_interface, self.marks, doh, server=self.server)
            self.config = config
            self.handed.grace = int(config.firewall.grace)
            if rules == self.rules:
                return
            if replace(rules, doh=self.rules.doh) == self.rules:
                await self._replace_doh(doh)
                return
            await asyncio.to_thread(self.nft.run, rules.script())
            self.rules = rules
            self.handed.requeue(boottime())
            self._wake.set()

    async def refresh_doh(self, fetched: dict[str, FetchResult]) -> None:
        """A list refresh: read the DoH lists again (URLs from `fetched`); when their addresses changed,
        the kernel's DoH sets are replaced in one transaction. A refused update is logged and counted,
        and the next refresh tries again."""
        async with self._rules_lock:
            doh = await asyncio.to_thread(self.doh_lists.read, self.config, fetched)
            if doh == self.rules.doh:
                return
            try:
                await self._replace_doh(doh)
            except DnsguardError as exc:
                self.doh_failures += 1
                log.warning("firewall: the DoH endpoints were not updated: %s", exc)

    async def _replace_doh(self, doh: list[str]) -> None:
        await asyncio.to_thread(self.nft.run, doh_script(doh))
        log.info("firewall: %d known DoH endpoints (was %d)", len(doh), len(self.rules.doh))
        self.rules = replace(self.rules, doh=doh)
        self.doh_updates += 1

    def explain(self, address: str, client: str | None = None) -> dict[str, Any]:
        now = boottime()
        try:
            expiry = self.handed.expiry_of(address, now)
        except ValueError:
            expiry = None  # explain_address says what is wrong with the address
        return explain_address(
            self.config,
            address,
            client,
            None if expiry is None else expiry - now,
            self.rules.doh,
            allowed_prefixes(self.config),
        )

    def snapshot(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "enabled": True,
            "mode": self.config.firewall.mode,
            "backend": self.nft.backend,
            "addresses": len(self.handed.expires),
            "answers": self.handed.answers,
            "batches": self.batches,
            "elements_sent": self.elements_sent,
            "failures": self.failures,
            "dropped": self.handed.dropped,
            "refused": counters.get("refused", 0),
            "learned": counters.get("learned", 0),
            "doh_refused": counters.get("doh_refused", 0),
            "doh_endpoints": len(self.rules.doh),
            "doh_updates": self.doh_updates,
            "doh_failures": self.doh_failures,
            "doh_lists": [asdict(report) for report in self.doh_lists.reports],
        }

    async def close(self) -> None:
        # A reload's table replacement finishes first: it must not put the table back after the delete
        # below, nor share the nftables context with it.
        await self._reconfigurations.drain()
        if self._next_update is not None and not self._next_update.done():
            self._next_update.set_result(None)
        if self._task is not None:
            # Stopped, not cancelled: a cancel would leave an update or a counter read running in its
            # worker thread, beside the delete below.
            self._closing = True
            self._wake.set()
            try:
                await self._task
            except Exception as exc:  # the table still goes: a loop that died must not keep it
                log.warning("firewall: its update loop had stopped: %s", one_line(exc))
        try:
            # Through the same context (the fake in tests); `cleanup` and the journal remove it after a crash.
            self.nft.run(f"delete table inet {FIREWALL_TABLE}\n")
        except DnsguardError as exc:
            log.warning("firewall: its table was not removed: %s", exc)
        self.nft.close()
