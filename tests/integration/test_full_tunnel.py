"""`dnsguard up` against `dnsguard server` in the lab: the product as a user runs it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab.scenario import HARD_CODED_RESOLVER, FullTunnel, start_full_tunnel


@pytest.fixture
def tunnel() -> Iterator[FullTunnel]:
    with Lab(lan=True) as lab:
        full = start_full_tunnel(lab)
        try:
            yield full
        except Exception:
            print(full.client.log())
            print(full.server.log())
            raise


def test_dns_from_a_hard_coded_resolver_is_filtered(tunnel: FullTunnel) -> None:
    lab = tunnel.lab
    assert answers(lab.dig("client", "www.doubleclick.net", HARD_CODED_RESOLVER).stdout) == ["0.0.0.0"]
    assert answers(lab.dig("client", "example.org", HARD_CODED_RESOLVER).stdout) == [ADDRESSES.http4]
    assert answers(lab.dig("client", "www.doubleclick.net", HARD_CODED_RESOLVER, tcp=True).stdout) == [
        "0.0.0.0"
    ]
    assert answers(lab.dig("client", "example.net", "2001:db8::5353", qtype="AAAA").stdout) == [
        ADDRESSES.http6
    ]
    # The allowed name was resolved upstream through the tunnel: the lab DNS saw the server's address.
    log = lab.run("client", ["curl", "-s", f"http://{ADDRESSES.http4}/dns-log"]).stdout
    assert re.search(r'"example\.org", "A", "198\.18\.2\.2"', log), log


def test_dot_is_refused_and_http_goes_through_the_tunnel(tunnel: FullTunnel) -> None:
    lab = tunnel.lab
    dot = lab.run(
        "client", ["curl", "-sS", "--max-time", "3", f"telnet://{ADDRESSES.http4}:853"], check=False
    )
    assert dot.returncode == 7, dot.stderr  # connection refused by our reset, not a timeout (28)
    whoami = lab.run("client", ["curl", "-sS", "--max-time", "10", f"http://{ADDRESSES.http4}/whoami"])
    assert whoami.stdout.strip() == ADDRESSES.server_wan4


def test_gateway_lan_device_is_filtered_by_its_own_policy(tunnel: FullTunnel) -> None:
    lab = tunnel.lab
    assert answers(lab.dig("lanhost", "www.pornhub.com", HARD_CODED_RESOLVER).stdout) == ["0.0.0.0"]
    assert answers(lab.dig("client", "www.pornhub.com", HARD_CODED_RESOLVER).stdout) == [ADDRESSES.http4]
    safe = lab.dig("lanhost", "www.google.com", HARD_CODED_RESOLVER).stdout
    assert "forcesafesearch.google.com." in safe
    whoami = lab.run("lanhost", ["curl", "-sS", "--max-time", "10", f"http://{ADDRESSES.http4}/whoami"])
    assert whoami.stdout.strip() == ADDRESSES.server_wan4


def test_stop_removes_everything(tunnel: FullTunnel) -> None:
    lab = tunnel.lab
    assert tunnel.client.stop() == 0
    rules = lab.sh("client", "ip rule")
    assert "51820" not in rules and "0xca6c" not in rules
    assert "dnsguard" not in lab.sh("client", "nft list ruleset")
    assert "dg0" not in lab.sh("client", "ip -o link")
    assert lab.run("client", ["ip", "route", "show", "table", "51820"], check=False).stdout.strip() == ""


def test_uplink_carries_only_encrypted_udp_to_the_server(tunnel: FullTunnel) -> None:
    """tcpdump on the client's uplink: no DNS, no plaintext, no IPv6 leak, only WireGuard to the server."""
    lab = tunnel.lab
    capture = lab.popen(
        "client", ["tcpdump", "-i", "eth0", "-n", "-l", "-q", "not arp and not icmp6"], log_name="tcpdump"
    )
    time.sleep(1.0)
    lab.dig("client", "www.doubleclick.net", HARD_CODED_RESOLVER)
    lab.dig("client", "leak-test.example", HARD_CODED_RESOLVER)
    lab.dig("client", "leak-test6.example", "2001:db8::5353", qtype="AAAA")
    lab.dig("client", "leak-test-tcp.example", HARD_CODED_RESOLVER, tcp=True)
    lab.dig("lanhost", "lan-leak.example", HARD_CODED_RESOLVER)
    lab.run("client", ["curl", "-sS", "--max-time", "5", f"http://{ADDRESSES.http4}/"])
    lab.run("client", ["curl", "-sS", "--max-time", "5", f"http://[{ADDRESSES.http6}]/"], check=False)
    lab.run("client", ["ping", "-c", "2", "-W", "1", ADDRESSES.http4], check=False)
    lab.run("lanhost", ["curl", "-sS", "--max-time", "5", f"http://{ADDRESSES.http4}/"])
    time.sleep(1.0)
    lab.stop(capture)
    lines = [
        line for line in Path(capture.log_path).read_text().splitlines() if re.match(r"^\d\d:\d\d", line)
    ]
    assert lines, "tcpdump captured nothing: the test would prove nothing"
    tunnel_packet = re.compile(
        rf"IP ({re.escape(ADDRESSES.client_wan4)}\.\d+ > {re.escape(ADDRESSES.server_wan4)}\.51820|"
        rf"{re.escape(ADDRESSES.server_wan4)}\.51820 > {re.escape(ADDRESSES.client_wan4)}\.\d+): UDP"
    )
    leaks = [line for line in lines if not tunnel_packet.search(line)]
    assert not leaks, "\n".join(leaks[:20])
