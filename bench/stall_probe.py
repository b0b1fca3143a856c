#!/usr/bin/env python3
"""`dnsguard` with stall probes: what held the serving loop, measured inside the daemon.

    python bench/stall_probe.py OUTPUT resolve -c dnsguard.yaml

Runs the `dnsguard` command line after installing three probes, and appends their summary to OUTPUT
on SIGUSR1 (then starts counting afresh) and when the command returns (a SIGTERM stops `dnsguard
resolve` cleanly):

- the cyclic garbage collector: every collection's generation and duration (gc.callbacks);
- the UDP listeners' drain callback (UdpListener._readable): each call's duration;
  for both, the thread's CPU time as well: wall time well above it means the process lost its CPU
  (another process on a shared machine), not that the code was slow;
- loop lag: a task that sleeps LAG_TICK and records how late it woke, which any callback that held the
  loop (or a CPU the process did not get) shows as lateness.

bench/dns_latency.py --probe runs dnsguard under it. The probes cost a little CPU themselves (two clock
reads per drain, a wake-up every LAG_TICK); they are for finding stalls, not for throughput figures.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

LAG_TICK = 0.005
BOUNDS_MS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, float("inf"))


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BOUNDS_MS)
        self.total_ms = 0.0
        self.worst_ms = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS_MS, ms)] += 1
        self.total_ms += ms
        self.worst_ms = max(self.worst_ms, ms)

    def line(self, name: str) -> str:
        count = sum(self.counts)
        buckets = " ".join(f"<={bound:g}:{n}" for bound, n in zip(BOUNDS_MS, self.counts, strict=True) if n)
        return (
            f"{name:18s} n {count:8d}  total {self.total_ms:9.1f} ms  worst {self.worst_ms:7.2f} ms  "
            f"ms buckets {buckets}"
        )


collections_by_generation = {0: Histogram(), 1: Histogram(), 2: Histogram()}
collections_cpu = {0: Histogram(), 1: Histogram(), 2: Histogram()}
drains = Histogram()
drains_cpu = Histogram()
lag = Histogram()
_gc_started = _gc_cpu_started = 0.0
_gc_sizes: list[tuple[int, int]] = []
_census: list[tuple[int, int, list[tuple[str, int]], str]] = []
CENSUS = bool(os.environ.get("STALL_PROBE_CENSUS"))
"""Also list what each gen1 and gen2 collection walks (costs a stall of its own)."""


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started, _gc_cpu_started
    if phase == "start":
        if CENSUS and info["generation"] >= 1:
            young = [item for g in range(info["generation"] + 1) for item in gc.get_objects(g)]
            kinds = collections.Counter(type(item).__qualname__ for item in young)
            older = gc.get_objects(1)
            kinds = collections.Counter(type(item).__qualname__ for item in older)
            tuples = [item for item in older if type(item) is tuple]
            example = repr(tuples[len(tuples) // 2])[:160] if tuples else ""
            _census.append((info["generation"], len(young), kinds.most_common(5), example))
        _gc_started = time.perf_counter()
        _gc_cpu_started = time.thread_time()
        return
    ms = (time.perf_counter() - _gc_started) * 1000
    collections_by_generation[info["generation"]].add(ms)
    collections_cpu[info["generation"]].add((time.thread_time() - _gc_cpu_started) * 1000)
    if info["generation"] == 2:
        _gc_sizes.append((info["collected"], len(gc.get_objects(2))))


def _wrap_drain() -> None:
    from dnsguard.net import dns_listeners

    readable: Callable[[Any], None] = dns_listeners.UdpListener._readable
    clock, cpu = time.perf_counter, time.thread_time

    def timed(self: Any) -> None:
        started, cpu_started = clock(), cpu()
        try:
            readable(self)
        finally:
            drains.add((clock() - started) * 1000)
            drains_cpu.add((cpu() - cpu_started) * 1000)

    dns_listeners.UdpListener._readable = timed  # type: ignore[method-assign]


def _start_lag_probe() -> None:
    from dnsguard.app import resolve

    serve = resolve._serve

    async def probed(*args: Any) -> None:
        async def ticks() -> None:
            clock = time.perf_counter
            while True:
                due = clock() + LAG_TICK
                await asyncio.sleep(LAG_TICK)
                lag.add(max(0.0, clock() - due) * 1000)

        task = asyncio.get_running_loop().create_task(ticks())
        try:
            await serve(*args)
        finally:
            task.cancel()

    resolve._serve = probed  # type: ignore[assignment]


def summary() -> str:
    lines = [collections_by_generation[g].line(f"gc gen{g}") for g in (0, 1, 2)]
    lines += [collections_cpu[g].line(f"gc gen{g} cpu") for g in (0, 1, 2)]
    lines += [drains.line("udp drain"), drains_cpu.line("udp drain cpu")]
    lines += [lag.line(f"loop lag ({LAG_TICK * 1000:g} ms tick)")]
    lines += [f"gc gen2 (collected, objects in gen2 after): {_gc_sizes[-10:]}"]
    lines += [f"gc thresholds {gc.get_threshold()} frozen {gc.get_freeze_count()} counts {gc.get_count()}"]
    lines += [f"collection census (generation, objects walked, most): {item}" for item in _census[-6:]]
    tracked = gc.get_objects()
    kinds = collections.Counter(type(item).__qualname__ for item in tracked)
    lines += [f"objects tracked by gc (not frozen): {len(tracked)}, most: {kinds.most_common(12)}"]
    return "\n".join(lines) + "\n\n"


def reset() -> None:
    histograms = [*collections_by_generation.values(), *collections_cpu.values(), drains, drains_cpu, lag]
    for histogram in histograms:
        histogram.__init__()  # type: ignore[misc]
    _gc_sizes.clear()
    _census.clear()


def main() -> int:
    output, argv = sys.argv[1], sys.argv[2:]
    gc.callbacks.append(_on_gc)
    _wrap_drain()
    _start_lag_probe()
    from dnsguard.cli import main as dnsguard_main

    def write_and_reset(signal_number: int, frame: object) -> None:
        with open(output, "a") as out:
            out.write(summary() + "--\n")
        reset()

    signal.signal(signal.SIGUSR1, write_and_reset)
    try:
        return dnsguard_main(argv)
    finally:
        with open(output, "a") as out:
            out.write(summary())


if __name__ == "__main__":
    raise SystemExit(main())
