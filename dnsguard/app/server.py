"""`dnsguard server`: a WireGuard server for many peers, with forwarding and NAT out of its namespace."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnsguard.app.api import Operations
from dnsguard.app.common import (
    DEFAULT_MTU,
    DEFAULT_PORT,
    apply_peers,
    build_device,
    install_signal_handlers,
    notify_systemd,
    prepare_peers,
    require_tunnel,
    run_daemon,
    setup_logging,
)
from dnsguard.app.dns_filtering import FilteringTunnelDaemon, TunnelDns, wants_filtering
from dnsguard.app.endpoints import EndpointMemory, memory_path
from dnsguard.app.observe import ReloadCounter, TunnelObserver
from dnsguard.app.tunnel import TunnelShell
from dnsguard.config import Config, TunnelConfig, load_config
from dnsguard.errors import NetworkError
from dnsguard.lifecycle.clock import boottime
from dnsguard.net.firewall import ServerNat
from dnsguard.net.routing import configure_interface, set_forwarding, undo
from dnsguard.net.tun import open_tun
from dnsguard.net.udp import UdpEndpoint
from dnsguard.wireguard.events import Event, HandshakeCompleted, PeerEndpointChanged

log = logging.getLogger("dnsguard.server")


def peer_prefixes(tunnel: TunnelConfig) -> list[str]:
    return [str(ipaddress.ip_network(p, strict=False)) for peer in tunnel.peers for p in peer.allowed_ips]


@dataclass
class Server(FilteringTunnelDaemon):
    config_path: str
    config: Config
    shell: TunnelShell | None = None
    dns: TunnelDns | None = None
    peers_connected: set[str] = field(default_factory=set)
    reloads: ReloadCounter = field(default_factory=ReloadCounter)
    tunnel_observer: TunnelObserver = field(default_factory=TunnelObserver)
    kind: str = "server"
    connection: None = None
    """A server has no connection lifecycle of its own."""
    endpoints: EndpointMemory | None = None

    def on_event(self, event: Event) -> None:
        self.tunnel_observer.on_event(event)
        if isinstance(event, HandshakeCompleted):
            if event.public_key not in self.peers_connected:
                log.info("peer %s: handshake completed", event.public_key[:8])
            self.peers_connected.add(event.public_key)
        elif isinstance(event, PeerEndpointChanged):
            log.info("peer %s roamed to %s:%s", event.public_key[:8], event.new[0], event.new[1])
            if self.endpoints is not None and self.shell is not None:
                self.endpoints.save(self.shell.device)

    async def run(self) -> None:
        tunnel = require_tunnel(self.config)
        device = build_device(tunnel, boottime())
        tun = open_tun(tunnel.interface)
        udp = UdpEndpoint(tunnel.listen_port or DEFAULT_PORT)
        operations: Operations | None = None
        sysctls: list[dict[str, Any]] = []
        """Forwarding switches this run turned on, with their previous values, restored on stop."""
        try:
            await configure_interface(
                tun.name, tunnel.address, tunnel.mtu or DEFAULT_MTU, peer_prefixes(tunnel)
            )
            set_forwarding(True, sysctls.append)
            ServerNat(tun.name, peer_prefixes(tunnel)).apply()
            self.shell = TunnelShell(
                device,
                tun,
                udp,
                on_event=self.on_event,
                keep_warm=float(self.config.performance.keep_warm),
                receive_codel=self.config.performance.receive_codel,
                queue_by_destination=True,  # the peers share the sends equally
            )
            self.shell.start()
            # Sessions died with the previous run: initiate towards where the peers were.
            self.endpoints = EndpointMemory(memory_path(tunnel.interface))
            if count := self.endpoints.reconnect(device, boottime()):
                log.info("initiating to %d peers at their last known endpoints", count)
            self.shell.flush()
            if wants_filtering(self.config):
                self.dns = TunnelDns(self.config, server=True)
                await self.dns.start(tun.name)
            log.info(
                "server %s listening on UDP %d with %d peers (public key %s)",
                tun.name,
                udp.port,
                len(device.peers),
                device.public_key,
            )
            stop = asyncio.Event()
            install_signal_handlers(stop, lambda: asyncio.ensure_future(self.reload()))
            operations = Operations(self)
            await operations.start()
            notify_systemd("READY=1\nSTATUS=serving peers")
            await stop.wait()
        finally:
            if operations is not None:
                await operations.close()
            if self.dns is not None:
                await self.dns.close()
            if self.shell is not None:
                self.shell.stop()
            ServerNat.remove()
            for change in reversed(sysctls):
                try:
                    await undo(change)
                except NetworkError as exc:
                    log.warning("%s", exc)
            udp.close()
            tun.close()
            log.info("server stopped")

    async def prepare_tunnel(self, new: Config) -> Callable[[], None]:
        """Peers checked, then the interface's addresses and peer routes, before anything is swapped in."""
        assert new.tunnel is not None
        peers = prepare_peers(new.tunnel)
        if self.shell is None:
            return lambda: None
        # Kernel state goes first: when it fails, the running peers and DNS are left as they were.
        await configure_interface(
            self.shell.tun.name, new.tunnel.address, new.tunnel.mtu or DEFAULT_MTU, peer_prefixes(new.tunnel)
        )
        ServerNat(self.shell.tun.name, peer_prefixes(new.tunnel)).apply()
        shell = self.shell

        def commit() -> None:
            added, removed, updated = apply_peers(shell.device, peers, boottime())
            shell.flush()
            log.info("peers: %d added, %d removed, %d kept", added, removed, updated)

        return commit


def run_server(config_path: str, startup_notes: Sequence[str] = ()) -> int:
    config = load_config(config_path)
    setup_logging(config, startup_notes)
    run_daemon(Server(config_path, config).run(), config.performance.busy_poll, uvloop=True)
    return 0
