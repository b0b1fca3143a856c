#!/usr/bin/env python3
"""DNS resolver throughput: dnsguard resolve vs dnsmasq and unbound, same blocklist, same query mix, same run.

    sudo .venv/bin/python bench/dns.py [--names 300000] [--seconds 10] [--repeat 3] [--only dnsguard,unbound]
                                       [--mix blocked,cached,pageload] [--querylog] [--firewall]
                                       [--baseline OTHER_CHECKOUT] [--busy-poll 300us]

The servers run in one lab namespace with the same blocklist (the first --names distinct names of
real public lists, each blocking the name and its subdomains: dnsmasq `address=/name/#`, unbound
`local-zone: name always_null`, dnsguard a domain list with `subdomains: true`; all three answer
0.0.0.0) and the same upstream (the lab's authoritative server). unbound runs as Debian ships it, one
thread, forwarding everything. dnsperf sends three mixes: only blocked names, only cached names
(warmed first), and a page-load trace (blocked and cached mixed as a browser asks them). Reported:
QPS, p99 latency at a fixed rate, RSS, and dnsguard's ratio to each anchor and to the best of them.
Absolute numbers depend on the machine; the ratios are the result.

--querylog adds a second dnsguard contender, `dnsguard+log`, the same configuration with the lasting
query log on (SQLite in the lab's directory); the two take turns under the same mixes, and the table
gains its QPS ratio to dnsguard without the log (`log/off`: the ratio of the medians, then the median of
each round's ratio, the two having run back to back) and the CPU each daemon spent per answered query,
and its writer process beside it (`cpu log/off` sums the two): on a shared machine the CPU per query
moves less than the QPS.

--firewall adds `dnsguard+fw` the same way: the same configuration with the firewall fed by DNS on
(enforce mode on the namespace's uplink, eth0; every upstream answer's addresses go into the kernel's
sets before the answer leaves). Its table puts the whole namespace under conntrack, so every contender
pays that alike; the summary gives its QPS and CPU per query over dnsguard's without it.

--baseline adds `baseline`: dnsguard from another checkout (e.g. `git worktree add --detach DIR main`)
with this checkout's configuration, so that a change is measured against the code before it under the
same load; the summary gives this checkout's QPS and CPU per query over the baseline's.

--busy-poll DURATION adds `dnsguard+poll`: the same configuration with performance.busy-poll set to
it (the loop polls that long between densely coming queries instead of sleeping); the summary gives its
QPS and CPU per query over dnsguard's without it, and the table its p99 at the fixed rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from dnsguard.lab import ADDRESSES, Lab

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LIST_FILES = ["hagezi-pro-onlydomains.txt", "blp-phishing-domains.txt", "oisd-big-wildcard.txt"]
DNSGUARD_PORT, DNSMASQ_PORT, UNBOUND_PORT = 5300, 5301, 5302
SERVERS = ("dnsguard", "dnsmasq", "unbound")
"""What --only picks from; --querylog and --firewall add dnsguard's variants."""
ANCHORS = ("dnsmasq", "unbound")
LOGGED, LOGGED_PORT = "dnsguard+log", 5303
FIREWALLED, FIREWALLED_PORT = "dnsguard+fw", 5304
BASELINE, BASELINE_PORT = "baseline", 5305
POLLED, POLLED_PORT = "dnsguard+poll", 5306
PORTS = {
    "dnsguard": DNSGUARD_PORT,
    "dnsmasq": DNSMASQ_PORT,
    "unbound": UNBOUND_PORT,
    LOGGED: LOGGED_PORT,
    FIREWALLED: FIREWALLED_PORT,
    BASELINE: BASELINE_PORT,
    POLLED: POLLED_PORT,
}
MEASURES = ("qps", "p99_ms", "cpu_us", "writer_us")


