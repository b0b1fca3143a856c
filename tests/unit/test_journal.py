"""The client's state file: keyed by namespace, written before each change, taken over after a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dnsguard.errors import DnsguardError
from dnsguard.net.firewall import KillSwitch
from dnsguard.net.journal import Journal, namespace_id, read_state, state_file


def test_the_state_file_is_named_by_network_namespace_and_interface(tmp_path: Path) -> None:
    ours = namespace_id()
    assert ours is not None
    assert state_file(tmp_path, "dg0") == tmp_path / f"dg0.netns-{ours}.json"
    assert state_file(tmp_path, "dg0", 4026531999) != state_file(tmp_path, "dg0")
    assert state_file(tmp_path, "dg1") != state_file(tmp_path, "dg0")


def test_each_change_is_on_disk_as_soon_as_it_is_recorded(tmp_path: Path) -> None:
    journal = Journal.for_interface(tmp_path, "dg0")
    assert journal.claim() == []
    journal.record({"kind": "sysctl", "key": "net/ipv4/ip_forward", "previous": "0"})
    journal.update_status({"state": "connecting"})
    journal.record({"kind": "nft-table", "family": "inet", "name": "dnsguard"})
    document = read_state(journal.path)
    assert document is not None
    assert document["pid"] == os.getpid() and document["state"] == "connecting"
    assert document["changes"] == [
        {"kind": "sysctl", "key": "net/ipv4/ip_forward", "previous": "0"},
        {"kind": "nft-table", "family": "inet", "name": "dnsguard"},
    ]


def test_changes_of_a_dead_client_are_handed_to_the_next_one(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = state_file(tmp_path, "dg0")
    change = {"kind": "rule", "family": 2, "priority": 32761, "table": 51820}
    path.write_text(json.dumps({"pid": int(dead.stdout), "netns": namespace_id(), "changes": [change]}))
    journal = Journal.for_interface(tmp_path, "dg0")
    assert journal.claim() == [change]
    # Still on disk under the new pid until undone: a crash during the roll-back loses nothing.
    document = read_state(path)
    assert document is not None and document["pid"] == os.getpid() and document["changes"] == [change]


def test_a_running_client_in_this_namespace_is_not_taken_over(tmp_path: Path) -> None:
    # A live process whose command line names dnsguard, in our namespace.
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "dnsguard"])
    try:
        path = state_file(tmp_path, "dg0")
        path.write_text(json.dumps({"pid": running.pid, "changes": [{"kind": "sysctl"}]}))
        with pytest.raises(
            DnsguardError, match=f"already runs in this network namespace \\(pid {running.pid}\\)"
        ):
            Journal.for_interface(tmp_path, "dg0").claim()
        assert read_state(path) == {"pid": running.pid, "changes": [{"kind": "sysctl"}]}
    finally:
        running.kill()
        running.wait()


def test_a_reused_pid_that_is_not_dnsguard_does_not_block_the_start(tmp_path: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state_file(tmp_path, "dg0").write_text(json.dumps({"pid": stranger.pid, "changes": []}))
        assert Journal.for_interface(tmp_path, "dg0").claim() == []
    finally:
        stranger.kill()
        stranger.wait()


def test_kill_switch_lets_exactly_the_local_networks_out_by_the_uplink() -> None:
    ruleset = KillSwitch(
        "dg0",
        51820,
        local_interfaces=["eth0"],
        local_prefixes=["198.18.1.0/24", "198.18.1.1/32", "169.254.0.0/16", "2001:db8:1::/64", "fe80::/10"],
    ).ruleset()
    # The gateway inside its connected prefix is merged: nft refuses overlapping intervals.
    assert 'oifname { "eth0" } ip daddr { 169.254.0.0/16, 198.18.1.0/24 } accept' in ruleset
    assert 'oifname { "eth0" } ip6 daddr { 2001:db8:1::/64, fe80::/10 } accept' in ruleset
    assert ruleset.index("accept\n    reject") > ruleset.index("198.18.1.0/24")
    assert "198.18.1.0/24" not in KillSwitch("dg0", 51820).ruleset()
