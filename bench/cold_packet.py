#!/usr/bin/env python3
"""What one packet costs the WireGuard core after the process sat idle, beside the same call warm.

    .venv/bin/python bench/cold_packet.py [--pause 0.02] [--samples 100] [--size 84]

An idle tunnel's packet wakes a daemon that has not run for a while (a ping every 20 ms, say): its
caches, TLB and branch predictors hold other work by then, and on a virtual machine more so. This
times, in one process and with no sockets, each step a lone packet takes through the sans-I/O core:
the device's send (route, seal, bookkeeping) and receive (open, checks, bookkeeping), and beneath
them the bare ChaCha20-Poly1305 seal and open. Each sample is one call right after a sleep of
--pause seconds ("cold"), then the same call again at once ("warm"); the medians are printed, and
their difference is what the pause cost. bench/rtt_stages.py gives the whole round trip's stages;
this says how much of a stage the core's own code is, and which part of it is the AEAD.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from sibling import load_bench

core = load_bench("wireguard_core.py")  # tunes the AEAD choice before libcrypto loads, as the daemons do


def timed(call: Callable[[], object]) -> int:
    started = time.perf_counter_ns()
    call()
    return time.perf_counter_ns() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pause", type=float, default=0.02, help="seconds asleep before each cold call")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--size", type=int, default=84, help="IP packet bytes (84: a ping's request)")
    args = parser.parse_args()
    print(core.AEAD_CHOICE.describe())
    client, server = core.connected_pair()
    client_peer = client.peers[server.public_key]
    server_peer = server.peers[client.public_key]
    packet = core._ipv4_packet(args.size)
    now = 1.0

    def send() -> object:
        client.send_packets([packet], now)
        return client.datagrams_to_send()

    # Datagrams for the receive samples, sealed ahead: a counter may be opened only once.
    sealed: list[bytes] = []

    def receive() -> object:
        return server.receive_datagrams([(sealed.pop(0), core._CLIENT_ADDRESS)], now)

    def seal() -> object:
        keypair = client_peer.current_keypair
        return keypair.send_cipher.encrypt(bytes(12), packet, None)

    def open_() -> object:
        keypair = server_peer.current_keypair
        return keypair.receive_cipher.decrypt(bytes(12), opened_text, None)

    opened_text = client_peer.current_keypair.send_cipher.encrypt(bytes(12), packet, None)
    steps: dict[str, Callable[[], object]] = {
        "device send (route, seal, bookkeeping)": send,
        "device receive (open, checks, bookkeeping)": receive,
        "AEAD seal alone": seal,
        "AEAD open alone": open_,
    }
    cold: dict[str, list[int]] = {name: [] for name in steps}
    warm: dict[str, list[int]] = {name: [] for name in steps}
    for _ in range(args.samples + 1):
        for name, step in steps.items():
            if step is receive:
                sealed[:] = client.encrypt_packets(client_peer, [packet, packet], now)
            time.sleep(args.pause)
            cold[name].append(timed(step))
            warm[name].append(timed(step))
    pause = f"{args.samples} samples, {args.pause} s pause"
    print(f"\nmedian microseconds of one {args.size}-byte packet, {pause}")
    print(f"{'':44s}{'cold':>8s}{'warm':>8s}{'pause cost':>12s}")
    for name in steps:
        # The first sample also pays the first call's setup: left out.
        c, w = statistics.median(cold[name][1:]) / 1000, statistics.median(warm[name][1:]) / 1000
        print(f"{name:44s}{c:8.1f}{w:8.1f}{c - w:12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
