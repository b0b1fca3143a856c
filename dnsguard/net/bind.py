"""Binding listening sockets, with the operating system's refusals told as one line and a hint.

Every listener (DNS over UDP and TCP, the API, the metrics) binds through `bind_socket`, so the
expected failures of an install read the same everywhere and never as a traceback:

- EADDRINUSE: another program holds the port. On most desktops and many servers that is
  systemd-resolved's stub listener on 127.0.0.53:53 (and 127.0.0.54:53), which also blocks a
  wildcard bind of port 53; `ss -lpn` names the holder when it can.
- EADDRNOTAVAIL: the address is on no interface (yet): a typo, or a start before the network is up.
- EACCES: a port below 1024 without root or CAP_NET_BIND_SERVICE.
"""

from __future__ import annotations

import errno
import re
import shutil
import socket
import subprocess

from dnsguard.errors import NetworkError

_SS_USER = re.compile(r'users:\(\("([^"]+)",pid=(\d+)')


class BindError(NetworkError):
    """A listening socket could not be bound; the message names the address and what to do."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_holder(port: int, kind: int = socket.SOCK_DGRAM) -> str | None:
    """'name (pid N)' of the process listening on `port`, as `ss -lpn` tells; None when it cannot tell.

    Runs a subprocess: for error messages at startup only, never on a serving path.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    flag = "-u" if kind == socket.SOCK_DGRAM else "-t"
    try:
        result = subprocess.run(
            [ss, "-H", "-lpn", flag, f"sport = :{port}"], capture_output=True, text=True, timeout=2
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _SS_USER.search(result.stdout)
    if match is None:
        return None
    return f"{match.group(1)} (pid {match.group(2)})"


def bind_error(exc: OSError, host: str, port: int, what: str, kind: int = socket.SOCK_DGRAM) -> BindError:
    """The one-line error for a failed bind of `host`:`port` by the `what` listener."""
    where = f"cannot listen on {format_address(host, port)} for {what}"
    code = exc.errno
    if code == errno.EADDRINUSE:
        holder = port_holder(port, kind)
        message = f"{where}: the port is already in use" + (f" by {holder}" if holder else "")
        if port == 53 and (holder is None or "systemd-resolve" in holder):
            message += (
                "; systemd-resolved's stub listener holds port 53 on most systems: set DNSStubListener=no"
                " in /etc/systemd/resolved.conf and restart systemd-resolved, or listen on another address"
            )
        else:
            message += "; stop the other program or choose another port"
        return BindError(message)
    if code == errno.EADDRNOTAVAIL:
        return BindError(
            f"{where}: {host} is not an address of this machine (yet); check the address, "
            "or start after the network is up (systemd: After=network-online.target)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return BindError(
            f"{where}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE "
            "(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
        )
    return BindError(f"{where}: {exc.strerror or exc}")


def bind_socket(sock: socket.socket, host: str, port: int, what: str) -> None:
    """sock.bind((host, port)); on failure the socket is closed and a BindError raised."""
    try:
        sock.bind((host, port))
    except OSError as exc:
        kind = sock.type
        sock.close()
        raise bind_error(exc, host, port, what, kind) from None
    except OverflowError:  # a port above 65535 that slipped past validation
        sock.close()
        raise BindError(f"cannot listen on {format_address(host, port)} for {what}: no such port") from None


def listening_socket(host: str, port: int, kind: int, what: str, backlog: int = 128) -> socket.socket:
    """A bound socket (TCP: listening) on host:port; IPv6 sockets are IPv6-only.

    TCP sockets get SO_REUSEADDR, so a restart binds while the last run's connections sit in
    TIME_WAIT. UDP sockets do not: on Linux it would let a second daemon bind the same address and
    port without an error and silently take over the queries.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = open_socket(family, kind, host, port, what)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except OSError as exc:
        sock.close()
        raise socket_error(exc, host, port, what) from None
    bind_socket(sock, host, port, what)
    if kind == socket.SOCK_STREAM:
        try:
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            raise socket_error(exc, host, port, what) from None
    return sock


def socket_error(exc: OSError, host: str, port: int, what: str) -> NetworkError:
    """The one-line error for a listener socket that could not be created or set up (not its bind)."""
    return NetworkError(
        f"cannot set up the {what} socket on {format_address(host, port)}: {exc.strerror or exc}"
    )


def open_socket(family: int, kind: int, host: str, port: int, what: str) -> socket.socket:
    """socket.socket(family, kind) for the `what` listener on host:port; NetworkError if it is refused."""
    try:
        return socket.socket(family, kind)
    except OSError as exc:
        raise socket_error(exc, host, port, what) from None
