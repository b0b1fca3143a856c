"""The Noise_IKpsk2 handshake exactly as WireGuard runs it: messages 1 (initiation) and 2 (response).

Functions here are pure over a `Handshake` record: they build or check one message and say what it proved.
Replay, flood and index bookkeeping belong to the device, which knows the peers and the clock.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dnsguard.errors import FormError
from dnsguard.wireguard.constants import (
    INITIATION_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
    TIMESTAMP_SIZE,
)
from dnsguard.wireguard.crypto import aead_open, aead_seal, blake2s_hash, dh, kdf1, kdf2, kdf3
from dnsguard.wireguard.keys import public_key_bytes

CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
INITIAL_CHAIN_KEY: Final = blake2s_hash(CONSTRUCTION)
INITIAL_HASH: Final = blake2s_hash(INITIAL_CHAIN_KEY, IDENTIFIER)
ZERO_PRESHARED_KEY: Final = bytes(32)

# type(u32) sender ephemeral static(32+16) timestamp(12+16) mac1 mac2
INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
# type(u32) sender receiver ephemeral empty(0+16) mac1 mac2
RESPONSE: Final = struct.Struct("<III32s16s16s16s")


class HandshakeState(enum.Enum):
    """Where a peer's handshake stands (wireguard-go's handshakeZeroed ... handshakeResponseConsumed)."""

    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class StaticIdentity:
    """This device's static key pair."""

    __slots__ = ("private", "public")

    def __init__(self, private_raw: bytes) -> None:
        self.private = X25519PrivateKey.from_private_bytes(private_raw)
        self.public = public_key_bytes(private_raw)


class Handshake:
    """The per-peer handshake transcript and the replay/flood memory a responder keeps."""

    __slots__ = (
        "chain_key",
        "hash",
        "last_initiation_consumed_at",
        "last_sent_at",
        "last_timestamp",
        "local_ephemeral",
        "local_index",
        "remote_ephemeral",
        "remote_index",
        "state",
    )

    def __init__(self) -> None:
        self.state = HandshakeState.ZEROED
        self.local_index: int | None = None
        self.remote_index = 0
        self.chain_key = b""
        self.hash = b""
        self.local_ephemeral: X25519PrivateKey | None = None
        self.remote_ephemeral = b""
        # Kept across clear(): they guard against replayed and flooded initiations for the peer's lifetime.
        self.last_timestamp = b""
        self.last_initiation_consumed_at: float | None = None
        self.last_sent_at: float | None = None

    def clear(self) -> None:
        """Forget the transcript and ephemeral keys; the caller releases local_index first."""
        self.state = HandshakeState.ZEROED
        self.local_index = None
        self.remote_index = 0
        self.chain_key = b""
        self.hash = b""
        self.local_ephemeral = None
        self.remote_ephemeral = b""


@dataclass(frozen=True, slots=True)
class OpenedInitiation:
    """An initiation whose sender's static key has been decrypted but whose timestamp has not been checked."""

    sender_index: int
    remote_static: bytes
    remote_ephemeral: bytes
    chain_key: bytes
    hash: bytes
    sealed_timestamp: bytes


@dataclass(frozen=True, slots=True)
class VerifiedInitiation:
    """An initiation that authenticated against a known peer's static key."""

    opened: OpenedInitiation
    chain_key: bytes
    hash: bytes
    timestamp: bytes


def create_initiation(
    handshake: Handshake,
    identity: StaticIdentity,
    remote_static: bytes,
    static_static: bytes,
    sender_index: int,
    timestamp: bytes,
) -> bytearray:
    """Build message 1 with zero mac fields and move the handshake to INITIATION_CREATED."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    hash_ = blake2s_hash(INITIAL_HASH, remote_static)
    chain_key = kdf1(INITIAL_CHAIN_KEY, ephemeral_public)
    hash_ = blake2s_hash(hash_, ephemeral_public)
    chain_key, key = kdf2(chain_key, dh(ephemeral, remote_static))
    sealed_static = aead_seal(key, identity.public, hash_)
    hash_ = blake2s_hash(hash_, sealed_static)
    chain_key, key = kdf2(chain_key, static_static)
    sealed_timestamp = aead_seal(key, timestamp, hash_)
    hash_ = blake2s_hash(hash_, sealed_timestamp)

    handshake.state = HandshakeState.INITIATION_CREATED
    handshake.local_index = sender_index
    handshake.chain_key = chain_key
    handshake.hash = hash_
    handshake.local_ephemeral = ephemeral
    message = bytearray(INITIATION_SIZE)
    INITIATION.pack_into(
        message,
        0,
        MESSAGE_INITIATION,
        sender_index,
        ephemeral_public,
        sealed_static,
        sealed_timestamp,
        b"",
        b"",
    )
    return message


def open_initiation(identity: StaticIdentity, message: bytes) -> OpenedInitiation:
    """Decrypt the initiator's static key from message 1; raise CryptoError if it does not authenticate."""
    if len(message) != INITIATION_SIZE:
        raise FormError(f"an initiation is {INITIATION_SIZE} bytes, got {len(message)}")
    kind, sender_index, ephemeral, sealed_static, sealed_timestamp, _mac1, _mac2 = INITIATION.unpack(message)
    if kind != MESSAGE_INITIATION:
        raise FormError("not an initiation")
    hash_ = blake2s_hash(INITIAL_HASH, identity.public)
    hash_ = blake2s_hash(hash_, ephemeral)
    chain_key = kdf1(INITIAL_CHAIN_KEY, ephemeral)
    chain_key, key = kdf2(chain_key, dh(identity.private, ephemeral))
    remote_static = aead_open(key, sealed_static, hash_)
    hash_ = blake2s_hash(hash_, sealed_static)
    return OpenedInitiation(sender_index, remote_static, ephemeral, chain_key, hash_, sealed_timestamp)


