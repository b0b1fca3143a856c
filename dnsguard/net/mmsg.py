"""Datagrams in batches: recvmmsg(2) and sendmmsg(2) through ctypes, with prebuilt headers and slots.

A recvfrom or a sendto per datagram costs a system call each; at a hundred thousand DNS queries a
second the calls, not the answers, are most of the work. The batches here move up to BATCH_SLOTS
datagrams per call. Both return None from `for_socket` where libc lacks the call, and the caller
falls back to one call per datagram.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, Final

from dnsguard.net.mmsg_headers import Iovec, Mmsghdr, Msghdr

BATCH_SLOTS: Final = 64
BATCH_SLOT_SIZE: Final = 2048
"""Replies larger than this (rare: big cached answers to EDNS clients) are sent on their own."""
QUERY_SLOT_SIZE: Final = 4096
"""Bytes of one query read by recvmmsg; a longer datagram (no real query is) arrives cut, and the
resolver answers the cut message FORMERR and counts it as malformed."""
SENDER_TABLE_SIZE: Final = 4096
"""Senders whose converted address a QueryBatch (host text) or the tunnel's DatagramBatch ((host, port))
keeps; each table is emptied when full."""


def _libc_sendmmsg() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


def _libc_recvmmsg() -> Callable[[int, int, int, int, None], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (AttributeError, OSError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    function.restype = ctypes.c_int
    return function


SENDMMSG: Final = _libc_sendmmsg()
RECVMMSG: Final = _libc_recvmmsg()
_IOVEC_SIZE: Final = ctypes.sizeof(Iovec)
_IOVEC_LEN_OFFSET: Final = Iovec.iov_len.offset
SOCKADDR_SIZE: Final = 28  # sockaddr_in6; a sockaddr_in uses the first 16 bytes
_pack_size = struct.Struct("@N").pack_into
_pack_port_ipv4 = struct.Struct(">H4s").pack_into
_pack_port_ipv6 = struct.Struct(">HI16s").pack_into
_pack_scope = struct.Struct("@I").pack_into
_inet_aton = socket.inet_aton
_MMSGHDR_SIZE: Final = ctypes.sizeof(Mmsghdr)
LEN_OFFSET: Final = Mmsghdr.msg_len.offset
CONTROLLEN_OFFSET: Final = Mmsghdr.msg_hdr.offset + Msghdr.msg_controllen.offset
_unpack_uint = struct.Struct("@I").unpack_from
_unpack_port_ipv4 = struct.Struct(">H4s").unpack_from
_unpack_port_ipv6 = struct.Struct(">HI16s").unpack_from
_inet_ntoa = socket.inet_ntoa
MSG_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0x40)


class SingleDatagram:
    """QueryBatch's interface over recvfrom, one datagram per call: where recvmmsg is missing (the UDP
    listener reads each wake-up's first datagram with recvfrom itself). A datagram is cut at
    QUERY_SLOT_SIZE, as in a batch."""

    slots = 1

    def __init__(self, sock: socket.socket) -> None:
        self._recvfrom = sock.recvfrom
        self._last: tuple[bytes, Any] = (b"", ("", 0))

    def receive(self) -> int:
        self._last = self._recvfrom(QUERY_SLOT_SIZE)
        return 1

    def datagrams(self) -> list[tuple[bytes, str]]:
        data, sender = self._last
        return [(data, sender[0])]

    def sender(self, slot: int) -> Any:
        return self._last[1]


class ReceiveSlots:
    """The buffers of recvmmsg(2), built once: `slot_count` slots of `slot_size` bytes, each with room for
    its sender's address and, with `control_size`, a control buffer (UDP_GRO's segment size).

    The kernel rewrites each used slot's address and control lengths (and flags, and the datagram's
    length); `_read` copies the used slots' headers back from a copy made at start, in one step, before
    the next call. Subclasses read the slots' contents (`_payload`, and the addresses as they need them).
    """

    def __init__(
        self,
        sock: socket.socket,
        receive: Callable[[int, int, int, int, None], int],
        slot_count: int,
        slot_size: int,
        control_size: int = 0,
    ) -> None:
        self._fileno = sock.fileno()
        self._receive = receive
        self._ipv6 = sock.family == socket.AF_INET6
        self._namelen = SOCKADDR_SIZE if self._ipv6 else 16
        self._slot_count, self._slot_size = slot_count, slot_size
        self.count = 0
        """Slots the last receive filled."""
        self._headers = (Mmsghdr * slot_count)()
        self._iovecs = (Iovec * slot_count)()
        # c_char arrays (Any: typeshed's Array types a slice as a list, a c_char array's is bytes)
        self._names: Any = (ctypes.c_char * (SOCKADDR_SIZE * slot_count))()
        self._controls = (ctypes.c_char * max(1, control_size * slot_count))()
        self._data: Any = (ctypes.c_char * (slot_size * slot_count))()
        self._header_bytes = memoryview(self._headers).cast("B")
        self._name_bytes = memoryview(self._names).cast("B")
        self._control_bytes = memoryview(self._controls).cast("B")
        self._headers_address = ctypes.addressof(self._headers)
        names_address = ctypes.addressof(self._names)
        controls_address = ctypes.addressof(self._controls)
        data_address = ctypes.addressof(self._data)
        for slot in range(slot_count):
            self._iovecs[slot].iov_base = data_address + slot * slot_size
            self._iovecs[slot].iov_len = slot_size
            header = self._headers[slot].msg_hdr
            header.msg_name = names_address + slot * SOCKADDR_SIZE
            header.msg_namelen = self._namelen
            header.msg_iov = ctypes.addressof(self._iovecs[slot])
            header.msg_iovlen = 1
            if control_size:
                header.msg_control = controls_address + slot * control_size
                header.msg_controllen = control_size
        self._pristine_headers = bytes(self._header_bytes)

    def _read(self, slots: int) -> int:
        """recvmmsg into the first `slots` slots without blocking; returns how many it filled.

        Raises BlockingIOError when nothing is waiting, OSError for other errors (as recvfrom would).
        """
        used = self.count * _MMSGHDR_SIZE
        if used:  # the kernel wrote each used slot's address and control lengths, flags and length
            self._header_bytes[:used] = self._pristine_headers[:used]
        self.count = 0
        count = self._receive(self._fileno, self._headers_address, slots, MSG_DONTWAIT, None)
        if count < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))  # EAGAIN makes it a BlockingIOError
        self.count = count
        return count

    def _payload(self, slot: int) -> bytes:
        (length,) = _unpack_uint(self._header_bytes, slot * _MMSGHDR_SIZE + LEN_OFFSET)
        start = slot * self._slot_size
        data: bytes = self._data[start : start + length]  # a slice of a c_char array is bytes: one copy
        return data


class QueryBatch(ReceiveSlots):
    """Datagrams read from a socket with one recvmmsg(2) per BATCH_SLOTS, instead of a recvfrom each.

    The receive side of ReplyBatch: prebuilt headers point at fixed slots, the kernel fills as many as
    are waiting, and `datagrams()` copies them out, each with its sender's address as recvfrom gives it.
    """

    slots = BATCH_SLOTS

    def __init__(self, sock: socket.socket, receive: Callable[[int, int, int, int, None], int]) -> None:
        super().__init__(sock, receive, BATCH_SLOTS, QUERY_SLOT_SIZE)
        self._names_address = ctypes.addressof(self._names)
        # Where a sockaddr_in6 (sockaddr_in) holds the address: after family, port and flow info (port).
        self._address_start, self._address_end = (8, 24) if self._ipv6 else (4, 8)
        self._hosts: dict[bytes, str] = {}

    @classmethod
    def for_socket(cls, sock: socket.socket) -> QueryBatch | None:
        """A batch for an AF_INET or AF_INET6 datagram socket; None where recvmmsg is missing."""
        if RECVMMSG is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, RECVMMSG)

    def receive(self) -> int:
        """Read what is waiting, up to BATCH_SLOTS datagrams, without blocking; returns how many.

        Raises BlockingIOError when nothing is waiting, OSError for other errors (as recvfrom would).
        """
        return self._read(BATCH_SLOTS)

    def datagrams(self) -> list[tuple[bytes, str]]:
        """The datagrams of the last receive, in slot order, each with its sender's address (text,
        without the port).

        One call for the whole batch: the listener's per-query work is its answer, not reading slots.
        The address text comes from a small table of senders seen before: inet_ntoa costs more than
        the rest of a datagram's reading together. The table is emptied when it fills, so senders that
        change all the time (spoofed) cost only the conversion they would have cost anyway.
        """
        header_bytes, data, names, hosts = self._header_bytes, self._data, self._names, self._hosts
        slot_size = self._slot_size
        # Where the slot's length, payload and sender's address lie; each moves on by one slot.
        length_at, begin = LEN_OFFSET, 0
        address_start, address_end = self._address_start, self._address_end
        received: list[tuple[bytes, str]] = []
        append = received.append
        for _ in range(self.count):
            (length,) = _unpack_uint(header_bytes, length_at)
            address = names[address_start:address_end]
            host = hosts.get(address)
            if host is None:
                host = self._host(address)
            # A slice of a c_char array is bytes: one copy.
            append((data[begin : begin + length], host))
            length_at += _MMSGHDR_SIZE
            begin += slot_size
            address_start += SOCKADDR_SIZE
            address_end += SOCKADDR_SIZE
        return received

    def _host(self, address: bytes) -> str:
        hosts = self._hosts
        if len(hosts) >= SENDER_TABLE_SIZE:
            hosts.clear()
        host = hosts[address] = socket.inet_ntop(socket.AF_INET6 if self._ipv6 else socket.AF_INET, address)
        return host

    def sender(self, slot: int) -> Any:
        """The sender of the `slot`th datagram of the last receive, as recvfrom returns it."""
        name = slot * SOCKADDR_SIZE + 2
        if self._ipv6:
            port, flow, address = _unpack_port_ipv6(self._name_bytes, name)
            (scope,) = _unpack_uint(self._name_bytes, name + 22)
            return (socket.inet_ntop(socket.AF_INET6, address), port, flow, scope)
        port, address = _unpack_port_ipv4(self._name_bytes, name)
        return (_inet_ntoa(address), port)

    def sender_name(self, slot: int) -> int:
        """The address of the `slot`th sender's sockaddr, as the last receive wrote it (see SenderReplies)."""
        return self._names_address + slot * SOCKADDR_SIZE


