"""DNS filtering inside the tunnel daemons: a resolver on the tunnel address, every query redirected to it."""

from __future__ import annotations

import copy
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from dnsguard.app.common import Prepared, Reloader
from dnsguard.app.dns_firewall import FirewallService
from dnsguard.app.observe import ReloadCounter
from dnsguard.app.resolve import ResolverService
from dnsguard.app.tunnel import TunnelShell
from dnsguard.config import Config, GroupConfig, TunnelConfig
from dnsguard.config.addresses import is_ip
from dnsguard.errors import ConfigError
from dnsguard.net.firewall import RESOLVER_MARK_OFFSET, DnsRedirect
from dnsguard.net.interfaces import connected_networks, host_addresses
from dnsguard.net.udp import SO_MARK

log = logging.getLogger("dnsguard.dns")


def wants_filtering(config: Config) -> bool:
    """A tunnel daemon filters DNS when the configuration has lists, groups, rewrites or upstreams."""
    tunnel = config.tunnel
    return bool(
        config.lists
        or config.groups
        or config.rewrites
        or config.upstreams.servers
        or (tunnel is not None and tunnel.dns)
    )


def tunnel_addresses(tunnel: TunnelConfig) -> tuple[str | None, str | None]:
    """The first IPv4 and IPv6 address of the tunnel interface."""
    v4 = next(
        (str(ipaddress.ip_interface(a).ip) for a in tunnel.address if ipaddress.ip_interface(a).version == 4),
        None,
    )
    v6 = next(
        (str(ipaddress.ip_interface(a).ip) for a in tunnel.address if ipaddress.ip_interface(a).version == 6),
        None,
    )
    return v4, v6


def tunnel_networks(tunnel: TunnelConfig, server: bool) -> list[str]:
    """`allow-clients: [tunnel]`: the tunnel's own prefixes and, on a server, every peer's allowed IPs.

    A client's peer (the server) has allowed IPs 0.0.0.0/0: those say where packets may come from
    through the tunnel, not who may ask the resolver, so they count only on the server side.
    """
    networks = [str(ipaddress.ip_interface(a).network) for a in tunnel.address]
    if server:
        for peer in tunnel.peers:
            networks += [str(ipaddress.ip_network(p, strict=False)) for p in peer.allowed_ips]
    return list(dict.fromkeys(networks))


