"""TunDevice with virtio-net headers, on an AF_UNIX datagram pair standing for /dev/net/tun (no root).

The pair keeps message boundaries as a TUN does: each write on one end is one read on the other.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from packet_builders import super_packet, tcp_packet

from dnsguard.net.offload import GSO_TCPV4, PLAIN_HEADER, VNET_HEADER_SIZE, VnetHeader, split
from dnsguard.net.tun import TUN_F_CSUM, TUN_F_TSO4, TunDevice


@pytest.fixture
def pair() -> Iterator[tuple[TunDevice, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    kernel.setblocking(False)
    for sock in (ours, kernel):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    tun = TunDevice(ours.detach(), "dg0")  # the descriptor without /dev/net/tun's ioctl
    yield tun, kernel
    tun.close()
    kernel.close()


def test_a_super_packet_read_comes_out_as_its_segments(pair: tuple[TunDevice, socket.socket]) -> None:
    tun, kernel = pair
    tun.offload_flags = TUN_F_CSUM | TUN_F_TSO4
    plain = tcp_packet(4, b"ping")
    big = super_packet(4, bytes(range(256)) * 40, 1000)
    kernel.send(PLAIN_HEADER + plain)
    kernel.send(big)
    assert tun.read_batch() == [plain, *split(big)]
    assert (tun.super_packets, tun.segments_read) == (1, 11)


def test_a_batch_tells_where_each_reads_packets_end(pair: tuple[TunDevice, socket.socket]) -> None:
    """The flow queues name a read's flow by its first packet: a super-packet's segments end together."""
    tun, kernel = pair
    tun.offload_flags = TUN_F_CSUM | TUN_F_TSO4
    plain = tcp_packet(4, b"ping")
    big = super_packet(4, bytes(range(256)) * 40, 1000)
    for message in (PLAIN_HEADER + plain, big, PLAIN_HEADER + plain):
        kernel.send(message)
    ends: list[int] = []
    assert tun.read_batch(128, ends) == [plain, *split(big), plain]
    assert ends == [1, 12, 13]

    tun.offload_flags = 0
    for _ in range(3):
        kernel.send(plain)
    ends = []
    assert tun.read_batch(128, ends) == [plain] * 3
    assert ends == [1, 2, 3]


def test_a_batch_of_one_is_one_read_whole_and_leaves_the_rest_queued(
    pair: tuple[TunDevice, socket.socket],
) -> None:
    tun, kernel = pair
    tun.offload_flags = TUN_F_CSUM | TUN_F_TSO4
    big = super_packet(4, bytes(range(256)) * 40, 1000)
    plain = tcp_packet(4, b"ping")
    kernel.send(big)
    kernel.send(PLAIN_HEADER + plain)
    assert tun.read_batch(1) == split(big)  # every segment of the one read, past the limit
    assert tun.read_batch(1) == [plain]
    assert tun.read_batch(1) == []


def test_without_offloads_a_batch_of_one_is_one_packet(pair: tuple[TunDevice, socket.socket]) -> None:
    tun, kernel = pair
    tun.offload_flags = 0
    kernel.send(tcp_packet(4, b"one"))
    kernel.send(tcp_packet(4, b"two"))
    assert tun.read_batch(1) == [tcp_packet(4, b"one")]
    assert tun.read_batch() == [tcp_packet(4, b"two")]


def test_a_read_whose_header_lies_is_dropped_and_counted(pair: tuple[TunDevice, socket.socket]) -> None:
    tun, kernel = pair
    tun.offload_flags = TUN_F_CSUM | TUN_F_TSO4
    lying = VnetHeader(1, GSO_TCPV4, 40, 0, 20, 16).pack() + tcp_packet(4, b"x" * 100)
    kernel.send(lying)
    kernel.send(PLAIN_HEADER + tcp_packet(4, b"y"))
    assert tun.read_batch() == [tcp_packet(4, b"y")]
    assert tun.malformed == 1


def test_a_batch_of_segments_of_one_flow_is_one_gso_write(pair: tuple[TunDevice, socket.socket]) -> None:
    tun, kernel = pair
    tun.offload_flags = TUN_F_CSUM | TUN_F_TSO4
    segments = [tcp_packet(4, b"s" * 500, 1000 + 500 * i, identifier=7 + i) for i in range(6)]
    tun.write_batch(segments)
    written = kernel.recv(70000)
    assert VnetHeader.parse(written).gso_type == GSO_TCPV4
    assert split(written) == segments
    assert (tun.coalesced_writes, tun.segments_coalesced) == (1, 6)


def test_where_the_kernel_refused_offloads_reads_and_writes_carry_a_plain_header(
    pair: tuple[TunDevice, socket.socket],
) -> None:
    tun, kernel = pair
    tun.offload_flags = -1  # IFF_VNET_HDR took, TUNSETOFFLOAD did not
    segments = [tcp_packet(4, b"s" * 500, 1000 + 500 * i, identifier=7 + i) for i in range(3)]
    tun.write_batch(segments)
    assert [kernel.recv(70000) for _ in segments] == [PLAIN_HEADER + s for s in segments]
    kernel.send(PLAIN_HEADER + segments[0])
    assert tun.read_batch() == [segments[0]]


def test_without_offloads_packets_go_bare(pair: tuple[TunDevice, socket.socket]) -> None:
    tun, kernel = pair
    segments = [tcp_packet(4, b"s" * 500, 1000 + 500 * i) for i in range(3)]
    tun.write_batch(segments)
    assert [kernel.recv(70000) for _ in segments] == segments
    kernel.send(segments[1])
    assert tun.read_batch() == [segments[1]]
    assert len(PLAIN_HEADER) == VNET_HEADER_SIZE
