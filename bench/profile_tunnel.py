#!/usr/bin/env python3
"""Where the tunnel daemons spend their CPU: py-spy samples of `dnsguard up` and `dnsguard server` while
iperf3 runs through the tunnel, upload then download.

    sudo .venv/bin/python bench/profile_tunnel.py [--contender dnsguard] [--seconds 8] [--top 25]

The lab and the contenders are bench/tunnel.py's (imported from it, so they stay the same):
`dnsguard`, `dnsguard-nooffload`, `dnsguard+dns`, `dnsguard+fw`. For each direction both daemons are
sampled for the same seconds; the script prints each one's frames with the most samples, by own time
(the function itself was running; a C call such as an AEAD or a system call counts for the Python
frame that made it) and by total time, and keeps each raw profile (collapsed stacks, for flame graph
tools) in --out. Idle samples (the loop waiting in epoll) are left out, so the shares are of the
daemon's busy time. Needs py-spy (`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from sibling import load_bench

from dnsguard.lab import Lab
from dnsguard.lab.peers import wait_ping


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contender", default="dnsguard")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default="bench/results/profiles", help="directory for the raw profiles")
    args = parser.parse_args()
    profile_dns = load_bench("profile_dns.py")
    tunnel = load_bench("tunnel.py")
    if args.contender not in tunnel.CONTENDERS or not args.contender.startswith("dnsguard"):
        raise SystemExit(f"--contender: one of the dnsguard ones in {', '.join(tunnel.CONTENDERS)}")
    spy = profile_dns.py_spy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Lab(services=False) as lab:
        tunnel.CONTENDERS[args.contender](lab)
        wait_ping(lab, "client", tunnel.SERVER_TUNNEL, timeout=30)
        # setup_dnsguard starts the server's daemon, then the client's.
        pids = [process.pid for process in lab._processes][:2]
        daemons = dict(zip(("server", "client"), pids, strict=True))
        lab.popen("server", ["iperf3", "-s", "-B", tunnel.SERVER_TUNNEL], log_name="iperf3")
        time.sleep(0.5)
        for direction, reverse in (("upload", False), ("download", True)):
            spies = {}
            for role, pid in daemons.items():
                collapsed = out / f"tunnel-{args.contender}-{direction}-{role}.txt"
                record = [spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--nonblocking"]
                record += ["--duration", str(args.seconds - 2), "--format", "raw", "--output", str(collapsed)]
                spies[role] = (
                    collapsed,
                    subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                )
            time.sleep(0.5)  # py-spy attached: the transfer starts under sampling
            result = tunnel.iperf_once(lab, args.seconds, reverse)
            for role, (collapsed, process) in spies.items():
                process.wait(timeout=args.seconds + 60)
                speed = f"{result[0]:.0f} Mbit/s" if isinstance(result, tuple) else result
                print(f"\n== {direction}, {role} ({speed}); raw profile {collapsed}")
                print(profile_dns.summarise(collapsed, args.top, thread="Runner.run"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