def load_names(limit: int) -> list[str]:
    names: dict[str, None] = {}
    for file_name in LIST_FILES:
        for line in (DATA / "blocklists" / file_name).read_text(errors="replace").splitlines():
            line = line.strip().lower()
            if not line or line[0] in "#!":
                continue
            name = line.removeprefix("*.")
            if "." in name and " " not in name:
                names[name] = None
                if len(names) >= limit:
                    return list(names)
    return list(names)


def query_files(work: Path, blocked: list[str]) -> dict[str, Path]:
    rng = random.Random(7)
    blocked_set = set(blocked)
    top = [n for n in (DATA / "queries" / "top-domains.txt").read_text().split() if not n.endswith(".arpa")]
    cached = [n for n in top if n not in blocked_set][:5000]
    trace = (DATA / "queries" / "pageload-hostnames.txt").read_text().split()
    mixes = {
        "blocked": [f"{name} A" for name in rng.sample(blocked, 20000)],
        "cached": [f"{name} A" for name in cached],
        "pageload": [f"{name} A" for name in trace],
    }
    files = {}
    for mix, lines in mixes.items():
        path = work / f"queries-{mix}.txt"
        path.write_text("\n".join(lines) + "\n")
        files[mix] = path
    return files


def unbound_conf(work: Path, names: list[str]) -> str:
    """Debian's unbound as a one-thread forwarder with the blocklist as local zones."""
    zones = "".join(f'    local-zone: "{name}." always_null\n' for name in names)
    return (
        "server:\n"
        f"    interface: 127.0.0.1@{UNBOUND_PORT}\n"
        "    num-threads: 1\n"
        "    do-daemonize: no\n"
        '    username: ""\n'
        '    chroot: ""\n'
        f'    directory: "{work}"\n'
        '    pidfile: ""\n'
        "    use-syslog: no\n"
        "    verbosity: 0\n"
        "    do-ip6: no\n"
        "    access-control: 127.0.0.0/8 allow\n"
        '    module-config: "iterator"\n'
        "    msg-cache-size: 64m\n"
        "    rrset-cache-size: 128m\n"
        "    outgoing-range: 1024\n"
        "    num-queries-per-thread: 1024\n"
        f"{zones}"
        "forward-zone:\n"
        '    name: "."\n'
        f"    forward-addr: {ADDRESSES.dns4}\n"
    )


def start_servers(
    lab: Lab,
    names: list[str],
    only: list[str],
    querylog: bool = False,
    firewall: bool = False,
    busy_poll: str | None = None,
) -> dict[str, int]:
    work = lab.log_dir
    (work / "blocked.txt").write_text("\n".join(names) + "\n")
    (work / "dnsmasq.conf").write_text("".join(f"address=/{name}/#\n" for name in names))
    config = {
        "resolver": {"listen": [f"127.0.0.1:{DNSGUARD_PORT}"]},
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict"},
        "lists": {"bench": {"sources": [str(work / "blocked.txt")], "subdomains": True}},
        "groups": {"default": {"block": ["bench"]}},
        "blocking": {"mode": "null_ip"},
        "cache": {"max-entries": 100000},
        "logging": {"level": "warning"},
    }
    import yaml

    (work / "dnsguard.yaml").write_text(yaml.safe_dump(config))
    (work / "unbound.conf").write_text(unbound_conf(work, names))
    pids = {}
    if "dnsguard" in only:
        guard = lab.python(
            "client", "dnsguard", "resolve", "-c", str(work / "dnsguard.yaml"), log_name="dnsguard"
        )
        pids["dnsguard"] = guard.pid

    def variant(name: str, port: int, stem: str, **changes: object) -> None:
        """dnsguard with the configuration above and `changes`, on `port`, started as `stem`."""
        variant_config = {
            **config,
            "resolver": {"listen": [f"127.0.0.1:{port}"]},
            "api": {"listen": None},  # the first contender holds the default API address
            **changes,
        }
        path = work / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(variant_config))
        pids[name] = lab.python("client", "dnsguard", "resolve", "-c", str(path), log_name=stem).pid

    if querylog:
        variant(
            LOGGED,
            LOGGED_PORT,
            "dnsguard-log",
            querylog={"enabled": True, "path": str(work / "querylog.sqlite")},
        )
    if firewall:
        variant(FIREWALLED, FIREWALLED_PORT, "dnsguard-fw", firewall={"enabled": True, "interface": "eth0"})
    if busy_poll:
        variant(POLLED, POLLED_PORT, "dnsguard-poll", performance={"busy-poll": busy_poll})
    if "unbound" in only:
        unbound = lab.popen("client", ["unbound", "-d", "-c", str(work / "unbound.conf")], log_name="unbound")
        pids["unbound"] = unbound.pid
    if "dnsmasq" not in only:
        return _wait_for_servers(lab, pids)
    masq = lab.popen(
        "client",
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            f"--port={DNSMASQ_PORT}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--server={ADDRESSES.dns4}",
            "--cache-size=10000",
            f"--conf-file={work}/dnsmasq.conf",
            "--dns-forward-max=1000",
        ],
        log_name="dnsmasq",
    )
    pids["dnsmasq"] = masq.pid
    return _wait_for_servers(lab, pids)


