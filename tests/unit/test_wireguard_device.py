"""The device state machine, specified as scenarios between in-memory devices on a fake clock.

Timer expectations are wireguard-go's (device/timers.go, send.go, receive.go). The `Lab` below is the whole
network: datagrams are delivered instantly unless an address is blocked or the lab holds them.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import ConfigError
from dnsguard.wireguard import (
    Device,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiationSent,
    KeysZeroed,
    PeerEndpointChanged,
    generate_preshared_key,
    generate_private_key,
    public_key,
)
from dnsguard.wireguard.constants import (
    FORCED_INITIATION_SPACING,
    KEEPALIVE_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REKEY_AFTER_MESSAGES,
)
from dnsguard.wireguard.cookie import CookieGenerator
from dnsguard.wireguard.events import Event
from dnsguard.wireguard.keys import decode_key

Address = tuple[Any, ...]
WALL_CLOCK_AT_BOOT_NS = 1_700_000_000 * 10**9


class FakeClock:
    """Boot-time seconds for `now`; a wall clock derived from it that tests may step backwards."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_offset_ns = 0

    def wall_ns(self) -> int:
        return WALL_CLOCK_AT_BOOT_NS + int(self.now * 1e9) + self.wall_offset_ns


@dataclass
class Host:
    name: str
    private_key: str
    device: Device
    address: Address
    tunnel_ip: str
    received: list[bytes] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def public_key(self) -> str:
        return self.device.public_key

    def drain_events(self) -> list[Event]:
        """Every event so far (cumulative)."""
        while (event := self.device.next_event()) is not None:
            self.events.append(event)
        return self.events


@dataclass(frozen=True)
class Datagram:
    time: float
    source: Address
    destination: Address
    data: bytes


class Lab:
    """Hosts at UDP addresses, a wire log, and a scheduler that runs every device's timers in order.

    With `lone` (every test runs both ways: the `both_paths` fixture), a packet sent goes through
    send_lone where the device takes it there, its datagram carried the moment it is sealed, and a
    datagram received hands its packet over through receive_datagrams' `deliver`: each scenario
    holds for the idle tunnel's path as for the batch path.
    """

    lone = False

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.hosts: dict[str, Host] = {}
        self.wire: list[Datagram] = []
        self.blocked: set[Address] = set()
        self.holding = False
        self.held: list[Datagram] = []
        self._seed = 0

    @property
    def now(self) -> float:
        return self.clock.now

    def host(self, name: str, address: Address, tunnel_ip: str, private_key: str | None = None) -> Host:
        self._seed += 1
        private_key = private_key or generate_private_key()
        device = Device(private_key, rng=random.Random(self._seed), wall_clock_ns=self.clock.wall_ns)
        host = Host(name, private_key, device, address, tunnel_ip)
        self.hosts[name] = host
        return host

    def host_at(self, address: Address) -> Host | None:
        return next((host for host in self.hosts.values() if host.address == address), None)

    def deliver(self) -> None:
        """Carry datagrams until no device has anything more to send."""
        for _ in range(1000):
            moved = False
            for host in list(self.hosts.values()):
                for data, destination in host.device.datagrams_to_send():
                    moved = True
                    self.carry(host, data, destination)
            if not moved:
                return
        raise AssertionError("datagrams kept flowing")

    def carry(self, host: Host, data: bytes, destination: Address) -> None:
        """Put one datagram from `host` on the wire (and deliver it, unless held or blocked)."""
        datagram = Datagram(self.now, host.address, destination, data)
        self.wire.append(datagram)
        if self.holding:
            self.held.append(datagram)
        elif host.address not in self.blocked and destination not in self.blocked:
            self.inject(datagram)

    def inject(self, datagram: Datagram, source: Address | None = None) -> list[bytes]:
        """Hand a datagram to whoever lives at its destination (optionally from another source)."""
        target = self.host_at(datagram.destination)
        if target is None:
            return []
        address = source or datagram.source
        if self.lone:
            return target.device.receive_datagrams(
                [(datagram.data, address)], self.now, target.received.extend
            )
        packets = target.device.receive_datagram(datagram.data, address, self.now)
        target.received.extend(packets)
        return packets

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing every timer at its own deadline."""
        end = self.now + seconds
        for _ in range(100_000):
            deadlines = [
                deadline
                for host in self.hosts.values()
                if (deadline := host.device.get_timer()) is not None and deadline <= end
            ]
            if not deadlines:
                break
            self.clock.now = max(self.now, min(deadlines))
            for host in list(self.hosts.values()):
                host.device.handle_timer(self.now)
            self.deliver()
        self.clock.now = end
        self.deliver()

    def send(self, host: Host, destination_ip: str, payload: bytes = b"payload", **kwargs: Any) -> bytes:
        packet = ip_packet(kwargs.get("source_ip", host.tunnel_ip), destination_ip, payload)
        if not (
            self.lone and host.device.send_lone(packet, self.now, lambda data, to: self.carry(host, data, to))
        ):
            host.device.send_packet(packet, self.now)
        self.deliver()
        return packet

    def sent_by(self, host: Host, since: float = float("-inf")) -> list[Datagram]:
        return [
            datagram for datagram in self.wire if datagram.source == host.address and datagram.time >= since
        ]

    def initiations_by(self, host: Host, since: float = float("-inf")) -> list[Datagram]:
        return [datagram for datagram in self.sent_by(host, since) if datagram.data[0] == MESSAGE_INITIATION]


def ip_packet(source: str, destination: str, payload: bytes) -> bytes:
    """A UDP packet (checksums are not the tunnel's business)."""
    source_ip, destination_ip = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    if source_ip.version == 4:
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, source_ip.packed, destination_ip.packed
        )
        return header + udp
    return (
        struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, source_ip.packed, destination_ip.packed) + udp
    )


@pytest.fixture(autouse=True, params=["batch path", "lone path"])
def both_paths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Lab, "lone", request.param == "lone path")


A_ADDRESS: Address = ("198.18.0.1", 51820)
B_ADDRESS: Address = ("198.18.0.2", 51820)
A_ROAMED: Address = ("198.18.5.5", 40000)


