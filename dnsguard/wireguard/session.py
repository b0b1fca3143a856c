"""Transport keypairs (message 4): the data path's encrypt and decrypt state for one session."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dnsguard.wireguard.constants import MESSAGE_TRANSPORT, PADDING_MULTIPLE
from dnsguard.wireguard.replay import ReplayWindow

if TYPE_CHECKING:
    from dnsguard.wireguard.peer import Peer

# type(u32) receiver counter(u64), then the sealed, padded IP packet
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
# The 96-bit ChaCha20-Poly1305 nonce is 32 zero bits followed by the little-endian counter.
TRANSPORT_NONCE: Final = struct.Struct("<4xQ")
_ZERO_PADDING: Final = bytes(PADDING_MULTIPLE)


class Keypair:
    """Keys, counters and replay window of one session; the cipher objects are built once, not per packet."""

    __slots__ = (
        "created_at",
        "is_initiator",
        "local_index",
        "peer",
        "receive_cipher",
        "remote_index",
        "replay_window",
        "send_cipher",
        "send_counter",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        *,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        peer: Peer,
        created_at: float,
    ) -> None:
        self.send_cipher = ChaCha20Poly1305(send_key)
        self.receive_cipher = ChaCha20Poly1305(receive_key)
        self.send_counter = 0
        self.replay_window = ReplayWindow()
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.peer = peer
        self.created_at = created_at


_WARM_UP_CIPHER: Final = ChaCha20Poly1305(bytes(32))
"""A cipher under an all-zero key, no session's: what warm_up seals and opens."""
_WARM_UP_PACKET: Final = bytes(96)


def warm_up() -> None:
    """Seal and open a throwaway 96-byte packet, as a session's cipher does a ping's.

    Between an idle tunnel's packets other work evicts the cipher's code and the interpreter's from
    the CPU's caches, and the next packet pays to bring them back; the shell calls this every few
    milliseconds for a while after traffic (performance.keep-warm) so that it does not.
    """
    nonce = TRANSPORT_NONCE.pack(0)
    _WARM_UP_CIPHER.decrypt(nonce, _WARM_UP_CIPHER.encrypt(nonce, _WARM_UP_PACKET, None), None)


def padding_for(length: int, mtu: int) -> int:
    """Zero bytes to append so the sealed length is a multiple of 16, never beyond the MTU."""
    last_unit = length % mtu if mtu and length > mtu else length
    padded = (last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu and padded > mtu:
        padded = mtu
    return padded - last_unit


def seal_packets(keypair: Keypair, packets: list[bytes], mtu: int) -> list[bytes]:
    """Encrypt packets into transport messages with consecutive counters (the caller checked the limit)."""
    sealed: list[bytes] = []
    append = sealed.append
    encrypt = keypair.send_cipher.encrypt
    pack_header = TRANSPORT_HEADER.pack
    pack_nonce = TRANSPORT_NONCE.pack
    receiver = keypair.remote_index
    counter = keypair.send_counter
    for packet in packets:
        length = len(packet)
        remainder = length & (PADDING_MULTIPLE - 1)
        if remainder:
            if length <= mtu - PADDING_MULTIPLE:
                packet = packet + _ZERO_PADDING[remainder:]
            elif length != mtu:  # a packet of exactly the MTU (a full segment) is never padded
                packet = packet + bytes(padding_for(length, mtu))
        append(pack_header(MESSAGE_TRANSPORT, receiver, counter) + encrypt(pack_nonce(counter), packet, None))
        counter += 1
    keypair.send_counter = counter
    return sealed
