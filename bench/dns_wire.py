"""Micro-benchmark of the DNS fast path on one core: blocked answers, cache hits, cache fills.

Run from the repository root:  python bench/dns_wire.py [--rounds N] [--profile PATH_NAME]

Queries are real page-load host names (shared/data/queries/pageload-hostnames.txt when present, else
synthetic names), half A and half AAAA, half of them with EDNS and a client cookie as `dig` sends them.
Each figure is the best of several rounds over the whole query list, in operations per second.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnsguard.dns import cache as dns_cache
from dnsguard.dns import wire

NAMES_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "queries" / "pageload-hostnames.txt"


def load_names(limit: int) -> list[str]:
    """Page-load host names in request order (repeats kept), or synthetic ones without the data set."""
    if NAMES_FILE.exists():
        names = [line.strip() for line in NAMES_FILE.read_text().splitlines() if line.strip()]
        return names[:limit]
    rng = random.Random(1)
    distinct = [f"host{n}.cdn{n % 97}.example{n % 13}.com" for n in range(3000)]
    return [rng.choice(distinct) for _ in range(limit)]


def build_query(ident: int, name: str, qtype: int, edns: bool) -> bytes:
    """A query as dig 9.18 sends it: RD and AD set; with EDNS, payload 1232 and an 8-byte client cookie."""
    header = struct.pack(">HHHHHH", ident, 0x0120, 1, 0, 0, 1 if edns else 0)
    question = wire.encode_name(name) + struct.pack(">HH", qtype, 1)
    if not edns:
        return header + question
    cookie = struct.pack(">HH", 10, 8) + bytes(range(8))
    return header + question + b"\x00" + struct.pack(">HHIH", 41, 1232, 0, len(cookie)) + cookie


def build_upstream_reply(query: wire.Query) -> bytes:
    """A typical CDN answer: CNAME plus two addresses, compressed, with the upstream's OPT RR."""
    question = query.data[12 : query.question_end]
    target = b"\x04edge\x03cdn\x03net\x00"
    cname = struct.pack(">HHHIH", 0xC00C, 5, 1, 3600, len(target)) + target
    pointer = 0xC000 | (query.question_end + 12)
    rdlength = 4 if query.qtype == wire.QTYPE_A else 16
    address = bytes(range(1, rdlength + 1))
    addresses = b"".join(
        struct.pack(">HHHIH", pointer, query.qtype, 1, 300, rdlength) + address for _ in "ab"
    )
    header = struct.pack(">HHHHHH", query.id, 0x8180, 1, 3, 0, 1)
    return header + question + cname + addresses + b"\x00" + struct.pack(">HHIH", 41, 1232, 0, 0)


def best_rate(run: Callable[[], int], rounds: int) -> float:
    """Best operations per second over `rounds` calls of `run` (which returns its operation count)."""
    # CPU time of this process, so that other processes sharing the core do not count against us.
    best = 0.0
    for _ in range(rounds):
        start = time.process_time()
        count = run()
        elapsed = time.process_time() - start
        best = max(best, count / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--queries", type=int, default=30_000)
    parser.add_argument("--profile", choices=["blocked", "hit", "fill"], help="cProfile one path instead")
    args = parser.parse_args()

    names = load_names(args.queries)
    rng = random.Random(7)
    datagrams = [
        build_query(rng.randrange(65536), name, wire.QTYPE_A if n % 2 else wire.QTYPE_AAAA, n % 4 < 2)
        for n, name in enumerate(names)
    ]
    queries = [wire.parse_query(data) for data in datagrams]
    replies = [build_upstream_reply(query) for query in queries]
    ede = wire.ede_option(wire.EDE_BLOCKED, "hagezi-pro")

    cache = dns_cache.AnswerCache(max_entries=100_000)
    for query, reply in zip(queries, replies, strict=True):
        cache.put(query, reply, 0.0)
    parse_query, null_ip, nxdomain = wire.parse_query, wire.null_ip, wire.nxdomain

    def blocked() -> int:
        for data in datagrams:
            null_ip(parse_query(data), 10)
        return len(datagrams)

    def blocked_nxdomain_ede() -> int:
        for data in datagrams:
            nxdomain(parse_query(data), 10, ede)
        return len(datagrams)

    def parse_only() -> int:
        for data in datagrams:
            parse_query(data)
        return len(datagrams)

    clock = [10.0]

    def hit() -> int:
        # 100k queries per second of fake time: an entry's TTLs are re-patched once per second of age.
        get = cache.get
        now = clock[0]
        for query in queries:
            get(query, now)
            now += 1e-5
        clock[0] = now
        return len(queries)

    def hit_repatch() -> int:
        # Worst case: nearly every hit sees its entry at a new age (0..249 s) and rebuilds its TTLs.
        get = cache.get
        base = clock[0]
        for n, query in enumerate(queries):
            get(query, base + n % 250)
        return len(queries)

    def parse_and_hit() -> int:
        get = cache.get
        now = clock[0]
        for data in datagrams:
            get(parse_query(data), now)
            now += 1e-5
        clock[0] = now
        return len(datagrams)

    def fill() -> int:
        fresh = dns_cache.AnswerCache(max_entries=100_000)
        put, meta_of = fresh.put, wire.parse_response_meta
        for query, reply in zip(queries, replies, strict=True):
            put(query, reply, 0.0, meta_of(reply))
        return len(queries)

    if args.profile:
        target = {"blocked": blocked, "hit": hit, "fill": fill}[args.profile]
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [target() for _ in range(args.rounds)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
        return

    distinct = len({query.qname for query in queries})
    version = sys.version.split()[0]
    print(f"python {version}, {len(queries)} queries over {distinct} names, best of {args.rounds} (CPU time)")
    for label, run in [
        ("parse_query", parse_only),
        ("parse_query + null_ip (blocked)", blocked),
        ("parse_query + nxdomain+SOA+EDE", blocked_nxdomain_ede),
        ("cache.get (hit, TTL patch memo)", hit),
        ("cache.get (hit, TTL re-patch)", hit_repatch),
        ("parse_query + cache.get (hit)", parse_and_hit),
        ("parse_response_meta + cache.put", fill),
    ]:
        rate = best_rate(run, args.rounds)
        print(f"{label:34s} {rate / 1000:8.0f} k ops/s  {1e9 / rate:7.0f} ns/op")


if __name__ == "__main__":
    main()
