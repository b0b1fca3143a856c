"""WireGuard protocol constants: message layout and the timers of the whitepaper (section 6)."""

from __future__ import annotations

from typing import Final

# Message types: the first byte of every datagram, followed by three zero bytes (read as a little-endian u32).
MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
AEAD_TAG_SIZE: Final = 16
KEEPALIVE_SIZE: Final = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE
KEY_SIZE: Final = 32
MAC_SIZE: Final = 16
COOKIE_SIZE: Final = 16
TIMESTAMP_SIZE: Final = 12
PADDING_MULTIPLE: Final = 16

# Counters: a sender rekeys well before the nonce space runs out and never uses the last window's worth of it.
REKEY_AFTER_MESSAGES: Final = 1 << 60
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1

# Timers, in seconds.
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
REKEY_TIMEOUT_JITTER_MAX_MS: Final = 334  # exclusive bound: jitter is 0..333 ms
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
KEEPALIVE_TIMEOUT: Final = 10.0
COOKIE_REFRESH_TIME: Final = 120.0
HANDSHAKE_INITIATION_RATE: Final = 1.0 / 50
# A forced initiation keeps this far behind the last one: a responder measures the spacing on arrival
# and drops an initiation within HANDSHAKE_INITIATION_RATE of the one before (the margin is for jitter).
FORCED_INITIATION_SPACING: Final = 2 * HANDSHAKE_INITIATION_RATE
ZERO_KEYS_AFTER_TIME: Final = REJECT_AFTER_TIME * 3
# An initiator receiving under a session this old sends one handshake before the session dies.
LAST_MINUTE_REKEY_AGE: Final = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT

# Implementation limits (wireguard-go's QueueStagedSize, rate limiter).
STAGED_QUEUE_SIZE: Final = 128
DEFAULT_MTU: Final = 1420
RATE_LIMIT_PACKETS_PER_SECOND: Final = 20
RATE_LIMIT_BURST: Final = 5
