#!/usr/bin/env python3
"""How much answer one allowed client can draw from `dnsguard resolve` over UDP, default settings.

    sudo .venv/bin/python bench/amplification.py [--seconds 10] [--rate 20000]

A LAN device of the lab sends queries as fast as --rate for --seconds, cycling through the answers
that amplify most: a TXT name whose answer is 2 KB, ANY, and the same with an EDNS size of 4096.
Reported per kind: queries sent, replies and reply bytes received per second, and the ratio of
reply bytes to query bytes. The rate limit (200 q/s, burst 2000 by default), the UDP cap
(min(EDNS size, 1232)) and RFC 8482's answer to ANY are what bound it.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import start_resolver

CLIENT = textwrap.dedent(
    """
    import json, socket, struct, sys, time
    server, seconds, rate, kind = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    def query(name, qtype, ident, payload):
        header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if payload else 0)
        body = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0"
        body += struct.pack("!HH", qtype, 1)
        if payload:
            body += b"\\0" + struct.pack("!HHIH", 41, payload, 0, 0)
        return header + body
    name, qtype, payload = {
        "txt": ("big.%ZONE%", 16, 0),
        "txt-edns4096": ("big.%ZONE%", 16, 4096),
        "any": ("www.%ZONE%", 255, 0),
        "any-edns4096": ("www.%ZONE%", 255, 4096),
    }[kind]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setblocking(False)
    sent = received = replies = 0
    query_bytes = 0
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            message = query(name, qtype, sent & 0xFFFF, payload)
            try:
                sock.sendto(message, (server, 53))
                query_bytes += len(message)
            except OSError:
                pass
            sent += 1
        while True:
            try:
                received += len(sock.recv(65535))
                replies += 1
            except BlockingIOError:
                break
        time.sleep(0.001)
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        try:
            received += len(sock.recv(65535))
            replies += 1
        except BlockingIOError:
            time.sleep(0.01)
    print(json.dumps({"kind": kind, "sent": sent, "replies": replies, "reply_bytes": received,
                      "query_bytes": query_bytes, "seconds": seconds}))
    """
).replace("%ZONE%", ADDRESSES.zone)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20000)
    args = parser.parse_args()
    results = []
    for kind in ("txt", "txt-edns4096", "any", "any-edns4096"):
        # A fresh resolver per kind: each starts with a full token bucket, as a new attacker would.
        with Lab(lan=True) as lab:
            config = {
                "resolver": {"listen": [f"{ADDRESSES.lan_gw4}:53", "127.0.0.1:53"]},
                "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict"},
                "loading": {"cache-dir": str(lab.log_dir / "lists")},
                "logging": {"level": "warning"},
            }
            start_resolver(lab, config)
            argv = [sys.executable, "-c", CLIENT, ADDRESSES.lan_gw4, str(args.seconds), str(args.rate), kind]
            output = lab.run("lanhost", argv, timeout=args.seconds + 60).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    print(f"{'kind':14s} {'sent/s':>9s} {'replies/s':>10s} {'reply KB/s':>11s} {'bytes ratio':>12s}")
    for r in results:
        seconds = r["seconds"]
        ratio = r["reply_bytes"] / r["query_bytes"] if r["query_bytes"] else 0.0
        print(
            f"{r['kind']:14s} {r['sent'] / seconds:9.0f} {r['replies'] / seconds:10.0f}"
            f" {r['reply_bytes'] / seconds / 1000:11.1f} {ratio:12.3f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
