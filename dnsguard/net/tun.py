"""The TUN device: opened by ioctl so that it is not persistent and vanishes with the process."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from typing import Final, Protocol

from dnsguard.errors import NetworkError, PrivilegeError
from dnsguard.net.offload import (
    PLAIN_HEADER,
    VNET_HEADER_SIZE,
    MalformedSuperPacket,
    coalesce,
    split,
    sums_by,
)

log = logging.getLogger(__name__)
_lengths = struct.Struct("=HH").unpack_from

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
MAX_PACKET = 65535
OFFLOADS_ENV = "DNSGUARD_OFFLOADS"
"""Set to "off" to open the TUN (and the tunnel's UDP sockets) without offloads."""


def offloads_allowed() -> bool:
    return os.environ.get(OFFLOADS_ENV, "").strip().lower() not in ("off", "0", "no", "false")


def _set_offloads(fd: int) -> int:
    """Offer the kernel checksum, TSO and USO offloads; returns the TUN_F_ flags it accepted (0: none).

    USO arrived in Linux 6.2: an older kernel refuses the whole set with EINVAL, and the TUN falls
    back to checksum and TSO alone.
    """
    for flags in (
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    ):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            log.debug("TUN offloads %#x refused: %s", flags, exc)
            continue
        return flags
    return 0


OFFLOAD_NAMES: Final = {
    TUN_F_CSUM: "csum",
    TUN_F_TSO4: "tso4",
    TUN_F_TSO6: "tso6",
    TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
}
"""The TUN_F_ flags by the names the log and the metrics give them."""


def describe_offloads(flags: int) -> str:
    return ",".join(name for bit, name in OFFLOAD_NAMES.items() if flags & bit) or "none"


class PacketDevice(Protocol):
    """What the tunnel shell uses of a TUN: `TunDevice` here, `FakeTun` (net/fake.py) in tests."""

    name: str
    queue_full: int
    """Packets dropped because the kernel's queue was full."""
    write_errors: int
    """Packets the kernel refused (dropped, counted)."""

    def fileno(self) -> int: ...

    def read_batch(self, limit: int = 128, ends: list[int] | None = None) -> list[bytes]:
        """The packets waiting, up to about `limit` (one read's packets when `limit` is 1); [] when none.

        With `ends`, the index after each read's last packet is appended to it: the packets of one
        read (a super-packet's segments) belong to one flow.
        """
        ...

    def write(self, packet: bytes) -> None: ...

    def write_batch(self, packets: list[bytes]) -> None:
        """Write the packets of one receive batch (coalesced where the device has offloads)."""
        ...


def open_tun(name: str, *, offloads: bool = True) -> TunDevice:
    """Create (or attach to) the TUN interface `name`: raw IP packets in and out, no
    packet-information header.

    With `offloads` (and unless DNSGUARD_OFFLOADS=off) the TUN is opened with virtio-net headers and
    TUNSETOFFLOAD: reads may return 64 KB super-packets, cut into MTU-sized packets (net/offload.py),
    and `write_batch` merges TCP segments of one flow into one write. Where the kernel refuses, the
    device says so once in the log and works one packet per call.
    """
    if len(name.encode()) > 15:
        raise NetworkError(f"interface name {name!r} is longer than 15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise PrivilegeError("opening /dev/net/tun needs CAP_NET_ADMIN") from None
    except OSError as exc:
        raise NetworkError(f"cannot open /dev/net/tun: {exc}") from exc
    want_vnet = offloads and offloads_allowed()
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if want_vnet else 0)
    try:
        result = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        if exc.errno == 1:
            raise PrivilegeError("creating a TUN device needs CAP_NET_ADMIN") from None
        raise NetworkError(f"cannot create TUN {name!r}: {exc}") from exc
    name = result[:16].rstrip(b"\0").decode()
    offload_flags = 0
    if want_vnet:
        try:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADER_SIZE))
            offload_flags = _set_offloads(fd)
        except OSError as exc:
            log.debug("TUN virtio-net header size refused: %s", exc)
        if not offload_flags:
            # The interface exists with IFF_VNET_HDR: every read and write still carries the
            # (plain) header, which read_batch and write handle; only the segmentation is lost.
            offload_flags = -1
            log.info("%s: the kernel refused TUN offloads; one packet per read and write", name)
        else:
            log.info(
                "%s: TUN offloads on (%s), checksums summed by %s",
                name,
                describe_offloads(offload_flags),
                sums_by(),
            )
    elif offloads:
        log.info("%s: TUN offloads off (%s=off)", name, OFFLOADS_ENV)
    return TunDevice(fd, name, offload_flags)


