#!/usr/bin/env python3
"""Instructions per DNS query through the UDP listener, counted by callgrind: steady on a noisy machine.

    sudo .venv/bin/python bench/dns_instructions.py [--baseline OTHER_CHECKOUT] [--rounds 50] [--mix cached]
                                                    [--batch 256] [--busy]

Timings on a shared machine move by tens of percent from one run to the next; the number of
instructions a change saves does not. For each checkout (this one, and --baseline's, e.g. a
`git worktree add --detach DIR main`), a child process builds a resolver with the default policy,
answers 500 names once through an upstream reply (so that each has a plan and a cache entry), then,
in rounds, sends --batch of those queries (256) from a client socket and lets `UdpListener._readable`
answer them as the event loop's wake-ups would (the first of a round, on a socket that was quiet,
reads one query with recvfrom and answers it with sendto; the next drains the rest: recvmmsg, the
resolver's replayed plan, sendmmsg), reading the replies back. It runs
under `valgrind --tool=callgrind` twice, with 10 and with 10 + --rounds rounds: the difference over
the queries of the extra rounds is the user-space instructions per query (the client's sends and
receives included, the kernel's work not). PYTHONHASHSEED is fixed and the resolver's clock stands
still (entries age by the second, and a run lasts as long as the machine makes it), so a count
repeats within about half a percent. `--mix blocked` asks names the policy blocks instead (a reply
plan, no cache). `--batch 1` counts what a query costs at a low rate, where every query meets a quiet
socket (the rounds are then 256 times as many). `--busy` keeps the listener's clock still, so that no
wake-up meets a quiet socket: each round is one wake-up of a socket that was busy a moment ago, as at
10,000 queries a second, where most find one query or two (`--busy --batch 2`).

Each child runs in a network namespace of its own (`unshare -n`, loopback only), gone when it exits.
Needs valgrind (Debian's package) and root for the namespace.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from counting import CALLGRIND, arguments, checkouts, collected, report, run_measured

QUERIES_PER_ROUND = 256
"""The queries a round sends by default, that one wake-up of the listener answers."""
WARM_ROUNDS = 10
NAMES = 500


def child(checkout: str, rounds: int, mix: str, batch: int, busy: bool) -> None:
    """The measured process: a listener and a resolver answering `batch` queries a round."""
    sys.path.insert(0, checkout)
    from dnslib import EDNS0, QTYPE, RR, A, DNSRecord

    from dnsguard.app.lists import build_sync
    from dnsguard.config import Config, GroupConfig, ListConfig
    from dnsguard.dns.cache import AnswerCache
    from dnsguard.dns.resolver import Forward, Resolver
    from dnsguard.net.dns_listeners import ListenerStats, UdpListener
    from dnsguard.policy.engine import Policy

    work = Path(f"/tmp/dns-instructions-{os.getpid()}")
    work.mkdir(exist_ok=True)
    names = [f"host{i}.example.com" for i in range(NAMES)]
    (work / "blocked.txt").write_text("\n".join(names) + "\n")
    config = Config()
    if mix == "blocked":
        config.lists = {"bench": ListConfig(sources=[str(work / "blocked.txt")])}
        config.groups = {"default": GroupConfig(block=["bench"])}
    for group in config.groups.values():
        group.validate()

    def clock() -> float:
        # CLOCK_BOOTTIME stopped: the cache's entries age by the second, and a run under callgrind lasts
        # a minute or more, longer under load, so a real clock would rebuild entries a varying number of
        # times. A Python function, as the daemon's clock is.
        return 1000.0

    resolver = Resolver(
        Policy(config, build_sync(config).matcher), AnswerCache(max_entries=10_000), clock=clock
    )
    rng = random.Random(3)
    messages = []
    for name in names:
        question = DNSRecord.question(name, "A")
        question.add_ar(EDNS0(udp_len=1232))
        question.header.id = rng.randrange(65536)
        data = bytes(question.pack())
        plan = resolver.answer_now(data, "127.0.0.1")
        if isinstance(plan, Forward):
            reply = question.reply()
            reply.add_answer(RR(name, QTYPE.A, rdata=A("198.51.100.1"), ttl=3000))
            resolver.complete(plan, bytes(reply.pack()))
        messages.append(data)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 5300))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 5301))
    for sock in (server, client):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    client.setblocking(False)
    # The listener's clock moves on between rounds only (with `busy`, never): a round's queries meet a
    # socket that was quiet, and the wake-ups that follow the first come at once, as the loop makes them.
    listener_time = [0.0]
    listener = UdpListener(server, resolver, ListenerStats(), clock=lambda: listener_time[0])
    twice = messages * 2
    for round_number in range(rounds):
        start = round_number * batch % NAMES
        for message in twice[start : start + batch]:
            client.sendto(message, ("127.0.0.1", 5300))
        if not busy:
            listener_time[0] += 1.0
        answered = 0
        for _ in range(3):  # readiness is level-triggered: the loop calls again while queries wait
            listener._readable()
            try:
                while True:
                    client.recv(4096)
                    answered += 1
            except BlockingIOError:
                pass
            if answered == batch:
                break
        if answered != batch:
            raise SystemExit(f"round {round_number}: {answered} answers of {batch}")
    shutil.rmtree(work, ignore_errors=True)


def run_child(
    checkout: str, rounds: int, mix: str, batch: int, busy: bool, tool: str = ""
) -> subprocess.CompletedProcess[str]:
    """The measured process, `rounds` rounds, in a network namespace of its own; `tool` runs it (valgrind)."""
    script = (
        f"ip link set lo up && exec {tool} {sys.executable} {Path(__file__).resolve()} "
        f"--child {checkout} --rounds {rounds} --mix {mix} --batch {batch}{' --busy' if busy else ''}"
    )
    return run_measured(["unshare", "-n", "sh", "-c", script], checkout)


def instructions(checkout: str, rounds: int, mix: str, batch: int, busy: bool) -> int:
    """User-space instructions of a child process of `rounds` rounds, as callgrind counts them."""
    return collected(run_child(checkout, rounds, mix, batch, busy, CALLGRIND).stderr, checkout)


def per_query(checkout: str, rounds: int, mix: str, batch: int, busy: bool) -> float:
    # One run outside callgrind first: modules changed since their last import are compiled there, not
    # inside one of the two counted runs (which would put thousands of instructions a query on it).
    # Rounds of fewer queries are more of them, so that every count covers as many queries.
    scale = max(1, QUERIES_PER_ROUND // batch)
    warm, rounds = WARM_ROUNDS * scale, rounds * scale
    run_child(checkout, 1, mix, batch, busy)
    extra = instructions(checkout, warm + rounds, mix, batch, busy) - instructions(
        checkout, warm, mix, batch, busy
    )
    return extra / (rounds * batch)


def main() -> int:
    parser = arguments(__doc__, rounds=50)
    parser.add_argument("--mix", choices=("cached", "blocked"), default="cached")
    parser.add_argument(
        "--batch", type=int, default=QUERIES_PER_ROUND, help="queries a round sends at once (1: all quiet)"
    )
    parser.add_argument("--busy", action="store_true", help="no wake-up meets a quiet socket")
    args = parser.parse_args()
    if not 1 <= args.batch <= NAMES:
        parser.error(f"--batch: from 1 to {NAMES} (the names a round takes its queries from)")
    if args.child:
        child(args.child, args.rounds, args.mix, args.batch, args.busy)
        return 0
    if shutil.which("valgrind") is None or shutil.which("unshare") is None:
        raise SystemExit("needs valgrind and unshare (Debian's valgrind and util-linux)")
    counted = checkouts(__file__, args.baseline)
    counts = {
        label: per_query(checkout, args.rounds, args.mix, args.batch, args.busy)
        for label, checkout in counted.items()
    }
    report(counts, counted, f"{args.mix} query, {args.batch} a round{', busy' if args.busy else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
