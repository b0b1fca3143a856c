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
from dataclasses import dataclass, field
from typing import Any

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
    element_script,
    firewall_present,
    kernel_seconds_left,
    read_counters,
)
from dnsguard.policy.firewall import explain_address, read_address_list

log = logging.getLogger("dnsguard.firewall")

BATCH_INTERVAL = 0.05
BATCH_SIZE = 256
COUNTER_INTERVAL = 5.0
"""Seconds between reads of the kernel's counters (the API and metrics show the last read)."""
DOH_LIST = "blocklists/doh-resolvers.txt"


def doh_endpoints(config: Config) -> list[str]:
    """Known DoH endpoints: the shipped list and `blocking.doh-endpoints` (empty with refuse-doh off)."""
    if not config.firewall.refuse_doh:
        return []
    shipped = read_address_list(shipped_path(DOH_LIST).read_text(encoding="utf-8"))
    return list(dict.fromkeys([*shipped, *config.blocking.doh_endpoints]))


def allowed_prefixes(config: Config) -> list[str]:
    """Always reachable: `firewall.allow`, the tunnel's own prefixes, and the addresses of local records."""
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


def firewall_rules(config: Config, tunnel_interface: str, marks: list[int]) -> DnsFirewallRules:
    """The rules of `up` (marks given: the tunnel's and the resolver's) or of `resolve` (no marks: what is
    forwarded from any interface to `firewall.interface` is filtered, as the host's own)."""
    firewall = config.firewall
    lan = list(config.tunnel.lan_interfaces) if config.tunnel is not None else []
    lan_clients: list[str] | None = None
    if not firewall.all_groups:
        lan_clients = []
        for name in firewall.groups:
            group = config.groups.get(name)
            if group is not None:
                lan_clients += [c for c in group.clients if not _is_mac(c)]
    return DnsFirewallRules(
        tunnel_interface,
        marks,
        enforce=firewall.mode == "enforce",
        host=firewall.all_groups or "default" in firewall.groups,
        lan_interfaces=lan,
        forward_from_any=not marks,
        lan_clients=lan_clients,
        allow=allowed_prefixes(config),
        doh=doh_endpoints(config),
    )


def _is_mac(client: str) -> bool:
    try:
        ipaddress.ip_network(client, strict=False)
    except ValueError:
        return True
    return False


@dataclass
class FirewallService:
    config: Config
    tunnel_interface: str
    marks: list[int]
    handed: HandedOut = field(init=False)
    batches: int = 0
    elements_sent: int = 0
    failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    nft: Nftables | FakeNftables = field(default_factory=Nftables)
    """The kernel's packet counters at the last read: refused, learned, doh_refused."""

    def __post_init__(self) -> None:
        self.handed = HandedOut(grace=int(self.config.firewall.grace))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_update: asyncio.Future[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        """Resolved when the kernel update being sent now is done (an answer may hand out its addresses)."""
        self.rules = firewall_rules(self.config, self.tunnel_interface, self.marks)

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

    async def reconfigure(self, config: Config) -> None:
        """A reload: a new rule set replaces the table in one step, then the live elements go back in."""
        rules = firewall_rules(config, self.tunnel_interface, self.marks)
        self.config = config
        self.handed.grace = int(config.firewall.grace)
        if rules == self.rules:
            return
        self.rules = rules
        await asyncio.to_thread(self.nft.run, rules.script())
        self.handed.requeue(boottime())
        self._wake.set()

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
            doh_endpoints(self.config),
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
        }

    async def close(self) -> None:
        if self._next_update is not None and not self._next_update.done():
            self._next_update.set_result(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            # Through the same context (the fake in tests); `cleanup` and the journal remove it after a crash.
            self.nft.run(f"delete table inet {FIREWALL_TABLE}\n")
        except DnsguardError as exc:
            log.warning("firewall: its table was not removed: %s", exc)
        self.nft.close()
