"""Keys read and print exactly as `wg genkey`, `wg pubkey` and `wg genpsk` do."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from dnsguard.errors import ConfigError
from dnsguard.wireguard.keys import (
    decode_key,
    generate_preshared_key,
    generate_private_key,
    parse_public_key,
    public_key,
)

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools (wg) is not installed")


def _wg(*args: str, stdin: str = "") -> str:
    assert WG is not None
    return subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, check=True).stdout.strip()


@needs_wg
def test_public_key_of_a_wg_generated_key_matches_wg_pubkey() -> None:
    private = _wg("genkey")
    assert public_key(private) == _wg("pubkey", stdin=private + "\n")


@needs_wg
def test_wg_accepts_our_private_keys_and_agrees_on_the_public_key() -> None:
    private = generate_private_key()
    assert _wg("pubkey", stdin=private + "\n") == public_key(private)


@needs_wg
def test_unclamped_private_key_gives_the_same_public_key_as_wg() -> None:
    unclamped = base64.b64encode(bytes([0xFF] * 32)).decode()
    assert public_key(unclamped) == _wg("pubkey", stdin=unclamped + "\n")


def test_generated_private_keys_are_clamped_like_wg_genkey() -> None:
    raw = decode_key(generate_private_key())
    assert raw[0] & 7 == 0
    assert raw[31] & 0x80 == 0
    assert raw[31] & 0x40 == 0x40


def test_generated_keys_are_44_characters_of_base64_for_32_bytes() -> None:
    for key in (generate_private_key(), generate_preshared_key(), public_key(generate_private_key())):
        assert len(key) == 44 and key.endswith("=")
        assert len(decode_key(key)) == 32


def test_surrounding_whitespace_is_ignored_as_wg_does() -> None:
    private = generate_private_key()
    assert public_key(f"  {private}\n") == public_key(private)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "44 characters"),
        ("AAAA", "44 characters"),
        ("!" * 43 + "=", "not valid base64"),
        (base64.b64encode(bytes(33)).decode()[:44], "not valid base64|canonical"),
        # 'B' instead of 'A' before the padding sets bits that do not belong to the 32 bytes.
        ("A" * 42 + "B=", "canonical"),
    ],
)
def test_malformed_keys_are_refused_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        decode_key(text, what="private key")


def test_the_error_names_which_key_was_wrong() -> None:
    with pytest.raises(ConfigError, match="preshared key"):
        decode_key("nope", what="preshared key")


def test_a_public_key_is_read_once_into_its_canonical_form() -> None:
    key = public_key(generate_private_key())
    assert parse_public_key(f"  {key}\n") == key
    with pytest.raises(ConfigError, match="peer public key"):
        parse_public_key(key[:-2] + "B=", what="peer public key")  # unused low bits set: not canonical
