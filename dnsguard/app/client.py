"""`dnsguard up`: the full-tunnel client: TUN, routing, kill switch, tunnel, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dnsguard.app.api import Operations
from dnsguard.app.common import (
    DEFAULT_MTU,
    apply_peers,
    build_device,
    notify_systemd,
    prepare_peers,
    require_tunnel,
    run_daemon,
    setup_logging,
)
from dnsguard.app.dns_filtering import FilteringTunnelDaemon, TunnelDns, wants_filtering
from dnsguard.app.observe import ReloadCounter, TunnelObserver
from dnsguard.app.tunnel import TunnelShell
from dnsguard.config import Config, TunnelConfig, load_config
from dnsguard.errors import DnsguardError
from dnsguard.lifecycle import (
    GiveUp,
    Lifecycle,
    LifecycleSettings,
    Probe,
    Reconnect,
    State,
    StateChanged,
    WakeDetector,
    boottime,
    monotonic,
)
from dnsguard.net.dns_firewall import FIREWALL_TABLE, remove_firewall
from dnsguard.net.firewall import DNS_TABLE, KILL_SWITCH_TABLE, DnsRedirect, KillSwitch, table_change
from dnsguard.net.journal import (
    RUN_DIR,
    Journal,
    client_alive,
    namespace_id,
    read_state,
    roll_back,
    state_file,
)
from dnsguard.net.monitor import PathMonitor
from dnsguard.net.routing import RoutingPlan, local_networks, set_forwarding
from dnsguard.net.tun import PacketDevice, TunDevice, open_tun
from dnsguard.net.udp import DatagramEndpoint, UdpEndpoint
from dnsguard.wireguard.device import Device
from dnsguard.wireguard.events import Event, HandshakeCompleted, HandshakeGaveUp, PeerEndpointChanged

log = logging.getLogger("dnsguard.client")

TICK = 1.0
PAUSE_ENV = "DNSGUARD_PAUSE_AT"
"""For lab tests: the name of a start-up step (see `Client._step`) at which start-up waits until
a signal comes, so a test can stop the client at an exact moment of its start."""
STOP_WAIT = 10.0


def routing_plan(tunnel: TunnelConfig) -> RoutingPlan:
    """Routes and rules for a tunnel configuration (include overrides the peers' AllowedIPs)."""
    prefixes = tunnel.include or [p for peer in tunnel.peers for p in peer.allowed_ips]
    return RoutingPlan(
        interface=tunnel.interface,
        addresses=tunnel.address,
        mtu=tunnel.mtu or DEFAULT_MTU,
        table=tunnel.table,
        fwmark=tunnel.fwmark,
        prefixes=sorted({str(ipaddress.ip_network(p, strict=False)) for p in prefixes}),
        exclude=list(tunnel.exclude),
        exclude_local=tunnel.exclude_local_networks,
    )


def state_path(interface: str) -> Path:
    """The state file of the client for `interface` in this network namespace."""
    return state_file(RUN_DIR, interface)


async def cleanup(tunnel: TunnelConfig) -> None:
    """Remove what a client for this tunnel may have left when no state file says what it changed."""
    await routing_plan(tunnel).remove()
    KillSwitch.remove()
    DnsRedirect.remove()
    remove_firewall()


@dataclass
class Client(FilteringTunnelDaemon):
    config_path: str
    config: Config
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    shell: TunnelShell | None = None
    on_state: Callable[[State], None] | None = None
    reloads: ReloadCounter = field(default_factory=ReloadCounter)
    tunnel_observer: TunnelObserver = field(default_factory=TunnelObserver)
    kind: str = "client"
    clock: Callable[[], float] = boottime
    """CLOCK_BOOTTIME, the time fed to the lifecycle and the shell (tests pass a fake one)."""
    monotonic_clock: Callable[[], float] = monotonic
    """CLOCK_MONOTONIC: against `clock`, it tells a wake from suspend (lifecycle/clock.py)."""

    def __post_init__(self) -> None:
        self.wake_detector = WakeDetector(TICK)
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.dns: TunnelDns | None = None
        self.monitor: PathMonitor | None = None
        self.operations: Operations | None = None
        self.journal: Journal | None = None
        self.kill_switch: KillSwitch | None = None
        self._starting = False
        self._main: asyncio.Task[None] | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._refresh_task: asyncio.Future[None] | None = None
        self._reload_task: asyncio.Future[bool] | None = None

    # -- what the metrics and the API read ------------------------------------------------

    @property
    def connection(self) -> Lifecycle:
        return self.lifecycle

    # -- events from the tunnel and the lifecycle ----------------------------------------

    def on_event(self, event: Event) -> None:
        self.tunnel_observer.on_event(event)
        now = self.clock()
        if isinstance(event, HandshakeCompleted):
            self.lifecycle.handshake_completed(now)
        elif isinstance(event, HandshakeGaveUp):
            log.warning("no handshake response after %d attempts", event.attempts)
        elif isinstance(event, PeerEndpointChanged):
            log.info("server endpoint now %s:%s", event.new[0], event.new[1])
        self.run_lifecycle()

    def on_batch(self, received: bool, now: float) -> None:
        if received:
            self.lifecycle.authenticated_receive(now)
        else:
            self.lifecycle.data_sent(now)

    def on_path_change(self, what: str) -> None:
        """An uplink changed: the lifecycle merges a burst of these into one reconnection."""
        self.lifecycle.path_changed(self.clock())
        loop = asyncio.get_running_loop()
        loop.call_later(self.lifecycle.settings.debounce + 0.01, self._run_due_timers)
        tunnel = self.config.tunnel
        if self.kill_switch is not None and tunnel is not None and tunnel.exclude_local_networks:
            # The local networks the kill switch lets through follow the uplink (a new café, a new
            # prefix); one refresh after the burst settles.
            if self._refresh is not None:
                self._refresh.cancel()
            self._refresh = loop.call_later(self.lifecycle.settings.debounce, self._start_refresh)

    def _start_refresh(self) -> None:
        self._refresh = None
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.ensure_future(self._refresh_local())

    async def _refresh_local(self) -> None:
        tunnel = self.config.tunnel
        switch = self.kill_switch
        if tunnel is None or switch is None or not tunnel.exclude_local_networks:
            return
        try:
            local = await local_networks(tunnel.interface)
            if (tuple(switch.local_interfaces), tuple(switch.local_prefixes)) != (
                local.interfaces,
                local.prefixes,
            ):
                switch.local_interfaces, switch.local_prefixes = list(local.interfaces), list(local.prefixes)
                switch.apply()
                log.info("local networks now %s", ", ".join(local.prefixes) or "none")
        except DnsguardError as exc:
            log.warning("cannot refresh the local networks in the kill switch: %s", exc)

    def _run_due_timers(self) -> None:
        now = self.clock()
        timer = self.lifecycle.get_timer()
        if timer is not None and timer <= now:
            self.lifecycle.handle_timer(now)
        self.run_lifecycle()

    def run_lifecycle(self) -> None:
        """Carry out what the lifecycle asks for."""
        shell = self.shell
        while (action := self.lifecycle.next_action()) is not None:
            now = self.clock()
            if isinstance(action, Reconnect):
                log.info("reconnecting (%s, attempt %d)", action.cause.value, action.attempt)
                if shell is not None:
                    if action.attempt > 1 or action.cause.value in ("wake", "path_change", "dead_peer"):
                        shell.rebind()
                    # At start a persistent keepalive has already initiated: forcing another would
                    # void it and, held clear of the server's flood limit, connect 40 ms later.
                    shell.device.force_handshake(now, keep_pending=action.cause.value == "start")
                    shell.flush()
            elif isinstance(action, Probe):
                if shell is not None:
                    shell.device.force_handshake(now)
                    shell.flush()
            elif isinstance(action, StateChanged):
                log.info("tunnel %s -> %s", action.old.value, action.new.value)
                self.write_state()
                if self.on_state is not None:
                    self.on_state(action.new)
            elif isinstance(action, GiveUp):
                log.error("giving up: %s", action.reason)
                self._stop.set()

    def start_tunnel(self, device: Device, tun: PacketDevice, udp: DatagramEndpoint) -> TunnelShell:
        """The shell on the running loop, its events and batches feeding the lifecycle."""
        self.shell = TunnelShell(
            device,
            tun,
            udp,
            on_event=self.on_event,
            on_batch=self.on_batch,
            clock=self.clock,
            keep_warm=float(self.config.performance.keep_warm),
            receive_codel=self.config.performance.receive_codel,
        )
        # The lifecycle starts first so that the very first handshake already counts.
        self.lifecycle.start(self.clock())
        self.shell.start()
        return self.shell

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick())

    def tick(self) -> float:
        """One look at the clocks: report a wake, fire the lifecycle's due timer, carry out its actions.

        Returns the seconds until the next look (at most TICK, so that a wake is seen within one).
        """
        now = self.clock()
        wake = self.wake_detector.observe(now, self.monotonic_clock())
        if wake is not None:
            log.info(
                "%s for %.1f s: reconnecting now",
                "woke from suspend" if wake.suspended else "stalled",
                wake.gap,
            )
            self.lifecycle.wake_detected(now, wake.gap)
        timer = self.lifecycle.get_timer()
        if timer is not None and timer <= now:
            self.lifecycle.handle_timer(now)
        self.run_lifecycle()
        return min(TICK, max(0.05, (timer - now) if timer and timer > now else TICK))

    def write_state(self) -> None:
        tunnel = self.config.tunnel
        if tunnel is None:
            return
        status: dict[str, object] = {
            "config": os.path.abspath(self.config_path),
            "state": self.lifecycle.state.value,
            "last_handshake": self.lifecycle.last_handshake,
            "reconnects": {cause.value: count for cause, count in self.lifecycle.reconnects.items()},
            "updated": time.time(),
        }
        if self.shell is not None:
            stats = self.shell.stats
            status.update(rx_bytes=stats.rx_bytes, tx_bytes=stats.tx_bytes)
        if self.journal is not None:
            self.journal.update_status(status)

    # -- main ------------------------------------------------------------------------------

    def _catch_signals(self) -> None:
        """SIGTERM/SIGINT stop the client at any moment; during start-up they cancel it.

        Installed before anything is changed. A signal is handled between two steps of start-up
        (each step is a whole change, recorded before it is made), so the teardown in `run` always
        sees a consistent record.
        """
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _on_stop_signal(self) -> None:
        self._stop.set()
        if self._starting and self._main is not None:
            self._main.cancel()

    def _on_reload_signal(self) -> None:
        if self._starting:
            log.info("reload requested during start-up: the configuration just loaded is used")
            return
        self._reload_task = asyncio.ensure_future(self.reload())

    async def _step(self, name: str) -> None:
        """A named point of start-up; lab tests can make start-up wait here for their signal."""
        if os.environ.get(PAUSE_ENV) == name:
            log.info("start-up paused at %s", name)
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    async def run(self) -> None:
        tunnel = require_tunnel(self.config)
        self._main = asyncio.current_task()
        self._starting = True
        self._catch_signals()
        journal = Journal.for_interface(RUN_DIR, tunnel.interface)
        # Raises (changing nothing) when a client for this interface runs in this namespace.
        stale = journal.claim()
        self.journal = journal
        # `dnsguard status` finds the client's API through the configuration it names.
        journal.update_status({"config": os.path.abspath(self.config_path)})
        tun: TunDevice | None = None
        udp: UdpEndpoint | None = None
        record = journal.record
        try:
            if stale:
                log.warning("undoing %d changes left by a client that did not stop", len(stale))
                for error in await roll_back(journal):
                    log.error("%s", error)
            await self._step("claimed")
            tun = open_tun(tunnel.interface)
            plan = routing_plan(tunnel)
            # Fail closed: the kill switch goes in before any route points at the tunnel.
            if tunnel.kill_switch:
                self.kill_switch = KillSwitch(
                    tun.name, tunnel.fwmark, exclude=tunnel.exclude, lan_interfaces=tunnel.lan_interfaces
                )
                if tunnel.exclude_local_networks:
                    local = await local_networks(tun.name)
                    self.kill_switch.local_interfaces = list(local.interfaces)
                    self.kill_switch.local_prefixes = list(local.prefixes)
                record(table_change(KILL_SWITCH_TABLE))
                self.kill_switch.apply()
                await self._step("kill-switch")
            await plan.apply(record)
            await self._step("routes")
            udp = UdpEndpoint(tunnel.listen_port or 0, fwmark=tunnel.fwmark)
            device = build_device(tunnel, self.clock())
            self.start_tunnel(device, tun, udp)
            await self._step("tunnel")
            if tunnel.lan_interfaces:
                set_forwarding(True, record)
                await self._step("forwarding")
            if wants_filtering(self.config):
                self.dns = TunnelDns(self.config, server=False)
                record(table_change(DNS_TABLE))
                if self.config.firewall.enabled:
                    record(table_change(FIREWALL_TABLE))
                await self.dns.start(tun.name)
                await self._step("dns")
            self.run_lifecycle()
            self._ticker = asyncio.create_task(self._tick())
            # Watch the uplinks only now: our own setup above changed links and routes too.
            self.monitor = PathMonitor(
                self.on_path_change, tunnel_index=socket.if_nametoindex(tun.name), own_table=tunnel.table
            )
            self.monitor.start()
            self.operations = Operations(self)
            await self.operations.start()
            await self._step("ready")
            self._starting = False
            notify_systemd("READY=1\nSTATUS=tunnel up")
            log.info(
                "tunnel %s up (%s), server %s",
                tun.name,
                ", ".join(tunnel.address),
                ", ".join(p.endpoint or "?" for p in tunnel.peers),
            )
            await self._stop.wait()
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
            log.info("stopped during start-up")
        finally:
            # A signal from here on only sets the stop flag again: the teardown itself never
            # gets cancelled half-way.
            self._starting = False
            await self._teardown(journal, tun, udp)

    async def _teardown(self, journal: Journal, tun: TunDevice | None, udp: UdpEndpoint | None) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        if self.operations is not None:
            await self.operations.close()
        if self._ticker is not None:
            self._ticker.cancel()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.lifecycle.state is not State.DISCONNECTED:
            self.lifecycle.stop(self.clock())
        if self.dns is not None:
            try:
                await self.dns.close()
            except (DnsguardError, OSError, AttributeError) as exc:
                # A start cancelled inside the resolver's start leaves it half built.
                log.warning("closing the resolver: %s", exc)
        if self.shell is not None:
            self.shell.stop()
        if udp is not None:
            udp.close()
        errors = await roll_back(journal)
        if tun is not None:
            tun.close()
        if errors:
            for error in errors:
                log.error("%s", error)
            log.error(
                "tunnel down, but %d changes could not be undone (kept in %s)", len(errors), journal.path
            )
        else:
            journal.remove()
            log.info("tunnel down; routes, rules, firewall and sysctls restored")

    async def prepare_tunnel(self, new: Config) -> Callable[[], None]:
        """Peers checked (endpoints resolved) before the shared reload path swaps anything in."""
        assert new.tunnel is not None and self.config.tunnel is not None
        peers = prepare_peers(new.tunnel)
        old_endpoints = [p.endpoint for p in self.config.tunnel.peers]
        endpoint_changed = old_endpoints != [p.endpoint for p in new.tunnel.peers]

        def commit() -> None:
            if self.shell is not None:
                apply_peers(self.shell.device, peers, self.clock())
            self.lifecycle.config_reloaded(self.clock(), endpoint_changed=endpoint_changed)
            self.run_lifecycle()

        return commit


