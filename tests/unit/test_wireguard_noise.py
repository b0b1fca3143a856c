"""The IKpsk2 handshake messages and the cookie mechanism, without a device around them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import CryptoError, FormError
from dnsguard.wireguard.constants import COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE
from dnsguard.wireguard.cookie import CookieChecker, CookieGenerator, RateLimiter, address_bytes
from dnsguard.wireguard.crypto import dh, tai64n
from dnsguard.wireguard.keys import decode_key, generate_preshared_key, generate_private_key
from dnsguard.wireguard.noise import (
    ZERO_PRESHARED_KEY,
    Handshake,
    HandshakeState,
    StaticIdentity,
    accept_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
    open_initiation,
    verify_initiation,
)

INITIATOR = StaticIdentity(decode_key(generate_private_key()))
RESPONDER = StaticIdentity(decode_key(generate_private_key()))
TIMESTAMP = tai64n(1_700_000_000 * 10**9)


def _initiation(
    initiator_handshake: Handshake, preshared_key: bytes = ZERO_PRESHARED_KEY
) -> tuple[bytearray, bytes]:
    static_static = dh(INITIATOR.private, RESPONDER.public)
    message = create_initiation(initiator_handshake, INITIATOR, RESPONDER.public, static_static, 7, TIMESTAMP)
    return message, static_static


def test_a_full_handshake_gives_both_sides_mirrored_transport_keys() -> None:
    initiator, responder = Handshake(), Handshake()
    initiation, static_static = _initiation(initiator)
    assert len(initiation) == INITIATION_SIZE and initiation[:4] == b"\x01\x00\x00\x00"

    opened = open_initiation(RESPONDER, bytes(initiation))
    assert opened.remote_static == INITIATOR.public and opened.sender_index == 7
    verified = verify_initiation(opened, dh(RESPONDER.private, INITIATOR.public))
    assert verified.timestamp == TIMESTAMP
    accept_initiation(responder, verified, now=0.0)
    response = create_response(responder, INITIATOR.public, ZERO_PRESHARED_KEY, sender_index=9)
    assert len(response) == RESPONSE_SIZE and response[:4] == b"\x02\x00\x00\x00"
    assert int.from_bytes(response[8:12], "little") == 7

    consume_response(initiator, INITIATOR, ZERO_PRESHARED_KEY, bytes(response))
    assert initiator.remote_index == 9
    initiator_send, initiator_receive, initiator_is_initiator = derive_transport_keys(initiator)
    responder_send, responder_receive, responder_is_initiator = derive_transport_keys(responder)
    assert (initiator_is_initiator, responder_is_initiator) == (True, False)
    assert initiator_send == responder_receive and initiator_receive == responder_send
    assert initiator_send != initiator_receive
    assert static_static == dh(RESPONDER.private, INITIATOR.public)


def test_a_preshared_key_mismatch_fails_the_response() -> None:
    initiator, responder = Handshake(), Handshake()
    initiation, _ = _initiation(initiator)
    verified = verify_initiation(
        open_initiation(RESPONDER, bytes(initiation)), dh(RESPONDER.private, INITIATOR.public)
    )
    accept_initiation(responder, verified, now=0.0)
    response = create_response(responder, INITIATOR.public, decode_key(generate_preshared_key()), 9)

    with pytest.raises(CryptoError):
        consume_response(initiator, INITIATOR, ZERO_PRESHARED_KEY, bytes(response))
    assert initiator.state is HandshakeState.INITIATION_CREATED


def test_an_initiation_for_another_responder_does_not_open() -> None:
    initiation, _ = _initiation(Handshake())
    stranger = StaticIdentity(decode_key(generate_private_key()))
    with pytest.raises(CryptoError):
        open_initiation(stranger, bytes(initiation))


def test_an_initiator_without_the_claimed_static_key_fails_verification() -> None:
    initiation, _ = _initiation(Handshake())
    opened = open_initiation(RESPONDER, bytes(initiation))
    impostor = StaticIdentity(decode_key(generate_private_key()))
    with pytest.raises(CryptoError):
        verify_initiation(opened, dh(impostor.private, RESPONDER.public))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=8, max_value=INITIATION_SIZE - 33), st.integers(min_value=1, max_value=255))
def test_any_change_to_the_sealed_part_of_an_initiation_is_detected(offset: int, flip: int) -> None:
    initiation, _ = _initiation(Handshake())
    initiation[offset] ^= flip
    with pytest.raises(CryptoError):
        opened = open_initiation(RESPONDER, bytes(initiation))
        verify_initiation(opened, dh(RESPONDER.private, INITIATOR.public))


def test_a_response_needs_an_initiation_in_flight() -> None:
    with pytest.raises(FormError):
        create_response(Handshake(), INITIATOR.public, ZERO_PRESHARED_KEY, 1)
    with pytest.raises(FormError):
        consume_response(Handshake(), INITIATOR, ZERO_PRESHARED_KEY, bytes(RESPONSE_SIZE))


# Cookies

SOURCE = address_bytes(("198.18.0.1", 51820))


def _signed_initiation(generator: CookieGenerator, now: float) -> bytearray:
    initiation, _ = _initiation(Handshake())
    generator.add_macs(initiation, now)
    return initiation


def test_mac1_binds_a_handshake_to_the_receivers_public_key() -> None:
    generator = CookieGenerator(RESPONDER.public)
    initiation = _signed_initiation(generator, now=0.0)
    assert CookieChecker(RESPONDER.public).check_mac1(bytes(initiation))
    assert not CookieChecker(INITIATOR.public).check_mac1(bytes(initiation))
    initiation[20] ^= 1
    assert not CookieChecker(RESPONDER.public).check_mac1(bytes(initiation))


def test_without_a_cookie_mac2_is_zero_and_fails_the_check() -> None:
    checker = CookieChecker(RESPONDER.public)
    initiation = _signed_initiation(CookieGenerator(RESPONDER.public), now=0.0)
    assert initiation[-16:] == bytes(16)
    assert not checker.check_mac2(bytes(initiation), SOURCE, now=0.0)


def test_a_cookie_reply_lets_the_initiator_pass_the_mac2_check() -> None:
    checker = CookieChecker(RESPONDER.public)
    generator = CookieGenerator(RESPONDER.public)
    first = _signed_initiation(generator, now=0.0)
    reply = checker.create_reply(bytes(first), receiver_index=7, source=SOURCE, now=0.0)
    assert len(reply) == COOKIE_REPLY_SIZE and reply[:8] == b"\x03\x00\x00\x00\x07\x00\x00\x00"

    generator.consume_reply(reply, now=0.1)
    retry = _signed_initiation(generator, now=5.0)
    assert checker.check_mac1(bytes(retry))
    assert checker.check_mac2(bytes(retry), SOURCE, now=5.0)
    # The cookie is bound to the source address and port.
    assert not checker.check_mac2(bytes(retry), address_bytes(("198.18.0.1", 51821)), now=5.0)


def test_a_cookie_reply_only_opens_for_the_handshake_it_answers() -> None:
    checker = CookieChecker(RESPONDER.public)
    generator = CookieGenerator(RESPONDER.public)
    answered = _signed_initiation(generator, now=0.0)
    reply = checker.create_reply(bytes(answered), 7, SOURCE, now=0.0)
    _signed_initiation(generator, now=1.0)  # a newer handshake: the reply's mac1 no longer matches
    with pytest.raises(CryptoError):
        generator.consume_reply(reply, now=1.0)
    with pytest.raises(FormError):
        CookieGenerator(RESPONDER.public).consume_reply(reply, now=1.0)


def test_cookies_expire_after_two_minutes_on_both_sides() -> None:
    checker = CookieChecker(RESPONDER.public)
    generator = CookieGenerator(RESPONDER.public)
    first = _signed_initiation(generator, now=0.0)
    generator.consume_reply(checker.create_reply(bytes(first), 7, SOURCE, now=0.0), now=0.0)

    assert checker.check_mac2(bytes(_signed_initiation(generator, now=119.0)), SOURCE, now=119.0)
    # The responder's secret is older than 120 s: it no longer vouches for any cookie made from it.
    assert not checker.check_mac2(bytes(_signed_initiation(generator, now=119.0)), SOURCE, now=121.0)
    # And the initiator stops sending a stale cookie.
    assert _signed_initiation(generator, now=121.0)[-16:] == bytes(16)


def test_the_cookie_secret_rotates_when_a_reply_is_needed_after_two_minutes() -> None:
    checker = CookieChecker(RESPONDER.public)
    generator = CookieGenerator(RESPONDER.public)
    first = _signed_initiation(generator, now=0.0)
    generator.consume_reply(checker.create_reply(bytes(first), 7, SOURCE, now=0.0), now=0.0)
    old_cookie_message = _signed_initiation(generator, now=1.0)

    late = _signed_initiation(CookieGenerator(RESPONDER.public), now=130.0)
    checker.create_reply(bytes(late), 7, SOURCE, now=130.0)
    assert not checker.check_mac2(bytes(old_cookie_message), SOURCE, now=130.0)


def test_the_under_load_rate_limiter_allows_a_burst_of_five_then_twenty_per_second() -> None:
    limiter = RateLimiter()
    assert [limiter.allow("198.18.0.1", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("198.18.0.2", 0.0)
    assert limiter.allow("198.18.0.1", 0.05)
    assert not limiter.allow("198.18.0.1", 0.05)
