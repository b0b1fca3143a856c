"""Prometheus exposition of a daemon, read from its own counters at scrape time (see deploy/METRICS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import PROCESS_COLLECTOR
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from dnsguard import __version__, native
from dnsguard.app.observe import DurationHistogram
from dnsguard.app.querylog import answers_by_family
from dnsguard.app.services import fold_services
from dnsguard.dns.admission import REFUSAL_REASONS
from dnsguard.dns.resolver import RESULTS as RESOLVER_RESULTS
from dnsguard.dns.wire import MALFORMED_REASONS
from dnsguard.lifecycle import Cause, State
from dnsguard.net.busy_poll import BusyPollSelector, selector_of
from dnsguard.net.tun import OFFLOAD_NAMES

if TYPE_CHECKING:
    from dnsguard.app.operated import Operated
    from dnsguard.app.querylog import QueryLog
    from dnsguard.app.resolve import ResolverService
    from dnsguard.app.tunnel import TunnelShell
    from dnsguard.config import Config
    from dnsguard.dns.resolver import Resolver
    from dnsguard.net.dns_listeners import DnsListeners

# The resolver's own result names that the metrics fold into another one.
RESULT_ALIASES = {"stale": "cached"}
RESULTS = tuple(result for result in RESOLVER_RESULTS if result not in RESULT_ALIASES)
BUILT_IN_BLOCKS = ("doh-canary", "private-relay", "special-use")
NOT_DROPS = frozenset({"cookie_replies_sent", "staged_flushed"})


def peer_label(public_key: str, name: str = "") -> str:
    """A peer's configured name, else the first 8 characters of its base64 public key."""
    return name or public_key[:8]


def peer_names(config: Config) -> dict[str, str]:
    """Canonical base64 public key -> configured name, for the peers that have one."""
    if config.tunnel is None:
        return {}
    return {peer.public_key: peer.name for peer in config.tunnel.peers if peer.name}


def _querylog(querylog: QueryLog) -> Iterator[Metric]:
    """Answers by query type and response code family, and what the lasting query log wrote and lost."""
    answers = CounterMetricFamily(
        "dnsguard_dns_answers",
        "Answered queries by query type and response code (uncommon ones as other), counted every 0.5 s;"
        " those the lasting log lost are also in dnsguard_querylog_dropped.",
        labels=["qtype", "rcode"],
    )
    for (qtype, rcode), count in sorted(answers_by_family(querylog.counters).items()):
        answers.add_metric([qtype, rcode], count)
    yield answers
    written = CounterMetricFamily("dnsguard_querylog_written", "Queries written to the lasting query log.")
    written.add_metric([], querylog.counters.written)
    yield written
    dropped = CounterMetricFamily(
        "dnsguard_querylog_dropped", "Queries the lasting query log lost (queue full, database failing)."
    )
    dropped.add_metric([], querylog.counters.dropped)
    yield dropped
    restarts = CounterMetricFamily(
        "dnsguard_querylog_writer_restarts", "Query log writer processes started again after one died."
    )
    restarts.add_metric([], querylog.counters.restarts)
    yield restarts