def lifecycle_settings(tunnel: TunnelConfig) -> LifecycleSettings:
    r = tunnel.reconnect
    return LifecycleSettings(
        handshake_timeout=float(r.handshake_timeout),
        dead_peer_timeout=float(r.dead_peer_timeout),
        probe_timeout=float(r.probe_timeout),
        idle_probe_interval=float(r.idle_probe_interval),
        debounce=float(r.debounce),
        backoff_initial=float(r.backoff_initial),
        backoff_max=float(r.backoff_max),
        give_up_after=float(r.give_up_after) if r.give_up_after is not None else None,
    )


def run_client(config_path: str, startup_notes: Sequence[str] = ()) -> int:
    config = load_config(config_path)
    setup_logging(config, startup_notes)
    tunnel = require_tunnel(config)
    client = Client(config_path, config, lifecycle=Lifecycle(lifecycle_settings(tunnel)))
    run_daemon(client.run(), config.performance.busy_poll, uvloop=True)
    return 0


def run_down(config_path: str | None, interface: str = "dg0") -> int:
    """Stop the client for the interface in this network namespace and undo what it left behind.

    Only this namespace's state file is read, and its pid is signalled only when that process is
    a dnsguard client in this namespace: `down` never stops a client elsewhere.
    """
    tunnel = None
    if config_path:
        tunnel = require_tunnel(load_config(config_path))
        interface = tunnel.interface
    path = state_path(interface)
    state = read_state(path)
    if state is None:
        # No record (a run from before state files, or /run was cleared): remove what is ours by name.
        asyncio.run(cleanup(tunnel or TunnelConfig(interface=interface)))
        return 0
    pid = state.get("pid")
    namespace = namespace_id()
    if isinstance(pid, int) and namespace is not None and client_alive(pid, namespace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while time.monotonic() < deadline and client_alive(pid, namespace):
            time.sleep(0.05)
        if client_alive(pid, namespace):
            raise DnsguardError(f"the client (pid {pid}) did not stop within {STOP_WAIT:.0f} s")
    # The client undoes its own changes as it stops; whatever a killed one left is undone here.
    asyncio.run(_roll_back_stale(interface))
    return 0


async def _roll_back_stale(interface: str) -> None:
    journal = Journal.for_interface(RUN_DIR, interface)
    if not journal.claim():
        journal.remove()
        return
    errors = await roll_back(journal)
    if errors:
        raise DnsguardError(f"{len(errors)} changes could not be undone: {'; '.join(errors)}")
    journal.remove()


def read_status(interface: str = "dg0") -> dict[str, object]:
    path = state_path(interface)
    status = read_state(path)
    if status is None:
        raise DnsguardError(f"no running client for {interface} in this network namespace ({path} not found)")
    changes = status.pop("changes", [])
    status["changes_recorded"] = len(changes) if isinstance(changes, list) else 0
    return status