def client_and_server(
    lab: Lab, *, client_keepalive: int = 0, client_psk: str | None = None, server_psk: str | None = None
) -> tuple[Host, Host]:
    """A client that knows the server's endpoint, and a server that learns the client's."""
    client = lab.host("client", A_ADDRESS, "100.64.0.1")
    server = lab.host("server", B_ADDRESS, "100.64.0.2")
    client.device.add_peer(
        server.public_key,
        allowed_ips=["100.64.0.2/32", "fd00::2/128"],
        endpoint=server.address,
        preshared_key=client_psk,
        persistent_keepalive=client_keepalive,
    )
    server.device.add_peer(
        client.public_key, allowed_ips=["100.64.0.1/32", "fd00::1/128"], preshared_key=server_psk
    )
    return client, server


def connected(lab: Lab) -> tuple[Host, Host]:
    """A client and server after one packet each way (a confirmed session)."""
    client, server = client_and_server(lab)
    lab.send(client, "100.64.0.2", b"hello")
    lab.send(server, "100.64.0.1", b"hello back")
    client.received.clear()
    server.received.clear()
    return client, server


def completed(host: Host) -> list[HandshakeCompleted]:
    return [event for event in host.drain_events() if isinstance(event, HandshakeCompleted)]


# Handshake and data


def test_a_first_packet_triggers_a_handshake_and_then_arrives() -> None:
    lab = Lab()
    client, server = client_and_server(lab)

    packet = lab.send(client, "100.64.0.2", b"hello")

    assert server.received == [packet]
    assert [len(datagram.data) for datagram in lab.wire] == [148, 92, 80]  # 33-byte packet, padded to 48
    assert client.drain_events() == [
        HandshakeInitiationSent(server.public_key, 1),
        HandshakeCompleted(server.public_key, is_initiator=True),
    ]
    assert server.drain_events() == [
        PeerEndpointChanged(client.public_key, None, A_ADDRESS),
        HandshakeCompleted(client.public_key, is_initiator=False),
    ]


def test_data_flows_both_ways_over_ipv4_and_ipv6() -> None:
    lab = Lab()
    client, server = connected(lab)

    sent = [
        lab.send(client, "100.64.0.2", b"v4 up"),
        lab.send(client, "fd00::2", b"v6 up", source_ip="fd00::1"),
    ]
    back = [
        lab.send(server, "100.64.0.1", b"v4 down"),
        lab.send(server, "fd00::1", b"v6 down", source_ip="fd00::2"),
    ]

    assert server.received == sent
    assert client.received == back
    assert len(lab.initiations_by(client)) == 1 and not lab.initiations_by(server)


def test_status_reports_endpoint_handshake_time_and_traffic() -> None:
    lab = Lab()
    client, server = connected(lab)
    (client_view,) = client.device.status()
    (server_view,) = server.device.status()

    assert client_view.public_key == server.public_key
    assert client_view.endpoint == B_ADDRESS and server_view.endpoint == A_ADDRESS
    assert client_view.allowed_ips == ("100.64.0.2/32", "fd00::2/128")
    assert client_view.last_handshake_at == lab.now
    assert client_view.last_handshake_wall_ns == lab.clock.wall_ns()
    assert client_view.has_session and server_view.has_session
    assert client_view.tx_bytes == server_view.rx_bytes == sum(len(d.data) for d in lab.sent_by(client))
    assert client_view.rx_bytes == server_view.tx_bytes == sum(len(d.data) for d in lab.sent_by(server))


@pytest.mark.parametrize(
    ("length", "sealed_length"), [(28, 32), (32, 32), (33, 48), (1400, 1408), (1410, 1420), (1420, 1420)]
)
def test_plaintext_is_padded_to_sixteen_bytes_but_never_past_the_mtu(length: int, sealed_length: int) -> None:
    lab = Lab()
    client, server = connected(lab)

    packet = lab.send(client, "100.64.0.2", bytes(length - 28))

    assert len(packet) == length
    assert len(lab.wire[-1].data) == 16 + sealed_length + 16
    assert server.received == [packet]


def test_a_preshared_key_is_mixed_in_when_both_sides_have_it() -> None:
    lab = Lab()
    psk = generate_preshared_key()
    client, server = client_and_server(lab, client_psk=psk, server_psk=psk)

    packet = lab.send(client, "100.64.0.2")

    assert server.received == [packet]


def test_a_preshared_key_mismatch_fails_the_handshake() -> None:
    lab = Lab()
    client, server = client_and_server(
        lab, client_psk=generate_preshared_key(), server_psk=generate_preshared_key()
    )

    lab.send(client, "100.64.0.2")

    assert server.received == []
    assert client.device.counters.handshake_invalid == 1
    assert completed(client) == [] and completed(server) == []


# Key confirmation and keypair rotation


def test_the_responder_waits_for_key_confirmation_before_sending_under_new_keys() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.holding = True
    lab.send(client, "100.64.0.2", b"first")
    (initiation,) = lab.held
    lab.held.clear()
    lab.inject(initiation)
    lab.send(server, "100.64.0.1", b"early reply")

    # The reply is queued: the server only has an unconfirmed session, and may not initiate within 5 s.
    assert [len(datagram.data) for datagram in lab.held] == [92]
    assert completed(server) == []

    lab.holding = False
    for datagram in lab.held:
        lab.inject(datagram)
    lab.deliver()
    lab.deliver()

    assert [packet[28:] for packet in server.received] == [b"first"]
    assert [packet[28:] for packet in client.received] == [b"early reply"]
    assert completed(server) == [HandshakeCompleted(client.public_key, is_initiator=False)]


def test_packets_in_flight_under_the_previous_session_still_decrypt_after_a_rekey() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.holding = True
    late = lab.send(client, "100.64.0.2", b"sent before the rekey")
    (in_flight,) = lab.held
    lab.holding = False
    lab.held.clear()

    lab.clock.now += 1
    client.device.force_handshake(lab.now)
    lab.deliver()
    assert len(completed(client)) == 2 and len(completed(server)) == 2

    assert lab.inject(in_flight) == [late]


# Rekeying and session lifetime


def test_the_initiator_rekeys_after_rekey_after_time_and_the_responder_does_not() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(121)
    marker = lab.now

    lab.send(server, "100.64.0.1", b"from the responder")
    assert lab.initiations_by(server, since=marker) == []

    sent = lab.send(client, "100.64.0.2", b"from the initiator")
    assert server.received[-1] == sent  # still sent under the old session
    assert len(lab.initiations_by(client, since=marker)) == 1
    assert completed(client)[-1] == HandshakeCompleted(server.public_key, is_initiator=True)
    assert completed(server)[-1] == HandshakeCompleted(client.public_key, is_initiator=False)


