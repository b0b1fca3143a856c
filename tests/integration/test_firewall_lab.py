"""The firewall fed by DNS in the lab: `dnsguard up` as a client and as a gateway for its LAN host.

The lab's DNS answers every name with ADDRESSES.http4 / http6, so "the same address after a lookup" is
any name looked up through the tunnel's resolver.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab.peers import DnsguardDaemon
from dnsguard.lab.scenario import HARD_CODED_RESOLVER, SERVER_TUNNEL4, FullTunnel, start_full_tunnel

CURL_REFUSED = 7  # curl: could not connect (our TCP reset), not a timeout (28)


def curl(tunnel: FullTunnel, role: str, url: str) -> int:
    return tunnel.lab.run(
        role, ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", url], check=False
    ).returncode


def until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `condition` until it holds or `seconds` pass (a bound on waiting, not a measured time)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def firewall(**settings: object) -> dict[str, object]:
    # The server's tunnel address (pinged to see that the tunnel carries traffic) is always reachable.
    return {"firewall": {"enabled": True, "allow": [f"{SERVER_TUNNEL4}/32"], **settings}}


def running(extra: dict[str, object]) -> Iterator[FullTunnel]:
    with Lab(lan=True) as lab:
        full = start_full_tunnel(lab, client_extra=extra)
        try:
            yield full
        except Exception:
            print(full.client.log())
            raise


@pytest.fixture
def enforcing() -> Iterator[FullTunnel]:
    yield from running(
        {
            **firewall(),
            "blocking": {"doh-endpoints": [ADDRESSES.http6]},
            "metrics": {"listen": "127.0.0.1:9153"},
        }
    )


@pytest.fixture
def learning() -> Iterator[FullTunnel]:
    yield from running(firewall(mode="learn"))


def test_client_hard_coded_address_is_refused_until_a_lookup_hands_it_out(enforcing: FullTunnel) -> None:
    lab = enforcing.lab
    http = f"http://{ADDRESSES.http4}/whoami"
    assert curl(enforcing, "client", http) == CURL_REFUSED
    assert answers(lab.dig("client", "example.org", HARD_CODED_RESOLVER).stdout) == [ADDRESSES.http4]
    assert curl(enforcing, "client", http) == 0
    # The tunnel itself keeps working: the server's tunnel address answers pings.
    lab.run("client", ["ping", "-c", "1", "-W", "2", SERVER_TUNNEL4])
    assert "198.51.100.80" in lab.sh("client", "nft list set inet dnsguard_fw handed4")


def test_gateway_lan_host_is_refused_until_a_lookup_and_the_lan_keeps_working(enforcing: FullTunnel) -> None:
    lab = enforcing.lab
    http = f"http://{ADDRESSES.http4}/whoami"
    assert curl(enforcing, "lanhost", http) == CURL_REFUSED
    # The LAN is never filtered: the gateway's LAN address answers.
    lab.run("lanhost", ["ping", "-c", "1", "-W", "2", ADDRESSES.lan_gw4])
    assert answers(lab.dig("lanhost", "example.org", HARD_CODED_RESOLVER).stdout) == [ADDRESSES.http4]
    assert curl(enforcing, "lanhost", http) == 0


def test_a_doh_endpoint_is_refused_even_after_a_lookup(enforcing: FullTunnel) -> None:
    lab = enforcing.lab
    assert answers(lab.dig("client", "example.org", HARD_CODED_RESOLVER, qtype="AAAA").stdout) == [
        ADDRESSES.http6
    ]
    assert curl(enforcing, "client", f"http://[{ADDRESSES.http6}]/") == CURL_REFUSED
    counters = lab.sh("client", "nft list counter inet dnsguard_fw doh_refused")
    assert "packets 0" not in counters, counters


def test_learn_mode_counts_and_lets_through(learning: FullTunnel) -> None:
    lab = learning.lab
    assert curl(learning, "client", f"http://{ADDRESSES.http4}/whoami") == 0
    assert curl(learning, "lanhost", f"http://{ADDRESSES.http4}/whoami") == 0
    counters = lab.sh("client", "nft list counter inet dnsguard_fw learned")
    assert "packets 0" not in counters, counters


def test_stop_removes_the_firewall_table(enforcing: FullTunnel) -> None:
    assert "dnsguard_fw" in enforcing.lab.sh("client", "nft list tables")
    assert enforcing.client.stop() == 0
    assert "dnsguard_fw" not in enforcing.lab.sh("client", "nft list tables")


def test_explain_and_the_api_say_why(enforcing: FullTunnel) -> None:
    lab = enforcing.lab
    config = str(enforcing.client.config_path)

    def explain(address: str) -> str:
        argv = [sys.executable, "-m", "dnsguard", "explain", address, "-c", config]
        return lab.run("client", argv).stdout

    assert "refused: not handed out" in explain(ADDRESSES.http4)
    assert "refused: known DoH endpoint" in explain(ADDRESSES.http6)
    assert "allowed: allowed prefix" in explain(SERVER_TUNNEL4)
    lab.dig("client", "example.org", HARD_CODED_RESOLVER)
    # The next batch (every 50 ms) puts the address in the kernel's set.
    assert until(lambda: "allowed: handed out by a DNS answer" in explain(ADDRESSES.http4))
    assert curl(enforcing, "client", "http://198.51.100.99/") == CURL_REFUSED

    def state() -> dict[str, int | str]:
        text = lab.run("client", ["curl", "-sS", "http://127.0.0.1:8053/api/firewall"]).stdout
        return dict(json.loads(text))

    # The daemon reads the kernel's counters every 5 s.
    assert until(lambda: int(state()["refused"]) > 0, 15)
    current = state()
    assert current["mode"] == "enforce" and int(current["addresses"]) >= 1, current
    why = lab.run(
        "client", ["curl", "-sS", f"http://127.0.0.1:8053/api/firewall/explain?address={ADDRESSES.http4}"]
    ).stdout
    assert json.loads(why)["reason"] == "handed out by a DNS answer", why
    metrics = lab.run("client", ["curl", "-sS", "http://127.0.0.1:9153/metrics"]).stdout
    assert 'dnsguard_firewall_connections_total{verdict="refused"}' in metrics
    assert "dnsguard_firewall_addresses" in metrics


def test_resolve_on_a_router_filters_what_leaves_its_uplink() -> None:
    """`dnsguard resolve` with `firewall.interface`: the host's connections out of eth0, no tunnel."""
    settings = {
        "resolver": {"listen": ["127.0.0.1:53"]},
        "upstreams": {"servers": [ADDRESSES.dns4]},
        "firewall": {"enabled": True, "interface": "eth0"},
        "api": {"listen": None},
    }
    with Lab() as lab:
        daemon = DnsguardDaemon(lab, "client", "resolve", settings).start(wait_for_interface=None)
        try:
            assert until(lambda: "dnsguard_fw" in lab.sh("client", "nft list tables"), 20)
            assert curl_in(lab, f"http://{ADDRESSES.http4}/whoami") == CURL_REFUSED
            assert answers(lab.dig("client", "example.org", "127.0.0.1").stdout) == [ADDRESSES.http4]
            assert until(lambda: curl_in(lab, f"http://{ADDRESSES.http4}/whoami") == 0)
            assert daemon.stop() == 0
            assert "dnsguard_fw" not in lab.sh("client", "nft list tables")
        except Exception:
            print(daemon.log())
            raise


