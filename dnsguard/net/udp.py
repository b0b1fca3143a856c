"""The tunnel's encrypted side: UDP sockets with the fwmark that keeps them out of the tunnel's own routes."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from dnsguard.errors import NetworkError

log = logging.getLogger(__name__)

SO_MARK = 36
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 7 << 20


def _configure(sock: socket.socket, fwmark: int) -> None:
    sock.setblocking(False)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    if fwmark:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, fwmark)
        except PermissionError as exc:
            raise NetworkError("setting SO_MARK on the tunnel socket needs CAP_NET_ADMIN") from exc


class DatagramSocket(Protocol):
    """What the tunnel shell uses of one socket: a descriptor to wait on, and non-blocking receive."""

    def fileno(self) -> int: ...

    def recvfrom(self, bufsize: int, /) -> tuple[bytes, Any]: ...


class DatagramEndpoint(Protocol):
    """What the tunnel shell uses of its encrypted side: `UdpEndpoint` here, `FakeUdpEndpoint` in tests."""

    @property
    def sockets(self) -> Mapping[int, DatagramSocket]: ...

    def rebind(self) -> None: ...

    def sendto(self, data: bytes, address: tuple[str, int]) -> bool: ...


class UdpEndpoint:
    """The encrypted side: an IPv4 and (when available) an IPv6 socket on the same port."""

    def __init__(self, port: int = 0, fwmark: int = 0) -> None:
        self.fwmark = fwmark
        self.requested_port = port
        self.sockets: dict[int, socket.socket] = {}
        self.port = 0
        self.open()

    def open(self, port: int | None = None) -> None:
        """Bind the sockets (port 0: the kernel picks one, shared by both families)."""
        port = self.requested_port if port is None else port
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _configure(v4, self.fwmark)
        try:
            v4.bind(("0.0.0.0", port))
        except OSError as exc:
            v4.close()
            raise NetworkError(f"cannot bind UDP port {port}: {exc}") from exc
        self.port = v4.getsockname()[1]
        self.sockets = {socket.AF_INET: v4}
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _configure(v6, self.fwmark)
            v6.bind(("::", self.port))
            self.sockets[socket.AF_INET6] = v6
        except OSError as exc:
            log.info("no IPv6 for the tunnel socket: %s", exc)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}

    def rebind(self) -> None:
        """New sockets (a fresh source address after a path change) on the same port while it is free.

        Keeping the port keeps us where a peer last saw us: a restarted server that re-initiates
        towards the endpoint it remembered (app/endpoints.py) still finds us after our own
        dead-peer reconnection.
        """
        port = self.port
        self.close()
        try:
            self.open(port)
        except NetworkError:
            self.open()

    def sendto(self, data: bytes, address: tuple[str, int]) -> bool:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = self.sockets.get(family)
        if sock is None:
            return False
        try:
            sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # Unreachable networks and similar are routine during path changes: count, move on.
            if exc.errno not in (
                errno.ENETUNREACH,
                errno.EHOSTUNREACH,
                errno.EPERM,
                errno.EADDRNOTAVAIL,
                errno.ENETDOWN,
                errno.EINVAL,
            ):
                log.warning("tunnel send to %s failed: %s", address, exc)
            return False
        return True