def test_a_session_older_than_reject_after_time_is_not_used_to_send() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(181)
    marker = lab.now

    packet = lab.send(server, "100.64.0.1", b"after three minutes")

    # The responder must not use its 181 s old keys: it becomes the initiator of a new handshake.
    first = lab.sent_by(server, since=marker)[0]
    assert first.data[0] == MESSAGE_INITIATION
    assert client.received == [packet]


def test_a_packet_under_a_session_older_than_reject_after_time_is_dropped() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(170)
    lab.holding = True
    lab.send(client, "100.64.0.2", b"slow")
    slow = lab.held[0]  # followed by the initiator's rekey initiation (the session is over 120 s old)
    lab.holding = False

    lab.advance(11)

    assert lab.inject(slow) == []
    assert server.device.counters.key_expired == 1


def test_the_initiator_sends_one_last_minute_handshake_when_receiving_on_an_old_session() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(166)
    marker = lab.now

    lab.send(server, "100.64.0.1", b"keeps coming")

    assert len(lab.initiations_by(client, since=marker)) == 1


def test_rekey_after_messages_applies_to_both_sides() -> None:
    lab = Lab()
    client, server = connected(lab)
    server_keypair = server.device.peers[client.public_key].current_keypair
    assert server_keypair is not None
    server_keypair.send_counter = REKEY_AFTER_MESSAGES + 1
    lab.advance(6)  # past the 5 s that must separate initiations
    marker = lab.now

    packet = lab.send(server, "100.64.0.1")

    assert client.received == [packet]
    assert len(lab.initiations_by(server, since=marker)) == 1


def test_no_counter_at_or_beyond_reject_after_messages_is_ever_sent() -> None:
    lab = Lab()
    client, server = connected(lab)
    keypair = client.device.peers[server.public_key].current_keypair
    assert keypair is not None
    keypair.send_counter = REJECT_AFTER_MESSAGES - 1
    lab.advance(6)

    packets = [ip_packet("100.64.0.1", "100.64.0.2", bytes([n])) for n in range(2)]
    client.device.send_packets(packets, lab.now)
    lab.deliver()

    # The last usable counter carries the first packet; the second waits for a new session.
    assert server.received == packets
    assert len(lab.initiations_by(client)) == 2


def test_keys_are_zeroed_after_540_seconds_without_a_new_session() -> None:
    lab = Lab()
    client, server = connected(lab)

    lab.advance(539)
    assert client.device.status()[0].has_session
    lab.advance(2)

    assert KeysZeroed(server.public_key) in client.drain_events()
    assert KeysZeroed(client.public_key) in server.drain_events()
    assert not client.device.status()[0].has_session and not server.device.status()[0].has_session


# Retransmission and giving up


def test_initiations_are_retried_every_five_seconds_plus_jitter_then_given_up() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.blocked.add(server.address)
    start = lab.now

    lab.send(client, "100.64.0.2")
    lab.advance(200)

    times = [datagram.time for datagram in lab.initiations_by(client)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) == 20  # wireguard-go: the first try plus MAX_TIMER_HANDSHAKES + 1 retries
    assert all(5.0 <= gap < 5.334 for gap in gaps)
    assert len({round(gap, 3) for gap in gaps}) > 1  # the jitter varies
    attempts = [
        event.attempt for event in client.drain_events() if isinstance(event, HandshakeInitiationSent)
    ]
    assert attempts == list(range(1, 21))
    gave_up = [event for event in client.drain_events() if isinstance(event, HandshakeGaveUp)]
    assert gave_up == [HandshakeGaveUp(server.public_key, 20)]
    assert 100.0 <= times[-1] + 5.0 - start < 107.0
    assert client.device.counters.staged_flushed == 1


def test_after_giving_up_a_new_packet_starts_a_new_round_of_attempts() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.blocked.add(server.address)
    lab.send(client, "100.64.0.2")
    lab.advance(120)
    lab.blocked.clear()
    marker = lab.now

    packet = lab.send(client, "100.64.0.2")

    assert server.received == [packet]
    assert len(lab.initiations_by(client, since=marker)) == 1


def test_handshake_residue_is_zeroed_540_seconds_after_giving_up() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.blocked.add(server.address)
    lab.send(client, "100.64.0.2")
    lab.advance(110)
    assert not [event for event in client.drain_events() if isinstance(event, KeysZeroed)]

    lab.advance(540)

    assert [event for event in client.drain_events() if isinstance(event, KeysZeroed)]


# Keepalives and dead peers


def test_a_receiver_with_nothing_to_say_sends_a_keepalive_after_ten_seconds() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.send(client, "100.64.0.2")
    start = lab.now

    lab.advance(30)

    keepalives = [datagram for datagram in lab.sent_by(server, since=start) if len(datagram.data) == 32]
    assert [datagram.time - start for datagram in keepalives] == [10.0]
    # The keepalive told the client the server is alive: no new handshake at 15 s.
    assert lab.initiations_by(client, since=start + 1) == []


def test_warming_up_the_data_path_changes_nothing_the_tunnel_does() -> None:
    """The shell's keep-warm ticks (Device.warm_up) between packets: the wire, the events and the timers
    are those of the same tunnel without them."""

    def run(warm_ups: int) -> tuple[list[tuple[float, Address, bytes]], list[str], list[bytes]]:
        lab = Lab()
        client, server = connected(lab)
        lab.send(client, "100.64.0.2", b"one")
        timers = (client.device.get_timer(), server.device.get_timer())
        for _ in range(warm_ups):
            client.device.warm_up()
            server.device.warm_up()
        assert client.device.datagrams_to_send() == [] and server.device.datagrams_to_send() == []
        assert (client.device.get_timer(), server.device.get_timer()) == timers
        lab.send(client, "100.64.0.2", b"two")
        lab.advance(30)
        wire = [(d.time, d.source, d.data) for d in lab.wire]
        events = [type(event).__name__ for event in client.drain_events() + server.drain_events()]
        return wire, events, server.received

    warmed, plain = run(50), run(0)
    assert warmed[1:] == plain[1:]
    # Datagrams alike but for the keys (each run's own): times, ends, lengths and transport counters.
    assert [(t, a, len(d), d[0], d[8:16] if d[0] == 4 else b"") for t, a, d in warmed[0]] == [
        (t, a, len(d), d[0], d[8:16] if d[0] == 4 else b"") for t, a, d in plain[0]
    ]


