"""Sans-I/O WireGuard: Noise IKpsk2 handshake, transport keys, replay window, cookies and timers.

Start at `Device` (device.py): the shell feeds it datagrams, IP packets and a clock, and sends what it
returns.
"""

from dnsguard.wireguard.device import UNSET, Device
from dnsguard.wireguard.events import (
    DropCounters,
    Event,
    HandshakeCompleted,
    HandshakeGaveUp,
    HandshakeInitiationSent,
    KeysZeroed,
    PeerEndpointChanged,
)
from dnsguard.wireguard.keys import generate_preshared_key, generate_private_key, public_key
from dnsguard.wireguard.peer import Peer, PeerStatus

__all__ = [
    "UNSET",
    "Device",
    "DropCounters",
    "Event",
    "HandshakeCompleted",
    "HandshakeGaveUp",
    "HandshakeInitiationSent",
    "KeysZeroed",
    "Peer",
    "PeerEndpointChanged",
    "PeerStatus",
    "generate_preshared_key",
    "generate_private_key",
    "public_key",
]
