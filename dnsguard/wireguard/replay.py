"""The anti-replay window for transport counters (RFC 6479, as wireguard-go sizes it).

A ring of 128 blocks of 64 bits. The block holding the newest counter is the head; the 127 blocks before it
are the window, so a counter up to 8128 (127 * 64) behind the newest one is still judged exactly.
Measured against a single 8129-bit integer shifted on every packet, the ring is faster for in-order traffic
(the common case: no shift of a big integer, one list store), and equal for reordered traffic.
"""

from __future__ import annotations

from typing import Final

from dnsguard.wireguard.constants import REJECT_AFTER_MESSAGES

_BLOCK_BITS_LOG: Final = 6
_BLOCK_BITS: Final = 1 << _BLOCK_BITS_LOG
_RING_BLOCKS: Final = 128
_BLOCK_INDEX_MASK: Final = _RING_BLOCKS - 1
_BIT_INDEX_MASK: Final = _BLOCK_BITS - 1
WINDOW_SIZE: Final = (_RING_BLOCKS - 1) * _BLOCK_BITS


class ReplayWindow:
    """Accepts each counter below `limit` at most once, and none more than WINDOW_SIZE behind the newest."""

    __slots__ = ("_limit", "_newest", "_ring")

    def __init__(self, limit: int = REJECT_AFTER_MESSAGES) -> None:
        self._limit = limit
        self._ring = [0] * _RING_BLOCKS
        self._newest = 0

    def reset(self) -> None:
        """Forget every counter seen."""
        self._ring = [0] * _RING_BLOCKS
        self._newest = 0

    def accept(self, counter: int) -> bool:
        """Record `counter` and return True if it is new and inside the window; False otherwise."""
        newest = self._newest
        if counter > newest:
            if counter >= self._limit:
                return False
            block = counter >> _BLOCK_BITS_LOG
            skipped_blocks = block - (newest >> _BLOCK_BITS_LOG)
            ring = self._ring
            if skipped_blocks == 0:
                ring[block & _BLOCK_INDEX_MASK] |= 1 << (counter & _BIT_INDEX_MASK)
            else:
                # Blocks the head moves over held counters that are now outside the window.
                if skipped_blocks >= _RING_BLOCKS:
                    ring[:] = [0] * _RING_BLOCKS
                elif skipped_blocks > 1:
                    for passed in range(block - skipped_blocks + 1, block):
                        ring[passed & _BLOCK_INDEX_MASK] = 0
                ring[block & _BLOCK_INDEX_MASK] = 1 << (counter & _BIT_INDEX_MASK)
            self._newest = counter
            return True
        if newest - counter > WINDOW_SIZE:
            return False
        index = (counter >> _BLOCK_BITS_LOG) & _BLOCK_INDEX_MASK
        bit = 1 << (counter & _BIT_INDEX_MASK)
        block_bits = self._ring[index]
        if block_bits & bit:
            return False
        self._ring[index] = block_bits | bit
        return True