class ReplyBatch:
    """UDP replies gathered while draining the socket, handed to the kernel with one sendmmsg(2).

    A sendto per reply costs a system call and, when the client sleeps between replies, a wake-up of
    the client each time (an inter-processor interrupt, expensive in a VM); a batch pays both once.
    The replies are copied into fixed slots that the prebuilt message headers point at, so adding a
    reply costs two `pack_into` calls and one copy.
    """

    def __init__(self, sock: socket.socket, send: Callable[[int, int, int, int], int]) -> None:
        self._fileno = sock.fileno()
        self._send = send
        self._ipv6 = sock.family == socket.AF_INET6
        self.count = 0
        self._headers = (Mmsghdr * BATCH_SLOTS)()
        self._iovecs = (Iovec * BATCH_SLOTS)()
        self._names = (ctypes.c_char * (SOCKADDR_SIZE * BATCH_SLOTS))()
        self._data = (ctypes.c_char * (BATCH_SLOT_SIZE * BATCH_SLOTS))()
        self._iovec_bytes = memoryview(self._iovecs).cast("B")
        self._name_bytes = memoryview(self._names).cast("B")
        self._data_bytes = memoryview(self._data).cast("B")
        self._header_size = ctypes.sizeof(Mmsghdr)
        self._headers_address = ctypes.addressof(self._headers)
        names_address = ctypes.addressof(self._names)
        data_address = ctypes.addressof(self._data)
        family = struct.pack("@H", sock.family)
        for slot in range(BATCH_SLOTS):
            self._iovecs[slot].iov_base = data_address + slot * BATCH_SLOT_SIZE
            name = slot * SOCKADDR_SIZE
            self._name_bytes[name : name + 2] = family
            header = self._headers[slot].msg_hdr
            header.msg_name = names_address + name
            header.msg_namelen = SOCKADDR_SIZE if self._ipv6 else 16
            header.msg_iov = ctypes.addressof(self._iovecs[slot])
            header.msg_iovlen = 1

    @classmethod
    def for_socket(cls, sock: socket.socket) -> ReplyBatch | None:
        """A batch for an AF_INET or AF_INET6 datagram socket; None where sendmmsg is missing."""
        if SENDMMSG is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        return cls(sock, SENDMMSG)

    def add(self, reply: bytes, addr: tuple[Any, ...]) -> bool:
        """Queue `reply` for `addr` (sending the batch when full); False: send it some other way."""
        size = len(reply)
        if size > BATCH_SLOT_SIZE:
            return False
        slot = self.count
        try:
            if self._ipv6:
                address = socket.inet_pton(socket.AF_INET6, addr[0])
                name = slot * SOCKADDR_SIZE
                _pack_port_ipv6(self._name_bytes, name + 2, addr[1], addr[2], address)
                _pack_scope(self._name_bytes, name + 24, addr[3])
            else:
                _pack_port_ipv4(self._name_bytes, slot * SOCKADDR_SIZE + 2, addr[1], _inet_aton(addr[0]))
        except (OSError, ValueError, IndexError, struct.error):
            return False  # e.g. a link-local IPv6 source with a zone: sendto knows how to handle it
        self._put(slot, reply, size)
        return True

    def _put(self, slot: int, reply: bytes, size: int) -> None:
        """Copy `reply` into `slot`, whose address is set, and send the batch if it is now full."""
        _pack_size(self._iovec_bytes, slot * _IOVEC_SIZE + _IOVEC_LEN_OFFSET, size)
        start = slot * BATCH_SLOT_SIZE
        self._data_bytes[start : start + size] = reply
        self.count = slot + 1
        if slot + 1 == BATCH_SLOTS:
            self.flush()

    def flush(self) -> None:
        """Send the queued replies; one that the kernel refuses is dropped, as a failed sendto would be."""
        count = self.count
        self.count = 0
        sent = 0
        while sent < count:
            result = self._send(
                self._fileno, self._headers_address + sent * self._header_size, count - sent, 0
            )
            sent += result if result > 0 else 1