def verify_initiation(opened: OpenedInitiation, static_static: bytes) -> VerifiedInitiation:
    """Prove the initiator holds the peer's static key by opening the timestamp; raise CryptoError if not."""
    chain_key, key = kdf2(opened.chain_key, static_static)
    timestamp = aead_open(key, opened.sealed_timestamp, opened.hash)
    if len(timestamp) != TIMESTAMP_SIZE:
        raise FormError("an initiation timestamp is 12 bytes")
    return VerifiedInitiation(
        opened, chain_key, blake2s_hash(opened.hash, opened.sealed_timestamp), timestamp
    )


def accept_initiation(handshake: Handshake, verified: VerifiedInitiation, now: float) -> None:
    """Record a verified, fresh initiation so a response can be built (state INITIATION_CONSUMED)."""
    handshake.state = HandshakeState.INITIATION_CONSUMED
    handshake.chain_key = verified.chain_key
    handshake.hash = verified.hash
    handshake.remote_index = verified.opened.sender_index
    handshake.remote_ephemeral = verified.opened.remote_ephemeral
    handshake.last_timestamp = verified.timestamp
    handshake.last_initiation_consumed_at = now


def create_response(
    handshake: Handshake, remote_static: bytes, preshared_key: bytes, sender_index: int
) -> bytearray:
    """Build message 2 with zero mac fields and move the handshake to RESPONSE_CREATED."""
    if handshake.state is not HandshakeState.INITIATION_CONSUMED:
        raise FormError("a response needs a consumed initiation")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    hash_ = blake2s_hash(handshake.hash, ephemeral_public)
    chain_key = kdf1(handshake.chain_key, ephemeral_public)
    chain_key = kdf1(chain_key, dh(ephemeral, handshake.remote_ephemeral))
    chain_key = kdf1(chain_key, dh(ephemeral, remote_static))
    chain_key, tau, key = kdf3(chain_key, preshared_key)
    hash_ = blake2s_hash(hash_, tau)
    sealed_empty = aead_seal(key, b"", hash_)
    hash_ = blake2s_hash(hash_, sealed_empty)

    handshake.state = HandshakeState.RESPONSE_CREATED
    handshake.local_index = sender_index
    handshake.chain_key = chain_key
    handshake.hash = hash_
    handshake.local_ephemeral = ephemeral
    message = bytearray(RESPONSE_SIZE)
    RESPONSE.pack_into(
        message,
        0,
        MESSAGE_RESPONSE,
        sender_index,
        handshake.remote_index,
        ephemeral_public,
        sealed_empty,
        b"",
        b"",
    )
    return message


def response_receiver(message: bytes) -> int:
    """The receiver index of message 2: the index our initiation announced."""
    return int.from_bytes(message[8:12], "little")


def consume_response(
    handshake: Handshake, identity: StaticIdentity, preshared_key: bytes, message: bytes
) -> None:
    """Check message 2 against our initiation and move to RESPONSE_CONSUMED; raise ProtocolError if not."""
    if len(message) != RESPONSE_SIZE:
        raise FormError(f"a response is {RESPONSE_SIZE} bytes, got {len(message)}")
    kind, sender_index, _receiver, ephemeral, sealed_empty, _mac1, _mac2 = RESPONSE.unpack(message)
    if kind != MESSAGE_RESPONSE or handshake.state is not HandshakeState.INITIATION_CREATED:
        raise FormError("no initiation awaits this response")
    if handshake.local_ephemeral is None:
        raise FormError("no ephemeral key for this response")
    hash_ = blake2s_hash(handshake.hash, ephemeral)
    chain_key = kdf1(handshake.chain_key, ephemeral)
    chain_key = kdf1(chain_key, dh(handshake.local_ephemeral, ephemeral))
    chain_key = kdf1(chain_key, dh(identity.private, ephemeral))
    chain_key, tau, key = kdf3(chain_key, preshared_key)
    hash_ = blake2s_hash(hash_, tau)
    aead_open(key, sealed_empty, hash_)
    hash_ = blake2s_hash(hash_, sealed_empty)

    handshake.state = HandshakeState.RESPONSE_CONSUMED
    handshake.chain_key = chain_key
    handshake.hash = hash_
    handshake.remote_index = sender_index


def derive_transport_keys(handshake: Handshake) -> tuple[bytes, bytes, bool]:
    """Split the chain key into (send key, receive key, is_initiator) once a handshake has completed."""
    first, second = kdf2(handshake.chain_key, b"")
    if handshake.state is HandshakeState.RESPONSE_CONSUMED:
        return first, second, True
    if handshake.state is HandshakeState.RESPONSE_CREATED:
        return second, first, False
    raise FormError(f"no session can be derived in state {handshake.state.name}")