def start_baseline(lab: Lab, checkout: str) -> int:
    """dnsguard from another checkout, run by this interpreter with start_servers' configuration, on
    BASELINE_PORT."""
    import yaml

    source = Path(checkout).resolve()
    if not (source / "dnsguard" / "cli.py").exists():
        raise SystemExit(f"--baseline {checkout}: not a dnsguard checkout")
    config = yaml.safe_load((lab.log_dir / "dnsguard.yaml").read_text())
    config["resolver"]["listen"] = [f"127.0.0.1:{BASELINE_PORT}"]
    config["api"] = {"listen": None}  # the first contender holds the default API address
    (lab.log_dir / "baseline.yaml").write_text(yaml.safe_dump(config))
    code = f"import sys; sys.path.insert(0, {str(source)!r}); from dnsguard.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "resolve", "-c", str(lab.log_dir / "baseline.yaml")]
    process = lab.popen("client", argv, log_name="baseline", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _wait_for_servers(lab, {BASELINE: process.pid})
    return process.pid


def _wait_for_servers(lab: Lab, pids: dict[str, int]) -> dict[str, int]:
    for server in pids:
        port = PORTS[server]

        def answers(port: int = port) -> bool:
            return "NOERROR" in lab.dig("client", "example.org", "127.0.0.1", port=port).stdout

        lab.wait_for(answers, timeout=120, what=f"{server} on port {port}")
    return pids


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of a process, and of its children (dnsguard's query log writer), in seconds."""
    own = children = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if stat.parent.name == str(pid):
            own += seconds
        elif fields[1] == str(pid):
            children += seconds
    return own, children


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dnsperf(
    lab: Lab,
    port: int,
    queries: Path,
    seconds: int,
    rate: int | None = None,
    *,
    role: str = "client",
    server: str = "127.0.0.1",
) -> dict[str, float]:
    """Throughput at full load; with `rate`, per-query latencies at that fixed load (dnsperf -v).

    The same settings serve every DNS bench: 8 sockets, 200 outstanding queries, one thread.
    """
    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    argv += ["-c", "8", "-q", "200", "-T", "1", "-t", "2"]
    if rate:
        argv += ["-Q", str(rate), "-v"]
    return parse_dnsperf(lab.run(role, argv, timeout=seconds + 60).stdout)


def parse_dnsperf(out: str) -> dict[str, float]:
    """QPS, p99 latency (ms, from -v per-query lines when present) and lost queries of a dnsperf run."""
    lines = out.splitlines()
    qps = float(next(line for line in lines if "Queries per second" in line).split()[-1])
    lost = float(next(line for line in lines if "Queries lost" in line).split()[2])
    latencies = sorted(
        float(fields[-1])
        for line in lines
        if line.startswith("> ") and _is_number((fields := line.split())[-1])
    )
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000 if latencies else float("nan")
    return {"qps": qps, "p99_ms": p99, "lost": lost}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def print_ratios(what: str, summary: dict[str, dict[str, object]], qps: str, cpu: str) -> None:
    """One line: per mix, the summary's QPS and CPU per query ratios under the keys `qps` and `cpu`."""
    print(
        f"{what}: "
        + ", ".join(
            f"{mix} QPS {values[qps]:.3f} CPU/query {values[cpu]:.3f}" for mix, values in summary.items()
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--names", type=int, default=300_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-rate", type=int, default=10000, help="QPS of the p99 latency runs")
    parser.add_argument("--json")
    parser.add_argument("--only", default=",".join(SERVERS), help="servers to run, of " + ",".join(SERVERS))
    parser.add_argument("--mix", default="blocked,cached,pageload", help="query mixes to run, in this order")
    parser.add_argument("--querylog", action="store_true", help="also run dnsguard with its query log on")
    parser.add_argument(
        "--firewall", action="store_true", help="also run dnsguard with the firewall fed by DNS on"
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run dnsguard from another checkout (a worktree of main, say) as `baseline`",
    )
    parser.add_argument(
        "--busy-poll", metavar="DURATION", help="also run dnsguard with performance.busy-poll (300us, say)"
    )
    args = parser.parse_args()
    only = [server for server in args.only.split(",") if server]
    unknown = sorted(set(only) - set(SERVERS))
    if unknown or "dnsguard" not in only:
        raise SystemExit(f"--only takes dnsguard and any of {', '.join(ANCHORS)}")
    mixes = [mix for mix in args.mix.split(",") if mix]
    if not mixes or not set(mixes) <= {"blocked", "cached", "pageload"}:
        raise SystemExit("--mix takes blocked, cached and pageload")
    missing = [tool for tool in ("dnsperf", *only[1:]) if tool != "dnsguard" and shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)}: bash deploy/install.sh --test")
    names = load_names(args.names)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Lab() as lab:
        started = time.monotonic()
        pids = start_servers(lab, names, only, args.querylog, args.firewall, args.busy_poll)
        if args.baseline:
            pids[BASELINE] = start_baseline(lab, args.baseline)
        print(
            f"{len(names)} blocked names loaded into {', '.join(pids)} in {time.monotonic() - started:.1f} s"
        )
        files = query_files(lab.log_dir, names)
        for server in pids:  # warm every cache with the cached mix
            dnsperf(lab, PORTS[server], files["cached"], 3)
        for round_number in range(args.repeat):
            # Each round starts with the next contender: none always runs first (or right after another).
            shift = round_number % len(pids)
            order = [*list(pids)[shift:], *list(pids)[:shift]]
            for mix in mixes:
                path = files[mix]
                for server in order:
                    port = PORTS[server]
                    cpu_before = cpu_seconds(pids[server])
                    result = dnsperf(lab, port, path, args.seconds)
                    answered = result["qps"] * args.seconds
                    cpu_after = cpu_seconds(pids[server])
                    result["cpu_us"] = (cpu_after[0] - cpu_before[0]) / answered * 1e6
                    result["writer_us"] = (cpu_after[1] - cpu_before[1]) / answered * 1e6
                    result["p99_ms"] = dnsperf(lab, port, path, 3, rate=args.latency_rate)["p99_ms"]
                    results.setdefault(mix, {}).setdefault(server, []).append(result)
                    print(
                        f"round {round_number + 1} {mix:9s} {server:9s} {result['qps']:9.0f} qps  "
                        f"p99 {result['p99_ms']:6.2f} ms  lost {result['lost']:.0f}  "
                        f"cpu {result['cpu_us']:5.1f} + {result['writer_us']:4.1f} us/query",
                        flush=True,
                    )
        rss = {server: rss_mb(pid) for server, pid in pids.items()}
    print(
        f"\nmedian of {args.repeat} runs of {args.seconds} s; dnsperf -c 8 -q 200, one thread; "
        f"p99 at {args.latency_rate} qps"
    )
    anchors = [server for server in pids if server in ANCHORS]
    width = {server: max(14, len(server) + 6) for server in pids}
    header = f"{'mix':10s}" + "".join(f"{server + ' qps':>{width[server]}s}" for server in pids)
    header += "".join(f"{'x ' + server:>11s}" for server in anchors) + (f"{'x best':>8s}" if anchors else "")
    header += "".join(f"{'p99 ' + server:>{width[server]}s}" for server in pids)
    header += (
        f"{'log/off':>9s}{'rounds':>8s}{'cpu us/q off':>14s}{'log':>6s}{'writer':>8s}{'cpu log/off':>13s}"
        if LOGGED in pids
        else ""
    )
    print(header)
    summary: dict[str, dict[str, object]] = {}
    for mix, by_server in results.items():
        median = {
            server: {k: statistics.median(r[k] for r in runs) for k in MEASURES}
            for server, runs in by_server.items()
        }
        guard = median["dnsguard"]["qps"]
        ratios = {server: guard / median[server]["qps"] for server in anchors}
        best = max((median[server]["qps"] for server in anchors), default=0.0)
        summary[mix] = {**median, "ratios": ratios, "ratio_to_best": guard / best if best else None}
        if LOGGED in median:
            summary[mix]["log_to_off"] = median[LOGGED]["qps"] / guard
            summary[mix]["log_to_off_rounds"] = statistics.median(
                logged["qps"] / plain["qps"]
                for logged, plain in zip(by_server[LOGGED], by_server["dnsguard"], strict=True)
            )
            summary[mix]["log_cpu_to_off"] = (
                median[LOGGED]["cpu_us"] + median[LOGGED]["writer_us"]
            ) / median["dnsguard"]["cpu_us"]
        if BASELINE in median:
            summary[mix]["to_baseline"] = guard / median[BASELINE]["qps"]
            summary[mix]["cpu_to_baseline"] = median["dnsguard"]["cpu_us"] / median[BASELINE]["cpu_us"]
        if POLLED in median:
            summary[mix]["poll_to_off"] = median[POLLED]["qps"] / guard
            summary[mix]["poll_cpu_to_off"] = median[POLLED]["cpu_us"] / median["dnsguard"]["cpu_us"]
        if FIREWALLED in median:
            summary[mix]["firewall_to_off"] = median[FIREWALLED]["qps"] / guard
            summary[mix]["firewall_cpu_to_off"] = median[FIREWALLED]["cpu_us"] / median["dnsguard"]["cpu_us"]
        line = f"{mix:10s}" + "".join(f"{median[server]['qps']:{width[server]}.0f}" for server in pids)
        line += "".join(f"{ratios[server]:11.2f}" for server in anchors)
        line += f"{guard / best:8.2f}" if best else ""
        line += "".join(f"{median[server]['p99_ms']:{width[server]}.2f}" for server in pids)
        if LOGGED in median:
            line += f"{summary[mix]['log_to_off']:9.3f}{summary[mix]['log_to_off_rounds']:8.3f}"
            line += f"{median['dnsguard']['cpu_us']:14.1f}{median[LOGGED]['cpu_us']:6.1f}"
            line += f"{median[LOGGED]['writer_us']:8.1f}{summary[mix]['log_cpu_to_off']:13.3f}"
        print(line)
    if FIREWALLED in pids:
        print_ratios("firewall fed by DNS, with / without", summary, "firewall_to_off", "firewall_cpu_to_off")
    if POLLED in pids:
        print_ratios("busy polling, on / off", summary, "poll_to_off", "poll_cpu_to_off")
    if BASELINE in pids:
        print_ratios("this checkout / baseline", summary, "to_baseline", "cpu_to_baseline")
    print(
        "RSS: " + ", ".join(f"{server} {mb:.0f} MB" for server, mb in rss.items()) + f" ({len(names)} names)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "summary": summary, "rss_mb": rss}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