def test_any_reply_within_ten_seconds_replaces_the_keepalive() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(20)
    start = lab.now
    lab.send(client, "100.64.0.2")
    lab.advance(3)
    lab.send(server, "100.64.0.1")

    lab.advance(20)

    server_keepalives = [d for d in lab.sent_by(server, since=start) if len(d.data) == KEEPALIVE_SIZE]
    client_keepalives = [d for d in lab.sent_by(client, since=start) if len(d.data) == KEEPALIVE_SIZE]
    assert server_keepalives == []
    assert [datagram.time - start for datagram in client_keepalives] == [13.0]


def test_a_silent_peer_triggers_a_new_handshake_fifteen_seconds_after_sending() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.advance(20)
    lab.blocked.add(server.address)
    start = lab.now

    lab.send(client, "100.64.0.2")
    lab.advance(16)

    (first,) = lab.initiations_by(client, since=start)
    assert 15.0 <= first.time - start < 15.334
    assert HandshakeInitiationSent(server.public_key, 1) in client.drain_events()


def test_persistent_keepalive_starts_the_session_and_keeps_the_path_warm() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    client.device.update_peer(server.public_key, persistent_keepalive=25, now=lab.now)
    lab.deliver()
    start = lab.now
    assert completed(client) and completed(server)

    lab.advance(80)

    keepalives = [
        d.time - start for d in lab.sent_by(client, since=start + 1) if len(d.data) == KEEPALIVE_SIZE
    ]
    assert keepalives == [25.0, 50.0, 75.0]


def test_adding_a_peer_with_persistent_keepalive_connects_at_once() -> None:
    lab = Lab()
    client = lab.host("client", A_ADDRESS, "100.64.0.1")
    server = lab.host("server", B_ADDRESS, "100.64.0.2")
    server.device.add_peer(client.public_key, allowed_ips=["100.64.0.1/32"])

    client.device.add_peer(
        server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=B_ADDRESS, persistent_keepalive=25, now=lab.now
    )
    lab.deliver()

    assert completed(client) and completed(server)


# Replays and floods


def test_a_replayed_transport_packet_is_dropped() -> None:
    lab = Lab()
    client, server = connected(lab)
    lab.holding = True
    packet = lab.send(client, "100.64.0.2")
    (captured,) = lab.held

    assert lab.inject(captured) == [packet]
    assert lab.inject(captured) == []
    assert server.device.counters.replayed == 1


def test_a_replayed_initiation_is_dropped_by_its_timestamp() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.holding = True
    lab.send(client, "100.64.0.2")
    (initiation,) = lab.held
    lab.inject(initiation)
    assert len(server.device.datagrams_to_send()) == 1

    lab.clock.now += 1
    lab.inject(initiation)

    assert server.device.datagrams_to_send() == []
    assert server.device.counters.handshake_replayed == 1


def test_initiations_closer_than_twenty_milliseconds_are_dropped_as_a_flood() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.holding = True
    for _ in range(3):
        client.device.force_handshake(lab.now)
        lab.deliver()
        lab.clock.now += FORCED_INITIATION_SPACING + 0.001  # the sender keeps clear; the wire may not
    first, second, third = lab.held

    lab.inject(first)
    lab.clock.now += 0.01
    lab.inject(second)
    lab.clock.now += 0.02
    lab.inject(third)

    assert server.device.counters.handshake_flood == 1
    assert len(server.device.datagrams_to_send()) == 2


def test_timestamps_keep_increasing_when_the_wall_clock_steps_back() -> None:
    lab = Lab()
    client, server = connected(lab)
    before = client.device.last_timestamp_sent
    lab.clock.wall_offset_ns = -3600 * 10**9
    lab.clock.now += 1

    client.device.force_handshake(lab.now)
    lab.deliver()

    assert client.device.last_timestamp_sent > before
    assert server.device.counters.handshake_replayed == 0
    assert len(completed(client)) == 2


def test_a_restarted_device_resumes_from_the_persisted_timestamp() -> None:
    lab = Lab()
    client, server = connected(lab)
    persisted = client.device.last_timestamp_sent
    lab.clock.wall_offset_ns = -86400 * 10**9  # an RTC-less box rebooted into yesterday
    restarted = Device(client.private_key, wall_clock_ns=lab.clock.wall_ns, last_timestamp=persisted)
    restarted.add_peer(server.public_key, allowed_ips=["100.64.0.2/32"], endpoint=B_ADDRESS)
    client.device = restarted
    lab.clock.now += 1

    packet = lab.send(client, "100.64.0.2")

    assert server.received == [packet]
    assert server.device.counters.handshake_replayed == 0


# Cookies under load


def test_under_load_a_handshake_without_mac2_gets_a_cookie_and_the_retry_succeeds() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    server.device.under_load = True

    packet = lab.send(client, "100.64.0.2")
    assert [len(datagram.data) for datagram in lab.wire] == [148, 64]
    assert server.device.counters.cookie_replies_sent == 1
    assert server.received == []

    lab.advance(5.4)

    retry = lab.initiations_by(client)[-1]
    assert retry.data[-16:] != bytes(16)  # mac2 now carries the cookie
    assert server.received == [packet]
    assert server.device.counters.cookie_replies_sent == 1


def test_a_cookie_reply_that_answers_nothing_is_ignored() -> None:
    lab = Lab()
    client, _server = connected(lab)
    forged = struct.pack("<II24s32s", 3, 12345, bytes(24), bytes(32))

    client.device.receive_datagram(forged, B_ADDRESS, lab.now)

    assert client.device.counters.cookie_reply_invalid == 1


def test_under_load_each_source_is_rate_limited() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    server.device.under_load = True
    lab.send(client, "100.64.0.2")
    lab.advance(5.4)
    assert completed(server)
    for _ in range(40):  # 24 a second (forced initiations keep 40 ms apart) against 20 and a burst of 5
        lab.clock.now += FORCED_INITIATION_SPACING + 0.001
        client.device.force_handshake(lab.now)
        lab.deliver()

    assert server.device.counters.rate_limited >= 1


# Roaming


def test_the_endpoint_follows_authenticated_packets() -> None:
    lab = Lab()
    client, server = connected(lab)
    server.drain_events()
    client.address = A_ROAMED

    lab.send(client, "100.64.0.2", b"from a new network")
    reply = lab.send(server, "100.64.0.1", b"found you")

    assert server.device.peers[client.public_key].endpoint == A_ROAMED
    assert PeerEndpointChanged(client.public_key, A_ADDRESS, A_ROAMED) in server.drain_events()
    assert client.received == [reply]


