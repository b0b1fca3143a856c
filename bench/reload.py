#!/usr/bin/env python3
"""DNS across list reloads and restarts: a steady query stream while `dnsguard resolve` swaps 1.25M names.

    sudo .venv/bin/python bench/reload.py [--rate 2000] [--settle 8] [--code DIR] [--json out.json]

`dnsguard resolve` runs in a lab namespace with one list: the union of every block list in
shared/data/blocklists (1.25M distinct names). A sender in the same namespace asks at a fixed rate
(half listed names, half names the lab's authoritative server answers) and records every query's
latency, or its loss (no reply within 2 s). While it runs:

1. cold start: no compiled cache; time until the first filtered answer;
2. reload: the list file gains 1000 names and the daemon gets SIGHUP: the whole list is recompiled;
3. restart: SIGTERM, then a new daemon on the same (now warm) cache;
4. a second reload after the restart (its memory peak is measured against a start from the cache).

Reported per phase: p99 and max latency, lost queries, listed names answered unfiltered, and the time
without filtered answers; the resolver's VmRSS (steady) and VmHWM (peak) from /proc, and the compiler
child's peak. `--code DIR` runs the daemon from another source tree (e.g. an export of an older commit)
for a before/after comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "blocklists"
PORT = 5300
TIMEOUT = 2.0
ALLOWED = [f"site{i}.bench-web.example" for i in range(500)]
_HOSTS = re.compile(r"[0-9a-f:.]+")


# -- the sender (runs inside the namespace) --------------------------------------------------------


def wire_query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)


def send(args: argparse.Namespace) -> int:
    """Ask at `rate` q/s until the stop file appears (or `max_seconds`); write one record per query."""
    names = Path(args.names).read_text().split()
    rng = random.Random(3)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    target = ("127.0.0.1", args.port)
    pending: dict[int, tuple[float, int, bool]] = {}
    records: list[tuple[float, float, int]] = []
    # outcome: 0 filtered (listed, 0.0.0.0), 1 answered (not listed), 2 unfiltered (listed, real
    # address), 3 error rcode, 4 lost
    interval = 1.0 / args.rate
    started = time.monotonic()
    next_send = started
    seq = 0
    stop = Path(args.stop)
    last_check = started
    while True:
        now = time.monotonic()
        if now - last_check > 0.2:
            last_check = now
            if stop.exists() or now - started > args.max_seconds:
                break
            for ident, (sent, _index, _) in list(pending.items()):
                if now - sent > TIMEOUT:
                    del pending[ident]
                    records.append((sent, -1.0, 4))
        while next_send <= now:
            ident = seq & 0xFFFF
            listed = seq % 2 == 0
            name = rng.choice(names) if listed else ALLOWED[seq % len(ALLOWED)]
            old = pending.pop(ident, None)
            if old is not None:
                records.append((old[0], -1.0, 4))
            with contextlib.suppress(BlockingIOError):
                sock.sendto(wire_query(name, ident), target)
            pending[ident] = (next_send, seq, listed)
            seq += 1
            next_send += interval
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send - time.monotonic(), 0.01)))
        if not ready:
            continue
        while True:
            try:
                reply = sock.recv(4096)
            except BlockingIOError:
                break
            if len(reply) < 12:
                continue
            got = time.monotonic()
            ident = struct.unpack_from("!H", reply)[0]
            entry = pending.pop(ident, None)
            if entry is None:
                continue
            sent, _, listed = entry
            rcode = reply[3] & 0x0F
            if rcode != 0 and not (listed and rcode == 3):
                outcome = 3
            elif listed:
                outcome = 0 if reply.endswith(b"\0\0\0\0") or rcode == 3 else 2
            else:
                outcome = 1
            records.append((sent, got - sent, outcome))
    for sent, _, _ in pending.values():
        records.append((sent, -1.0, 4))
    Path(args.out).write_text(json.dumps(records))
    return 0


# -- the bench -----------------------------------------------------------------------------------


def union_names() -> list[str]:
    """Every block name in the shared lists (hosts, plain, ||x^, *.x; allowlists and AdGuard left out)."""
    names: set[str] = set()
    for path in sorted(DATA.glob("*.txt")):
        if path.name.startswith(("LICENSE", "hagezi-allowlist", "anudeep-allowlist", "adguard-sdns")):
            continue
        for line in path.read_text(errors="replace").splitlines():
            text = line.strip().lower()
            if not text or text[0] in "#![":
                continue
            if text.startswith("||") and text.endswith("^"):
                names.add(text[2:-1])
            elif text.startswith("*."):
                names.add(text[2:])
            else:
                fields = text.split()
                if len(fields) >= 2 and _HOSTS.fullmatch(fields[0]):
                    for name in fields[1:]:
                        if name.startswith("#"):
                            break
                        names.add(name)
                elif len(fields) == 1:
                    names.add(fields[0])
    return sorted(names)


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Watch:
    """Samples the daemon's and its compiler's memory while waiting for something."""

    def __init__(self) -> None:
        self.child_hwm = 0
        self.rss_max = 0

    def sample(self, pid: int) -> None:
        self.rss_max = max(self.rss_max, proc_status(pid).get("VmRSS", 0))
        for child in children(pid):
            self.child_hwm = max(self.child_hwm, proc_status(child).get("VmHWM", 0))

    def until(self, pid: int, condition: Any, timeout: float, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.sample(pid)
            if condition():
                return time.monotonic()
            time.sleep(0.02)
        raise SystemExit(f"timed out waiting for {what}")


def filtered(lab: Any, name: str) -> bool:
    """True when the daemon answers a listed name with the blocking address."""
    return "0.0.0.0" in lab.dig("client", name, "127.0.0.1", port=PORT, timeout=0.5).stdout


def first_filtered_after(records: list[list[float]], moment: float) -> float:
    """Seconds from `moment` to the first filtered answer to a query sent after it."""
    answers = [r[0] + r[1] for r in records if r[2] == 0 and r[0] > moment]
    return min(answers) - moment if answers else float("nan")


def memory_line(memory: dict[str, Any]) -> str:
    steady, after = memory["steady"], memory["after"]
    steady_kb = steady.get("VmRSS", 0)
    return (
        f"steady VmRSS {steady_kb / 1024:.1f} MB (anon {steady.get('RssAnon', 0) / 1024:.1f}, "
        f"file {steady.get('RssFile', 0) / 1024:.1f}); during the reload max VmRSS "
        f"{memory['rss_max_kb'] / 1024:.1f} MB ({memory['rss_max_kb'] / max(steady_kb, 1):.2f}x steady); "
        f"VmHWM after {after.get('VmHWM', 0) / 1024:.1f} MB"
    )


def log_count(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0


def phase(records: list[list[float]], start: float, end: float) -> dict[str, float]:
    chosen = [r for r in records if start <= r[0] < end]
    latencies = sorted(r[1] for r in chosen if r[1] >= 0)
    listed_filtered = [r[0] + r[1] for r in chosen if r[2] == 0]
    gap = 0.0
    previous = start
    for answered in sorted(listed_filtered):
        gap = max(gap, answered - previous)
        previous = answered
    gap = max(gap, end - previous) if listed_filtered else end - start
    return {
        "queries": len(chosen),
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else float("nan"),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "lost": sum(1 for r in chosen if r[2] == 4),
        "unfiltered": sum(1 for r in chosen if r[2] == 2),
        "errors": sum(1 for r in chosen if r[2] == 3),
        "longest_without_filtered_s": gap,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of steady stream between steps")
    parser.add_argument("--code", help="run the daemon from this source tree (PYTHONPATH)")
    parser.add_argument(
        "--allow-clients",
        nargs="+",
        help="resolver.allow-clients (default: the configuration's default, which reads local networks)",
    )
    parser.add_argument("--json")
    parser.add_argument("--send", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        return send(args)

    import yaml

    from dnsguard.lab import ADDRESSES, Lab

    names = union_names()
    print(f"{len(names)} distinct names in the union of the block lists", flush=True)
    with Lab(lan=False) as lab:
        work = lab.log_dir
        union = work / "union.txt"
        union.write_text("\n".join(names) + "\n")
        sample = work / "sample.txt"
        sample.write_text("\n".join(random.Random(5).sample(names, 50000)) + "\n")
        config = {
            "resolver": {"listen": [f"127.0.0.1:{PORT}"]},
            "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict"},
            "lists": {"union": {"sources": [str(union)]}},
            "groups": {"default": {"block": ["union"]}},
            "blocking": {"mode": "null_ip"},
            "loading": {"cache-dir": str(work / "cache")},
            "reload": {"watch": False},
            "logging": {"level": "info"},
        }
        if args.allow_clients:
            config["resolver"]["allow-clients"] = args.allow_clients  # type: ignore[index]
        config_path = work / "dnsguard.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = dict(os.environ)
        if args.code:
            env["PYTHONPATH"] = str(Path(args.code).resolve())
            env["PYTHONSAFEPATH"] = "1"  # `python -m` would otherwise put the current tree first
        watch = Watch()
        events: dict[str, float] = {}

        def start_daemon(label: str) -> Any:
            events[f"{label}_start"] = time.monotonic()
            process = lab.python(
                "client", "dnsguard", "resolve", "-c", str(config_path), log_name=label, env=env
            )
            return process

        stop_file = work / "sender.stop"
        out = work / "sender.json"
        daemon = start_daemon("cold")
        sender = lab.popen(
            "client",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--send",
                "--names",
                str(sample),
                "--out",
                str(out),
                "--stop",
                str(stop_file),
                "--rate",
                str(args.rate),
                "--port",
                str(PORT),
            ],
            log_name="sender",
        )
        log = Path(daemon.log_path)
        watch.until(daemon.pid, lambda: filtered(lab, names[0]), 300, "the cold start")
        events["cold_ready"] = time.monotonic()
        time.sleep(args.settle)

        # Reload: the file changes (1000 more names), SIGHUP.
        with union.open("a") as handle:
            handle.write("".join(f"added{i}.reload-bench.example\n" for i in range(1000)))
        before = log_count(log, "configuration reloaded")
        steady = proc_status(daemon.pid)
        watch.rss_max = 0
        events["reload1"] = time.monotonic()
        os.kill(daemon.pid, signal.SIGHUP)
        events["reload1_done"] = watch.until(
            daemon.pid, lambda: log_count(log, "configuration reloaded") > before, 300, "the reload"
        )
        reload1_memory: dict[str, Any] = {
            "steady": steady,
            "rss_max_kb": watch.rss_max,
            "after": proc_status(daemon.pid),
        }
        new_name = lab.dig("client", "added7.reload-bench.example", "127.0.0.1", port=PORT).stdout
        reload1_memory["new_name_blocked"] = "0.0.0.0" in new_name
        time.sleep(args.settle)

        # Restart on the warm cache.
        events["restart"] = time.monotonic()
        lab.stop(daemon)
        daemon = start_daemon("warm")
        log = Path(daemon.log_path)
        watch.until(daemon.pid, lambda: filtered(lab, names[1]), 120, "the warm start")
        events["warm_ready"] = time.monotonic()
        time.sleep(args.settle)

        # Second reload, measured against the start from the cache.
        with union.open("a") as handle:
            handle.write("".join(f"again{i}.reload-bench.example\n" for i in range(1000)))
        steady2 = proc_status(daemon.pid)
        watch.rss_max = 0
        before = log_count(log, "configuration reloaded")
        events["reload2"] = time.monotonic()
        os.kill(daemon.pid, signal.SIGHUP)
        events["reload2_done"] = watch.until(
            daemon.pid, lambda: log_count(log, "configuration reloaded") > before, 300, "the second reload"
        )
        time.sleep(2)
        reload2_memory: dict[str, Any] = {
            "steady": steady2,
            "rss_max_kb": watch.rss_max,
            "after": proc_status(daemon.pid),
        }
        time.sleep(args.settle - 2)
        events["end"] = time.monotonic()
        stop_file.write_text("")
        sender.wait(timeout=60)
        records = json.loads(out.read_text())
        lab.stop(daemon)

    t0 = events["cold_start"]
    phases = {
        "steady": phase(records, events["cold_ready"] + 1, events["reload1"]),
        "reload": phase(records, events["reload1"], events["reload1_done"] + 1),
        "restart": phase(records, events["restart"], events["warm_ready"] + 1),
        "reload_after_restart": phase(records, events["reload2"], events["reload2_done"] + 1),
    }
    timings = {
        "cold_start_to_filtered_s": first_filtered_after(records, t0),
        "reload1_s": events["reload1_done"] - events["reload1"],
        "warm_start_to_filtered_s": first_filtered_after(records, events["warm_start"]),
        "reload2_s": events["reload2_done"] - events["reload2"],
    }
    print(
        f"\nrate {args.rate} q/s, {len(records)} queries; code: {args.code or 'this tree'}; "
        f"allow-clients: {args.allow_clients or 'default'}"
    )
    for key, value in timings.items():
        print(f"  {key:28s} {value:7.2f}")
    print(
        f"  {'phase':22s}{'queries':>9s}{'p50 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}{'lost':>7s}"
        f"{'unfilt':>8s}{'no-filter s':>13s}"
    )
    for name, figures in phases.items():
        print(
            f"  {name:22s}{figures['queries']:9d}{figures['p50_ms']:9.2f}{figures['p99_ms']:9.2f}"
            f"{figures['max_ms']:9.1f}{figures['lost']:7d}{figures['unfiltered']:8d}"
            f"{figures['longest_without_filtered_s']:13.3f}"
        )
    for label, memory in (("after the cold start", reload1_memory), ("after the warm start", reload2_memory)):
        print(f"  reload {label}: {memory_line(memory)}")
    print(
        f"  compiler child peak VmHWM {watch.child_hwm / 1024:.0f} MB; new name blocked after reload: "
        f"{reload1_memory['new_name_blocked']}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "timings": timings,
                    "phases": phases,
                    "memory": [reload1_memory, reload2_memory],
                    "child_hwm_kb": watch.child_hwm,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
