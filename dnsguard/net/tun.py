"""The TUN device: opened by ioctl so that it is not persistent and vanishes with the process."""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Protocol

from dnsguard.errors import NetworkError, PrivilegeError

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
MAX_PACKET = 65535


class PacketDevice(Protocol):
    """What the tunnel shell uses of a TUN: `TunDevice` here, `FakeTun` (net/fake.py) in tests."""

    name: str
    queue_full: int
    """Packets dropped because the kernel's queue was full."""
    write_errors: int
    """Packets the kernel refused (dropped, counted)."""

    def fileno(self) -> int: ...

    def read_batch(self, limit: int = 128) -> list[bytes]: ...

    def write(self, packet: bytes) -> None: ...


class TunDevice:
    """An open TUN interface: raw IP packets in and out, no packet-information header."""

    def __init__(self, name: str) -> None:
        if len(name.encode()) > 15:
            raise NetworkError(f"interface name {name!r} is longer than 15 bytes")
        try:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except PermissionError:
            raise PrivilegeError("opening /dev/net/tun needs CAP_NET_ADMIN") from None
        except OSError as exc:
            raise NetworkError(f"cannot open /dev/net/tun: {exc}") from exc
        try:
            result = fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as exc:
            os.close(self.fd)
            if exc.errno == 1:
                raise PrivilegeError("creating a TUN device needs CAP_NET_ADMIN") from None
            raise NetworkError(f"cannot create TUN {name!r}: {exc}") from exc
        self.name = result[:16].rstrip(b"\0").decode()
        self.queue_full = 0
        self.write_errors = 0

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, limit: int = 128) -> list[bytes]:
        """Every packet waiting (up to `limit`): one wake-up drains the queue until EAGAIN."""
        packets = []
        read = os.read
        fd = self.fd
        for _ in range(limit):
            try:
                packets.append(read(fd, MAX_PACKET))
            except BlockingIOError:
                break
        return packets

    def write(self, packet: bytes) -> None:
        """Write one IP packet; a full queue drops it (like a congested link) rather than blocking.

        A packet the kernel refuses (EINVAL, EIO while the link goes down) is dropped and counted too:
        one bad packet must not stop the data path.
        """
        try:
            os.write(self.fd, packet)
        except BlockingIOError:
            self.queue_full += 1
        except OSError:
            self.write_errors += 1

    def close(self) -> None:
        """Close the descriptor; the kernel deletes the interface with it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