def held(lab: Lab, host: Host, destination_ip: str, count: int = 1) -> list[Datagram]:
    """The datagrams of `count` packets that `host` sends, kept off the wire."""
    lab.holding = True
    for _ in range(count):
        lab.send(host, destination_ip)
    datagrams, lab.held = lab.held, []
    lab.holding = False
    return datagrams


def test_unauthenticated_datagrams_never_move_the_endpoint() -> None:
    lab = Lab()
    client, server = connected(lab)
    (genuine,) = held(lab, client, "100.64.0.2")
    lab.inject(genuine)
    events_before = len(server.drain_events())

    attacker: Address = ("198.18.66.66", 666)
    tampered = genuine.data[:-1] + bytes([genuine.data[-1] ^ 1])
    for data in (genuine.data, tampered, b"\x04" + bytes(40), b"\x01\x00\x00\x00" + bytes(144)):
        server.device.receive_datagram(data, attacker, lab.now)

    assert server.device.peers[client.public_key].endpoint == A_ADDRESS
    assert server.drain_events()[events_before:] == []
    assert server.device.counters.replayed == 1
    assert server.device.counters.decrypt_failed == 1


def test_only_authenticated_datagrams_count_as_received_from_a_peer() -> None:
    # The client's lifecycle reads this count for dead-peer detection: forgeries must not move it.
    lab = Lab()
    client, server = connected(lab)
    (genuine,) = held(lab, client, "100.64.0.2")
    before = server.device.authenticated_received
    tampered = genuine.data[:-1] + bytes([genuine.data[-1] ^ 1])
    for data in (tampered, b"\x04" + bytes(40), b"\x01\x00\x00\x00" + bytes(144), b"\x02" + bytes(91)):
        server.device.receive_datagram(data, genuine.source, lab.now)
    assert server.device.authenticated_received == before
    lab.inject(genuine)
    assert server.device.authenticated_received == before + 1
    # A batch of several packets from one peer counts once; a handshake message counts too.
    batch = held(lab, client, "100.64.0.2", count=3)
    server.device.receive_datagrams([(d.data, d.source) for d in batch], lab.now)
    assert server.device.authenticated_received == before + 2
    lab.advance(1.0)  # past the responder's 20 ms flood window for initiations
    client_before = client.device.authenticated_received
    client.device.force_handshake(lab.now)
    lab.deliver()
    assert client.device.authenticated_received > client_before


def test_a_handshake_from_a_new_address_moves_the_endpoint() -> None:
    lab = Lab()
    client, server = connected(lab)
    client.address = A_ROAMED
    lab.clock.now += 1

    client.device.force_handshake(lab.now)
    lab.deliver()

    assert server.device.peers[client.public_key].endpoint == A_ROAMED


def test_reset_endpoint_returns_to_the_configured_address() -> None:
    lab = Lab()
    client, server = connected(lab)
    client.device.update_peer(server.public_key, endpoint=("198.18.0.9", 51820))
    peer = client.device.peers[server.public_key]
    peer.endpoint = ("198.18.7.7", 1)

    client.device.reset_endpoint(server.public_key)

    assert peer.endpoint == ("198.18.0.9", 51820)


def test_updating_a_peer_without_a_new_endpoint_keeps_the_roamed_address() -> None:
    lab = Lab()
    client, server = connected(lab)
    peer = server.device.peers[client.public_key]
    learned = peer.endpoint
    assert learned is not None

    server.device.update_peer(client.public_key, endpoint=None, allowed_ips=["100.64.0.2/32"])

    assert peer.endpoint == learned
    server.device.update_peer(client.public_key, endpoint=("198.18.0.9", 51820))
    assert peer.endpoint == ("198.18.0.9", 51820)


# Cryptokey routing


def test_decrypted_packets_must_come_from_the_senders_allowed_ips() -> None:
    lab = Lab()
    client, server = connected(lab)
    client.device.update_peer(server.public_key, allowed_ips=["0.0.0.0/0"])

    lab.send(client, "100.64.0.2", b"spoofed", source_ip="100.64.0.99")
    genuine = lab.send(client, "100.64.0.2", b"genuine")

    assert server.received == [genuine]
    assert server.device.counters.source_not_allowed == 1


def test_a_source_routed_to_a_more_specific_peer_is_refused_from_another() -> None:
    lab = Lab()
    client, server = connected(lab)
    server.device.update_peer(client.public_key, allowed_ips=["100.64.0.0/24"])
    other = lab.host("other", ("198.18.0.3", 51820), "100.64.0.7")
    server.device.add_peer(other.public_key, allowed_ips=["100.64.0.7/32"])
    client.device.update_peer(server.public_key, allowed_ips=["0.0.0.0/0"])

    lab.send(client, "100.64.0.2", b"pretending", source_ip="100.64.0.7")
    fine = lab.send(client, "100.64.0.2", b"mine", source_ip="100.64.0.8")

    assert server.received == [fine]


def test_in_one_batch_every_packets_source_is_checked_not_only_the_first() -> None:
    lab = Lab()
    client, server = connected(lab)
    server.device.update_peer(client.public_key, allowed_ips=["100.64.0.0/24", "fd00::1/128"])
    other = lab.host("other", ("198.18.0.3", 51820), "100.64.0.7")
    server.device.add_peer(other.public_key, allowed_ips=["100.64.0.7/32", "fd00::7/128"])
    client.device.update_peer(server.public_key, allowed_ips=["0.0.0.0/0", "::/0"])
    sources = ["100.64.0.1", "100.64.9.99", "100.64.0.1", "100.64.0.7", "100.64.0.1", "100.64.0.8"]
    sources += ["fd00::1", "fd00::7", "fd00::1", "fd00::99", "fd00::1"]
    packets = [
        ip_packet(source, "fd00::2" if ":" in source else "100.64.0.2", f"p{n}".encode())
        for n, source in enumerate(sources)
    ]
    lab.holding = True
    client.device.send_packets(packets, lab.now)
    lab.deliver()
    batch, lab.held = lab.held, []
    lab.holding = False

    server.received += server.device.receive_datagrams([(d.data, d.source) for d in batch], lab.now)

    allowed = {"100.64.0.1", "100.64.0.8", "fd00::1"}
    assert server.received == [p for p, source in zip(packets, sources, strict=True) if source in allowed]
    assert server.device.counters.source_not_allowed == 4