def marker(mark: int):  # type: ignore[no-untyped-def]
    def setup(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    return setup


def filtering_config(config: Config, listen: list[str], peer_groups: bool) -> Config:
    """The resolver's view of the configuration: listening on the tunnel, upstreams defaulting to DNS=."""
    resolver_config = copy.deepcopy(config)
    resolver_config.base_dir = config.base_dir
    resolver_config.resolver.listen = listen
    tunnel = config.tunnel
    if not resolver_config.upstreams.servers and tunnel is not None:
        resolver_config.upstreams.servers = [d for d in tunnel.dns if is_ip(d)]
    if peer_groups and tunnel is not None:
        # Server: a peer's `group` puts every address it may use (its AllowedIPs) in that group.
        for peer in tunnel.peers:
            if peer.group:
                group = resolver_config.groups.setdefault(peer.group, GroupConfig())
                group.clients.extend(str(ipaddress.ip_network(p, strict=False)) for p in peer.allowed_ips)
    return resolver_config


@dataclass
class TunnelDns:
    """Resolver + redirect for a client (`output_interface`) or a server (`input_interfaces`)."""

    config: Config
    server: bool
    firewall: FirewallService | None = None

    async def start(self, interface: str) -> None:
        tunnel = self.config.tunnel
        assert tunnel is not None
        v4, v6 = tunnel_addresses(tunnel)
        listen = ([f"{v4}:53"] if v4 else []) + ([f"[{v6}]:53"] if v6 else [])
        resolver_mark = tunnel.fwmark + RESOLVER_MARK_OFFSET
        resolver_config = filtering_config(self.config, listen, self.server)
        self.service = ResolverService(
            resolver_config,
            socket_setup=None if self.server else marker(resolver_mark),
            local_networks=self._local_networks,
            tunnel_networks=tunnel_networks(tunnel, self.server),
        )
        await self.service.start()
        self.redirect = DnsRedirect(
            listen4=v4,
            listen6=v6,
            resolver_mark=resolver_mark,
            output_interface=None if self.server else interface,
            input_interfaces=[interface] if self.server else list(tunnel.lan_interfaces),
            refuse_dot=self.config.blocking.refuse_dot,
            refused_addresses=list(self.config.blocking.doh_endpoints),
        )
        self.redirect.apply()
        if self.config.firewall.enabled:
            if self.server:
                # The peers' groups as the resolver sees them (a peer's allowed IPs in its group).
                self.firewall = FirewallService(resolver_config, interface, [], server=True)
            else:
                self.firewall = FirewallService(self.config, interface, [tunnel.fwmark, resolver_mark])
            await self.firewall.start()
            assert self.service.resolver is not None
            self.service.resolver.on_addresses = self.firewall.on_addresses
            self.service.firewall = self.firewall
            assert self.service.forwarder is not None
            self.service.forwarder.before_answer = self.firewall.before_answer
        log.info("DNS filtering on %s: every query to port 53 is answered by dnsguard", ", ".join(listen))

    async def _local_networks(self) -> list[str]:
        """`local-networks` for a tunnel daemon: the host's own addresses (its programs' queries are
        redirected with one of them as the source) and the prefixes of the LAN interfaces it serves."""
        tunnel = self.config.tunnel
        lan = list(tunnel.lan_interfaces) if tunnel is not None else []
        return await host_addresses() + (await connected_networks(lan) if lan else [])

    async def prepare(self, config: Config) -> Prepared:
        """The resolver's state for a new configuration, built aside (raises what is wrong with it)."""
        tunnel = config.tunnel
        assert tunnel is not None
        v4, v6 = tunnel_addresses(tunnel)
        listen = ([f"{v4}:53"] if v4 else []) + ([f"[{v6}]:53"] if v6 else [])
        resolver_config = filtering_config(config, listen, self.server)
        prepared = await self.service.prepare_reload(resolver_config)

        def commit() -> None:
            prepared.commit()
            self.config = config
            if self.firewall is not None:
                self.firewall.reconfigure_soon(resolver_config if self.server else config)

        return Prepared(commit, prepared.discard)

    async def close(self) -> None:
        if self.firewall is not None:
            await self.firewall.close()
        DnsRedirect.remove()
        await self.service.close()


class FilteringTunnelDaemon:
    """What `up` and `server` share towards operations: their DNS service, their shell, reloading."""

    config_path: str
    config: Config
    dns: TunnelDns | None
    shell: TunnelShell | None
    reloads: ReloadCounter

    @property
    def dns_service(self) -> ResolverService | None:
        return self.dns.service if self.dns is not None else None

    @property
    def tunnel_shell(self) -> TunnelShell | None:
        return self.shell

    @property
    def reloader(self) -> Reloader:
        reloader: Reloader | None = getattr(self, "_reloader", None)
        if reloader is None:
            reloader = self._reloader = Reloader(self.config_path, self.reloads, self.prepare_reload)
        return reloader

    async def reload(self) -> bool:
        """Re-read the configuration; anything wrong with it (a bad file, a list or upstream that does not
        build, a peer that does not resolve) leaves the tunnel and its DNS as they were (False)."""
        return await self.reloader.reload()

    async def prepare_reload(self, new: Config) -> Prepared:
        """DNS and tunnel parts of a reload, both built before either is swapped in."""
        if new.tunnel is None:
            raise ConfigError("the new configuration has no tunnel section", key="tunnel")
        dns = await self.dns.prepare(new) if self.dns is not None else Prepared(lambda: None)
        try:
            tunnel = await self.prepare_tunnel(new)
        except BaseException:
            await dns.discard()
            raise

        def commit() -> None:
            dns.commit()
            # The tunnel's part reads the new configuration (the lifecycle's endpoint, for one).
            self.config = new
            tunnel()
            if self.shell is not None:
                self.shell.keep_warm = float(new.performance.keep_warm)
                self.shell.set_receive_codel(new.performance.receive_codel)

        return Prepared(commit, dns.discard)

    async def prepare_tunnel(self, new: Config) -> Callable[[], None]:
        """The daemon's own part of a reload, checked; returns the swap (which must not fail)."""
        raise NotImplementedError
