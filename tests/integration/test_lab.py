"""The namespace lab itself: built, reachable, serving, and gone afterwards whatever happens."""

from __future__ import annotations

import os
import subprocess

import pytest

from dnsguard.lab import ADDRESSES, Lab, cleanup_leftovers
from dnsguard.lab.netns import list_namespaces


def test_lab_namespaces_reach_each_other(lan_lab: Lab) -> None:
    a = ADDRESSES
    for role, target in [
        ("client", a.server_wan4),
        ("server", a.client_wan4),
        ("lanhost", a.lan_gw4),
        ("client", a.http4),
        ("client", a.server_wan6),
    ]:
        result = lan_lab.run(role, ["ping", "-c", "1", "-W", "2", target], check=False)
        assert result.returncode == 0, f"{role} -> {target}: {result.stdout}{result.stderr}"


def test_lab_dns_answers_zone_and_web(lab: Lab) -> None:
    a = ADDRESSES
    www = lab.dig("client", f"www.{a.zone}", a.dns4)
    assert "status: NOERROR" in www.stdout and a.http4 in www.stdout
    missing = lab.dig("client", f"missing.{a.zone}", a.dns4, tcp=True)
    assert "status: NXDOMAIN" in missing.stdout
    anywhere = lab.dig("client", "example.org", a.dns6, qtype="AAAA")
    assert a.http6 in anywhere.stdout


def test_lab_http_sees_client_address(lab: Lab) -> None:
    result = lab.run("client", ["curl", "-sS", "--max-time", "5", f"http://{ADDRESSES.http4}/whoami"])
    assert result.stdout.strip() == ADDRESSES.client_wan4


def test_lab_leaves_nothing_when_body_raises() -> None:
    lab = Lab(services=False)
    with pytest.raises(RuntimeError), lab:
        names = list(lab.namespaces.values())
        assert set(names) <= set(list_namespaces())
        raise RuntimeError("test body failed")
    assert not set(names) & set(list_namespaces())


def test_lab_processes_are_stopped_on_close() -> None:
    with Lab(services=False) as lab:
        process = lab.popen("client", ["sleep", "300"])
    assert process.poll() is not None


def test_leftovers_of_a_dead_process_are_removed() -> None:
    dead = subprocess.run(["true"], check=True)
    assert dead.returncode == 0
    # A pid far above pid_max cannot belong to a live process.
    orphan = "dglab-4999999-1-client"
    mine = f"dglab-{os.getpid()}-999-client"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        removed = cleanup_leftovers()
        assert orphan in removed
        assert mine not in removed and mine in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", orphan], check=False)
        subprocess.run(["ip", "netns", "del", mine], check=False)