def test_packets_to_addresses_no_peer_owns_are_dropped() -> None:
    lab = Lab()
    client, _server = connected(lab)

    lab.send(client, "198.18.99.1", b"nowhere")

    assert client.device.counters.no_route == 1
    assert client.device.datagrams_to_send() == []


def test_many_peers_are_routed_by_longest_prefix_match() -> None:
    lab = Lab()
    server = lab.host("server", B_ADDRESS, "100.64.0.1")
    clients = [lab.host(f"c{n}", ("198.18.1.1", 50000 + n), f"100.64.1.{n}") for n in range(1, 4)]
    for client in clients:
        client.device.add_peer(server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=B_ADDRESS)
        server.device.add_peer(
            client.public_key, allowed_ips=[f"{client.tunnel_ip}/32", f"fd00::{client.name}"]
        )
        lab.send(client, "100.64.0.1", b"hello")
    gateway = public_key(generate_private_key())
    server.device.add_peer(gateway, allowed_ips=["100.64.0.0/10", "::/0"])
    subnets = [public_key(generate_private_key()) for _ in range(40)]
    for n, subnet_owner in enumerate(subnets):
        server.device.add_peer(subnet_owner, allowed_ips=[f"100.65.{n}.0/24"])

    for client in clients:
        lab.send(server, client.tunnel_ip, client.name.encode(), source_ip="100.64.0.1")
    routes = {
        "100.64.1.2": clients[1].public_key,
        "100.64.1.99": gateway,
        "100.65.7.1": subnets[7],
        "fd00::c3": clients[2].public_key,
        "2001:db8::1": gateway,
    }

    for client in clients:
        assert [packet[28:] for packet in client.received] == [client.name.encode()]
    for address, owner in routes.items():
        peer = server.device.peer_for_destination(ipaddress.ip_address(address).packed)
        assert peer is not None and peer.public_key == owner, address
    assert server.device.peer_for_destination(ipaddress.ip_address("198.18.0.1").packed) is None


# Configuration changes


def test_updating_one_peer_keeps_every_session() -> None:
    lab = Lab()
    client, server = connected(lab)
    other = lab.host("other", ("198.18.0.3", 51820), "100.64.0.3")
    other.device.add_peer(server.public_key, allowed_ips=["100.64.0.2/32"], endpoint=B_ADDRESS)
    server.device.add_peer(other.public_key, allowed_ips=["100.64.0.3/32"])
    lab.send(other, "100.64.0.2")
    lab.clock.now += 1
    marker = lab.now

    server.device.update_peer(other.public_key, allowed_ips=["100.64.0.3/32", "100.64.3.0/24"])
    server.device.update_peer(client.public_key, preshared_key=None, persistent_keepalive=0)
    up = lab.send(client, "100.64.0.2", b"still here")
    down = lab.send(server, "100.64.3.9", b"new route", source_ip="100.64.0.2")

    assert server.received[-1] == up
    assert other.received[-1] == down
    assert lab.initiations_by(client, since=marker) == [] and lab.initiations_by(other, since=marker) == []


def test_a_removed_peer_is_forgotten_with_its_keys() -> None:
    lab = Lab()
    client, server = connected(lab)

    server.device.remove_peer(client.public_key)
    lab.send(client, "100.64.0.2")

    assert server.received == []
    assert server.device.counters.unknown_receiver == 1
    assert server.device.status() == []


def test_configuration_mistakes_are_config_errors() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    with pytest.raises(ConfigError, match="already configured"):
        client.device.add_peer(server.public_key)
    with pytest.raises(ConfigError, match="own public key"):
        client.device.add_peer(client.public_key)
    with pytest.raises(ConfigError, match="no peer"):
        client.device.remove_peer(client.public_key)
    with pytest.raises(ConfigError, match="persistent keepalive"):
        client.device.update_peer(server.public_key, persistent_keepalive=70000)
    with pytest.raises(ConfigError, match="not an IP prefix"):
        client.device.update_peer(server.public_key, allowed_ips=["100.64.0.0/99"])
    with pytest.raises(ConfigError, match="usable"):
        client.device.add_peer("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


def test_a_new_private_key_renegotiates_every_session() -> None:
    lab = Lab()
    client, server = connected(lab)
    old_public = server.public_key
    lab.clock.now += 1

    server.device.set_private_key(generate_private_key())
    client.device.remove_peer(old_public)
    client.device.add_peer(server.public_key, allowed_ips=["100.64.0.2/32"], endpoint=B_ADDRESS)
    packet = lab.send(client, "100.64.0.2")

    assert server.received == [packet]


def test_force_handshake_ignores_the_five_second_spacing() -> None:
    lab = Lab()
    client, _server = connected(lab)
    lab.clock.now += 1
    marker = lab.now

    client.device.force_handshake(lab.now)
    lab.deliver()

    assert len(lab.initiations_by(client, since=marker)) == 1
    assert len(completed(client)) == 2


# Queues, timers and robustness


def test_packets_waiting_for_a_session_are_bounded_oldest_dropped_first() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    lab.blocked.add(server.address)
    packets = [ip_packet("100.64.0.1", "100.64.0.2", n.to_bytes(2, "big")) for n in range(200)]
    client.device.send_packets(packets, lab.now)
    lab.deliver()
    lab.blocked.clear()

    lab.advance(5.4)

    assert server.received == packets[72:]
    assert client.device.counters.staged_overflow == 72


def test_an_idle_device_has_no_timer() -> None:
    lab = Lab()
    client, _server = client_and_server(lab)
    assert client.device.get_timer() is None
    client.device.handle_timer(lab.now + 1000)
    assert client.device.datagrams_to_send() == []


def test_a_mixed_batch_is_routed_to_each_peer_in_order() -> None:
    lab = Lab()
    server = lab.host("server", B_ADDRESS, "100.64.0.1")
    clients = [lab.host(f"c{n}", ("198.18.1.1", 50000 + n), f"100.64.1.{n}") for n in range(1, 3)]
    for client in clients:
        client.device.add_peer(server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=B_ADDRESS)
        server.device.add_peer(client.public_key, allowed_ips=[f"{client.tunnel_ip}/32"])
        lab.send(client, "100.64.0.1")
    batch = [ip_packet("100.64.0.1", clients[n % 2].tunnel_ip, bytes([n])) for n in range(10)]
    # Runs of one destination, and an unroutable packet between two to the same peer.
    destinations = ["100.64.1.1", "100.64.1.1", "100.64.1.2", "198.18.99.1", "100.64.1.2", "100.64.1.1"]
    runs = [ip_packet("100.64.0.1", d, f"run {n}".encode()) for n, d in enumerate(destinations)]

    server.device.send_packets(batch + runs, lab.now)
    lab.deliver()

    assert clients[0].received == [*batch[0::2], runs[0], runs[1], runs[5]]
    assert clients[1].received == [*batch[1::2], runs[2], runs[4]]
    assert server.device.counters.no_route == 1


def test_batches_are_accepted_in_one_call() -> None:
    lab = Lab()
    client, server = connected(lab)
    packets = [ip_packet("100.64.0.1", "100.64.0.2", bytes([n]) * n) for n in range(1, 50)]
    datagrams = client.device.encrypt_packets(client.device.peers[server.public_key], packets, lab.now)

    received = server.device.receive_datagrams([(data, A_ADDRESS) for data in datagrams], lab.now)

    assert received == packets


_garbage = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda kind, body: bytes([kind, 0, 0, 0]) + body, st.integers(1, 4), st.binary(max_size=160)),
    st.builds(
        lambda kind, size: bytes([kind, 0, 0, 0]) + bytes(size),
        st.integers(1, 4),
        st.sampled_from([28, 60, 88, 144]),
    ),
)


