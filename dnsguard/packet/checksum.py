"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

Why `int.from_bytes(data) % 0xFFFF`: the one's complement sum of 16-bit words is the ordinary sum reduced
modulo 2**16 - 1 (end-around carry), and 2**16 is 1 modulo 2**16 - 1, so a buffer read as one big-endian
integer is already congruent to the sum of its words. That turns the whole sum into two C loops
(`int.from_bytes` and a single-digit bigint remainder). Measured on CPython 3.11 with
bench/packet_classify.py: 350 ns for 100 bytes, 2.9 us for 1500 bytes (about 500 MB/s), 3.3x faster than
`sum(array("H", data))` and 3.5x-4.5x faster than `sum(struct.unpack(...))` at both sizes; folding the
bigint by adding its halves was 1.4x-3x slower than the remainder.

Partial sums (`initial`, `pseudo_header_sum`) are plain non-negative integers congruent to the one's
complement sum; they need no folding, because every function here reduces modulo 0xFFFF once at the end.
"""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview
"""Anything the packet layer reads: a TUN read returns bytes, batch readers hand out memoryviews."""

_ALL_ONES = 0xFFFF


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The value to store in a checksum field, computed over `data` (field zeroed) plus a partial sum."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        # RFC 1071 pads an odd trailing byte with a zero byte on the right.
        value <<= 8
    return checksum_from_sum(value + initial)


def checksum_from_sum(word_sum: int) -> int:
    """The checksum field value for a non-negative integer congruent to the one's complement sum."""
    remainder = word_sum % _ALL_ONES
    if remainder:
        return _ALL_ONES - remainder
    # A non-zero sum that is a multiple of 0xFFFF is one's complement 0xFFFF ("negative zero"), whose
    # complement is 0; only an all-zero input sums to positive zero.
    return 0 if word_sum else _ALL_ONES


def verify_checksum(data: Buffer, initial: int = 0) -> bool:
    """True if `data`, checksum field included, plus the partial sum adds up to all ones (RFC 1071 4.1)."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    value += initial
    return value != 0 and value % _ALL_ONES == 0


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 793 3.1, RFC 768, RFC 8200 8.1)."""
    # Both pseudo-header layouts hold the same words modulo 0xFFFF: the addresses, the protocol in the low
    # byte of a word, and the length (IPv6's 32-bit length splits into two words that sum to the same
    # residue because 2**16 is 1 modulo 0xFFFF).
    return int.from_bytes(src + dst, "big") + protocol + length


def checksum_update(checksum: int, old: Buffer, new: Buffer) -> int:
    """The checksum after 16-bit-aligned bytes `old` became `new`: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m')."""
    if len(old) != len(new) or len(old) & 1:
        raise ValueError("checksum_update needs old and new of the same even length")
    old_value = int.from_bytes(old, "big")
    new_value = int.from_bytes(new, "big")
    remainder = (-checksum - old_value + new_value) % _ALL_ONES
    if remainder:
        return _ALL_ONES - remainder
    # The sum ~HC + ~m + m' is zero (so HC' is 0xFFFF) only if every term is zero: HC all ones, every old
    # word all ones, every new word zero. Any other sum that is a multiple of 0xFFFF folds to 0xFFFF and
    # complements to 0. So, unlike eqn. 2, the result never is 0xFFFF for a header that is not all zeros,
    # which is what a recomputation from scratch gives (RFC 1624 section 3).
    all_terms_zero = checksum == _ALL_ONES and old_value == (1 << (8 * len(old))) - 1 and new_value == 0
    return _ALL_ONES if all_terms_zero else 0
