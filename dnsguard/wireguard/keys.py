"""Curve25519 keys in the base64 form `wg genkey`, `wg pubkey` and `wg genpsk` print."""

from __future__ import annotations

import base64
import binascii
import os
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from dnsguard.errors import ConfigError
from dnsguard.wireguard.constants import KEY_SIZE

_ENCODED_KEY_LENGTH = 44

PublicKey = NewType("PublicKey", str)
"""A public key in canonical base64, made only by `parse_public_key` and `public_key`: peers, events,
metric labels and the API are keyed by this one form, so nothing downstream decodes a key again."""


def encode_key(raw: bytes) -> str:
    """Return the 44-character base64 form of a 32-byte key."""
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"a key is {KEY_SIZE} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def decode_key(text: str, *, what: str = "key") -> bytes:
    """Decode a base64 key as `wg` accepts it: 44 characters, canonical padding, 32 bytes."""
    stripped = text.strip()
    if len(stripped) != _ENCODED_KEY_LENGTH:
        raise ConfigError(
            f"{what} must be 44 characters of base64 (as printed by 'wg genkey'), got {len(stripped)}"
        )
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} is not valid base64") from None
    # wg refuses encodings whose unused low bits are set; so do we, so a key reads the same everywhere.
    if len(raw) != KEY_SIZE or base64.b64encode(raw).decode("ascii") != stripped:
        raise ConfigError(f"{what} is not the canonical base64 encoding of {KEY_SIZE} bytes")
    return raw


def parse_public_key(text: str, *, what: str = "public key") -> PublicKey:
    """A public key as `wg` accepts it, in its canonical form; raises ConfigError otherwise."""
    decode_key(text, what=what)
    return PublicKey(text.strip())


def clamp_private_key(raw: bytes) -> bytes:
    """Apply the X25519 scalar clamping `wg genkey` applies before printing a key."""
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"a private key is {KEY_SIZE} bytes, got {len(raw)}")
    clamped = bytearray(raw)
    clamped[0] &= 248
    clamped[31] = (clamped[31] & 127) | 64
    return bytes(clamped)


def generate_private_key() -> str:
    """Return a new clamped private key, like `wg genkey`."""
    return encode_key(clamp_private_key(os.urandom(KEY_SIZE)))


def generate_preshared_key() -> str:
    """Return a new random preshared key, like `wg genpsk`."""
    return encode_key(os.urandom(KEY_SIZE))


def public_key_bytes(private_raw: bytes) -> bytes:
    """Return the raw public key for a raw private key (clamping is part of X25519 itself)."""
    private = X25519PrivateKey.from_private_bytes(private_raw)
    return private.public_key().public_bytes_raw()


def public_key(private_key: str) -> PublicKey:
    """Return the public key of a base64 private key, like `wg pubkey`."""
    return PublicKey(encode_key(public_key_bytes(decode_key(private_key, what="private key"))))