def _histogram(name: str, documentation: str, label: str, histograms: dict[str, DurationHistogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, histogram in sorted(histograms.items()):
        family.add_metric([value], histogram.cumulative(), histogram.total)
    return family


class DaemonCollector(Collector):
    """Every dnsguard_* metric of one daemon."""

    def __init__(self, daemon: Operated) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable[Metric]:
        daemon = self.daemon
        yield from self._dns(daemon.config, daemon.dns_service)
        shell = daemon.tunnel_shell
        if shell is not None:
            yield from self._tunnel(daemon.config, shell)
        lifecycle = daemon.connection
        if lifecycle is not None:
            state = GaugeMetricFamily(
                "dnsguard_tunnel_state", "Client connection state (1 for the current one).", labels=["state"]
            )
            for value in State:
                state.add_metric([value.value], 1.0 if lifecycle.state is value else 0.0)
            yield state
            reconnects = CounterMetricFamily(
                "dnsguard_tunnel_reconnects", "Client reconnections by cause.", labels=["cause"]
            )
            for cause in Cause:
                reconnects.add_metric([cause.value], lifecycle.reconnects.get(cause, 0))
            yield reconnects
        reloads = CounterMetricFamily(
            "dnsguard_config_reload", "Configuration reloads by result.", labels=["result"]
        )
        reloads.add_metric(["success"], daemon.reloads.success)
        reloads.add_metric(["failure"], daemon.reloads.failure)
        yield reloads
        selector = _busy_poll_selector()
        if selector is not None:
            wakeups = CounterMetricFamily(
                "dnsguard_busy_poll_wakeups",
                "Event loop wake-ups that found work while busy polling is on, by how.",
                labels=["how"],
            )
            wakeups.add_metric(["polled"], selector.polled)
            wakeups.add_metric(["slept"], selector.slept)
            yield wakeups
        info = GaugeMetricFamily(
            "dnsguard_build_info",
            "dnsguard version and whether its data paths (DNS, tunnel) run compiled (always 1).",
            labels=["version", "data_path"],
        )
        info.add_metric([__version__, native.state.partition(":")[0]], 1.0)
        yield info

    # -- DNS ------------------------------------------------------------------------------

    def _dns(self, config: Config, service: ResolverService | None) -> Iterator[Metric]:
        if service is None or service.resolver is None:
            return
        resolver = service.resolver
        groups = {"default", *config.groups}
        counts: dict[tuple[str, str], int] = {(r, g): 0 for r in RESULTS for g in groups}
        for (result, group), count in resolver.stats.queries.items():
            key = (RESULT_ALIASES.get(result, result), group)
            counts[key] = counts.get(key, 0) + count
        queries = CounterMetricFamily(
            "dnsguard_dns_queries",
            "Queries answered, by outcome and policy group.",
            labels=["result", "group"],
        )
        for (result, group), count in sorted(counts.items()):
            queries.add_metric([result, group], count)
        yield queries

        blocked_counts = dict.fromkeys((*config.lists, *BUILT_IN_BLOCKS), 0)
        blocked_counts.update(resolver.stats.blocked_by_list)
        blocked_counts = fold_services(blocked_counts)
        blocked = CounterMetricFamily(
            "dnsguard_dns_blocked",
            "Blocked queries by the list or built-in rule that decided.",
            labels=["list"],
        )
        for list_name, count in sorted(blocked_counts.items()):
            blocked.add_metric([list_name], count)
        yield blocked

        observer = service.observer
        yield _histogram(
            "dnsguard_dns_upstream_duration_seconds",
            "Time from sending a query to an upstream to its reply.",
            "upstream",
            observer.upstream_duration,
        )
        upstream_queries = CounterMetricFamily(
            "dnsguard_dns_upstream_queries", "Queries sent to each upstream.", labels=["upstream"]
        )
        for upstream, count in sorted(observer.upstream_queries.items()):
            upstream_queries.add_metric([upstream], count)
        yield upstream_queries
        upstream_errors = CounterMetricFamily(
            "dnsguard_dns_upstream_errors",
            "Failed upstream attempts by reason.",
            labels=["upstream", "reason"],
        )
        for (upstream, reason), count in sorted(observer.upstream_errors.items()):
            upstream_errors.add_metric([upstream, reason], count)
        yield upstream_errors

        responses = {result: DurationHistogram() for result in RESULTS}
        for result, histogram in observer.response_duration.items():
            responses.setdefault(RESULT_ALIASES.get(result, result), DurationHistogram()).add(histogram)
        for result, count in resolver.instant_answers.items():
            responses.setdefault(RESULT_ALIASES.get(result, result), DurationHistogram()).add_instant(count)
        yield _histogram(
            "dnsguard_dns_response_duration_seconds",
            "Time from receiving a query to sending its answer.",
            "result",
            responses,
        )

        yield from self._dns_protection(resolver, service.listeners)
        firewall = service.firewall
        yield from self._firewall(firewall.snapshot() if firewall is not None else {})
        if service.querylog is not None:
            yield from _querylog(service.querylog)

        cache = resolver.cache
        entries = GaugeMetricFamily("dnsguard_dns_cache_entries", "Answers in the cache now.")
        entries.add_metric([], len(cache) if cache is not None else 0)
        yield entries
        hits = CounterMetricFamily("dnsguard_dns_cache_hits", "Lookups answered from the cache.")
        hits.add_metric([], cache.hits if cache is not None else 0)
        yield hits
        misses = CounterMetricFamily("dnsguard_dns_cache_misses", "Lookups the cache could not answer.")
        misses.add_metric([], cache.misses if cache is not None else 0)
        yield misses

        list_entries = GaugeMetricFamily(
            "dnsguard_lists_entries", "Rules compiled into each list.", labels=["list"]
        )
        by_list = dict.fromkeys(config.lists, 0)
        if service.built is not None:
            by_list.update(service.built.entries_by_list())
        by_list = fold_services(by_list)
        for list_name, count in sorted(by_list.items()):
            list_entries.add_metric([list_name], count)
        yield list_entries
        updated = GaugeMetricFamily(
            "dnsguard_lists_last_update_timestamp_seconds",
            "Unix time of the last successful refresh of a list with URL sources.",
            labels=["list"],
        )
        for list_name, timestamp in sorted(service.list_updated_at.items()):
            updated.add_metric([list_name], timestamp)
        yield updated
        failures = CounterMetricFamily(
            "dnsguard_lists_update_failures",
            "Failed list updates: a download failed, or a source was missing or rejected (the last good "
            "copy stays).",
            labels=["list"],
        )
        failure_counts = dict.fromkeys(config.lists, 0)
        failure_counts.update(service.list_update_failures)
        failure_counts = fold_services(failure_counts)
        for list_name, count in sorted(failure_counts.items()):
            failures.add_metric([list_name], count)
        yield failures
        enabled = GaugeMetricFamily("dnsguard_blocking_enabled", "1 while filtering is on, 0 while paused.")
        enabled.add_metric([], 1.0 if service.blocking_enabled else 0.0)
        yield enabled

    def _firewall(self, state: dict[str, Any]) -> Iterator[Metric]:
        connections = CounterMetricFamily(
            "dnsguard_firewall_connections",
            "New connections the firewall fed by DNS refused, or counted in learn mode.",
            labels=["verdict"],
        )
        for verdict in ("refused", "doh_refused", "learned"):
            connections.add_metric([verdict], state.get(verdict, 0))
        yield connections
        addresses = GaugeMetricFamily(
            "dnsguard_firewall_addresses", "Addresses handed out by DNS answers and still open."
        )
        addresses.add_metric([], state.get("addresses", 0))
        yield addresses
        updates = CounterMetricFamily(
            "dnsguard_firewall_updates", "Batches sent to the kernel's sets, by result.", labels=["result"]
        )
        updates.add_metric(["success"], state.get("batches", 0))
        updates.add_metric(["failure"], state.get("failures", 0))
        yield updates

    def _dns_protection(self, resolver: Resolver, listeners: DnsListeners | None) -> Iterator[Metric]:
        """What hostile or broken clients cost: malformed queries, refusals, TCP slots."""
        malformed = CounterMetricFamily(
            "dnsguard_dns_malformed",
            "Client messages refused as malformed (FORMERR, NOTIMP, BADVERS or dropped), by reason.",
            labels=["reason"],
        )
        counts = dict.fromkeys(MALFORMED_REASONS, 0)
        counts.update(resolver.stats.malformed)
        if listeners is not None:
            counts["internal"] += listeners.stats.internal_errors
        for reason, count in counts.items():
            malformed.add_metric([reason], count)
        yield malformed
        refused = CounterMetricFamily(
            "dnsguard_dns_refused",
            "Queries and TCP connections dropped without an answer, by reason.",
            labels=["reason"],
        )
        reasons = dict.fromkeys((*REFUSAL_REASONS, "busy"), 0)
        if listeners is not None:
            if listeners.admission is not None:
                reasons.update(listeners.admission.stats.as_reasons())
            reasons["busy"] = listeners.stats.dropped_busy
        for reason, count in reasons.items():
            refused.add_metric([reason], count)
        yield refused
        connections = GaugeMetricFamily("dnsguard_dns_tcp_connections", "DNS-over-TCP connections open now.")
        connections.add_metric([], listeners.stats.tcp_connections if listeners is not None else 0)
        yield connections
        closed = CounterMetricFamily(
            "dnsguard_dns_tcp_closed",
            "DNS-over-TCP connections the resolver closed: `timeout` (no whole message in time, or too"
            " old), `bad_frame` (a length prefix whose message never came).",
            labels=["reason"],
        )
        closed.add_metric(["timeout"], listeners.stats.tcp_timeouts if listeners is not None else 0)
        closed.add_metric(["bad_frame"], listeners.stats.tcp_bad_frames if listeners is not None else 0)
        yield closed

    # -- tunnel ---------------------------------------------------------------------------

    def _tunnel(self, config: Config, shell: TunnelShell) -> Iterator[Metric]:
        stats = shell.stats
        traffic = CounterMetricFamily(
            "dnsguard_tunnel_bytes", "Bytes of encrypted WireGuard datagrams.", labels=["direction"]
        )
        traffic.add_metric(["rx"], stats.rx_bytes)
        traffic.add_metric(["tx"], stats.tx_bytes)
        yield traffic
        packets = CounterMetricFamily("dnsguard_tunnel_packets", "Inner IP packets.", labels=["direction"])
        packets.add_metric(["rx"], stats.rx_packets)
        packets.add_metric(["tx"], stats.tx_packets)
        yield packets
        dropped = CounterMetricFamily(
            "dnsguard_tunnel_packets_dropped", "Dropped datagrams and packets by reason.", labels=["reason"]
        )
        for reason, count in shell.device.counters.as_dict().items():
            if reason not in NOT_DROPS:
                dropped.add_metric([reason], count)
        dropped.add_metric(["tun_queue_full"], shell.tun.queue_full)
        dropped.add_metric(["tun_write_error"], shell.tun.write_errors)
        dropped.add_metric(["tun_malformed"], getattr(shell.tun, "malformed", 0))
        dropped.add_metric(["queue_codel"], stats.queue_drops)
        dropped.add_metric(["arrival_codel"], stats.arrival_drops)
        yield dropped
        queued = GaugeMetricFamily(
            "dnsguard_tunnel_queued_bytes",
            "Bytes read from the TUN and waiting in the flows' queues to be sent.",
        )
        queued.add_metric([], shell.queues.bytes)
        yield queued
        marked = CounterMetricFamily(
            "dnsguard_tunnel_ecn_marked",
            "ECN-capable packets from the TUN that CoDel marked CE where it would have dropped them.",
        )
        marked.add_metric([], stats.queue_marks)
        yield marked
        warm = CounterMetricFamily(
            "dnsguard_tunnel_keep_warm_ticks",
            "Wake-ups that ran the data path's code on throwaway data between packets "
            "(performance.keep-warm).",
        )
        warm.add_metric([], stats.warm_ups)
        yield warm
        yield from _offloads(shell)
        handshakes = CounterMetricFamily(
            "dnsguard_tunnel_handshakes", "Handshakes by result.", labels=["result"]
        )
        for result, count in self.daemon.tunnel_observer.handshakes.items():
            handshakes.add_metric([result], count)
        yield handshakes
        names = peer_names(config)
        last = GaugeMetricFamily(
            "dnsguard_tunnel_last_handshake_timestamp_seconds",
            "Unix time of each peer's last completed handshake (0 before the first).",
            labels=["peer"],
        )
        statuses = shell.device.status()
        for status in statuses:
            label = peer_label(status.public_key, names.get(status.public_key, ""))
            last.add_metric([label], (status.last_handshake_wall_ns or 0) / 1e9)
        yield last
        peers = GaugeMetricFamily("dnsguard_tunnel_peers", "Configured peers.")
        peers.add_metric([], len(statuses))
        yield peers


def _offloads(shell: TunnelShell) -> Iterator[Metric]:
    """Which offloads the TUN and the UDP sockets run with, and how much went through them.

    Read from the edges' own counters (net/tun.py, net/udp.py); an edge without one (a fake in a
    test) shows 0.
    """
    tun, udp = shell.tun, shell.udp
    flags = getattr(tun, "offload_flags", 0)
    sockets = list(getattr(udp, "sockets", {}).values())
    in_use = GaugeMetricFamily(
        "dnsguard_tunnel_offloads",
        "Offloads in use (1) or not (0): the TUN's checksum, TSO and USO, UDP GSO and GRO.",
        labels=["offload"],
    )
    for bit, name in OFFLOAD_NAMES.items():
        in_use.add_metric([f"tun_{name}"], 1.0 if flags > 0 and flags & bit else 0.0)
    in_use.add_metric(["udp_gso"], 1.0 if getattr(udp, "gso", False) else 0.0)
    in_use.add_metric(["udp_gro"], 1.0 if any(getattr(sock, "gro", False) for sock in sockets) else 0.0)
    yield in_use
    work = CounterMetricFamily(
        "dnsguard_tunnel_offload_packets",
        "Packets through the offloads, by kind.",
        labels=["kind"],
    )
    work.add_metric(["tun_super_packets"], getattr(tun, "super_packets", 0))
    work.add_metric(["tun_segments"], getattr(tun, "segments_read", 0))
    work.add_metric(["tun_coalesced_writes"], getattr(tun, "coalesced_writes", 0))
    work.add_metric(["tun_coalesced_segments"], getattr(tun, "segments_coalesced", 0))
    work.add_metric(["udp_gso_sends"], getattr(udp, "gso_sends", 0))
    work.add_metric(["udp_gro_trains"], sum(getattr(sock, "gro_trains", 0) for sock in sockets))
    yield work


def _busy_poll_selector() -> BusyPollSelector | None:
    """The running loop's busy-poll selector: None off the loop, or on one without it (uvloop)."""
    try:
        return selector_of(asyncio.get_running_loop())
    except RuntimeError:
        return None


def registry_for(daemon: Operated) -> CollectorRegistry:
    """A registry with the daemon's collector and the client library's process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    registry.register(PROCESS_COLLECTOR)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