class TunDevice:
    """An open TUN interface's descriptor (open_tun makes one), read and written in batches."""

    def __init__(self, fd: int, name: str, offload_flags: int = 0) -> None:
        self.fd = fd
        self.name = name
        self.offload_flags = offload_flags
        """TUN_F_ flags the kernel accepted; 0: no virtio-net header on reads and writes; -1: the
        header without offloads (the kernel refused them)."""
        self.queue_full = 0
        self.write_errors = 0
        self.malformed = 0
        """Reads whose virtio-net header did not describe the packet (dropped)."""
        self.super_packets = 0
        """Reads that were GSO super-packets, cut into `segments_read` packets."""
        self.segments_read = 0
        self.coalesced_writes = 0
        """Writes that carried more than one received TCP segment, `segments_coalesced` in all."""
        self.segments_coalesced = 0

    def fileno(self) -> int:
        return self.fd

    @property
    def vnet_header(self) -> bool:
        """Whether reads and writes carry a virtio-net header."""
        return self.offload_flags != 0

    def read_batch(self, limit: int = 128, ends: list[int] | None = None) -> list[bytes]:
        """Every packet waiting (up to about `limit`): one wake-up drains the queue until EAGAIN.

        With offloads, one read may be a super-packet and yield many packets (the last read may
        take the batch past `limit` by one super-packet's segments): a batch never waits
        for more than is already readable, so an idle tunnel sends a lone packet at once.
        `read_batch(1)` is a single read (all of a super-packet), not followed by one that finds
        the queue empty.
        """
        packets: list[bytes] = []
        read = os.read
        fd = self.fd
        if not self.offload_flags:
            for _ in range(limit):
                try:
                    packets.append(read(fd, MAX_PACKET))
                except BlockingIOError:
                    break
            if ends is not None:
                ends.extend(range(1, len(packets) + 1))
            return packets
        while len(packets) < limit:
            try:
                buffer = read(fd, MAX_PACKET + VNET_HEADER_SIZE)
            except BlockingIOError:
                break
            if buffer[1] == 0 and not buffer[0] & 1:  # no GSO, no checksum to finish: strip and go
                packets.append(buffer[VNET_HEADER_SIZE:])
                if ends is not None:
                    ends.append(len(packets))
                continue
            try:
                segments = split(buffer)
            except MalformedSuperPacket as exc:
                self.malformed += 1
                log.debug("%s: dropped a read: %s", self.name, exc)
                continue
            if len(segments) > 1:
                self.super_packets += 1
                self.segments_read += len(segments)
            packets.extend(segments)
            if ends is not None:
                ends.append(len(packets))
        return packets

    def write(self, packet: bytes) -> None:
        """Write one IP packet; a full queue drops it (like a congested link) rather than blocking.

        A packet the kernel refuses (EINVAL, EIO while the link goes down) is dropped and counted too:
        one bad packet must not stop the data path.
        """
        try:
            if self.offload_flags:
                os.writev(self.fd, (PLAIN_HEADER, packet))
            else:
                os.write(self.fd, packet)
        except BlockingIOError:
            self.queue_full += 1
        except OSError:
            self.write_errors += 1

    def write_batch(self, packets: list[bytes]) -> None:
        """Write one receive batch: with TSO offered, TCP segments of a flow go as one super-packet."""
        if self.offload_flags <= 0 or len(packets) < 2:
            for packet in packets:
                self.write(packet)
            return
        writev = os.writev
        fd = self.fd
        for header, merged in coalesce(packets):
            if header[1]:  # a GSO type: several segments in one write
                self.coalesced_writes += 1
                header_length, gso_size = _lengths(header, 2)
                self.segments_coalesced += -(-(len(merged) - header_length) // max(gso_size, 1))
            try:
                writev(fd, (header, merged))
            except BlockingIOError:
                self.queue_full += 1
            except OSError:
                self.write_errors += 1

    def close(self) -> None:
        """Close the descriptor; the kernel deletes the interface with it."""
        if self.fd >= 0 and self.offload_flags > 0:
            log.info(
                "%s: %d super-packets read (%d segments), %d coalesced writes (%d segments), %d malformed",
                self.name,
                self.super_packets,
                self.segments_read,
                self.coalesced_writes,
                self.segments_coalesced,
                self.malformed,
            )
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
