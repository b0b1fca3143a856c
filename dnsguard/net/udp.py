"""The tunnel's encrypted side: UDP sockets with the fwmark that keeps them out of the tunnel's own routes."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from dnsguard.errors import NetworkError
from dnsguard.net.mmsg import (
    CONTROLLEN_OFFSET,
    LEN_OFFSET,
    RECVMMSG,
    SENDER_TABLE_SIZE,
    SOCKADDR_SIZE,
    ReceiveSlots,
    ReplyBatch,
)
from dnsguard.net.mmsg_headers import Mmsghdr

log = logging.getLogger(__name__)

SO_MARK = 36
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SOCKET_BUFFER = 7 << 20
SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
GSO_MAX_SEGMENTS: Final = 64
"""Datagrams in one UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS before 6.9)."""
GSO_MAX_BYTES: Final = 65000
"""Payload bytes in one UDP_SEGMENT send: under the 65507 a UDP datagram over IPv4 can hold."""
OFFLOADS_ENV: Final = "DNSGUARD_OFFLOADS"
SO_TIMESTAMPNS: Final = 35
"""Linux's SO_TIMESTAMPNS (SO_TIMESTAMPNS_OLD, asm-generic numbering): each datagram carries the
CLOCK_REALTIME it reached the socket, as a struct timespec in an SCM_TIMESTAMPNS (the same number)
control message. The socket module has no name for it."""
_TIMESPEC: Final = struct.Struct("@qq")
_GRO_CONTROL: Final = socket.CMSG_SPACE(4)
_STAMP_CONTROL: Final = socket.CMSG_SPACE(_TIMESPEC.size)
_RECEIVE_CONTROL: Final = _GRO_CONTROL + _STAMP_CONTROL
"""Control bytes for one received message: a GRO size and a timestamp."""
_segment_size = struct.Struct("=H").pack
_gro_size = struct.Struct("=i").unpack_from
ROUTINE_SEND_ERRORS: Final = (
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EPERM,
    errno.EADDRNOTAVAIL,
    errno.ENETDOWN,
    errno.EINVAL,
)
"""Unreachable networks and similar are routine during path changes: counted, not logged."""
Address = tuple[str, int]


def offloads_allowed() -> bool:
    return os.environ.get(OFFLOADS_ENV, "").strip().lower() not in ("off", "0", "no", "false")


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

    def receive(self, limit: int) -> list[tuple[bytes, Address]]:
        """What is waiting, up to about `limit` datagrams, each with its (host, port) sender; with
        `limit` 1, one received message (a datagram, or all of a GRO train)."""
        ...

    @property
    def waited(self) -> float | None:
        """Seconds the first datagram of the last receive of more than one waited in the socket (its
        kernel timestamp against the clock when read); None when that is not known."""
        ...

    @property
    def more_waiting(self) -> bool:
        """Whether the last receive stopped at its limit with datagrams maybe still queued."""
        ...

    def measure_waits(self, on: bool) -> bool:
        """Start (or stop) stamping datagrams so that `waited` is known; returns whether it is."""
        ...


class TunnelSocket:
    """One UDP socket of the tunnel with its receive path: UDP_GRO, else recvmmsg, else recvfrom.

    With UDP_GRO the kernel hands over a train of datagrams from one sender as one buffer and says
    in a control message how long each is; one call then reads dozens.
    """

    def __init__(self, sock: socket.socket, *, gro: bool) -> None:
        self.sock = sock
        self.family = sock.family
        self.gro = gro and _enable_gro(sock)
        self.stamped = False
        """Whether the kernel stamps each datagram (measure_waits)."""
        self._batch = None
        if RECVMMSG is not None:
            self._batch = DatagramBatch(sock, RECVMMSG, gro=self.gro)
        self.replies = ReplyBatch.for_socket(sock)
        """sendmmsg batch for sends without GSO (None where libc lacks sendmmsg)."""
        self._gro_trains = 0
        self.waited: float | None = None
        self.more_waiting = False

    @property
    def gro_trains(self) -> int:
        """Receives that held a train of datagrams (UDP_GRO), split into the datagrams sent."""
        return self._gro_trains + (self._batch.gro_trains if self._batch is not None else 0)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recvfrom(self, bufsize: int, /) -> tuple[bytes, Any]:
        return self.sock.recvfrom(bufsize)

    def close(self) -> None:
        self.sock.close()

    def measure_waits(self, on: bool) -> bool:
        """Have the kernel stamp each datagram as it comes (SO_TIMESTAMPNS), so that a batch says how
        long its first datagram waited (`waited`), or stop it; returns whether stamps are on. Off
        until asked: while any socket on the machine wants them, every packet it receives is stamped.
        Kernel timestamps tell how long a batch waited in the socket, which is where a server's
        peers' uploads queue: only a batch (recvmmsg) reads them."""
        if self._batch is None or on == self.stamped:
            return self.stamped
        if on and not _enable_timestamps(self.sock):
            return False
        if not on:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)
            self.waited = None
        self.stamped = on
        self._batch.stamp(on)
        return on

    def receive(self, limit: int) -> list[tuple[bytes, Address]]:
        # One message is one recvmsg (recvfrom) through the socket module: right after a wake-up it
        # costs a third of what recvmmsg through ctypes does (measured on an idle socket).
        if self._batch is not None and limit > 1:
            return self._receive_batch(self._batch, limit)
        self.waited = None
        self.more_waiting = False
        if self.gro:
            return self._receive_gro(limit)
        batch: list[tuple[bytes, Address]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(limit):
            try:
                data, address = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # ICMP errors surface here (e.g. port unreachable from a restarting server)
            batch.append((data, (address[0], address[1])))
        return batch

    def _receive_batch(self, batch: DatagramBatch, limit: int) -> list[tuple[bytes, Address]]:
        received: list[tuple[bytes, Address]] = []
        self.waited = None
        for _ in range(4):  # bounded: each call clears one reported error or reads what waits
            try:
                more = batch.receive(limit - len(received))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error reported on the socket: the next call reads on
            if not received and more and self.stamped:
                stamp = batch.first_stamp()
                if stamp is not None:
                    self.waited = time.time() - stamp  # the stamp is CLOCK_REALTIME
            received += more
            # Slots left empty: the queue was drained, so another call would only say EAGAIN
            # (what arrives meanwhile wakes the loop again: its readiness is level-triggered).
            if not batch.filled or len(received) >= limit:
                break
        self.more_waiting = batch.filled
        return received

    def _receive_gro(self, limit: int) -> list[tuple[bytes, Address]]:
        batch: list[tuple[bytes, Address]] = []
        recvmsg = self.sock.recvmsg
        for _ in range(limit):
            try:
                data, ancillary, _flags, address = recvmsg(65535, _RECEIVE_CONTROL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            source = (address[0], address[1])
            size = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                    (size,) = _gro_size(value)
            if 0 < size < len(data):
                batch.extend((data[start : start + size], source) for start in range(0, len(data), size))
                self._gro_trains += 1
            else:
                batch.append((data, source))
            if len(batch) >= limit:
                break
        return batch


GRO_SLOTS: Final = 32
"""Buffers of one recvmmsg with UDP_GRO: each can hold a 64 KB train from one sender."""
GRO_SLOT_SIZE: Final = 65535
PLAIN_SLOTS: Final = 64
PLAIN_SLOT_SIZE: Final = 9216
"""Without GRO a slot holds one datagram: the largest tunnel MTU (8920) plus WireGuard's 80 bytes fits."""
_CMSG_HEADER: Final = struct.Struct("@NiI")
"""struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type, then the data, aligned."""
_CMSG_DATA: Final = socket.CMSG_LEN(0)
_MMSGHDR_SIZE: Final = ctypes.sizeof(Mmsghdr)
_unpack_uint = struct.Struct("@I").unpack_from
_unpack_v4 = struct.Struct(">H4s").unpack
_unpack_v6 = struct.Struct(">HI16s").unpack
_unpack_size = struct.Struct("@N").unpack_from


class DatagramBatch(ReceiveSlots):
    """recvmmsg(2) for the tunnel: many datagrams per call, and with UDP_GRO many trains, each split
    by the gso_size its control message gives.

    UDP_GRO alone (one recvmsg per train) would cost a call per datagram where the kernel does not
    aggregate (a peer that sends little, a path without GRO); recvmmsg keeps those batched too.
    Without GRO the slots are sized for the largest tunnel datagram. The slots are mmsg.py's, with a
    control buffer each.
    """

    def __init__(self, sock: socket.socket, receive: Any, *, gro: bool) -> None:
        # With GRO 32 slots of 64 KB (2 MB per socket), without 64 of 9 KB; allocated once. Each
        # slot's control buffer holds a GRO size and a timestamp.
        slots, slot_size = (GRO_SLOTS, GRO_SLOT_SIZE) if gro else (PLAIN_SLOTS, PLAIN_SLOT_SIZE)
        self._stamp_only = 0
        """While the kernel stamps datagrams, the length of a slot's control data that is its
        timestamp alone (else 0): only longer control data may hold a GRO size."""
        super().__init__(sock, receive, slots, slot_size, _RECEIVE_CONTROL)
        self.filled = False
        """Whether the last receive filled every slot it offered (more may be waiting)."""
        self.gro_trains = 0
        """Receives that held a train of datagrams (UDP_GRO), split here."""
        self._sources: dict[bytes, Address] = {}
        # A slot's sockaddr: family (2 bytes), then port and address (IPv6: port, flow info, address).
        self._name_end = 24 if self._ipv6 else 8

    def receive(self, limit: int) -> list[tuple[bytes, Address]]:
        """What is waiting (up to about `limit` datagrams); raises OSError (BlockingIOError) as recvmmsg.

        A server's peers mostly send datagrams one by one (no train), so this runs per datagram: the
        slots' offsets move on by one slot a turn, and each sender's (host, port) comes from a table
        of senders seen before (inet_ntoa and a tuple cost more than the lookup).
        """
        slots = min(self._slot_count, max(1, limit))
        count = self._read(slots)
        self.filled = count == slots
        header_bytes, data_array, names, sources = self._header_bytes, self._data, self._names, self._sources
        slot_size = self._slot_size
        # Where the slot's length, control length, payload and sender's port and address lie.
        length_at, control_at, start = LEN_OFFSET, CONTROLLEN_OFFSET, 0
        name, name_end = 2, self._name_end
        stamp_only = self._stamp_only
        batch: list[tuple[bytes, Address]] = []
        append = batch.append
        for slot in range(count):
            (length,) = _unpack_uint(header_bytes, length_at)
            data = data_array[start : start + length]  # a slice of a c_char array is bytes: one copy
            key = names[name:name_end]
            source = sources.get(key)
            if source is None:
                source = self._source(key)
            (control_length,) = _unpack_size(header_bytes, control_at)
            # Control data no longer than the timestamp holds no GRO size (the kernel stamps every
            # datagram it hands over while stamps are on, one that came before them when it is read).
            size = self._segment_size(slot, control_length) if control_length > stamp_only else 0
            if 0 < size < length:
                batch.extend([(data[at : at + size], source) for at in range(0, length, size)])
                self.gro_trains += 1
            else:
                append((data, source))
            length_at += _MMSGHDR_SIZE
            control_at += _MMSGHDR_SIZE
            start += slot_size
            name += SOCKADDR_SIZE
            name_end += SOCKADDR_SIZE
        return batch

    def _source(self, key: bytes) -> Address:
        """(host, port) of a sender's port and address bytes, remembered (the table is emptied when full,
        so senders that change all the time cost only the conversion they would cost anyway)."""
        sources = self._sources
        if len(sources) >= SENDER_TABLE_SIZE:
            sources.clear()
        if self._ipv6:
            port, _flow, raw = _unpack_v6(key)
            source = (socket.inet_ntop(socket.AF_INET6, raw), port)
        else:
            port, raw = _unpack_v4(key)
            source = (socket.inet_ntoa(raw), port)
        sources[key] = source
        return source

    def _segment_size(self, slot: int, controllen: int) -> int:
        """The gso_size of the slot's UDP_GRO control message (0 without one); `controllen` is the
        length of the slot's control data, as the kernel set it."""
        at = self._control(slot, controllen, SOL_UDP, UDP_GRO, 4)
        return 0 if at is None else int(_gro_size(self._control_bytes, at)[0])

    def stamp(self, on: bool) -> None:
        """The kernel stamps each datagram now (or no longer): every slot's control data starts with
        the stamp."""
        self._stamp_only = _STAMP_CONTROL if on else 0

    def first_stamp(self) -> float | None:
        """The CLOCK_REALTIME (seconds) the first datagram of the last receive reached the socket, from
        its SCM_TIMESTAMPNS control message; None without one."""
        if not self.count:
            return None
        (controllen,) = _unpack_size(self._header_bytes, CONTROLLEN_OFFSET)
        at = self._control(0, controllen, socket.SOL_SOCKET, SO_TIMESTAMPNS, _TIMESPEC.size)
        if at is None:
            return None
        seconds, nanoseconds = _TIMESPEC.unpack_from(self._control_bytes, at)
        return float(seconds + nanoseconds * 1e-9)

    def _control(self, slot: int, controllen: int, level: int, kind: int, size: int) -> int | None:
        """Where the data of the slot's control message of `level` and `kind` begins, if it has one
        of at least `size` bytes."""
        at = slot * _RECEIVE_CONTROL
        end = at + min(controllen, _RECEIVE_CONTROL)
        while at + _CMSG_DATA <= end:
            length, found_level, found_kind = _CMSG_HEADER.unpack_from(self._control_bytes, at)
            if length < _CMSG_DATA:
                return None
            if found_level == level and found_kind == kind:
                return (
                    at + _CMSG_DATA if at + _CMSG_DATA + size <= end and length >= _CMSG_DATA + size else None
                )
            at += socket.CMSG_SPACE(length - _CMSG_DATA)
        return None


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError as exc:
        log.info("UDP_GRO refused (%s): receiving with recvmmsg", exc)
        return False
    return True


def _enable_timestamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError as exc:
        log.info("SO_TIMESTAMPNS refused (%s): no CoDel on the tunnel socket's receive queue", exc)
        return False
    return True


def _probe_gso(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError as exc:
        log.info("UDP_SEGMENT refused (%s): sending with sendmmsg", exc)
        return False
    return True


class DatagramEndpoint(Protocol):
    """What the tunnel shell uses of its encrypted side: `UdpEndpoint` here, `FakeUdpEndpoint` in tests."""

    @property
    def sockets(self) -> Mapping[int, DatagramSocket]: ...

    def rebind(self) -> None: ...

    def sendto(self, data: bytes, address: tuple[str, int]) -> bool: ...

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> tuple[int, int]:
        """Send datagrams in order; returns (bytes sent, datagrams that failed)."""
        ...


class UdpEndpoint:
    """The encrypted side: an IPv4 and (when available) an IPv6 socket on the same port.

    Offloads (unless `offloads` is False or DNSGUARD_OFFLOADS=off): a run of datagrams to one peer
    leaves in one UDP_SEGMENT (GSO) send, and UDP_GRO receives trains in one call. Each is probed
    when the sockets open; where refused, sends go through sendmmsg and receives through recvmmsg.
    """

    def __init__(self, port: int = 0, fwmark: int = 0, *, offloads: bool = True) -> None:
        self.fwmark = fwmark
        self.requested_port = port
        self.offloads = offloads and offloads_allowed()
        if offloads and not self.offloads:
            log.info("UDP offloads off (%s=off): sendmmsg and recvmmsg", OFFLOADS_ENV)
        self.gso = self.offloads
        self.sockets: dict[int, TunnelSocket] = {}
        self.port = 0
        self.gso_sends = 0
        """UDP_SEGMENT sends made (each carries a train of datagrams)."""
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
        if self.gso:
            self.gso = _probe_gso(v4)
        self.sockets = {socket.AF_INET: TunnelSocket(v4, gro=self.offloads)}
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            _configure(v6, self.fwmark)
            v6.bind(("::", self.port))
            self.sockets[socket.AF_INET6] = TunnelSocket(v6, gro=self.offloads)
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
            sock.sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno not in ROUTINE_SEND_ERRORS:
                log.warning("tunnel send to %s failed: %s", address, exc)
            return False
        return True

    def send_batch(self, datagrams: list[tuple[bytes, Address]]) -> tuple[int, int]:
        """Send in order: runs to one address as GSO trains, else through sendmmsg, else sendto.

        A train is a run of equal-sized datagrams to one address (the last may be shorter), as the
        device seals a segmented super-packet: the kernel cuts it back into datagrams on the wire.
        Only what is handed over here is sent; nothing waits for more.
        """
        count = len(datagrams)
        if count == 1:
            # A lone datagram (an idle tunnel's packet) leaves by one sendto: no batch slots to fill.
            data, address = datagrams[0]
            return (len(data), 0) if self.sendto(data, address) else (0, 1)
        sent = failed = 0
        index = 0
        while index < count:
            data, address = datagrams[index]
            end = index + 1
            if self.gso:
                size = len(data)
                total = size
                limit = min(count, index + GSO_MAX_SEGMENTS)
                while end < limit:
                    following, destination = datagrams[end]
                    if (
                        destination != address
                        or len(following) > size
                        or total + len(following) > GSO_MAX_BYTES
                    ):
                        break
                    total += len(following)
                    end += 1
                    if len(following) < size:
                        break
            if end - index > 1:
                result = self._send_train(datagrams, index, end, address)
                if result is not None:
                    sent += result[0]
                    failed += result[1]
                    index = end
                    continue
                # GSO refused: this train and the rest go the fallback way
            end = index + 1
            queued = self._queue(data, address)
            if queued is None:
                if self.sendto(data, address):
                    sent += len(data)
                else:
                    failed += 1
            else:
                sent += queued
            index = end
        for sock in self.sockets.values():
            if sock.replies is not None and sock.replies.count:
                sock.replies.flush()
        return sent, failed

    def _queue(self, data: bytes, address: Address) -> int | None:
        """Queue for sendmmsg; None when it must go by sendto (no batch, too large, odd address)."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = self.sockets.get(family)
        if sock is None or sock.replies is None:
            return None
        target: Any = address if family == socket.AF_INET else (address[0], address[1], 0, 0)
        return len(data) if sock.replies.add(data, target) else None

    def _send_train(
        self, datagrams: list[tuple[bytes, Address]], start: int, end: int, address: Address
    ) -> tuple[int, int] | None:
        """One UDP_SEGMENT send; None when the kernel refuses GSO (which is then off for good)."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = self.sockets.get(family)
        if sock is None:
            return 0, end - start
        size = len(datagrams[start][0])
        payload = b"".join([data for data, _ in datagrams[start:end]])
        try:
            sock.sock.sendmsg([payload], [(SOL_UDP, UDP_SEGMENT, _segment_size(size))], 0, address)
        except (BlockingIOError, InterruptedError):
            return 0, end - start
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                # EIO: the route's device cannot checksum GSO segments; the kernel says so only here.
                log.info("UDP_SEGMENT refused on send (%s): sending with sendmmsg", exc)
                self.gso = False
                return None
            if exc.errno not in ROUTINE_SEND_ERRORS:
                log.warning("tunnel send to %s failed: %s", address, exc)
            return 0, end - start
        self.gso_sends += 1
        return len(payload), 0
