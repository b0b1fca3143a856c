r"""Hostile and well-behaved DNS clients for the lab: structure-aware fuzzing, floods and a control client.

    python -m dnsguard.lab.dnsload fuzz SERVER PORT --count N [--source ADDR] [--seed S]
    python -m dnsguard.lab.dnsload flood KIND SERVER PORT --seconds S [--rate R] [--source ADDR]
    python -m dnsguard.lab.dnsload control SERVER PORT --seconds S --expect NAME=ANSWER ...

`fuzz` sends generated messages that are almost DNS (compression pointers into loops, forward and
past the end; label lengths of every kind; section counts that lie; EDNS options that overrun;
TCP frames whose length prefix lies) and prints a JSON summary. `flood` keeps one attack going for
a time: `malformed`, `pointer-loop`, `misses` (distinct names, each a cache miss), `tcp-idle`
(opens connections and never sends), `regex` (names built to make a backtracking engine explode on
`^(a|a)*\.evil\.example$`).
`control` asks a fixed set of names at a steady pace and prints every latency and every wrong or
missing answer as JSON. Only for the lab's namespaces: it never aims at any other address.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import select
import socket
import struct
import sys
import time
from collections.abc import Callable

from dnslib import DNSError, DNSRecord

A, AAAA, TXT, OPT, ANY = 1, 28, 16, 41, 255


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"


def query(name: str, qtype: int = A, ident: int = 0, payload: int | None = None) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if payload else 0)
    body = encode_name(name) + struct.pack("!HH", qtype, 1)
    if payload:
        body += b"\0" + struct.pack("!HHIH", OPT, payload, 0, 0)
    return header + body


def pointer_loop(rng: random.Random) -> bytes:
    """The 208-byte attack: one question, one answer whose owner is two pointers aimed at each other."""
    question = query(f"loop{rng.randrange(1 << 20)}.example", ident=rng.randrange(1 << 16))
    first = len(question)
    owner = struct.pack("!HH", 0xC000 | (first + 2), 0xC000 | first)
    message = question[:6] + b"\0\1" + question[8:] + owner + struct.pack("!HHIH", A, 1, 60, 4) + bytes(4)
    return message + bytes(max(0, 208 - len(message)))


def _label_soup(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randrange(1, 8)):
        kind = rng.random()
        if kind < 0.5:
            length = rng.choice([0, 1, 3, 63, 64, 127])
            parts.append(bytes([length]) + rng.randbytes(min(length, 63)))
        elif kind < 0.8:
            parts.append(struct.pack("!H", 0xC000 | rng.randrange(0, 300)))
        else:
            parts.append(bytes([rng.choice([0x40, 0x41, 0x80, 0xBF, 0xFF])]))
    return b"".join(parts) + (b"\0" if rng.random() < 0.7 else b"")


def _record(rng: random.Random) -> bytes:
    owner = _label_soup(rng) if rng.random() < 0.5 else struct.pack("!H", 0xC00C)
    rtype = rng.choice([A, AAAA, TXT, OPT, 5, 6, 250, rng.randrange(1 << 16)])
    rdata = rng.randbytes(rng.choice([0, 4, 16, 40]))
    rdlength = len(rdata) if rng.random() < 0.8 else rng.randrange(1 << 16)
    return (
        owner + struct.pack("!HHIH", rtype, rng.randrange(1 << 16), rng.randrange(1 << 32), rdlength) + rdata
    )


def _edns_options(rng: random.Random) -> bytes:
    options = b""
    for _ in range(rng.randrange(0, 4)):
        value = rng.randbytes(rng.randrange(0, 20))
        length = len(value) if rng.random() < 0.7 else rng.randrange(1 << 16)
        options += struct.pack("!HH", rng.choice([8, 10, 12, 15, rng.randrange(1 << 16)]), length) + value
    return options


def fuzz_message(rng: random.Random) -> bytes:
    """One generated message: a query bent at one or more places a parser must check."""
    kind = rng.random()
    if kind < 0.1:
        return pointer_loop(rng)
    if kind < 0.2:
        return rng.randbytes(rng.randrange(0, 64))
    counts = [1, 0, 0, 0]
    if rng.random() < 0.5:
        counts = [rng.choice([0, 1, 1, 2, 0xFFFF]) for _ in range(4)]
    flags = (
        0x0100 if rng.random() < 0.8 else rng.choice([0x0000, 0x8180, 0x2800, 0x7900, rng.randrange(1 << 16)])
    )
    message = struct.pack("!HHHHHH", rng.randrange(1 << 16), flags, *counts)
    message += _label_soup(rng) if rng.random() < 0.5 else encode_name(f"f{rng.randrange(1 << 24)}.example")
    message += struct.pack("!HH", rng.choice([A, AAAA, ANY, TXT, rng.randrange(1 << 16)]), 1)
    for _ in range(rng.randrange(0, 4)):
        message += _record(rng)
    if rng.random() < 0.4:
        options = _edns_options(rng)
        rdlength = len(options) if rng.random() < 0.7 else rng.randrange(1 << 16)
        version = 0 if rng.random() < 0.8 else rng.randrange(256)
        message += (
            b"\0" + struct.pack("!HHIH", OPT, rng.randrange(1 << 16), version << 16, rdlength) + options
        )
    if rng.random() < 0.2:
        cut = rng.randrange(0, len(message) + 1)
        message = message[:cut]
    return message


def tcp_frames(rng: random.Random, messages: list[bytes]) -> bytes:
    """Length-prefixed messages, some with a prefix that lies (longer or shorter than the message)."""
    stream = b""
    for message in messages:
        length = len(message) if rng.random() < 0.8 else rng.randrange(0, 1 << 16)
        stream += struct.pack("!H", length) + message
    return stream


def _udp(server: str, source: str | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if source:
        sock.bind((source, 0))
    sock.setblocking(False)
    return sock


def fuzz(
    server: str, port: int, count: int, source: str | None, seed: int, tcp_share: float
) -> dict[str, int]:
    """Send `count` generated messages (a `tcp_share` of them over TCP); return what was sent."""
    rng = random.Random(seed)
    sock = _udp(server, source)
    sent = tcp_sent = errors = 0
    batch: list[bytes] = []
    while sent + tcp_sent < count:
        message = fuzz_message(rng)
        if rng.random() < tcp_share:
            batch.append(message)
            tcp_sent += 1
            if len(batch) >= 20:
                errors += _send_tcp(server, port, source, tcp_frames(rng, batch))
                batch = []
            continue
        try:
            sock.sendto(message, (server, port))
        except BlockingIOError:
            select.select([], [sock], [], 0.05)
        except OSError:
            errors += 1
        sent += 1
        if sent % 4096 == 0:
            _drain(sock)
    if batch:
        errors += _send_tcp(server, port, source, tcp_frames(rng, batch))
    return {"udp": sent, "tcp": tcp_sent, "errors": errors}


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(65535)
        except OSError:
            return


def _send_tcp(server: str, port: int, source: str | None, stream: bytes) -> int:
    try:
        with socket.create_connection(
            (server, port), timeout=2, source_address=(source, 0) if source else None
        ) as conn:
            conn.sendall(stream)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            while conn.recv(65535):
                pass
    except OSError:
        return 1
    return 0


def flood(
    kind: str, server: str, port: int, seconds: float, rate: float, source: str | None
) -> dict[str, int]:
    """Keep one attack going for `seconds` at about `rate` messages a second."""
    rng = random.Random(kind)
    deadline = time.monotonic() + seconds
    if kind == "tcp-idle":
        held = []
        for _ in range(int(rate)):
            conn = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET)
            if source:
                conn.bind((source, 0))
            conn.setblocking(False)
            try:
                conn.connect((server, port))
            except BlockingIOError:
                pass
            except OSError:
                conn.close()
                continue
            held.append(conn)
        time.sleep(max(0.0, deadline - time.monotonic()))
        closed = sum(1 for conn in held if _closed(conn))
        for conn in held:
            conn.close()
        return {"opened": len(held), "closed_by_server": closed}
    make: Callable[[int], bytes] = {
        "malformed": lambda i: fuzz_message(rng),
        "pointer-loop": lambda i: pointer_loop(rng),
        "misses": lambda i: query(f"miss{i}-{rng.randrange(1 << 30)}.example", ident=i & 0xFFFF),
        # a^n followed by b: a backtracking engine tries 2^n ways to match ^(a|a)*\.evil\.example$.
        "regex": lambda i: query("a" * (20 + i % 40) + "b.evil.example", ident=i & 0xFFFF),
    }[kind]
    sock = _udp(server, source)
    sent = 0
    start = time.monotonic()
    while time.monotonic() < deadline:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            with contextlib.suppress(OSError):
                sock.sendto(make(sent), (server, port))
            sent += 1
        _drain(sock)
        time.sleep(0.002)
    return {"sent": sent}


def _closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _ask_tcp(server: str, port: int, source: str | None, message: bytes) -> bytes | None:
    try:
        with socket.create_connection(
            (server, port), timeout=1.0, source_address=(source, 0) if source else None
        ) as conn:
            conn.sendall(struct.pack("!H", len(message)) + message)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
                chunk = conn.recv(65535)
                if not chunk:
                    return None
                data += chunk
            return data[2:]
    except OSError:
        return None


def control(
    server: str,
    port: int,
    seconds: float,
    interval: float,
    expect: dict[str, str],
    source: str | None,
    tcp_every: int = 0,
) -> dict[str, object]:
    """Ask each expected name in turn every `interval` (every `tcp_every`-th over TCP); record latency,
    misses and wrong answers."""
    sock = _udp(server, source)
    sock.setblocking(True)
    sock.settimeout(1.0)
    names = list(expect)
    latencies: list[float] = []
    missed: list[str] = []
    wrong: list[str] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        name = names[i % len(names)]
        ident = i & 0xFFFF
        i += 1
        started = time.monotonic()
        answer = None
        if tcp_every and i % tcp_every == 0:
            answer = _ask_tcp(server, port, source, query(name, ident=ident))
        else:
            sock.sendto(query(name, ident=ident), (server, port))
            while True:
                try:
                    reply = sock.recv(4096)
                except OSError:
                    break
                if reply[:2] == struct.pack("!H", ident):
                    answer = reply
                    break
        elapsed = time.monotonic() - started
        if answer is None:
            missed.append(name)
        else:
            latencies.append(elapsed)
            if expect[name] not in _addresses(answer):
                wrong.append(name)
        time.sleep(max(0.0, interval - elapsed))
    latencies.sort()
    return {
        "asked": i,
        "answered": len(latencies),
        "missed": missed,
        "wrong": wrong,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        if latencies
        else None,
        "max_ms": 1000 * latencies[-1] if latencies else None,
    }


def _addresses(reply: bytes) -> list[str]:
    """The A records of a reply (dnslib reads it: the lab's clients may, the resolver never does)."""
    try:
        return [str(record.rdata) for record in DNSRecord.parse(reply).rr if record.rtype == A]
    except DNSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dnsguard.lab.dnsload")
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fuzz")
    fl = sub.add_parser("flood")
    fl.add_argument("kind", choices=["malformed", "pointer-loop", "misses", "tcp-idle", "regex"])
    c = sub.add_parser("control")
    for p in (f, fl, c):
        p.add_argument("server")
        p.add_argument("port", type=int)
        p.add_argument("--source")
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--tcp-share", type=float, default=0.02)
    fl.add_argument("--seconds", type=float, required=True)
    fl.add_argument("--rate", type=float, default=1000)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--interval", type=float, default=0.02)
    c.add_argument("--expect", nargs="+", required=True, help="NAME=IPV4 pairs")
    c.add_argument("--tcp-every", type=int, default=0, help="ask every Nth query over TCP")
    args = parser.parse_args(argv)
    if args.mode == "fuzz":
        result: dict[str, object] = dict(
            fuzz(args.server, args.port, args.count, args.source, args.seed, args.tcp_share)
        )
    elif args.mode == "flood":
        result = dict(flood(args.kind, args.server, args.port, args.seconds, args.rate, args.source))
    else:
        expect = dict(pair.split("=", 1) for pair in args.expect)
        result = control(
            args.server, args.port, args.seconds, args.interval, expect, args.source, args.tcp_every
        )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
