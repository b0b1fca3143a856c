#!/usr/bin/env python3
"""Fuzz a running `dnsguard resolve` with structure-aware bad messages while a control client asks.

    sudo .venv/bin/python bench/fuzz_dns.py [--count 1000000] [--seed 1]

The resolver runs in the lab's gateway namespace with the repository's ad list. From the LAN host,
`dnsguard.lab.dnsload fuzz` sends --count generated messages (compression pointers into loops and
past the end, every label type, lying section counts, overrunning EDNS options, TCP frames with
lying length prefixes; 2 % over TCP) from an address the configuration exempts from the rate limit,
so every one of them reaches the parser. A control client on another LAN address asks three names
(upstream, blocked, cached) over UDP and TCP the whole time. Reported: inputs sent, whether the
daemon survived, tracebacks in its log, control queries missed or wrong, the control client's p99,
the malformed counters, and the daemon's RSS before, right after and 15 s after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab.peers import start_resolver

ROOT = Path(__file__).resolve().parents[1]
FUZZER = "192.0.2.77"
METRICS = "127.0.0.1:9153"
EXPECT = {
    f"www.{ADDRESSES.zone}": ADDRESSES.http4,
    "www.doubleclick.net": "0.0.0.0",
    "example.org": ADDRESSES.http4,
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def last_json(path: Path) -> dict[str, object]:
    return dict(json.loads(path.read_text().strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with Lab(lan=True) as lab:
        lab.sh("lanhost", f"ip addr add {FUZZER}/24 dev eth0")
        config = {
            "resolver": {
                "listen": [f"{ADDRESSES.lan_gw4}:53", "127.0.0.1:53"],
                "rate-limit": {"exempt": ["127.0.0.0/8", f"{FUZZER}/32"]},
            },
            "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict", "timeout": "1s"},
            "lists": {"ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]}},
            "groups": {"default": {"block": ["ads"]}},
            "metrics": {"listen": METRICS},
            "loading": {"cache-dir": str(lab.log_dir / "lists")},
            "logging": {"level": "warning"},
        }
        daemon = start_resolver(lab, config, ask_from="lanhost", server=ADDRESSES.lan_gw4)
        assert daemon.process is not None
        pid = daemon.process.pid
        rss_before = rss_kib(pid)
        fuzz = lab.python(
            "lanhost",
            "dnsguard.lab.dnsload",
            *("fuzz", ADDRESSES.lan_gw4, "53", "--count", str(args.count), "--seed", str(args.seed)),
            *("--source", FUZZER),
            log_name="fuzz",
        )
        started = time.monotonic()
        controls = []
        # Control rounds of 10 s until the fuzzer is done (one long round would hide when misses happen).
        while fuzz.poll() is None:
            expect = [f"{name}={answer}" for name, answer in EXPECT.items()]
            control = lab.python(
                "lanhost",
                "dnsguard.lab.dnsload",
                *("control", ADDRESSES.lan_gw4, "53", "--seconds", "10", "--tcp-every", "5"),
                *("--source", ADDRESSES.lan_host4, "--expect", *expect),
                log_name="control",
            )
            control.wait(timeout=120)
            controls.append(last_json(Path(control.log_path)))  # type: ignore[attr-defined]
        seconds = time.monotonic() - started
        sent = last_json(Path(fuzz.log_path))  # type: ignore[attr-defined]
        alive = daemon.process.poll() is None
        rss_after = rss_kib(pid) if alive else 0
        # Freed memory is not always handed back at once (pymalloc arenas, a full upstream queue that
        # drains): the figure that says whether anything grows without bound is the one after a rest.
        time.sleep(15)
        rss_settled = rss_kib(pid) if daemon.process.poll() is None else 0
        log = daemon.log()
        exposition = lab.run("client", ["curl", "-s", f"http://{METRICS}/metrics"], check=False).stdout
        malformed = {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in exposition.splitlines()
            if line.startswith("dnsguard_dns_malformed_total{")
        }
    asked = sum(int(c["asked"]) for c in controls)  # type: ignore[call-overload]
    missed = sum(len(c["missed"]) for c in controls)  # type: ignore[arg-type]
    wrong = sum(len(c["wrong"]) for c in controls)  # type: ignore[arg-type]
    p99 = max((float(c["p99_ms"]) for c in controls if c["p99_ms"] is not None), default=float("nan"))  # type: ignore[arg-type]
    summary = {
        "inputs": sent,
        "seconds": round(seconds, 1),
        "daemon_alive": alive,
        "tracebacks": log.count("Traceback"),
        "control_asked": asked,
        "control_missed": missed,
        "control_wrong": wrong,
        "control_worst_round_p99_ms": round(p99, 2),
        "malformed_by_reason": malformed,
        "rss_kib_before": rss_before,
        "rss_kib_after": rss_after,
        "rss_kib_after_15s_idle": rss_settled,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