_NAME_OFFSET: Final = Mmsghdr.msg_hdr.offset + Msghdr.msg_name.offset


class SenderReplies(ReplyBatch):
    """A ReplyBatch whose replies go back to the senders of a QueryBatch's datagrams, named by slot.

    No address is parsed or packed: each reply's header points at its query's sockaddr as recvmmsg
    wrote it. That sockaddr lives until the QueryBatch receives again, so flush before every receive
    after the first (the UDP listener does). Replies go out in the order they were added.
    """

    def __init__(
        self, sock: socket.socket, send: Callable[[int, int, int, int], int], queries: QueryBatch
    ) -> None:
        super().__init__(sock, send)
        self._header_bytes = memoryview(self._headers).cast("B")
        # Per query slot, its sender's sockaddr (QueryBatch.sender_name); per reply slot, where its
        # header's name pointer and iovec length lie and where its data starts: reply() looks them up.
        self._sender_names = [queries.sender_name(slot) for slot in range(queries.slots)]
        self._reply_slots = [
            (
                slot * _MMSGHDR_SIZE + _NAME_OFFSET,
                slot * _IOVEC_SIZE + _IOVEC_LEN_OFFSET,
                slot * BATCH_SLOT_SIZE,
            )
            for slot in range(BATCH_SLOTS)
        ]

    @classmethod
    def for_queries(cls, sock: socket.socket, queries: QueryBatch) -> SenderReplies | None:
        """Replies to `queries`' senders on `sock` (the socket it reads); None where sendmmsg is missing."""
        if SENDMMSG is None:
            return None
        return cls(sock, SENDMMSG, queries)

    def add(self, reply: bytes, addr: tuple[Any, ...]) -> bool:
        raise TypeError("SenderReplies sends to a query's sender: use reply(reply, slot)")

    def reply(self, reply: bytes, slot: int) -> bool:
        """Queue `reply` to the sender of the QueryBatch's `slot`th datagram (sending the batch when
        full); False: too big for a slot, send it some other way."""
        size = len(reply)
        if size > BATCH_SLOT_SIZE:
            return False
        index = self.count
        name_at, length_at, start = self._reply_slots[index]
        _pack_size(self._header_bytes, name_at, self._sender_names[slot])
        # ReplyBatch._put, inlined: this runs once per answered query.
        _pack_size(self._iovec_bytes, length_at, size)
        self._data_bytes[start : start + size] = reply
        self.count = index + 1
        if index + 1 == BATCH_SLOTS:
            self.flush()
        return True
