"""The WireGuard device: a sans-I/O state machine for many peers, in the style of aioquic.

The shell owns the sockets, the TUN and the clock; the device only transforms bytes:

    packets = device.receive_datagrams(batch, now)      # decrypted inner IP packets, for the TUN
    device.send_packets(ip_packets, now)                # routed by destination and encrypted
    for data, address in device.datagrams_to_send():    # everything to put on the UDP socket
        ...
    deadline = device.get_timer()                       # call handle_timer(now) once it has passed
    while (event := device.next_event()) is not None:   # handshakes, roaming, give-ups
        ...

Drain datagrams_to_send() after every call: receiving produces handshake responses and cookie replies,
timers produce keepalives and retries. The data path for a single-peer client can skip routing with
encrypt_packets(peer, packets, now), which returns the datagrams for peer.endpoint directly.
The shell sets `under_load` from its handshake rate (cookies then guard handshakes) and calls
force_handshake(now) after wake or a path change; the server calls reset_endpoint() to point a peer
without a configured endpoint at the one it remembered before a restart. `last_timestamp` (in) and
last_timestamp_sent (out) let a shell carry the newest TAI64N label across a restart whose wall clock went
backwards; no daemon persists it yet, so after such a restart peers refuse our initiations until the
wall clock passes the last label they saw.

`now` is seconds on a clock that keeps counting through suspend (CLOCK_BOOTTIME); the only other clock is
the wall clock of the TAI64N handshake timestamp, which is injectable. Timer semantics follow wireguard-go's
device/timers.go, send.go and receive.go. Nothing that arrives from the network raises: bad input is counted
in `counters` and dropped.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import os
import random
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidTag

from dnsguard.errors import ConfigError, CryptoError, ProtocolError
from dnsguard.wireguard import noise
from dnsguard.wireguard.allowedips import AllowedIPs, Network, parse_network
from dnsguard.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    DEFAULT_MTU,
    FORCED_INITIATION_SPACING,
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    LAST_MINUTE_REKEY_AGE,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX_MS,
    RESPONSE_SIZE,
    STAGED_QUEUE_SIZE,
    TIMESTAMP_SIZE,
    ZERO_KEYS_AFTER_TIME,
)
from dnsguard.wireguard.cookie import CookieChecker, RateLimiter, address_bytes
from dnsguard.wireguard.crypto import dh, tai64n, tai64n_successor
from dnsguard.wireguard.events import (
    Address,
    DropCounters,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiationSent,
    KeysZeroed,
    PeerEndpointChanged,
)
from dnsguard.wireguard.keys import PublicKey, decode_key, encode_key, parse_public_key
from dnsguard.wireguard.peer import Peer, PeerStatus
from dnsguard.wireguard.session import TRANSPORT_HEADER, TRANSPORT_NONCE, Keypair, seal_packets, warm_up


class Unset(enum.Enum):
    """Marks an update_peer argument as 'leave unchanged' (None is a meaningful value there)."""

    UNSET = enum.auto()


UNSET: Final = Unset.UNSET
# Of an inner packet: IPv4 total length and source; IPv6 payload length and source.
_IPV4_LENGTH_SOURCE: Final = struct.Struct("!2xH8xI")
_IPV6_LENGTH_SOURCE: Final = struct.Struct("!4xH2x16s")
_MAX_KEEPALIVE_INTERVAL: Final = 65535


def _may_seal(peer: Peer, keypair: Keypair, count: int, now: float) -> bool:
    """Whether `count` packets may be sealed under `keypair` now: nothing staged ahead of them (order),
    the session younger than REJECT_AFTER_TIME and its counters not past REJECT_AFTER_MESSAGES."""
    return (
        not peer.staged
        and now - keypair.created_at < REJECT_AFTER_TIME
        and keypair.send_counter + count <= REJECT_AFTER_MESSAGES
    )


def _check_keepalive(interval: int) -> int:
    if not 0 <= interval <= _MAX_KEEPALIVE_INTERVAL:
        raise ConfigError(
            f"persistent keepalive must be 0..{_MAX_KEEPALIVE_INTERVAL} seconds, got {interval}"
        )
    return interval


class Device:
    """A WireGuard interface: one static identity, many peers, cryptokey routing, every protocol timer."""

    def __init__(
        self,
        private_key: str,
        *,
        listen_port: int | None = None,
        mtu: int = DEFAULT_MTU,
        rng: random.Random | None = None,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        random_bytes: Callable[[int], bytes] = os.urandom,
        last_timestamp: bytes = b"",
        staged_limit: int = STAGED_QUEUE_SIZE,
        max_events: int = 1024,
        rekey_after_time: float = REKEY_AFTER_TIME,
    ) -> None:
        """Create a device for a base64 private key.

        rng draws the timer jitter, wall_clock_ns stamps initiations (TAI64N), random_bytes makes indices,
        cookie secrets and nonces: all injectable for tests. last_timestamp is the persisted
        last_timestamp_sent of a previous run. staged_limit bounds the packets queued per peer while a
        handshake is under way; max_events bounds undrained events (the oldest are dropped).
        """
        if last_timestamp and len(last_timestamp) != TIMESTAMP_SIZE:
            raise ConfigError(
                f"a persisted TAI64N timestamp is {TIMESTAMP_SIZE} bytes, got {len(last_timestamp)}"
            )
        self._identity = noise.StaticIdentity(decode_key(private_key, what="private key"))
        self.public_key = PublicKey(encode_key(self._identity.public))
        self.listen_port = listen_port
        self.mtu = mtu
        # Set by the shell from its handshake queue depth; while True, handshakes need a valid mac2.
        self.under_load = False
        # The protocol's 120 s; shorter only to exercise rekeying in tests (it never exceeds the protocol's).
        self.rekey_after_time = min(rekey_after_time, REKEY_AFTER_TIME)
        self.counters = DropCounters()
        # Authenticated receptions: a handshake message counts once, and so do a batch's transport
        # packets from one peer. A change tells the shell that a batch carried something from a peer.
        self.authenticated_received = 0
        self._rng = rng if rng is not None else random.Random()
        self._wall_clock_ns = wall_clock_ns
        self._random_bytes = random_bytes
        self._last_timestamp_sent = last_timestamp
        self._staged_limit = staged_limit
        self._peers: dict[PublicKey, Peer] = {}
        self._peers_by_raw_key: dict[bytes, Peer] = {}
        self._allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self._owner_of_all_v4: Peer | None = None
        self._owner_of_all_v6: Peer | None = None
        self._keypairs_by_index: dict[int, Keypair] = {}
        self._handshakes_by_index: dict[int, Peer] = {}
        self._cookie_checker = CookieChecker(self._identity.public, random_bytes)
        self._rate_limiter = RateLimiter()
        self._timer_heap: list[tuple[float, int, Peer]] = []
        self._timer_sequence = itertools.count()
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[Event] = deque(maxlen=max_events)

    # Configuration

    @property
    def peers(self) -> Mapping[PublicKey, Peer]:
        """Peers by base64 public key (read-only view)."""
        return MappingProxyType(self._peers)

    @property
    def last_timestamp_sent(self) -> bytes:
        """The newest TAI64N label sent; persist it and pass it back as `last_timestamp` after a restart."""
        return self._last_timestamp_sent

    def add_peer(
        self,
        public_key: str,
        *,
        preshared_key: str | None = None,
        allowed_ips: Iterable[str | Network] = (),
        endpoint: Address | None = None,
        persistent_keepalive: int = 0,
        now: float | None = None,
    ) -> Peer:
        """Add a peer; with a persistent keepalive, an endpoint and `now`, start its session right away."""
        canonical = parse_public_key(public_key, what="peer public key")
        raw = decode_key(canonical)
        if canonical in self._peers:
            raise ConfigError(f"peer {canonical} is already configured")
        if raw == self._identity.public:
            raise ConfigError("a peer cannot have this device's own public key")
        try:
            static_static = dh(self._identity.private, raw)
        except CryptoError:
            raise ConfigError(f"peer public key {canonical} is not a usable Curve25519 point") from None
        networks = [parse_network(text) for text in allowed_ips]
        peer = Peer(
            canonical,
            raw,
            preshared_key=self._decode_preshared_key(preshared_key),
            static_static=static_static,
            endpoint=endpoint,
            persistent_keepalive=_check_keepalive(persistent_keepalive),
            staged_limit=self._staged_limit,
        )
        self._peers[canonical] = peer
        self._peers_by_raw_key[raw] = peer
        for network in networks:
            self._route(network, peer)
        if persistent_keepalive and endpoint is not None and now is not None:
            self._send_keepalive(peer, now)
        return peer

    def update_peer(
        self,
        public_key: str,
        *,
        preshared_key: str | Unset | None = UNSET,
        allowed_ips: Iterable[str | Network] | Unset = UNSET,
        endpoint: Address | Unset | None = UNSET,
        persistent_keepalive: int | Unset = UNSET,
        now: float | None = None,
    ) -> Peer:
        """Change a peer in place; its sessions, and every other peer's, survive."""
        peer = self._peer(public_key)
        if not isinstance(preshared_key, Unset):
            peer.preshared_key = self._decode_preshared_key(preshared_key)
        if not isinstance(allowed_ips, Unset):
            networks = [parse_network(text) for text in allowed_ips]
            self._allowed_ips.remove_value(peer)
            peer.allowed_ips.clear()
            for network in networks:
                self._route(network, peer)
            self._routes_changed()
        if not isinstance(endpoint, Unset) and endpoint != peer.configured_endpoint:
            # Like `wg syncconf`: an unchanged or absent endpoint keeps the address the peer roamed to.
            peer.configured_endpoint = endpoint
            if endpoint is not None:
                peer.endpoint = endpoint
        if not isinstance(persistent_keepalive, Unset):
            was_off = peer.persistent_keepalive == 0
            peer.persistent_keepalive = _check_keepalive(persistent_keepalive)
            if not persistent_keepalive:
                peer.persistent_keepalive_at = None
            elif was_off and peer.endpoint is not None and now is not None:
                self._send_keepalive(peer, now)
        return peer

    def remove_peer(self, public_key: str) -> None:
        """Remove a peer and erase its keys."""
        peer = self._peer(public_key)
        del self._peers[peer.public_key]
        del self._peers_by_raw_key[peer.public_key_raw]
        self._allowed_ips.remove_value(peer)
        self._routes_changed()
        self._erase_sessions(peer)
        peer.removed = True

    def set_private_key(self, private_key: str) -> None:
        """Change identity: every session is expired and renegotiated on next use, as wireguard-go does."""
        identity = noise.StaticIdentity(decode_key(private_key, what="private key"))
        if identity.public in self._peers_by_raw_key:
            raise ConfigError("the new private key belongs to a configured peer")
        self._identity = identity
        self.public_key = PublicKey(encode_key(identity.public))
        self._cookie_checker = CookieChecker(identity.public, self._random_bytes)
        for peer in self._peers.values():
            peer.static_static = dh(identity.private, peer.public_key_raw)
            self._release_handshake_index(peer)
            peer.handshake.clear()
            peer.handshake.last_sent_at = None
            for keypair in (peer.current_keypair, peer.next_keypair):
                if keypair is not None:
                    keypair.send_counter = REJECT_AFTER_MESSAGES

    def reset_endpoint(self, public_key: str, endpoint: Address | None = None) -> None:
        """Point a peer back at `endpoint`, or at its configured endpoint (after a rebind or re-resolve)."""
        peer = self._peer(public_key)
        peer.endpoint = endpoint if endpoint is not None else peer.configured_endpoint

    def force_handshake(
        self, now: float, public_key: str | None = None, *, keep_pending: bool = False
    ) -> None:
        """Handshake now, ignoring the 5 s spacing (after wake or a path change); every peer if None.

        A new initiation voids the one in flight, and a responder drops an initiation that follows
        another within 20 ms as a flood, so the pair would cost a whole REKEY_TIMEOUT. Hence a peer
        whose last initiation went out less than FORCED_INITIATION_SPACING ago gets the forced one
        that much later, unless a handshake completes first (a fresh session is what was asked for).
        With `keep_pending`, a peer whose initiation went out less than REKEY_TIMEOUT ago and still
        awaits its response is left alone (same path, nothing to gain).
        """
        peers = [self._peer(public_key)] if public_key is not None else list(self._peers.values())
        for peer in peers:
            if peer.endpoint is None:
                continue
            handshake = peer.handshake
            last_sent = handshake.last_sent_at
            if (
                keep_pending
                and handshake.state is noise.HandshakeState.INITIATION_CREATED
                and last_sent is not None
                and now - last_sent < REKEY_TIMEOUT
            ):
                continue
            if last_sent is not None and 0 <= now - last_sent < FORCED_INITIATION_SPACING:
                peer.forced_handshake_at = last_sent + FORCED_INITIATION_SPACING
                self._arm(peer, peer.forced_handshake_at)
                continue
            self._send_forced_initiation(peer, now)

    def _send_forced_initiation(self, peer: Peer, now: float) -> None:
        peer.forced_handshake_at = None
        peer.handshake.last_sent_at = None
        self._send_handshake_initiation(peer, now, is_retry=False)

    def status(self) -> list[PeerStatus]:
        """A snapshot of every peer, for a `wg show`-like listing."""
        return [peer.status() for peer in self._peers.values()]

    def peer_for_destination(self, destination: bytes) -> Peer | None:
        """Cryptokey routing: the peer whose AllowedIPs hold the longest prefix of a 4/16-byte address."""
        return self._allowed_ips.lookup(destination)

    # Output to the shell

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Take every (datagram, address) produced since the last call."""
        outbox = self._outbox
        self._outbox = []
        return outbox

    def next_event(self) -> Event | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def warm_up(self) -> None:
        """Run the data path's cipher and timer code on throwaway data, changing nothing the tunnel does.

        Called by the shell between an idle tunnel's packets (performance.keep-warm), so that the
        next packet finds that code in the CPU's caches.
        """
        warm_up()
        self.get_timer()

    # Sending

    def send_packet(self, packet: bytes, now: float) -> None:
        """Route and encrypt one IP packet from the TUN; output goes to datagrams_to_send()."""
        self.send_packets((packet,), now)

    def send_packets(self, packets: Iterable[bytes], now: float) -> None:
        """Route and encrypt a batch of IP packets; consecutive packets to one peer are sealed together."""
        lookup_v4 = self._allowed_ips.lookup_v4
        lookup_v6 = self._allowed_ips.lookup_v6
        run_peer: Peer | None = None
        run: list[bytes] = []
        # The last destination looked up, with its peer: a super-packet's segments share theirs.
        last_destination = b""
        last_peer: Peer | None = None
        for packet in packets:
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= 20:
                destination = packet[16:20]
            elif version == 6 and len(packet) >= 40:
                destination = packet[24:40]
            else:
                self.counters.no_route += 1
                continue
            if destination != last_destination:
                last_destination = destination
                last_peer = (lookup_v4 if version == 4 else lookup_v6)(int.from_bytes(destination, "big"))
            peer = last_peer
            if peer is None:
                self.counters.no_route += 1
                continue
            if peer is not run_peer:
                if run_peer is not None:
                    self._send_run(run_peer, run, now)
                run_peer, run = peer, []
            run.append(packet)
        if run_peer is not None:
            self._send_run(run_peer, run, now)

    def send_lone(self, packet: bytes, now: float, transmit: Callable[[bytes, Address], object]) -> bool:
        """An idle tunnel's lone packet: route and seal it, hand the datagram to transmit(datagram,
        endpoint) at once, then do what a sent packet takes (timers, a rekey's initiation, which
        leaves through datagrams_to_send()). The same datagram and state as send_packets((packet,)).

        A packet that wakes an idle process pays for every line run before it leaves, each slow while
        the caches are cold: here the bookkeeping runs after the datagram is out, and nothing is
        batched. False, with nothing done, where send_packets must decide: no route, no session
        that may send, packets staged behind a handshake, or datagrams already waiting to leave.
        """
        size = len(packet)
        version = packet[0] >> 4 if packet else 0
        if version == 4 and size >= 20:
            peer = self._owner_of_all_v4 or self._allowed_ips.lookup_v4(int.from_bytes(packet[16:20], "big"))
        elif version == 6 and size >= 40:
            peer = self._owner_of_all_v6 or self._allowed_ips.lookup_v6(int.from_bytes(packet[24:40], "big"))
        else:
            return False
        if peer is None or self._outbox:
            return False
        keypair = peer.current_keypair
        endpoint = peer.endpoint
        if keypair is None or endpoint is None or not _may_seal(peer, keypair, 1, now):
            return False
        datagrams = seal_packets(keypair, [packet], self.mtu)
        transmit(datagrams[0], endpoint)
        self._after_transport_sent(peer, keypair, datagrams, now, data_sent=True)
        return True

    def _send_run(self, peer: Peer, packets: list[bytes], now: float) -> None:
        mark = len(self._outbox)
        datagrams = self.encrypt_packets(peer, packets, now)
        endpoint = peer.endpoint
        if datagrams and endpoint is not None:
            # Ahead of any handshake the send itself triggered (a rekey), as they were sealed first.
            self._outbox[mark:mark] = [(datagram, endpoint) for datagram in datagrams]

    def encrypt_packets(self, peer: Peer, packets: list[bytes], now: float) -> list[bytes]:
        """Seal packets for `peer` and return the datagrams for `peer.endpoint` (the data path, no routing).

        Without a usable session the packets are queued (bounded) and a handshake starts; they leave later
        through datagrams_to_send(), as does any handshake message.
        """
        keypair = peer.current_keypair
        if keypair is None or peer.endpoint is None or not _may_seal(peer, keypair, len(packets), now):
            self._stage(peer, packets)
            self._send_staged(peer, now)
            return []
        datagrams = seal_packets(keypair, packets, self.mtu)
        self._after_transport_sent(peer, keypair, datagrams, now, data_sent=True)
        return datagrams

    def _stage(self, peer: Peer, packets: list[bytes]) -> None:
        overflow = len(peer.staged) + len(packets) - self._staged_limit
        if overflow > 0:
            # The deque's maxlen drops the oldest packets, as wireguard-go's staged queue does.
            self.counters.staged_overflow += overflow
        peer.staged.extend(packets)

    def _send_staged(self, peer: Peer, now: float) -> None:
        while peer.staged:
            keypair = peer.current_keypair
            if (
                keypair is None
                or keypair.send_counter >= REJECT_AFTER_MESSAGES
                or now - keypair.created_at >= REJECT_AFTER_TIME
            ):
                self._send_handshake_initiation(peer, now, is_retry=False)
                return
            endpoint = peer.endpoint
            if endpoint is None:
                self.counters.no_endpoint += len(peer.staged)
                peer.staged.clear()
                return
            packets = list(peer.staged)
            peer.staged.clear()
            room = REJECT_AFTER_MESSAGES - keypair.send_counter
            if len(packets) > room:
                peer.staged.extend(packets[room:])
                packets = packets[:room]
            datagrams = seal_packets(keypair, packets, self.mtu)
            self._outbox.extend([(datagram, endpoint) for datagram in datagrams])
            self._after_transport_sent(peer, keypair, datagrams, now, data_sent=any(packets))

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _after_transport_sent(
        self, peer: Peer, keypair: Keypair, datagrams: list[bytes], now: float, *, data_sent: bool
    ) -> None:
        peer.tx_bytes += sum(map(len, datagrams))
        self._authenticated_packet_sent(peer, now)
        if data_sent and peer.new_handshake_at is None:
            # Dead-peer detection: expect something back within the peer's passive keepalive time.
            peer.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
            self._arm(peer, peer.new_handshake_at)
        if keypair.send_counter > REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created_at > self.rekey_after_time
        ):
            self._send_handshake_initiation(peer, now, is_retry=False)

    def _authenticated_packet_sent(self, peer: Peer, now: float) -> None:
        self._persistent_keepalive_traversal(peer, now)
        peer.send_keepalive_at = None

    def _persistent_keepalive_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            peer.persistent_keepalive_at = now + peer.persistent_keepalive
            self._arm(peer, peer.persistent_keepalive_at)

    def _transmit(self, peer: Peer, datagram: bytes, endpoint: Address) -> None:
        self._outbox.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)

    # Receiving

    def receive_datagram(self, data: bytes, address: Address, now: float) -> list[bytes]:
        """Process one UDP datagram; return the decrypted IP packets for the TUN."""
        return self.receive_datagrams(((data, address),), now)

    def receive_datagrams(
        self,
        datagrams: Iterable[tuple[bytes, Address]],
        now: float,
        deliver: Callable[[list[bytes]], object] | None = None,
    ) -> list[bytes]:
        """Process a batch of (datagram, source address); return the decrypted IP packets for the TUN.

        With `deliver`, the packets (when there are any) go to it as soon as they are opened, before
        the batch's bookkeeping (roaming, timers): an idle tunnel's packet reaches the TUN first.
        """
        packets: list[bytes] = []
        append = packets.append
        counters = self.counters
        keypair_for_index = self._keypairs_by_index.get
        unpack_header = TRANSPORT_HEADER.unpack_from
        pack_nonce = TRANSPORT_NONCE.pack
        unpack_ipv4 = _IPV4_LENGTH_SOURCE.unpack_from
        unpack_ipv6 = _IPV6_LENGTH_SOURCE.unpack_from
        lookup_v4 = self._allowed_ips.lookup_v4
        lookup_v6 = self._allowed_ips.lookup_v6
        # A full-tunnel client's only peer owns every source: no lookup needed to check one.
        owner_of_all_v4 = self._owner_of_all_v4
        owner_of_all_v6 = self._owner_of_all_v6
        # The last source found to be its peer's (a peer's packets in a batch mostly share one).
        known_v4, known_v4_peer = -1, None
        known_v6, known_v6_peer = b"", None
        created_before_is_expired = now - REJECT_AFTER_TIME
        # Per peer, the source of its last valid packet in this batch: roaming and timers run once a batch.
        authenticated: dict[Peer, Address] = {}
        data_received: dict[Peer, None] = {}
        for data, address in datagrams:
            size = len(data)
            if size < KEEPALIVE_SIZE or data[0] != MESSAGE_TRANSPORT:
                self._receive_control(data, address, now)
                continue
            kind, receiver, counter = unpack_header(data)
            if kind != MESSAGE_TRANSPORT:
                counters.malformed += 1
                continue
            keypair = keypair_for_index(receiver)
            if keypair is None:
                counters.unknown_receiver += 1
                continue
            if keypair.created_at < created_before_is_expired:
                counters.key_expired += 1
                continue
            try:
                plaintext = keypair.receive_cipher.decrypt(pack_nonce(counter), data[16:], None)
            except InvalidTag:
                counters.decrypt_failed += 1
                continue
            # After decryption, so forged packets cannot advance the window.
            if not keypair.replay_window.accept(counter):
                counters.replayed += 1
                continue
            peer = keypair.peer
            if keypair is peer.next_keypair:
                self._confirm_next_keypair(peer, address, now)
            peer.rx_bytes += size
            authenticated[peer] = address
            if not plaintext:
                continue
            data_received[peer] = None
            plaintext_size = len(plaintext)
            version = plaintext[0] >> 4
            if version == 4 and plaintext_size >= 20:
                length, source = unpack_ipv4(plaintext)
                if length > plaintext_size or length < 20:
                    counters.inner_malformed += 1
                    continue
                if owner_of_all_v4 is not peer and (source != known_v4 or peer is not known_v4_peer):
                    if lookup_v4(source) is not peer:
                        counters.source_not_allowed += 1
                        continue
                    known_v4, known_v4_peer = source, peer
            elif version == 6 and plaintext_size >= 40:
                length, source_bytes = unpack_ipv6(plaintext)
                length += 40
                if length > plaintext_size:
                    counters.inner_malformed += 1
                    continue
                if owner_of_all_v6 is not peer and (source_bytes != known_v6 or peer is not known_v6_peer):
                    if lookup_v6(int.from_bytes(source_bytes, "big")) is not peer:
                        counters.source_not_allowed += 1
                        continue
                    known_v6, known_v6_peer = source_bytes, peer
            else:
                counters.inner_malformed += 1
                continue
            append(plaintext if length == plaintext_size else plaintext[:length])
        if packets and deliver is not None:
            deliver(packets)
        if authenticated:
            self._after_transport_received(authenticated, data_received, now)
        return packets

    def _after_transport_received(
        self, authenticated: dict[Peer, Address], data_received: dict[Peer, None], now: float
    ) -> None:
        for peer, address in authenticated.items():
            self._set_endpoint(peer, address)
            if not peer.sent_last_minute_handshake:
                current = peer.current_keypair
                if (
                    current is not None
                    and current.is_initiator
                    and now - current.created_at > LAST_MINUTE_REKEY_AGE
                ):
                    peer.sent_last_minute_handshake = True
                    self._send_handshake_initiation(peer, now, is_retry=False)
            self._authenticated_packet_received(peer, now)
        for peer in data_received:
            if peer.send_keepalive_at is None:
                peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT
                self._arm(peer, peer.send_keepalive_at)
            else:
                peer.need_another_keepalive = True

    def _authenticated_packet_received(self, peer: Peer, now: float) -> None:
        self.authenticated_received += 1
        self._persistent_keepalive_traversal(peer, now)
        peer.new_handshake_at = None

    def _set_endpoint(self, peer: Peer, address: Address) -> None:
        old = peer.endpoint
        if old != address:
            peer.endpoint = address
            self._events.append(PeerEndpointChanged(peer.public_key, old, address))

    def _receive_control(self, data: bytes, address: Address, now: float) -> None:
        size = len(data)
        if size < 4 or data[1] or data[2] or data[3]:
            self.counters.malformed += 1
            return
        kind = data[0]
        try:
            if (kind == MESSAGE_INITIATION and size == INITIATION_SIZE) or (
                kind == MESSAGE_RESPONSE and size == RESPONSE_SIZE
            ):
                self._receive_handshake(kind, bytes(data), address, now)
            elif kind == MESSAGE_COOKIE_REPLY and size == COOKIE_REPLY_SIZE:
                self._receive_cookie_reply(bytes(data), now)
            else:
                self.counters.malformed += 1
        except (ProtocolError, ValueError, TypeError, IndexError):
            # A source address the cookie code cannot encode, or a message no check above anticipated.
            self.counters.malformed += 1

    def _receive_handshake(self, kind: int, message: bytes, address: Address, now: float) -> None:
        # mac1 is a cheap keyed hash: anything not addressed to our public key dies before any X25519.
        if not self._cookie_checker.check_mac1(message):
            self.counters.mac1_invalid += 1
            return
        if self.under_load:
            source = address_bytes(address)
            if not self._cookie_checker.check_mac2(message, source, now):
                sender_index = int.from_bytes(message[4:8], "little")
                reply = self._cookie_checker.create_reply(message, sender_index, source, now)
                self._outbox.append((reply, address))
                self.counters.cookie_replies_sent += 1
                return
            if not self._rate_limiter.allow(str(address[0]), now):
                self.counters.rate_limited += 1
                return
        if kind == MESSAGE_INITIATION:
            self._consume_initiation(message, address, now)
        else:
            self._consume_response(message, address, now)

    def _consume_initiation(self, message: bytes, address: Address, now: float) -> None:
        try:
            opened = noise.open_initiation(self._identity, message)
        except ProtocolError:
            self.counters.handshake_invalid += 1
            return
        peer = self._peers_by_raw_key.get(opened.remote_static)
        if peer is None:
            self.counters.handshake_unknown_peer += 1
            return
        try:
            verified = noise.verify_initiation(opened, peer.static_static)
        except ProtocolError:
            self.counters.handshake_invalid += 1
            return
        handshake = peer.handshake
        if verified.timestamp <= handshake.last_timestamp:
            self.counters.handshake_replayed += 1
            return
        last_consumed = handshake.last_initiation_consumed_at
        if last_consumed is not None and now - last_consumed <= HANDSHAKE_INITIATION_RATE:
            self.counters.handshake_flood += 1
            return
        noise.accept_initiation(handshake, verified, now)
        peer.rx_bytes += len(message)
        self._authenticated_packet_received(peer, now)
        self._set_endpoint(peer, address)
        self._send_handshake_response(peer, address, now)

    def _send_handshake_response(self, peer: Peer, address: Address, now: float) -> None:
        handshake = peer.handshake
        handshake.last_sent_at = now
        self._release_handshake_index(peer)
        index = self._new_index()
        try:
            message = noise.create_response(handshake, peer.public_key_raw, peer.preshared_key, index)
        except ProtocolError:
            handshake.clear()
            self.counters.handshake_invalid += 1
            return
        self._handshakes_by_index[index] = peer
        peer.cookie_generator.add_macs(message, now)
        self._begin_session(peer, now)
        self._authenticated_packet_sent(peer, now)
        self._transmit(peer, bytes(message), address)

    def _consume_response(self, message: bytes, address: Address, now: float) -> None:
        peer = self._handshakes_by_index.get(noise.response_receiver(message))
        if peer is None or peer.handshake.state is not noise.HandshakeState.INITIATION_CREATED:
            self.counters.response_unexpected += 1
            return
        try:
            noise.consume_response(peer.handshake, self._identity, peer.preshared_key, message)
        except ProtocolError:
            self.counters.handshake_invalid += 1
            return
        peer.rx_bytes += len(message)
        self._set_endpoint(peer, address)
        self._authenticated_packet_received(peer, now)
        self._begin_session(peer, now)
        self._handshake_complete(peer, now, is_initiator=True)
        # Confirms the new keys to the responder, carrying queued packets if there are any.
        self._send_keepalive(peer, now)

    def _receive_cookie_reply(self, message: bytes, now: float) -> None:
        receiver = int.from_bytes(message[4:8], "little")
        peer = self._handshakes_by_index.get(receiver)
        if peer is None:
            keypair = self._keypairs_by_index.get(receiver)
            peer = keypair.peer if keypair is not None else None
        if peer is None:
            self.counters.cookie_reply_invalid += 1
            return
        try:
            peer.cookie_generator.consume_reply(message, now)
        except ProtocolError:
            self.counters.cookie_reply_invalid += 1

    # Handshakes and sessions

    def _send_handshake_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        if not is_retry:
            peer.handshake_attempts = 0
        handshake = peer.handshake
        if handshake.last_sent_at is not None and now - handshake.last_sent_at < REKEY_TIMEOUT:
            return
        endpoint = peer.endpoint
        if endpoint is None:
            self.counters.no_endpoint += 1
            return
        handshake.last_sent_at = now
        self._release_handshake_index(peer)
        index = self._new_index()
        message = noise.create_initiation(
            handshake, self._identity, peer.public_key_raw, peer.static_static, index, self._next_timestamp()
        )
        self._handshakes_by_index[index] = peer
        peer.cookie_generator.add_macs(message, now)
        self._authenticated_packet_sent(peer, now)
        self._transmit(peer, bytes(message), endpoint)
        peer.retransmit_handshake_at = now + REKEY_TIMEOUT + self._jitter()
        self._arm(peer, peer.retransmit_handshake_at)
        self._events.append(HandshakeInitiationSent(peer.public_key, peer.handshake_attempts + 1))

    def _next_timestamp(self) -> bytes:
        timestamp = tai64n(self._wall_clock_ns())
        # A responder refuses a timestamp not newer than the last it accepted: never go backwards,
        # even when the wall clock does (an RTC-less box after reboot, an NTP step).
        if timestamp <= self._last_timestamp_sent:
            timestamp = tai64n_successor(self._last_timestamp_sent)
        self._last_timestamp_sent = timestamp
        return timestamp

    def _begin_session(self, peer: Peer, now: float) -> None:
        handshake = peer.handshake
        index = handshake.local_index
        if index is None:
            raise ProtocolError("no local index for a completed handshake")
        send_key, receive_key, is_initiator = noise.derive_transport_keys(handshake)
        keypair = Keypair(
            send_key,
            receive_key,
            is_initiator=is_initiator,
            local_index=index,
            remote_index=handshake.remote_index,
            peer=peer,
            created_at=now,
        )
        self._handshakes_by_index.pop(index, None)
        self._keypairs_by_index[index] = keypair
        handshake.clear()
        if is_initiator:
            if peer.next_keypair is not None:
                # An unconfirmed responder session is kept for in-flight packets; the current one goes.
                self._drop_keypair(peer.previous_keypair)
                self._drop_keypair(peer.current_keypair)
                peer.previous_keypair = peer.next_keypair
                peer.next_keypair = None
            else:
                self._drop_keypair(peer.previous_keypair)
                peer.previous_keypair = peer.current_keypair
            peer.current_keypair = keypair
        else:
            # Key confirmation: the responder may not send under new keys before the initiator used them.
            self._drop_keypair(peer.next_keypair)
            self._drop_keypair(peer.previous_keypair)
            peer.previous_keypair = None
            peer.next_keypair = keypair
        peer.zero_keys_at = now + ZERO_KEYS_AFTER_TIME
        self._arm(peer, peer.zero_keys_at)

    def _confirm_next_keypair(self, peer: Peer, address: Address, now: float) -> None:
        self._drop_keypair(peer.previous_keypair)
        peer.previous_keypair = peer.current_keypair
        peer.current_keypair = peer.next_keypair
        peer.next_keypair = None
        self._set_endpoint(peer, address)
        self._handshake_complete(peer, now, is_initiator=False)
        self._send_staged(peer, now)

    def _handshake_complete(self, peer: Peer, now: float, *, is_initiator: bool) -> None:
        peer.retransmit_handshake_at = None
        peer.forced_handshake_at = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake_at = now
        peer.last_handshake_wall_ns = self._wall_clock_ns()
        self._events.append(HandshakeCompleted(peer.public_key, is_initiator))

    def _drop_keypair(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self._keypairs_by_index.pop(keypair.local_index, None)

    def _release_handshake_index(self, peer: Peer) -> None:
        if peer.handshake.local_index is not None:
            self._handshakes_by_index.pop(peer.handshake.local_index, None)
            peer.handshake.local_index = None

    def _erase_sessions(self, peer: Peer) -> None:
        for keypair in peer.keypairs():
            self._drop_keypair(keypair)
        peer.previous_keypair = peer.current_keypair = peer.next_keypair = None
        self._release_handshake_index(peer)
        peer.handshake.clear()
        self.counters.staged_flushed += len(peer.staged)
        peer.staged.clear()

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._random_bytes(4), "little")
            if index not in self._keypairs_by_index and index not in self._handshakes_by_index:
                return index

    # Timers

    def get_timer(self) -> float | None:
        """When handle_timer should next run (in the caller's clock), or None if no timer is pending."""
        heap = self._timer_heap
        while heap and (heap[0][2].removed or heap[0][0] != heap[0][2].wake_at):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Run every timer due at `now`."""
        heap = self._timer_heap
        while heap and heap[0][0] <= now:
            deadline, _sequence, peer = heapq.heappop(heap)
            if peer.removed or deadline != peer.wake_at:
                continue
            peer.wake_at = None
            self._run_timers(peer, now)
            next_deadline = peer.next_deadline()
            if next_deadline is not None:
                self._arm(peer, next_deadline)

    def _arm(self, peer: Peer, deadline: float) -> None:
        # Invariant: every pending deadline of a peer is >= peer.wake_at, and the heap holds an entry at
        # peer.wake_at. Later deadlines need no entry of their own: the peer is re-examined at wake_at.
        # So the per-packet timer updates (keepalives re-armed on every batch) rarely touch the heap.
        wake_at = peer.wake_at
        if wake_at is None or deadline < wake_at:
            peer.wake_at = deadline
            heapq.heappush(self._timer_heap, (deadline, next(self._timer_sequence), peer))

    def _jitter(self) -> float:
        return self._rng.randrange(REKEY_TIMEOUT_JITTER_MAX_MS) / 1000.0

    def _run_timers(self, peer: Peer, now: float) -> None:
        if peer.retransmit_handshake_at is not None and peer.retransmit_handshake_at <= now:
            peer.retransmit_handshake_at = None
            self._retransmit_handshake(peer, now)
        if peer.send_keepalive_at is not None and peer.send_keepalive_at <= now:
            peer.send_keepalive_at = None
            self._send_keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT
                self._arm(peer, peer.send_keepalive_at)
        if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
            peer.new_handshake_at = None
            self._send_handshake_initiation(peer, now, is_retry=False)
        if peer.forced_handshake_at is not None and peer.forced_handshake_at <= now:
            self._send_forced_initiation(peer, now)
        if peer.zero_keys_at is not None and peer.zero_keys_at <= now:
            peer.zero_keys_at = None
            self._erase_sessions(peer)
            self._events.append(KeysZeroed(peer.public_key))
        if peer.persistent_keepalive_at is not None and peer.persistent_keepalive_at <= now:
            peer.persistent_keepalive_at = None
            if peer.persistent_keepalive:
                self._send_keepalive(peer, now)

    def _retransmit_handshake(self, peer: Peer, now: float) -> None:
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            peer.send_keepalive_at = None
            self.counters.staged_flushed += len(peer.staged)
            peer.staged.clear()
            if peer.zero_keys_at is None:
                peer.zero_keys_at = now + ZERO_KEYS_AFTER_TIME
                self._arm(peer, peer.zero_keys_at)
            self._events.append(HandshakeGaveUp(peer.public_key, peer.handshake_attempts + 1))
            return
        peer.handshake_attempts += 1
        self._send_handshake_initiation(peer, now, is_retry=True)

    # Helpers

    def _peer(self, public_key: str) -> Peer:
        peer = self._peers.get(parse_public_key(public_key, what="peer public key"))
        if peer is None:
            raise ConfigError(f"no peer {public_key}")
        return peer

    def _route(self, network: Network, peer: Peer) -> None:
        previous_owner = self._allowed_ips.insert(network, peer)
        if previous_owner is not None and previous_owner is not peer:
            previous_owner.allowed_ips.remove(network)
        if network not in peer.allowed_ips:
            peer.allowed_ips.append(network)
        self._routes_changed()

    def _routes_changed(self) -> None:
        self._owner_of_all_v4 = self._allowed_ips.sole_owner(4)
        self._owner_of_all_v6 = self._allowed_ips.sole_owner(6)

    @staticmethod
    def _decode_preshared_key(preshared_key: str | None) -> bytes:
        if preshared_key is None:
            return noise.ZERO_PRESHARED_KEY
        return decode_key(preshared_key, what="preshared key")
