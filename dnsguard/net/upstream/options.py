"""How upstream sockets are made and bounded: options shared by every transport of a group."""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dnsguard.dns.upstream_errors import UpstreamUsageError

__all__ = ["DEFAULT_OPTIONS", "SocketSetup", "TransportOptions", "family_of"]

SocketSetup = Callable[[socket.socket], None]


def family_of(address: str) -> socket.AddressFamily:
    """AF_INET or AF_INET6 for an IP address literal."""
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """How upstream sockets are made and bounded; shared by every upstream of a group.

    ``socket_setup`` runs on every new socket before it binds or connects, so the daemon can set SO_MARK or
    SO_BINDTODEVICE and route upstream queries through (or around) its tunnel; ``local_addr`` binds the
    source.
    """

    local_addr: tuple[str, int] | None = None
    socket_setup: SocketSetup | None = None
    ca_file: str | None = None  # None: the system's CA store
    ssl_context: ssl.SSLContext | None = None  # overrides ca_file when given
    idle_timeout: float = 10.0  # RFC 7766 §6.2.3: close idle connections rather than leave them to the server
    max_in_flight: int = 512  # per UDP socket, TCP/TLS connection, or DoH upstream
    udp_rotate_after: int = 10_000  # queries per UDP socket before a fresh source port (RFC 5452)
    max_connections: int = 4  # DoH connection pool size per upstream (HTTP/1.1: one request per connection)
    doh_method: Literal["GET", "POST"] = "POST"

    def __post_init__(self) -> None:
        if not 1 <= self.max_in_flight <= 32_768:
            # Half the ID space at most, so picking a free random ID takes two tries on average at worst.
            raise UpstreamUsageError("max_in_flight must be between 1 and 32768")
        if self.idle_timeout <= 0 or self.udp_rotate_after < 1 or self.max_connections < 1:
            raise UpstreamUsageError("idle_timeout, udp_rotate_after and max_connections must be positive")
        if self.doh_method not in ("GET", "POST"):
            raise UpstreamUsageError("doh_method must be GET or POST")

    def tls_context(self) -> ssl.SSLContext:
        """The TLS client context: verification on, TLS 1.2 at least (RFC 8310, RFC 8484)."""
        if self.ssl_context is not None:
            return self.ssl_context
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def new_socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A non-blocking socket with the setup hook applied and bound to ``local_addr`` if one is set."""
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if self.socket_setup is not None:
                self.socket_setup(sock)
            if self.local_addr is not None:
                sock.bind(self.local_addr)
        except BaseException:
            sock.close()
            raise
        return sock


DEFAULT_OPTIONS = TransportOptions()
