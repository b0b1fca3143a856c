"""`dnsguard up`: the full-tunnel client: TUN, routing, kill switch, tunnel, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dnsguard.config import Config, TunnelConfig, load_config
from dnsguard.daemon.common import (
    DEFAULT_MTU,
    apply_peers,
    build_device,
    install_signal_handlers,
    notify_systemd,
    prepare_peers,
    require_tunnel,
    setup_logging,
)
from dnsguard.daemon.dns_filtering import FilteringTunnelDaemon, TunnelDns, wants_filtering
from dnsguard.daemon.tunnel import PacketFilter, TunnelShell, UdpEndpoint
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
from dnsguard.net.firewall import DnsRedirect, KillSwitch
from dnsguard.net.monitor import PathMonitor
from dnsguard.net.routing import RoutingPlan, set_forwarding
from dnsguard.net.tun import TunDevice
from dnsguard.ops.api import Operations
from dnsguard.ops.observe import ReloadCounter, TunnelObserver
from dnsguard.wireguard.events import Event, HandshakeCompleted, HandshakeGaveUp, PeerEndpointChanged

log = logging.getLogger("dnsguard.client")

RUN_DIR = Path(os.environ.get("DNSGUARD_RUN_DIR", "/run/dnsguard"))
TICK = 1.0


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
    return RUN_DIR / f"{interface}.json"


async def cleanup(tunnel: TunnelConfig) -> None:
    """Remove everything a client for this tunnel may have left: rules, routes, firewall, link."""
    await routing_plan(tunnel).remove()
    KillSwitch.remove()
    DnsRedirect.remove()


@dataclass
class Client(FilteringTunnelDaemon):
    config_path: str
    config: Config
    outbound_filter: PacketFilter | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    shell: TunnelShell | None = None
    on_state: Callable[[State], None] | None = None
    reloads: ReloadCounter = field(default_factory=ReloadCounter)
    tunnel_observer: TunnelObserver = field(default_factory=TunnelObserver)
    kind: str = "client"

    def __post_init__(self) -> None:
        self.wake_detector = WakeDetector(TICK)
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.dns: TunnelDns | None = None
        self.monitor: PathMonitor | None = None
        self.operations: Operations | None = None

    # -- what the metrics and the API read ------------------------------------------------

    @property
    def connection(self) -> Lifecycle:
        return self.lifecycle

    # -- events from the tunnel and the lifecycle ----------------------------------------

    def on_event(self, event: Event) -> None:
        self.tunnel_observer.on_event(event)
        now = boottime()
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
        self.lifecycle.path_changed(boottime())
        asyncio.get_running_loop().call_later(self.lifecycle.settings.debounce + 0.01, self._run_due_timers)

    def _run_due_timers(self) -> None:
        now = boottime()
        timer = self.lifecycle.get_timer()
        if timer is not None and timer <= now:
            self.lifecycle.handle_timer(now)
        self.run_lifecycle()

    def run_lifecycle(self) -> None:
        """Carry out what the lifecycle asks for."""
        shell = self.shell
        while (action := self.lifecycle.next_action()) is not None:
            now = boottime()
            if isinstance(action, Reconnect):
                log.info("reconnecting (%s, attempt %d)", action.cause.value, action.attempt)
                if shell is not None:
                    if action.attempt > 1 or action.cause.value in ("wake", "path_change", "dead_peer"):
                        shell.rebind()
                    # At start a persistent keepalive has already initiated: forcing another would
                    # void it, and the server drops the second as a flood (a 5 s first connect).
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

    async def _tick(self) -> None:
        while True:
            now = boottime()
            wake = self.wake_detector.observe(now, monotonic())
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
            await asyncio.sleep(min(TICK, max(0.05, (timer - now) if timer and timer > now else TICK)))

    def write_state(self) -> None:
        tunnel = self.config.tunnel
        if tunnel is None:
            return
        status = {
            "pid": os.getpid(),
            "config": os.path.abspath(self.config_path),
            "interface": tunnel.interface,
            "state": self.lifecycle.state.value,
            "last_handshake": self.lifecycle.last_handshake,
            "reconnects": {cause.value: count for cause, count in self.lifecycle.reconnects.items()},
            "updated": time.time(),
        }
        if self.shell is not None:
            stats = self.shell.stats
            status.update(rx_bytes=stats.rx_bytes, tx_bytes=stats.tx_bytes, intercepted=stats.intercepted)
        with contextlib.suppress(OSError):
            RUN_DIR.mkdir(parents=True, exist_ok=True)
            path = state_path(tunnel.interface)
            path.with_suffix(".tmp").write_text(json.dumps(status))
            path.with_suffix(".tmp").replace(path)

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> None:
        tunnel = require_tunnel(self.config)
        await cleanup(tunnel)
        plan = routing_plan(tunnel)
        tun = TunDevice(tunnel.interface)
        udp: UdpEndpoint | None = None
        try:
            # Fail closed: the kill switch goes in before any route points at the tunnel.
            if tunnel.kill_switch:
                KillSwitch(
                    tun.name, tunnel.fwmark, exclude=tunnel.exclude, lan_interfaces=tunnel.lan_interfaces
                ).apply()
            await plan.apply()
            udp = UdpEndpoint(tunnel.listen_port or 0, fwmark=tunnel.fwmark)
            device = build_device(tunnel, boottime())
            self.shell = TunnelShell(
                device,
                tun,
                udp,
                outbound_filter=self.outbound_filter,
                on_event=self.on_event,
                on_batch=self.on_batch,
            )
            # The lifecycle starts first so that the very first handshake already counts.
            self.lifecycle.start(boottime())
            self.shell.start()
            if tunnel.lan_interfaces:
                set_forwarding(True)
            if wants_filtering(self.config):
                self.dns = TunnelDns(self.config_path, self.config, server=False)
                await self.dns.start(tun.name)
            self.run_lifecycle()
            self._ticker = asyncio.create_task(self._tick())
            # Watch the uplinks only now: our own setup above changed links and routes too.
            self.monitor = PathMonitor(
                self.on_path_change, tunnel_index=socket.if_nametoindex(tun.name), own_table=tunnel.table
            )
            self.monitor.start()
            install_signal_handlers(self._stop, lambda: asyncio.ensure_future(self.reload()))
            self.operations = Operations(self)
            await self.operations.start()
            notify_systemd("READY=1\nSTATUS=tunnel up")
            log.info(
                "tunnel %s up (%s), server %s",
                tun.name,
                ", ".join(tunnel.address),
                ", ".join(p.endpoint or "?" for p in tunnel.peers),
            )
            await self._stop.wait()
        finally:
            if self.operations is not None:
                await self.operations.close()
            if self._ticker is not None:
                self._ticker.cancel()
            if self.monitor is not None:
                await self.monitor.stop()
            self.lifecycle.stop(boottime())
            if self.dns is not None:
                await self.dns.close()
            if self.shell is not None:
                self.shell.stop()
            if udp is not None:
                udp.close()
            await plan.remove(keep_link=True)
            KillSwitch.remove()
            tun.close()
            with contextlib.suppress(OSError):
                state_path(tunnel.interface).unlink()
            log.info("tunnel down; routes, rules and firewall removed")

    async def prepare_tunnel(self, new: Config) -> Callable[[], None]:
        """Peers checked (endpoints resolved) before the shared reload path swaps anything in."""
        assert new.tunnel is not None and self.config.tunnel is not None
        peers = prepare_peers(new.tunnel)
        old_endpoints = [p.endpoint for p in self.config.tunnel.peers]
        endpoint_changed = old_endpoints != [p.endpoint for p in new.tunnel.peers]

        def commit() -> None:
            if self.shell is not None:
                apply_peers(self.shell.device, peers, boottime())
            self.lifecycle.config_reloaded(boottime(), endpoint_changed=endpoint_changed)
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


def run_client(config_path: str) -> int:
    config = load_config(config_path)
    setup_logging(config)
    tunnel = require_tunnel(config)
    client = Client(config_path, config, lifecycle=Lifecycle(lifecycle_settings(tunnel)))
    asyncio.run(client.run())
    return 0


def run_down(config_path: str | None, interface: str = "dg0") -> int:
    """Stop a running client (SIGTERM) and remove anything left behind."""
    tunnel = None
    if config_path:
        tunnel = require_tunnel(load_config(config_path))
        interface = tunnel.interface
    path = state_path(interface)
    if path.exists():
        with contextlib.suppress(ValueError, OSError, ProcessLookupError):
            pid = int(json.loads(path.read_text())["pid"])
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
    asyncio.run(cleanup(tunnel or TunnelConfig(interface=interface)))
    return 0


def read_status(interface: str = "dg0") -> dict[str, object]:
    path = state_path(interface)
    try:
        status: dict[str, object] = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DnsguardError(f"no running client for {interface} ({path} not found)") from None
    return status
