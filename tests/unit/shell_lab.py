"""Two tunnel shells back to back through the in-memory edges of dnsguard/net/fake.py, on a virtual clock.

A client host (192.0.2.2, inner 100.64.0.2) and a server host (198.51.100.1, inner 100.64.0.1) each run
a real `Device` under a real `TunnelShell` on a `VirtualClockLoop`; their TUNs are `FakeTun`s and their
encrypted sides `FakeUdpEndpoint`s joined by one `FakeNetwork`. The loop's clock stands for
CLOCK_MONOTONIC and `LabClock.boottime` for CLOCK_BOOTTIME, which `suspend()` moves ahead alone, as a
machine asleep does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dnsguard.app.tunnel import TunnelShell
from dnsguard.net.fake import FakeNetwork, FakeTun, FakeUdpEndpoint, SentDatagram
from dnsguard.net.upstream.fake import VirtualClockLoop, run_on_virtual_clock
from dnsguard.wireguard import Device, generate_private_key, public_key
from dnsguard.wireguard.constants import MESSAGE_INITIATION

CLIENT_ADDRESS = ("192.0.2.2", 40000)
CLIENT_NEW_ADDRESS = ("192.0.2.77", 40000)
SERVER_ADDRESS = ("198.51.100.1", 51820)
CLIENT_IP = "100.64.0.2"
SERVER_IP = "100.64.0.1"
WALL_CLOCK_AT_BOOT_NS = 1_700_000_000 * 10**9


class LabClock:
    """CLOCK_MONOTONIC is the loop's virtual time; CLOCK_BOOTTIME is that plus the time slept."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.loop.time()

    def boottime(self) -> float:
        return self.loop.time() + self.slept

    def wall_ns(self) -> int:
        return WALL_CLOCK_AT_BOOT_NS + int(self.boottime() * 1e9)

    def suspend(self, seconds: float) -> None:
        """The machine sleeps: BOOTTIME moves on, MONOTONIC (and the loop's timers) do not."""
        self.slept += seconds


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(source: str, destination: str, protocol: int, body: bytes, identification: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        identification & 0xFFFF,
        0,
        64,
        protocol,
        0,
        ipaddress.ip_address(source).packed,
        ipaddress.ip_address(destination).packed,
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def echo_request(source: str, destination: str, sequence: int = 1) -> bytes:
    """An ICMP echo request (ping) with a valid IPv4 header and ICMP checksum."""
    payload = b"dnsguard-ping" * 4
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, sequence) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return ipv4_packet(source, destination, 1, icmp, sequence)


def udp_packet(source: str, destination: str, sequence: int, port: int = 40000) -> bytes:
    """A UDP datagram of one flow (port `port` to 5201), its sequence in the payload; no UDP checksum."""
    payload = sequence.to_bytes(4, "big") + bytes(1000)
    return ipv4_packet(
        source, destination, 17, struct.pack("!HHHH", port, 5201, 8 + len(payload), 0) + payload, sequence
    )


@dataclass
class Host:
    device: Device
    tun: FakeTun
    udp: FakeUdpEndpoint
    shell: TunnelShell | None = None

    def initiations(self) -> list[SentDatagram]:
        return [sent for sent in self.udp.sent if sent.data[0] == MESSAGE_INITIATION]


class ShellLab:
    """The client's and the server's device, TUN and endpoint; the server's shell runs from the start."""

    def __init__(self, loop: VirtualClockLoop, *, client_keepalive: int = 0) -> None:
        self.loop = loop
        self.clock = LabClock(loop)
        self.network = FakeNetwork()
        client_key, server_key = generate_private_key(), generate_private_key()
        self.client = self._host(client_key, CLIENT_ADDRESS, seed=1)
        self.server = self._host(server_key, SERVER_ADDRESS, seed=2)
        self.server.device.add_peer(public_key(client_key), allowed_ips=[f"{CLIENT_IP}/32"])
        self.client.device.add_peer(
            public_key(server_key),
            allowed_ips=["0.0.0.0/0"],
            endpoint=SERVER_ADDRESS,
            persistent_keepalive=client_keepalive,
            now=self.clock.boottime(),
        )
        self.server.shell = TunnelShell(
            self.server.device, self.server.tun, self.server.udp, clock=self.clock.boottime
        )
        self.server.shell.start()

    def _host(self, private_key: str, address: tuple[str, int], seed: int) -> Host:
        device = Device(private_key, rng=random.Random(seed), wall_clock_ns=self.clock.wall_ns)
        udp = FakeUdpEndpoint(address, self.network, clock=self.clock.boottime)
        return Host(device, FakeTun(), udp)

    def client_shell(self, **kwargs: Any) -> TunnelShell:
        shell = TunnelShell(
            self.client.device, self.client.tun, self.client.udp, clock=self.clock.boottime, **kwargs
        )
        self.client.shell = shell
        shell.start()
        return shell

    async def client_shell_with_session(self, **kwargs: Any) -> TunnelShell:
        """The client's shell once a first ping has made the session (the ping is taken off the server's TUN).

        Before a session the device keeps only its staged queue's worth of packets.
        """
        shell = self.client_shell(**kwargs)
        self.client.tun.route(echo_request(CLIENT_IP, SERVER_IP, 0))
        await self.run_for(0.01)
        self.server.tun.take_written()
        return shell

    async def run_for(self, seconds: float) -> None:
        """Let the loop carry every ready packet and fire every timer for `seconds` of virtual time."""
        await asyncio.sleep(seconds)

    def stop(self) -> None:
        for host in (self.client, self.server):
            if host.shell is not None:
                host.shell.stop()
            host.udp.close()
            host.tun.close()


def run_lab(main: Callable[[ShellLab], Awaitable[None]], **kwargs: Any) -> None:
    async def lab_main(loop: VirtualClockLoop) -> None:
        lab = ShellLab(loop, **kwargs)
        try:
            await main(lab)
        finally:
            lab.stop()

    run_on_virtual_clock(lab_main)
