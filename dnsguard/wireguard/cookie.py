"""mac1/mac2 and cookie replies (message 3): WireGuard's defence against handshake floods."""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from typing import Final

from dnsguard.errors import FormError
from dnsguard.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    COOKIE_REPLY_SIZE,
    MAC_SIZE,
    MESSAGE_COOKIE_REPLY,
    RATE_LIMIT_BURST,
    RATE_LIMIT_PACKETS_PER_SECOND,
)
from dnsguard.wireguard.crypto import blake2s_hash, blake2s_mac, xaead_open, xaead_seal
from dnsguard.wireguard.events import Address

LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"
# type(u32) receiver nonce(24) cookie(16+16)
COOKIE_REPLY: Final = struct.Struct("<II24s32s")


def address_bytes(address: Address) -> bytes:
    """The bytes a cookie is bound to: the source IP address and port of a datagram."""
    return ipaddress.ip_address(address[0]).packed + int(address[1]).to_bytes(2, "big")


class CookieChecker:
    """The responder side: checks mac1 (always) and mac2 (under load), and answers with cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_random_bytes", "_secret", "_secret_set_at")

    def __init__(self, local_public: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._mac1_key = blake2s_hash(LABEL_MAC1, local_public)
        self._cookie_key = blake2s_hash(LABEL_COOKIE, local_public)
        self._random_bytes = random_bytes
        self._secret = b""
        self._secret_set_at: float | None = None

    def check_mac1(self, message: bytes) -> bool:
        """True if the message's mac1 was made for our public key."""
        end = len(message) - 2 * MAC_SIZE
        return hmac.compare_digest(blake2s_mac(self._mac1_key, message[:end]), message[end : end + MAC_SIZE])

    def check_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """True if the message's mac2 uses the cookie we would currently give `source`."""
        if self._secret_set_at is None or now - self._secret_set_at > COOKIE_REFRESH_TIME:
            return False
        cookie = blake2s_mac(self._secret, source)
        end = len(message) - MAC_SIZE
        return hmac.compare_digest(blake2s_mac(cookie, message[:end]), message[end:])

    def create_reply(self, message: bytes, receiver_index: int, source: bytes, now: float) -> bytes:
        """Build message 3 giving `source` its cookie, sealed to the mac1 of the message it answers."""
        if self._secret_set_at is None or now - self._secret_set_at > COOKIE_REFRESH_TIME:
            self._secret = self._random_bytes(32)
            self._secret_set_at = now
        cookie = blake2s_mac(self._secret, source)
        mac1_start = len(message) - 2 * MAC_SIZE
        nonce = self._random_bytes(24)
        sealed = xaead_seal(self._cookie_key, nonce, cookie, message[mac1_start : mac1_start + MAC_SIZE])
        return COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver_index, nonce, sealed)


class CookieGenerator:
    """The initiator side, one per peer: adds mac1 and, while a cookie is fresh, mac2 to our handshakes."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_set_at", "_last_mac1", "_mac1_key")

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = blake2s_hash(LABEL_MAC1, remote_public)
        self._cookie_key = blake2s_hash(LABEL_COOKIE, remote_public)
        self._last_mac1: bytes | None = None
        self._cookie = b""
        self._cookie_set_at: float | None = None

    def add_macs(self, message: bytearray, now: float) -> None:
        """Fill in mac1, and mac2 when we hold a cookie younger than COOKIE_REFRESH_TIME."""
        mac1_start = len(message) - 2 * MAC_SIZE
        mac2_start = mac1_start + MAC_SIZE
        mac1 = blake2s_mac(self._mac1_key, bytes(message[:mac1_start]))
        message[mac1_start:mac2_start] = mac1
        self._last_mac1 = mac1
        if self._cookie_set_at is None or now - self._cookie_set_at > COOKIE_REFRESH_TIME:
            message[mac2_start:] = bytes(MAC_SIZE)
            return
        message[mac2_start:] = blake2s_mac(self._cookie, bytes(message[:mac2_start]))

    def consume_reply(self, message: bytes, now: float) -> None:
        """Store the cookie from message 3; raise ProtocolError unless it answers our last handshake."""
        if len(message) != COOKIE_REPLY_SIZE:
            raise FormError(f"a cookie reply is {COOKIE_REPLY_SIZE} bytes, got {len(message)}")
        if self._last_mac1 is None:
            raise FormError("a cookie reply before we sent any handshake")
        _kind, _receiver, nonce, sealed = COOKIE_REPLY.unpack(message)
        self._cookie = xaead_open(self._cookie_key, nonce, sealed, self._last_mac1)
        self._cookie_set_at = now


class RateLimiter:
    """Per-source-address token bucket for handshakes under load (20 per second, burst 5)."""

    __slots__ = ("_buckets", "_max_entries")

    def __init__(self, max_entries: int = 65536) -> None:
        self._buckets: dict[str, list[float]] = {}
        self._max_entries = max_entries

    def allow(self, host: str, now: float) -> bool:
        """Take a token for `host`; False when its bucket is empty."""
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self._max_entries:
                self._forget_idle(now)
            self._buckets[host] = [RATE_LIMIT_BURST - 1.0, now]
            return True
        tokens = min(float(RATE_LIMIT_BURST), bucket[0] + (now - bucket[1]) * RATE_LIMIT_PACKETS_PER_SECOND)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _forget_idle(self, now: float) -> None:
        # A bucket idle for a second is full again, so forgetting it changes nothing.
        idle = [host for host, (_tokens, seen) in self._buckets.items() if now - seen >= 1.0]
        for host in idle:
            del self._buckets[host]
        if len(self._buckets) >= self._max_entries:
            self._buckets.clear()