def curl_in(lab: Lab, url: str) -> int:
    return lab.run(
        "client", ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", url], check=False
    ).returncode


def test_a_crash_is_undone_by_down_firewall_table_included() -> None:
    """As tests/integration/test_teardown.py: SIGKILL, then `dnsguard down` removes the recorded table."""
    with Lab(lan=True) as lab:
        full = start_full_tunnel(lab, client_extra=firewall())
        assert full.client.process is not None
        full.client.process.send_signal(signal.SIGKILL)
        full.client.process.wait(timeout=10)
        assert "dnsguard_fw" in lab.sh("client", "nft list tables")
        argv = ["env", f"DNSGUARD_RUN_DIR={lab.log_dir / 'run-client'}", sys.executable, "-m", "dnsguard"]
        down = lab.run("client", [*argv, "down", "--interface", "dg0"], check=False)
        assert down.returncode == 0, down.stderr
        assert "dnsguard" not in lab.sh("client", "nft list tables")


def test_a_reload_that_adds_an_address_to_a_doh_list_refuses_it() -> None:
    """`firewall.doh-lists` with a file: after the file changes, a reload replaces the kernel's DoH sets."""
    settings = {
        "resolver": {"listen": ["127.0.0.1:53"]},
        "upstreams": {"servers": [ADDRESSES.dns4]},
        "firewall": {"enabled": True, "interface": "eth0", "doh-lists": ["doh.txt"]},
        "api": {"listen": None},
    }
    with Lab() as lab:
        doh_list = lab.log_dir / "doh.txt"  # beside the daemon's configuration file
        doh_list.write_text("192.0.2.250\nnot an address\n", encoding="utf-8")
        daemon = DnsguardDaemon(lab, "client", "resolve", settings).start(wait_for_interface=None)
        try:
            assert until(lambda: "dnsguard_fw" in lab.sh("client", "nft list tables"), 20)
            assert answers(lab.dig("client", "example.org", "127.0.0.1").stdout) == [ADDRESSES.http4]
            assert until(lambda: curl_in(lab, f"http://{ADDRESSES.http4}/whoami") == 0)
            doh_list.write_text(f"192.0.2.250\n{ADDRESSES.http4}\n", encoding="utf-8")
            daemon.reload()
            doh4 = "nft list set inet dnsguard_fw doh4"
            assert until(lambda: ADDRESSES.http4 in lab.sh("client", doh4), 10)
            assert "192.0.2.250" in lab.sh("client", doh4)
            assert curl_in(lab, f"http://{ADDRESSES.http4}/whoami") == CURL_REFUSED
            assert daemon.stop() == 0
        except Exception:
            print(daemon.log())
            raise


def test_a_group_named_by_mac_is_filtered_and_the_gateway_is_not() -> None:
    """`firewall.groups: [kids]`, kids named only by the LAN host's MAC: the LAN host is refused until a
    lookup; the gateway itself (default group) is not filtered."""
    with Lab(lan=True) as lab:
        mac = lab.sh("lanhost", "cat /sys/class/net/eth0/address").strip()
        extra = {**firewall(groups=["kids"]), "groups": {"kids": {"clients": [mac.upper()]}}}
        full = start_full_tunnel(lab, client_extra=extra)
        try:
            assert f"ether saddr {mac} ct state new" in lab.sh("client", "nft list table inet dnsguard_fw")
            http = f"http://{ADDRESSES.http4}/whoami"
            assert curl(full, "client", http) == 0
            assert curl(full, "lanhost", http) == CURL_REFUSED
            assert answers(lab.dig("lanhost", "example.org", HARD_CODED_RESOLVER).stdout) == [ADDRESSES.http4]
            assert curl(full, "lanhost", http) == 0
        except Exception:
            print(full.client.log())
            raise
