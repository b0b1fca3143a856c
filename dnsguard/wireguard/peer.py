"""A peer as the device sees it: keys, sessions, queued packets, timer deadlines and traffic counters.

Peer holds state; the protocol moves that change it live in Device, which also owns the index tables and
the timer heap. Deadlines are plain floats in the caller's clock (None when a timer is not pending).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dnsguard.wireguard.allowedips import Network
from dnsguard.wireguard.cookie import CookieGenerator
from dnsguard.wireguard.events import Address
from dnsguard.wireguard.keys import PublicKey
from dnsguard.wireguard.noise import Handshake
from dnsguard.wireguard.session import Keypair


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A snapshot of one peer for a `wg show`-like listing."""

    public_key: PublicKey
    endpoint: Address | None
    allowed_ips: tuple[str, ...]
    persistent_keepalive: int
    last_handshake_at: float | None
    last_handshake_wall_ns: int | None
    rx_bytes: int
    tx_bytes: int
    has_session: bool


class Peer:
    """One remote WireGuard peer."""

    __slots__ = (
        "allowed_ips",
        "configured_endpoint",
        "cookie_generator",
        "current_keypair",
        "endpoint",
        "forced_handshake_at",
        "handshake",
        "handshake_attempts",
        "last_handshake_at",
        "last_handshake_wall_ns",
        "need_another_keepalive",
        "new_handshake_at",
        "next_keypair",
        "persistent_keepalive",
        "persistent_keepalive_at",
        "preshared_key",
        "previous_keypair",
        "public_key",
        "public_key_raw",
        "removed",
        "retransmit_handshake_at",
        "rx_bytes",
        "send_keepalive_at",
        "sent_last_minute_handshake",
        "staged",
        "static_static",
        "tx_bytes",
        "wake_at",
        "zero_keys_at",
    )

    def __init__(
        self,
        public_key: PublicKey,
        public_key_raw: bytes,
        *,
        preshared_key: bytes,
        static_static: bytes,
        endpoint: Address | None,
        persistent_keepalive: int,
        staged_limit: int,
    ) -> None:
        self.public_key = public_key
        self.public_key_raw = public_key_raw
        self.preshared_key = preshared_key
        # DH(our static, their static) never changes for a pair of identities: computed once.
        self.static_static = static_static
        self.allowed_ips: list[Network] = []
        self.endpoint = endpoint
        self.configured_endpoint = endpoint
        self.persistent_keepalive = persistent_keepalive
        self.handshake = Handshake()
        self.cookie_generator = CookieGenerator(public_key_raw)
        self.previous_keypair: Keypair | None = None
        self.current_keypair: Keypair | None = None
        self.next_keypair: Keypair | None = None
        self.staged: deque[bytes] = deque(maxlen=staged_limit)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_at: float | None = None
        self.last_handshake_wall_ns: int | None = None
        self.handshake_attempts = 0
        self.sent_last_minute_handshake = False
        self.need_another_keepalive = False
        self.retransmit_handshake_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        # A forced handshake held back so as not to follow the last initiation within the flood limit.
        self.forced_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_keepalive_at: float | None = None
        # Earliest entry the device's timer heap holds for this peer (see Device._arm).
        self.wake_at: float | None = None
        self.removed = False

    def __repr__(self) -> str:
        return f"<Peer {self.public_key} endpoint={self.endpoint}>"

    def next_deadline(self) -> float | None:
        """The earliest pending timer of this peer."""
        pending = [
            deadline
            for deadline in (
                self.retransmit_handshake_at,
                self.send_keepalive_at,
                self.new_handshake_at,
                self.forced_handshake_at,
                self.zero_keys_at,
                self.persistent_keepalive_at,
            )
            if deadline is not None
        ]
        return min(pending) if pending else None

    def keypairs(self) -> list[Keypair]:
        """Every live keypair: previous, current and the responder's unconfirmed next."""
        return [
            keypair
            for keypair in (self.previous_keypair, self.current_keypair, self.next_keypair)
            if keypair is not None
        ]

    def status(self) -> PeerStatus:
        """A snapshot for status listings."""
        return PeerStatus(
            public_key=self.public_key,
            endpoint=self.endpoint,
            allowed_ips=tuple(str(network) for network in self.allowed_ips),
            persistent_keepalive=self.persistent_keepalive,
            last_handshake_at=self.last_handshake_at,
            last_handshake_wall_ns=self.last_handshake_wall_ns,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            has_session=self.current_keypair is not None,
        )
