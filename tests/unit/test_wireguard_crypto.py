"""Known-answer tests for the primitives under WireGuard's handshake."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import CryptoError
from dnsguard.wireguard.crypto import (
    blake2s_hash,
    hchacha20,
    kdf1,
    kdf2,
    kdf3,
    tai64n,
    tai64n_successor,
    xaead_open,
    xaead_seal,
)
from dnsguard.wireguard.noise import CONSTRUCTION, IDENTIFIER, INITIAL_CHAIN_KEY, INITIAL_HASH

# wireguard-go device/kdf_test.go (upstream WireGuard/wireguard-go): key, input, t0, t1, t2.
KDF_VECTORS = [
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_outputs_match_wireguard_go(key: str, data: str, t0: str, t1: str, t2: str) -> None:
    key_bytes, data_bytes = bytes.fromhex(key), bytes.fromhex(data)
    assert [part.hex() for part in kdf3(key_bytes, data_bytes)] == [t0, t1, t2]
    assert [part.hex() for part in kdf2(key_bytes, data_bytes)] == [t0, t1]
    assert kdf1(key_bytes, data_bytes).hex() == t0


def test_initial_chain_key_is_the_hash_of_the_construction_name() -> None:
    assert CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert INITIAL_CHAIN_KEY.hex().startswith("60e26daef327efc02ec335e2a025")
    assert blake2s_hash(INITIAL_CHAIN_KEY, IDENTIFIER) == INITIAL_HASH


def test_hchacha20_matches_the_xchacha_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert hchacha20(key, nonce).hex() == expected


def test_xchacha20_poly1305_matches_the_xchacha_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, appendix A.3.1
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
        b"sunscreen would be it."
    )
    associated_data = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    ciphertext = bytes.fromhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
    )
    tag = bytes.fromhex("c0875924c1c7987947deafd8780acf49")

    assert xaead_seal(key, nonce, plaintext, associated_data) == ciphertext + tag
    assert xaead_open(key, nonce, ciphertext + tag, associated_data) == plaintext


def test_xchacha20_poly1305_refuses_a_wrong_associated_data() -> None:
    key, nonce = bytes(32), bytes(24)
    sealed = xaead_seal(key, nonce, b"cookie", b"mac1")
    with pytest.raises(CryptoError):
        xaead_open(key, nonce, sealed, b"other mac1")


def test_tai64n_counts_from_the_tai64_epoch_with_whitened_nanoseconds() -> None:
    label = tai64n(1_700_000_000 * 10**9 + 123_456_789)
    seconds, nanoseconds = struct.unpack(">QI", label)

    assert seconds == 0x400000000000000A + 1_700_000_000
    # The low 24 bits are cleared (about 16.7 ms of resolution) so the label does not leak a precise clock.
    assert nanoseconds == 123_456_789 & ~0xFFFFFF
    assert tai64n(0) == bytes.fromhex("400000000000000a00000000")


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**62), st.integers(min_value=0, max_value=10**10))
def test_tai64n_never_decreases_as_time_advances(unix_ns: int, step_ns: int) -> None:
    assert tai64n(unix_ns) <= tai64n(unix_ns + step_ns)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**62))
def test_tai64n_successor_is_strictly_later_and_whitened(unix_ns: int) -> None:
    label = tai64n(unix_ns)
    successor = tai64n_successor(label)
    assert successor > label
    assert struct.unpack(">QI", successor)[1] & 0xFFFFFF == 0
    assert struct.unpack(">QI", successor)[1] < 10**9
