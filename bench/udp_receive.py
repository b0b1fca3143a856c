#!/usr/bin/env python3
"""The tunnel's UDP receive in user space: microseconds per datagram of DatagramBatch.receive.

    .venv/bin/python bench/udp_receive.py [--baseline OTHER_CHECKOUT] [--rounds 2000] [--senders 8]

A server's peers mostly send datagrams one at a time (no GSO train), so its receive runs once per
datagram: this times one recvmmsg of 64 waiting 1,420-byte datagrams from --senders sockets on
loopback, and what the batch does to hand them over (payload, sender, train check). Each checkout
(this one, and --baseline's, e.g. `git worktree add --detach DIR main`) runs in a child process of its
own, in turns, and the medians of their rounds are compared. Loopback only: no root, no namespace,
no route. The kernel's share (the copy out of 64 socket buffers) is in the figure too, and the same for
both checkouts.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

from counting import checkouts

DATAGRAMS = 64
SIZE = 1420


def child(rounds: int, senders: int) -> None:
    """Print the median microseconds per datagram over `rounds` receives of DATAGRAMS."""
    from dnsguard.net.mmsg import RECVMMSG
    from dnsguard.net.udp import DatagramBatch

    if RECVMMSG is None:
        raise SystemExit("recvmmsg is missing from libc")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    address = server.getsockname()
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(senders)]
    batch = DatagramBatch(server, RECVMMSG, gro=False)
    payload = bytes(SIZE)
    times = []
    for _ in range(rounds):
        for index in range(DATAGRAMS):
            sockets[index % senders].sendto(payload, address)
        start = time.perf_counter_ns()
        received = batch.receive(DATAGRAMS)
        times.append(time.perf_counter_ns() - start)
        if len(received) != DATAGRAMS:
            raise SystemExit(f"received {len(received)} of {DATAGRAMS}: the socket buffer overflowed")
    print(statistics.median(times) / 1000 / DATAGRAMS)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout to time beside this one")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3, help="child runs per checkout, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100_000 or not 1 <= args.senders <= DATAGRAMS or not 1 <= args.turns <= 20:
        raise SystemExit("--rounds takes 1..100000, --senders 1..64, --turns 1..20")
    if args.child:
        child(args.rounds, args.senders)
        return 0
    found = checkouts(__file__, args.baseline)
    results: dict[str, list[float]] = {label: [] for label in found}
    for _ in range(args.turns):
        for label, checkout in found.items():
            argv = [sys.executable, __file__, "--child", "--rounds", str(args.rounds)]
            argv += ["--senders", str(args.senders)]
            out = subprocess.run(
                argv, env={**os.environ, "PYTHONPATH": checkout}, capture_output=True, text=True, check=True
            )
            results[label].append(float(out.stdout))
    for label, values in results.items():
        print(
            f"{label:14s} {statistics.median(values):6.3f} us per datagram "
            f"(turns: {', '.join(f'{value:.3f}' for value in values)}; {found[label]})"
        )
    if "baseline" in results:
        ratio = statistics.median(results["this checkout"]) / statistics.median(results["baseline"])
        print(f"this checkout / baseline: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
