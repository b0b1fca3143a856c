#!/usr/bin/env python3
"""Instructions per tunnel packet on the send and the receive path, counted by callgrind: steady on a noisy
machine.

    .venv/bin/python bench/tunnel_instructions.py [--baseline CHECKOUT] [--rounds 40] [--path send,receive]

bench/tunnel.py's Mbit/s and CPU seconds per GB move by tens of percent from one run to the next on a
shared machine; the instructions a change saves do not. For each checkout (this one, and --baseline's,
e.g. a `git worktree add --detach DIR main`), a child process sets up two in-memory WireGuard devices
with a completed handshake and, in rounds, runs one path on a 64 KB TCP super-packet as the TUN hands
it over (45 segments of 1,368 bytes, IPv4, as the lab's tunnel carries them):

- send: `offload.split` (segmentation and checksums) and `Device.send_packets` (routing and sealing),
  then `datagrams_to_send`;
- receive: `Device.receive_datagrams` on the 45 sealed datagrams (opening, replay window, source
  check), then `offload.coalesce` back into one super-packet (checksum verification included).

It runs under `valgrind --tool=callgrind` twice, with WARM_ROUNDS and WARM_ROUNDS + --rounds rounds;
the difference over the packets of the extra rounds is the user-space instructions per packet. The
system calls (TUN read and write, UDP GSO and GRO) are the kernel's and are not counted. The
datagrams the receive path opens are sealed before either count starts, as many in both runs. Under
valgrind OpenSSL sees no AVX-512 and runs its AVX2 code, whatever the machine has.
No root or network needed.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import sys
from pathlib import Path

from counting import CALLGRIND, arguments, checkouts, collected, report, run_measured

WARM_ROUNDS = 10
SEGMENTS = 45
MSS = 1368
NOW = 1.0
CLIENT, SERVER = ("198.18.0.1", 51820), ("198.18.0.2", 51820)


def super_packet() -> bytes:
    """What a TUN with TSO hands over: a virtio-net header (NEEDS_CSUM, GSO_TCPV4) and 45 segments' worth."""
    payload = bytes(range(256)) * (SEGMENTS * MSS // 256 + 1)
    payload = payload[: SEGMENTS * MSS]
    options = b"\x01\x01\x08\x0a" + bytes(8)  # NOP, NOP, timestamps
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 55, (5 + len(options) // 4) << 4, 0x18, 501, 0, 0)
    length = 20 + len(tcp) + len(options) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length & 0xFFFF,
        7,
        0x4000,
        64,
        6,
        0,
        bytes([100, 64, 0, 1]),
        bytes([100, 64, 0, 2]),
    )
    header_length = len(ip) + len(tcp) + len(options)
    vnet = struct.pack("=BBHHHH", 1, 1, header_length, MSS, 20, 16)
    return vnet + ip + tcp + options + payload


def child(checkout: str, path: str, rounds: int, batches: int) -> None:
    """The measured process: `rounds` rounds of `path`, after sealing `batches` batches for receiving."""
    sys.path.insert(0, checkout)
    from dnsguard.net.offload import coalesce, split
    from dnsguard.wireguard.device import Device
    from dnsguard.wireguard.keys import generate_private_key

    client, server = Device(generate_private_key()), Device(generate_private_key())
    client.add_peer(server.public_key, allowed_ips=["0.0.0.0/0"], endpoint=SERVER)
    server.add_peer(client.public_key, allowed_ips=["100.64.0.1/32"])
    client.send_packet(split(super_packet())[0], 0.0)
    for _ in range(3):  # initiation, response, the first data packet confirming the session
        for data, _address in client.datagrams_to_send():
            server.receive_datagram(data, CLIENT, 0.0)
        for data, _address in server.datagrams_to_send():
            client.receive_datagram(data, SERVER, 0.0)
    raw = super_packet()
    sealed: list[list[tuple[bytes, tuple[str, int]]]] = []
    for _ in range(batches if path == "receive" else 0):
        client.send_packets(split(raw), NOW)
        sealed.append([(data, CLIENT) for data, _address in client.datagrams_to_send()])
    for round_number in range(rounds):
        if path == "send":
            client.send_packets(split(raw), NOW)
            if len(client.datagrams_to_send()) != SEGMENTS:
                raise SystemExit(f"round {round_number}: not {SEGMENTS} datagrams")
        else:
            written = coalesce(server.receive_datagrams(sealed[round_number], NOW))
            if len(written) != 1:
                raise SystemExit(f"round {round_number}: {len(written)} writes, not one super-packet")


def run_child(checkout: str, path: str, rounds: int, batches: int, tool: str = "") -> str:
    """The measured process's stderr; `tool` runs it (valgrind)."""
    argv = [*tool.split(), sys.executable, str(Path(__file__).resolve()), "--child", checkout]
    argv += ["--path", path, "--rounds", str(rounds), "--batches", str(batches)]
    # numpy's OpenBLAS would start a worker thread that spins; under valgrind its count varies run to run.
    return run_measured(argv, checkout, {"OPENBLAS_NUM_THREADS": "1"}).stderr


def instructions(checkout: str, path: str, rounds: int, batches: int) -> int:
    """User-space instructions of a child process of `rounds` rounds, as callgrind counts them."""
    return collected(run_child(checkout, path, rounds, batches, CALLGRIND), checkout)


def per_packet(checkout: str, path: str, rounds: int) -> float:
    batches = WARM_ROUNDS + rounds
    # One run outside callgrind first: modules changed since their last import are compiled there.
    run_child(checkout, path, 1, 1)
    extra = instructions(checkout, path, WARM_ROUNDS + rounds, batches)
    extra -= instructions(checkout, path, WARM_ROUNDS, batches)
    return extra / (rounds * SEGMENTS)


def main() -> int:
    parser = arguments(__doc__, rounds=40)
    parser.add_argument("--path", default="send,receive", help="send, receive or both (comma-separated)")
    parser.add_argument("--batches", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.path, args.rounds, args.batches)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (Debian's package)")
    paths = [path for path in args.path.split(",") if path]
    if not paths or set(paths) - {"send", "receive"}:
        raise SystemExit("--path takes send, receive or both")
    counted = checkouts(__file__, args.baseline)
    for path in paths:
        counts = {label: per_packet(checkout, path, args.rounds) for label, checkout in counted.items()}
        report(counts, counted, "packet", prefix=f"{path:8s} ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