_FUZZ_LAB = Lab()
_FUZZ_CLIENT, _FUZZ_SERVER = connected(_FUZZ_LAB)


@settings(max_examples=200, deadline=None)
@given(st.lists(_garbage, max_size=8))
def test_no_datagram_makes_the_device_raise(datagrams: list[bytes]) -> None:
    server = _FUZZ_SERVER.device
    before = server.peers[_FUZZ_CLIENT.public_key].endpoint

    packets = server.receive_datagrams([(data, ("198.18.66.66", 1)) for data in datagrams], _FUZZ_LAB.now)

    assert packets == []
    assert server.peers[_FUZZ_CLIENT.public_key].endpoint == before


def test_a_handshake_for_another_public_key_fails_mac1() -> None:
    lab = Lab()
    client, server = client_and_server(lab)
    stranger = lab.host("stranger", ("198.18.0.4", 51820), "100.64.0.4")
    stranger.device.add_peer(client.public_key, allowed_ips=["100.64.0.1/32"], endpoint=B_ADDRESS)

    lab.send(stranger, "100.64.0.1")

    assert server.device.counters.mac1_invalid == 1


def test_a_handshake_from_an_unknown_key_is_dropped() -> None:
    lab = Lab()
    _client, server = client_and_server(lab)
    stranger = lab.host("stranger", ("198.18.0.4", 51820), "100.64.0.4")
    stranger.device.add_peer(server.public_key, allowed_ips=["100.64.0.2/32"], endpoint=B_ADDRESS)

    lab.send(stranger, "100.64.0.2")

    assert server.device.counters.handshake_unknown_peer == 1
    assert server.device.datagrams_to_send() == []


