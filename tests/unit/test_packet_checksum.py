"""The Internet checksum: RFC 1071 vectors, agreement with a word-by-word reference, RFC 1624 updates."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dnsguard.packet import checksum_update, internet_checksum, pseudo_header_sum, verify_checksum


def reference_checksum(data: bytes, initial_words: tuple[int, ...] = ()) -> int:
    """RFC 1071 spelled out: pair bytes into words, add with end-around carry, complement."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for word in (*initial_words, *(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_worked_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2, so the checksum is its complement.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2 == 0x220D


def test_ipv4_header_textbook_example() -> None:
    # The header used in most textbook walk-throughs: 192.168.0.1 -> 192.168.0.199, UDP, total length 115.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert verify_checksum(header[:10] + bytes.fromhex("b861") + header[12:])


def test_odd_length_pads_a_zero_byte_on_the_right() -> None:
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00") == 0xFEFF


def test_all_zero_input_has_checksum_all_ones() -> None:
    # Positive zero sums to +0, whose complement is 0xFFFF; a checksum of 0 would mean the sum was -0.
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(bytes(40)) == 0xFFFF


def test_sum_that_is_negative_zero_gives_checksum_zero() -> None:
    assert internet_checksum(bytes.fromhex("ffff")) == 0
    assert internet_checksum(bytes.fromhex("fff0000f")) == 0


def test_memoryview_and_bytearray_give_the_same_checksum() -> None:
    data = bytes(range(7, 107))
    assert (
        internet_checksum(memoryview(data)) == internet_checksum(bytearray(data)) == internet_checksum(data)
    )


def test_pseudo_header_sum_matches_both_wire_layouts() -> None:
    ipv4_src, ipv4_dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ipv4_pseudo = ipv4_src + ipv4_dst + bytes([0, 17]) + (1234).to_bytes(2, "big")  # RFC 768
    ipv6_src, ipv6_dst = bytes(range(16)), bytes(range(16, 32))
    ipv6_pseudo = ipv6_src + ipv6_dst + (70000).to_bytes(4, "big") + bytes([0, 0, 0, 58])  # RFC 8200 8.1
    assert internet_checksum(b"", pseudo_header_sum(ipv4_src, ipv4_dst, 17, 1234)) == reference_checksum(
        ipv4_pseudo
    )
    assert internet_checksum(b"", pseudo_header_sum(ipv6_src, ipv6_dst, 58, 70000)) == reference_checksum(
        ipv6_pseudo
    )


@settings(deadline=None)
@given(st.binary(max_size=1600), st.lists(st.integers(0, 0xFFFF), max_size=20))
def test_checksum_equals_word_by_word_reference(data: bytes, initial_words: list[int]) -> None:
    assert internet_checksum(data, sum(initial_words)) == reference_checksum(data, tuple(initial_words))


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_data_with_its_checksum_verifies(data: bytes) -> None:
    if len(data) % 2:
        data += b"\0"
    checksum = internet_checksum(data).to_bytes(2, "big")
    assert verify_checksum(data + checksum)
    assert verify_checksum(checksum + data)


def test_rfc1624_example_where_eqn2_gives_negative_zero() -> None:
    # RFC 1624 section 4: a header with checksum 0xDD2F has a field change from 0x5555 to 0x3285. A header of
    # the words cd7a 5555 has exactly that checksum; recomputing after the change gives 0x0000, and eqn. 3
    # must agree (eqn. 2 of RFC 1141 would give 0xFFFF).
    before, after = bytes.fromhex("cd7a5555"), bytes.fromhex("cd7a3285")
    assert internet_checksum(before) == 0xDD2F
    assert internet_checksum(after) == 0x0000
    assert checksum_update(0xDD2F, bytes.fromhex("5555"), bytes.fromhex("3285")) == 0x0000


def test_update_with_nothing_changed_keeps_the_checksum() -> None:
    assert checksum_update(0x1234, b"\xab\xcd", b"\xab\xcd") == 0x1234
    assert checksum_update(0x0000, b"\x55\x55", b"\x55\x55") == 0x0000


def test_update_needs_equal_even_lengths() -> None:
    with pytest.raises(ValueError):
        checksum_update(0, b"\x00\x01", b"\x00")
    with pytest.raises(ValueError):
        checksum_update(0, b"\x00", b"\x01")


@settings(deadline=None)
@given(st.data())
def test_incremental_update_equals_full_recomputation(data: st.DataObject) -> None:
    words = data.draw(st.integers(1, 40), label="words")
    original = data.draw(st.binary(min_size=2 * words, max_size=2 * words), label="original")
    first_word = data.draw(st.integers(0, words - 1), label="first changed word")
    changed_words = data.draw(st.integers(1, words - first_word), label="changed words")
    start, end = 2 * first_word, 2 * (first_word + changed_words)
    replacement = data.draw(st.binary(min_size=end - start, max_size=end - start), label="replacement")
    updated = original[:start] + replacement + original[end:]
    # All-zero data is the one input whose checksum is 0xFFFF rather than 0; real headers never are.
    assume(any(original) and any(updated))
    incremental = checksum_update(internet_checksum(original), original[start:end], replacement)
    assert incremental == internet_checksum(updated)
