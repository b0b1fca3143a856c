"""The primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses them, plus XChaCha20-Poly1305.

`cryptography` has no XChaCha20, so HChaCha20 (draft-irtf-cfrg-xchacha section 2.2) is done here in Python;
it runs once per cookie reply, never on the data path.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dnsguard.errors import CryptoError, FormError
from dnsguard.wireguard.constants import KEY_SIZE, MAC_SIZE, TIMESTAMP_SIZE

_ZERO_NONCE = bytes(12)
_MASK32 = 0xFFFFFFFF
_CHACHA_CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
_TAI64_EPOCH = 0x400000000000000A
# wireguard-go clears the low 24 bits of the nanoseconds so a timestamp does not leak a precise clock.
_TIMESTAMP_WHITENER = 0xFFFFFF
_TIMESTAMP = struct.Struct(">QI")


def blake2s_hash(*parts: bytes) -> bytes:
    """HASH: BLAKE2s-256 of the concatenated parts."""
    digest = hashlib.blake2s()
    for part in parts:
        digest.update(part)
    return digest.digest()


def blake2s_mac(key: bytes, data: bytes) -> bytes:
    """MAC: keyed BLAKE2s-128 (used for mac1, mac2 and cookies)."""
    return hashlib.blake2s(data, key=key, digest_size=MAC_SIZE).digest()


def blake2s_hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256."""
    return hmac.digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1 (HKDF with HMAC-BLAKE2s, one output)."""
    prk = blake2s_hmac(key, data)
    return blake2s_hmac(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2 (HKDF with HMAC-BLAKE2s, two outputs)."""
    prk = blake2s_hmac(key, data)
    first = blake2s_hmac(prk, b"\x01")
    return first, blake2s_hmac(prk, first + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3 (HKDF with HMAC-BLAKE2s, three outputs)."""
    prk = blake2s_hmac(key, data)
    first = blake2s_hmac(prk, b"\x01")
    second = blake2s_hmac(prk, first + b"\x02")
    return first, second, blake2s_hmac(prk, second + b"\x03")


def aead_seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 with the all-zero nonce, as every handshake field uses (each key is used once)."""
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, associated_data)


def aead_open(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Open a handshake field sealed by aead_seal; raise CryptoError if it does not authenticate."""
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, associated_data)
    except InvalidTag:
        raise CryptoError("handshake field failed authentication") from None


def _quarter_round(state: list[int], a: int, b: int, c: int, d: int) -> None:
    state[a] = (state[a] + state[b]) & _MASK32
    x = state[d] ^ state[a]
    state[d] = ((x << 16) | (x >> 16)) & _MASK32
    state[c] = (state[c] + state[d]) & _MASK32
    x = state[b] ^ state[c]
    state[b] = ((x << 12) | (x >> 20)) & _MASK32
    state[a] = (state[a] + state[b]) & _MASK32
    x = state[d] ^ state[a]
    state[d] = ((x << 8) | (x >> 24)) & _MASK32
    state[c] = (state[c] + state[d]) & _MASK32
    x = state[b] ^ state[c]
    state[b] = ((x << 7) | (x >> 25)) & _MASK32


def hchacha20(key: bytes, nonce: bytes) -> bytes:
    """HChaCha20: derive a 32-byte subkey from a key and a 16-byte nonce."""
    if len(key) != KEY_SIZE or len(nonce) != 16:
        raise FormError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    state = [*_CHACHA_CONSTANTS, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce)]
    for _ in range(10):
        _quarter_round(state, 0, 4, 8, 12)
        _quarter_round(state, 1, 5, 9, 13)
        _quarter_round(state, 2, 6, 10, 14)
        _quarter_round(state, 3, 7, 11, 15)
        _quarter_round(state, 0, 5, 10, 15)
        _quarter_round(state, 1, 6, 11, 12)
        _quarter_round(state, 2, 7, 8, 13)
        _quarter_round(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def _xchacha_parts(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce) != 24:
        raise FormError("XChaCha20-Poly1305 takes a 24-byte nonce")
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\x00\x00\x00\x00" + nonce[16:]


def xaead_seal(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 encryption (the cookie reply's cipher)."""
    cipher, short_nonce = _xchacha_parts(key, nonce)
    return cipher.encrypt(short_nonce, plaintext, associated_data)


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """XChaCha20-Poly1305 decryption; raise CryptoError if it does not authenticate."""
    cipher, short_nonce = _xchacha_parts(key, nonce)
    try:
        return cipher.decrypt(short_nonce, ciphertext, associated_data)
    except InvalidTag:
        raise CryptoError("XChaCha20-Poly1305 ciphertext failed authentication") from None


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; raise CryptoError for a low-order public key (an all-zero shared secret)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise CryptoError("X25519 with a low-order point") from None


def tai64n(unix_ns: int) -> bytes:
    """The 12-byte TAI64N label of a wall-clock time, whitened as wireguard-go does."""
    seconds, nanoseconds = divmod(unix_ns, 1_000_000_000)
    return _TIMESTAMP.pack(_TAI64_EPOCH + seconds, nanoseconds & ~_TIMESTAMP_WHITENER)


def tai64n_successor(timestamp: bytes) -> bytes:
    """The smallest whitened TAI64N label strictly after `timestamp`."""
    if len(timestamp) != TIMESTAMP_SIZE:
        raise FormError("a TAI64N label is 12 bytes")
    seconds, nanoseconds = _TIMESTAMP.unpack(timestamp)
    nanoseconds = (nanoseconds & ~_TIMESTAMP_WHITENER) + _TIMESTAMP_WHITENER + 1
    if nanoseconds >= 1_000_000_000:
        seconds, nanoseconds = seconds + 1, 0
    return _TIMESTAMP.pack(seconds, nanoseconds)