_operations = st.lists(
    st.tuples(
        st.sampled_from(["client sends", "server sends", "wait", "lose the server", "find the server"]),
        st.integers(min_value=0, max_value=2),
        st.floats(min_value=0.0, max_value=40.0),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(_operations)
def test_the_timer_never_sleeps_past_a_pending_deadline(operations: list[tuple[str, int, float]]) -> None:
    lab = Lab()
    server = lab.host("server", B_ADDRESS, "100.64.0.1")
    clients = [lab.host(f"c{n}", ("198.18.1.1", 50000 + n), f"100.64.1.{n}") for n in range(3)]
    for client in clients:
        client.device.add_peer(server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=B_ADDRESS)
        server.device.add_peer(client.public_key, allowed_ips=[f"{client.tunnel_ip}/32"])
    for operation, which, seconds in operations:
        client = clients[which]
        if operation == "client sends":
            lab.send(client, "100.64.0.1")
        elif operation == "server sends":
            lab.send(server, client.tunnel_ip, source_ip="100.64.0.1")
        elif operation == "wait":
            lab.advance(seconds)
        elif operation == "lose the server":
            lab.blocked.add(B_ADDRESS)
        else:
            lab.blocked.discard(B_ADDRESS)
        for host in lab.hosts.values():
            pending = [
                deadline
                for peer in host.device.peers.values()
                if (deadline := peer.next_deadline()) is not None
            ]
            timer = host.device.get_timer()
            if pending:
                assert timer is not None and timer <= min(pending)


def keepalive_client_initiating_at_start(lab: Lab) -> tuple[Host, Host]:
    """A client whose persistent keepalive made it initiate as the peer was added (the daemon's start)."""
    client = lab.host("client", A_ADDRESS, "100.64.0.1")
    server = lab.host("server", B_ADDRESS, "100.64.0.2")
    server.device.add_peer(client.public_key, allowed_ips=["100.64.0.1/32"])
    client.device.add_peer(
        server.public_key,
        allowed_ips=["100.64.0.2/32"],
        endpoint=server.address,
        persistent_keepalive=25,
        now=lab.now,
    )
    return client, server


def test_a_forced_initiation_keeps_clear_of_the_responders_flood_limit() -> None:
    """After a wake, data may initiate a moment before the wake's forced handshake does.

    Sent at once, the forced initiation would void the first and reach the responder within its
    20 ms flood limit, be dropped, and leave the peer waiting a whole REKEY_TIMEOUT.
    """
    lab = Lab()
    client, server = keepalive_client_initiating_at_start(lab)
    lab.holding = True
    lab.deliver()
    lab.holding = False
    lab.inject(lab.held.pop())  # the responder consumes the first initiation...
    server.device.datagrams_to_send()  # ...and its response is lost
    lab.clock.now += 0.005
    client.device.force_handshake(lab.now)
    lab.deliver()
    assert len(lab.initiations_by(client)) == 1  # held back

    lab.advance(0.1)
    first, second = lab.initiations_by(client)
    assert second.time - first.time >= FORCED_INITIATION_SPACING - 1e-9
    assert server.device.counters.handshake_flood == 0
    assert len(completed(client)) == 1


def test_a_handshake_completing_first_cancels_a_held_back_forced_one() -> None:
    lab = Lab()
    client, _server = keepalive_client_initiating_at_start(lab)
    lab.clock.now += 0.005
    client.device.force_handshake(lab.now)
    lab.deliver()  # the first initiation's response arrives before the forced one is due
    lab.advance(1)

    assert len(lab.initiations_by(client)) == 1
    assert len(completed(client)) == 1


def test_force_handshake_keep_pending_leaves_an_initiation_in_flight_alone() -> None:
    lab = Lab()
    client, _server = keepalive_client_initiating_at_start(lab)
    lab.clock.now += 0.005
    client.device.force_handshake(lab.now, keep_pending=True)
    lab.deliver()

    assert len(lab.initiations_by(client)) == 1
    assert len(completed(client)) == 1


def test_force_handshake_keep_pending_still_replaces_a_lost_initiation() -> None:
    lab = Lab()
    client, server = keepalive_client_initiating_at_start(lab)
    lab.blocked.add(server.address)
    lab.deliver()
    lab.clock.now += 5.5  # older than REKEY_TIMEOUT: lost, whatever its retransmit timer says
    lab.blocked.clear()
    marker = lab.now
    client.device.force_handshake(lab.now, keep_pending=True)
    lab.deliver()

    assert len(lab.initiations_by(client, since=marker)) == 1
    assert len(completed(client)) == 1


# The idle tunnel's path: send_lone, and receive_datagrams' deliver


def test_a_lone_packet_leaves_before_the_bookkeeping_a_sent_packet_takes() -> None:
    lab = Lab()
    client, server = connected(lab)
    peer = client.device.peers[server.public_key]
    keypair = peer.current_keypair
    assert keypair is not None and peer.new_handshake_at is None
    counter = keypair.send_counter
    transmitted: list[tuple[bytes, Address, float | None]] = []
    packet = ip_packet("100.64.0.1", "100.64.0.2", b"lone")

    def transmit(data: bytes, endpoint: Address) -> None:
        transmitted.append((data, endpoint, peer.new_handshake_at))

    assert client.device.send_lone(packet, lab.now, transmit)

    [(data, endpoint, dead_peer_timer_then)] = transmitted
    assert endpoint == B_ADDRESS and dead_peer_timer_then is None  # the timer came after the send
    assert peer.new_handshake_at is not None and client.device.get_timer() is not None
    assert struct.unpack_from("<I", data, 8)[0] == counter and keypair.send_counter == counter + 1
    assert client.device.datagrams_to_send() == []
    assert server.device.receive_datagram(data, A_ADDRESS, lab.now) == [packet]


def test_a_lone_packet_that_needs_more_than_a_seal_is_left_to_send_packets() -> None:
    lab = Lab()
    client, _server = client_and_server(lab)
    transmitted: list[bytes] = []
    packet = ip_packet("100.64.0.1", "100.64.0.2", b"first")

    def refused(device: Device, sent: bytes) -> None:
        assert not device.send_lone(sent, lab.now, lambda data, endpoint: transmitted.append(data))

    refused(client.device, packet)  # no session yet: send_packets starts the handshake
    assert client.device.datagrams_to_send() == [] and client.device.counters.no_route == 0
    client.device.send_packet(packet, lab.now)
    refused(client.device, packet)  # staged behind the handshake, and an initiation waiting to leave
    lab.deliver()
    refused(client.device, ip_packet("100.64.0.1", "198.51.100.9", b"no peer"))
    refused(client.device, b"")
    refused(client.device, b"\x45" + bytes(10))  # shorter than an IPv4 header
    assert client.device.counters.no_route == 0  # counted by send_packets, not twice
    lab.advance(181)  # past REJECT_AFTER_TIME: a new handshake first
    refused(client.device, packet)
    assert transmitted == []


def test_a_lone_packet_that_is_due_a_rekey_leaves_first_and_the_initiation_after() -> None:
    lab = Lab()
    client, server = connected(lab)
    keypair = client.device.peers[server.public_key].current_keypair
    assert keypair is not None
    keypair.send_counter = REKEY_AFTER_MESSAGES + 1
    lab.advance(6)  # past the 5 s that must separate initiations
    transmitted: list[bytes] = []

    assert client.device.send_lone(
        ip_packet("100.64.0.1", "100.64.0.2", b"x"), lab.now, lambda d, e: transmitted.append(d)
    )

    assert [data[0] for data in transmitted] == [MESSAGE_TRANSPORT]
    assert [data[0] for data, _ in client.device.datagrams_to_send()] == [MESSAGE_INITIATION]


def test_received_packets_are_delivered_before_the_batch_moves_the_endpoint() -> None:
    lab = Lab()
    client, server = connected(lab)
    peer = server.device.peers[client.public_key]
    keypair = client.device.peers[server.public_key].current_keypair
    assert keypair is not None
    packet = ip_packet("100.64.0.1", "100.64.0.2", b"from a new address")
    [data] = client.device.encrypt_packets(client.device.peers[server.public_key], [packet], lab.now)
    [keepalive] = client.device.encrypt_packets(client.device.peers[server.public_key], [b""], lab.now)
    delivered: list[tuple[list[bytes], Address | None]] = []

    def deliver(packets: list[bytes]) -> None:
        delivered.append((list(packets), peer.endpoint))

    assert server.device.receive_datagrams([(data, A_ROAMED)], lab.now, deliver) == [packet]
    assert delivered == [([packet], A_ADDRESS)] and peer.endpoint == A_ROAMED
    assert server.device.receive_datagrams([(keepalive, A_ROAMED)], lab.now, deliver) == []
    assert len(delivered) == 1  # nothing to deliver: not called


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(MESSAGE_INITIATION, 148), (MESSAGE_RESPONSE, 92)]),
    st.binary(min_size=116, max_size=116),
    st.booleans(),
)
def test_a_handshake_message_that_passes_mac1_with_garbage_inside_is_counted_and_dropped(
    kind_and_size: tuple[int, int], body: bytes, under_load: bool
) -> None:
    # Anyone who knows the server's public key can make mac1 right: the handshake's own parsing (noise,
    # the cookie checks under load) then meets whatever the rest holds. Compiled in CI.
    kind, size = kind_and_size
    message = bytearray(struct.pack("<I", kind) + body[: size - 36] + bytes(32))
    CookieGenerator(decode_key(_FUZZ_SERVER.public_key)).add_macs(message, _FUZZ_LAB.now)
    server = _FUZZ_SERVER.device
    server.under_load = under_load
    counted = sum(server.counters.as_dict().values())
    mac1_invalid = server.counters.mac1_invalid
    try:
        packets = server.receive_datagrams([(bytes(message), ("198.18.66.67", 2))], _FUZZ_LAB.now)
    finally:
        server.under_load = False
    assert packets == []
    assert sum(server.counters.as_dict().values()) == counted + 1
    assert server.counters.mac1_invalid == mac1_invalid  # it got past mac1
