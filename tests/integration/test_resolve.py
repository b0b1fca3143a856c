"""`dnsguard resolve` in the lab: the LAN DNS of a home gateway, checked with dig.

The resolver runs in the client namespace (the gateway), serves 192.0.2.1 (LAN) and 127.0.0.1,
and forwards to the lab's authoritative server in the internet namespace.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab import dig_status as status
from dnsguard.lab.peers import DnsguardDaemon, start_resolver
from tests.integration.test_operations import scrape

ROOT = Path(__file__).resolve().parents[2]
LAN_DNS = ADDRESSES.lan_gw4


def config(upstreams: list[str], **extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "resolver": {"listen": [f"{LAN_DNS}:53", "127.0.0.1:53"]},
        "upstreams": {"servers": upstreams, "strategy": "strict", "timeout": "1s"},
        "lists": {
            "ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]},
            "adult": {"sources": [str(ROOT / "blocklists" / "adult.txt")]},
            "family-allow": {"allow": True, "sources": ["@@||allowed.doubleclick.net^\n"]},
        },
        "groups": {
            "default": {"block": ["ads"]},
            "kids": {
                "clients": [f"{ADDRESSES.lan_host4}/32"],
                "block": ["ads", "adult"],
                "allow": ["family-allow"],
                "safe-search": True,
            },
        },
        "rewrites": [{"name": "nas.home.arpa", "answer": ["192.0.2.50"]}],
        "loading": {"cache-dir": "/tmp/dnsguard-test-lists"},
    }
    base.update(extra)
    return base


@pytest.fixture
def gateway() -> Iterator[tuple[Lab, DnsguardDaemon]]:
    with Lab(lan=True) as lab:
        daemon = start_resolver(lab, config([ADDRESSES.dns4]), timeout=20)
        try:
            yield lab, daemon
        except Exception:
            print(daemon.log())
            raise


def test_blocked_allowed_and_rewritten(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, _ = gateway
    blocked = lab.dig("lanhost", "www.doubleclick.net", LAN_DNS).stdout
    assert status(blocked) == "NOERROR" and answers(blocked) == ["0.0.0.0"]
    blocked6 = lab.dig("lanhost", "ads.doubleclick.net", LAN_DNS, qtype="AAAA").stdout
    assert answers(blocked6) == ["::"]
    allowed = lab.dig("lanhost", "example.org", LAN_DNS).stdout
    assert answers(allowed) == [ADDRESSES.http4]
    rewritten = lab.dig("client", "nas.home.arpa", "127.0.0.1").stdout
    assert answers(rewritten) == ["192.0.2.50"]
    canary = lab.dig("client", "use-application-dns.net", "127.0.0.1").stdout
    assert status(canary) == "NXDOMAIN"
    over_tcp = lab.dig("lanhost", "www.doubleclick.net", LAN_DNS, tcp=True).stdout
    assert answers(over_tcp) == ["0.0.0.0"]
    big = lab.dig("client", f"big.{ADDRESSES.zone}", "127.0.0.1", qtype="TXT", tcp=True).stdout
    assert len(answers(big)) == 40


def test_per_client_groups_allowlist_and_safe_search(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, _ = gateway
    # The kids' device gets the adult list and safe search; the gateway itself (default group) does not.
    assert answers(lab.dig("lanhost", "www.pornhub.com", LAN_DNS).stdout) == ["0.0.0.0"]
    assert answers(lab.dig("client", "www.pornhub.com", "127.0.0.1").stdout) == [ADDRESSES.http4]
    # An allow rule beats the block list for the group that has it.
    assert answers(lab.dig("lanhost", "allowed.doubleclick.net", LAN_DNS).stdout) == [ADDRESSES.http4]
    assert answers(lab.dig("client", "allowed.doubleclick.net", "127.0.0.1").stdout) == ["0.0.0.0"]
    safe = lab.dig("lanhost", "www.google.com", LAN_DNS).stdout
    assert "forcesafesearch.google.com." in safe and ADDRESSES.http4 in answers(safe)
    assert "forcesafesearch" not in lab.dig("client", "www.google.com", "127.0.0.1").stdout


def test_cname_cloaking_is_blocked(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, _ = gateway
    # cloaked.<zone> is a CNAME to ads.tracker.example, which the ads list blocks.
    cloaked = lab.dig("client", f"cloaked.{ADDRESSES.zone}", "127.0.0.1").stdout
    assert answers(cloaked) == ["0.0.0.0"]


def test_cache_answers_without_upstream_and_counts_down(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, _ = gateway
    first = lab.dig("client", "cached.example", "127.0.0.1").stdout
    log_before = lab.run("client", ["curl", "-s", f"http://{ADDRESSES.http4}/dns-log"]).stdout.count(
        "cached.example"
    )
    time.sleep(1.2)
    second = lab.dig("client", "cached.example", "127.0.0.1").stdout
    log_after = lab.run("client", ["curl", "-s", f"http://{ADDRESSES.http4}/dns-log"]).stdout.count(
        "cached.example"
    )
    assert log_after == log_before  # answered from the cache
    ttl_first, ttl_second = (
        int(next(row for row in out.splitlines() if "cached.example." in row and "\tA\t" in row).split()[1])
        for out in (first, second)
    )
    assert ttl_second < ttl_first


def test_upstream_failover_and_serve_stale() -> None:
    with Lab() as lab:
        dead = "198.51.100.99"  # routed to the internet namespace, where nothing listens
        daemon = DnsguardDaemon(
            lab, "client", "resolve", config([dead, ADDRESSES.dns4], resolver={"listen": ["127.0.0.1:53"]})
        )
        daemon.start(wait_for_interface=None)
        lab.wait_for(
            lambda: status(lab.dig("client", "a.example", "127.0.0.1").stdout) == "NOERROR",
            timeout=20,
            what="failover to the second upstream",
        )
        assert answers(lab.dig("client", "b.example", "127.0.0.1").stdout) == [ADDRESSES.http4]
        # Every upstream gone: an entry already cached is still answered, marked stale.
        lab.sh("internet", f"ip addr del {ADDRESSES.dns4}/32 dev lo")
        lab.sh("client", "sleep 0.1")
        stale = lab.dig("client", "b.example", "127.0.0.1", timeout=4).stdout
        assert answers(stale) == [ADDRESSES.http4]


def test_bad_reload_keeps_the_last_good_config(gateway: tuple[Lab, DnsguardDaemon]) -> None:
    lab, daemon = gateway
    daemon.config_path.write_text("groups:\n  default:\n    block: [no-such-list]\n")
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    lab.wait_for(lambda: "reload failed" in daemon.log(), timeout=10, what="the reload failure to be logged")
    assert "no list named 'no-such-list'" in daemon.log()
    assert answers(lab.dig("lanhost", "www.doubleclick.net", LAN_DNS).stdout) == ["0.0.0.0"]


def test_group_by_mac_address_from_the_neighbour_table() -> None:
    with Lab(lan=True) as lab:
        mac = lab.sh("lanhost", "cat /sys/class/net/eth0/address").strip()
        settings = config([ADDRESSES.dns4])
        settings["groups"] = {
            "default": {"block": ["ads"]},
            "by-mac": {"clients": [mac], "block": ["ads", "adult"]},
        }
        daemon = DnsguardDaemon(lab, "client", "resolve", settings)
        daemon.start(wait_for_interface=None)
        lab.wait_for(
            lambda: status(lab.dig("lanhost", "example.org", LAN_DNS).stdout) == "NOERROR",
            timeout=20,
            what="dnsguard resolve to answer",
        )
        assert answers(lab.dig("lanhost", "www.pornhub.com", LAN_DNS).stdout) == ["0.0.0.0"]
        assert answers(lab.dig("client", "www.pornhub.com", "127.0.0.1").stdout) == [ADDRESSES.http4]


def test_busy_polling_answers_at_a_steady_rate_and_a_reload_turns_it_off(tmp_path: Path) -> None:
    """`dnsguard resolve` started with performance.busy-poll: dnsperf at 10,000 queries a second gets
    its answers, the metric counts wake-ups found by polling, and a reload to 0 stops the polling."""
    polled = ("dnsguard_busy_poll_wakeups_total", (("how", "polled"),))
    queries = tmp_path / "queries.txt"
    queries.write_text("www.doubleclick.net A\nnas.home.arpa A\n")
    with Lab(lan=True) as lab:
        settings = config(
            [ADDRESSES.dns4], performance={"busy-poll": "300us"}, metrics={"listen": "127.0.0.1:9153"}
        )
        daemon = start_resolver(lab, settings, timeout=20)
        try:
            argv = ["dnsperf", "-s", "127.0.0.1", "-d", str(queries), "-l", "1", "-Q", "10000", "-t", "2"]
            out = lab.run("client", argv, timeout=60).stdout
            completed = next(line for line in out.splitlines() if "Queries completed" in line)
            assert int(completed.split()[2]) >= 9000, out
            assert scrape(lab, "client", "127.0.0.1:9153")[polled] > 0
            daemon.config["performance"] = {"busy-poll": 0}
            daemon.reload()
            lab.wait_for(lambda: "performance.busy-poll: off" in daemon.log(), timeout=10, what="the reload")
            before = scrape(lab, "client", "127.0.0.1:9153")[polled]
            lab.run("client", argv, timeout=60)
            assert scrape(lab, "client", "127.0.0.1:9153")[polled] == before
        except Exception:
            print(daemon.log())
            raise
