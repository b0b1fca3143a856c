"""Data-path micro-benchmark of the WireGuard core.

    python bench/wireguard_core.py [--packets N] [--size B] [--batch K]


Two in-memory devices complete a handshake, then one core seals and opens transport packets; the figures are
packets per second on one core for the sans-I/O path alone (no sockets, no TUN). OpenSSL's ChaCha20-Poly1305
code is chosen as `dnsguard up` and `dnsguard server` choose it (app/aead_tuning.py), and the choice printed.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from dnsguard.app.aead_tuning import tune_aead

AEAD_CHOICE = tune_aead()  # before the imports below load libcrypto

from dnsguard.wireguard.device import Device  # noqa: E402
from dnsguard.wireguard.keys import generate_private_key  # noqa: E402

_CLIENT_ADDRESS = ("198.18.0.1", 51820)
_SERVER_ADDRESS = ("198.18.0.2", 51820)


def _ipv4_packet(size: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
    )
    return header + bytes(size - len(header))


def connected_pair() -> tuple[Device, Device]:
    """A client and a server device that have completed a handshake (session confirmed both ways)."""
    client, server = Device(generate_private_key()), Device(generate_private_key())
    client.add_peer(server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=_SERVER_ADDRESS)
    server.add_peer(client.public_key, allowed_ips=["100.64.0.1/32"])
    client.send_packet(_ipv4_packet(64), 0.0)
    for _ in range(3):
        for data, _address in client.datagrams_to_send():
            server.receive_datagram(data, _CLIENT_ADDRESS, 0.0)
        for data, _address in server.datagrams_to_send():
            client.receive_datagram(data, _SERVER_ADDRESS, 0.0)
    return client, server


def main(argv: list[str] | None = None) -> None:
    """Print packets/s for sealing and opening, next to the bare AEAD calls as a ceiling."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    print(AEAD_CHOICE.describe())
    size: int = args.size
    batch_size: int = args.batch
    rounds = max(1, int(args.packets) // batch_size)
    client, server = connected_pair()
    client_peer = client.peers[server.public_key]
    server_peer = server.peers[client.public_key]
    batch = [_ipv4_packet(size)] * batch_size
    clock = time.perf_counter
    timings: dict[str, list[float]] = {name: [] for name in _STAGES}
    for _ in range(rounds):
        # Alternating small batches keeps counters in order and the working set small.
        keypair = client_peer.current_keypair
        server_keypair = server_peer.current_keypair
        assert keypair is not None and server_keypair is not None
        started = clock()
        datagrams = client.encrypt_packets(client_peer, batch, 1.0)
        sealed = clock()
        opened = server.receive_datagrams([(data, _CLIENT_ADDRESS) for data in datagrams], 1.0)
        received = clock()
        client.send_packets(batch, 1.0)
        client.datagrams_to_send()
        routed = clock()
        _bare_aead(keypair.send_cipher.encrypt, server_keypair.receive_cipher.decrypt, batch, timings)
        if len(opened) != batch_size:
            raise SystemExit(f"only {len(opened)} of {batch_size} packets opened: {server.counters}")
        timings["encrypt_packets"].append(sealed - started)
        timings["receive_datagrams"].append(received - sealed)
        timings["send_packets (routed)"].append(routed - received)
    megabits = size * 8 / 1e6
    print(f"{size}-byte packets, batches of {batch_size}, {rounds * batch_size} packets, one core")
    print(f"  {'':28}{'mean packets/s':>16}{'best batch':>14}{'Mbit/s (mean)':>15}")
    for name, seconds in timings.items():
        mean_rate = batch_size * len(seconds) / sum(seconds)
        best_rate = batch_size / min(seconds)
        print(f"  {name:28}{mean_rate:16,.0f}{best_rate:14,.0f}{mean_rate * megabits:15,.0f}")


_STAGES = (
    "encrypt_packets",
    "send_packets (routed)",
    "receive_datagrams",
    "bare AEAD encrypt",
    "bare AEAD decrypt",
)


def _bare_aead(
    encrypt: Callable[[bytes, bytes, None], bytes],
    decrypt: Callable[[bytes, bytes, None], bytes],
    batch: list[bytes],
    timings: dict[str, list[float]],
) -> None:
    nonce = bytes(12)
    started = time.perf_counter()
    ciphertexts = [encrypt(nonce, packet, None) for packet in batch]
    sealed = time.perf_counter()
    for ciphertext in ciphertexts:
        decrypt(nonce, ciphertext, None)
    timings["bare AEAD encrypt"].append(sealed - started)
    timings["bare AEAD decrypt"].append(time.perf_counter() - sealed)


if __name__ == "__main__":
    main()
