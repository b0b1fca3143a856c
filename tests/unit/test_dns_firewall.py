"""The firewall fed by DNS: handed-out bookkeeping on a fake clock, config, rule text, explain."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time

import pytest

from dnsguard.app.dns_filtering import filtering_config
from dnsguard.app.dns_firewall import FirewallService, doh_endpoints, firewall_rules
from dnsguard.config import Config, load_dataclass
from dnsguard.dns.handed_out import MAX_PENDING, HandedOut
from dnsguard.errors import ConfigError
from dnsguard.net.dns_firewall import FakeNftables, element_script
from dnsguard.policy.firewall import explain_address, read_address_list

A = ipaddress.ip_address("198.51.100.80").packed
B = ipaddress.ip_address("2001:db8:80::80").packed


def load(text: str) -> Config:
    config = load_dataclass(text, Config, "fw.yaml")
    return config


def test_an_answer_queues_its_addresses_with_ttl_plus_grace() -> None:
    handed = HandedOut(grace=300)
    handed.add((A, B), 60, now=1000.0)
    elements = handed.take()
    assert [(e.address, e.version, e.timeout) for e in elements] == [
        ("198.51.100.80", 4, 360),
        ("2001:db8:80::80", 6, 360),
    ]
    assert handed.take() == []
    assert handed.expiry_of("198.51.100.80", 1000.0) == 1360.0
    assert handed.expiry_of("198.51.100.80", 1360.0) is None


def test_a_repeat_within_the_slack_costs_no_kernel_update() -> None:
    handed = HandedOut(grace=300)
    handed.add((A,), 60, now=0.0)
    handed.take()
    handed.add((A,), 60, now=50.0)  # extends by 50 s, under a quarter of 360 s
    assert handed.take() == []
    handed.add((A,), 60, now=100.0)  # extends by 100 s: refreshed
    assert [e.timeout for e in handed.take()] == [360]
    assert handed.expiry_of("198.51.100.80", 100.0) == 460.0


def test_an_expired_address_is_added_again() -> None:
    handed = HandedOut(grace=0)
    handed.add((A,), 10, now=0.0)
    handed.take()
    handed.add((A,), 10, now=11.0)
    assert [e.timeout for e in handed.take()] == [10]


def test_elements_the_kernel_refused_are_sent_again_with_the_next_answer() -> None:
    handed = HandedOut(grace=60)
    handed.add((A,), 60, now=0.0)
    handed.forget(handed.take())
    assert handed.expiry_of("198.51.100.80", 1.0) is None
    handed.add((A,), 60, now=1.0)
    assert [e.address for e in handed.take()] == ["198.51.100.80"]


def test_ttl_zero_without_grace_hands_out_nothing() -> None:
    handed = HandedOut(grace=0)
    handed.add((A,), 0, now=0.0)
    assert handed.take() == []


def test_a_full_batch_counts_the_addresses_it_drops() -> None:
    handed = HandedOut(grace=10)
    addresses = tuple(i.to_bytes(4, "big") for i in range(MAX_PENDING + 5))
    handed.add(addresses, 10, now=0.0)
    assert len(handed.pending) == MAX_PENDING and handed.dropped == 5


def test_requeue_sends_live_elements_with_their_remaining_time() -> None:
    handed = HandedOut(grace=100)
    handed.add((A,), 0, now=0.0)
    handed.add((B,), 300, now=0.0)
    handed.take()
    handed.requeue(now=150.0)
    assert [(e.address, e.timeout) for e in handed.take()] == [("2001:db8:80::80", 250)]


def test_element_script_refreshes_timeouts_in_one_transaction() -> None:
    handed = HandedOut(grace=5)
    handed.add((A, B), 5, now=0.0)
    script = element_script(handed.take())
    assert script.splitlines() == [
        "add element inet dnsguard_fw handed4 { 198.51.100.80 timeout 10s }",
        "delete element inet dnsguard_fw handed4 { 198.51.100.80 }",
        "add element inet dnsguard_fw handed4 { 198.51.100.80 timeout 10s }",
        "add element inet dnsguard_fw handed6 { 2001:db8:80::80 timeout 10s }",
        "delete element inet dnsguard_fw handed6 { 2001:db8:80::80 }",
        "add element inet dnsguard_fw handed6 { 2001:db8:80::80 timeout 10s }",
    ]


def test_config_defaults_and_errors_name_the_line() -> None:
    config = load("firewall:\n  enabled: true\n")
    assert config.firewall.mode == "enforce" and config.firewall.groups == ["all"]
    assert config.firewall.grace == 300 and config.firewall.refuse_doh
    with pytest.raises(ConfigError) as bad_mode:
        load("firewall:\n  enabled: true\n  mode: block\n")
    assert "fw.yaml:3" in str(bad_mode.value)
    with pytest.raises(ConfigError) as bad_allow:
        load("firewall:\n  allow:\n    - 192.0.2.0/24\n    - nope\n")
    assert "fw.yaml:4" in str(bad_allow.value) and "allow[1]" in str(bad_allow.value)
    with pytest.raises(ConfigError) as bad_group:
        load("firewall:\n  groups: [kids]\n")
    assert "firewall.groups[0]" in str(bad_group.value)
    with pytest.raises(ConfigError):
        load("firewall:\n  grace: -1\n")


LAB = """
tunnel:
  private-key: wOnjbB2bKRKdhMiNylKJUF0uldStVCIRY9KNut+ltF8=
  address: [100.64.0.2/32]
  lan-interfaces: [lan0]
  peers:
    - public-key: oGZVcBpQbKPe+ohLAPxFJtPEzuNPBcSJnCutuqMAyGU=
      endpoint: 198.18.2.2:51820
      allowed-ips: [0.0.0.0/0]
groups:
  kids:
    clients: [192.0.2.10/32]
firewall:
  enabled: true
  groups: [kids]
  allow: [203.0.113.0/24]
"""


def test_rules_filter_the_listed_groups_by_source_and_spare_dns_and_our_marks() -> None:
    rules = firewall_rules(load(LAB), "dg0", [51820, 51821]).ruleset()
    assert "chain output" not in rules  # the gateway itself is in `default`, not listed
    assert 'iifname { "lan0" } oifname "dg0" ip saddr { 192.0.2.10/32 } ct state new jump check' in rules
    assert "set handed4 { type ipv4_addr; flags timeout; }" in rules
    assert "meta mark { 51820, 51821 } return" in rules
    assert "meta l4proto { tcp, udp } th dport 53 return" in rules
    assert "203.0.113.0/24" in rules and "100.64.0.2/32" in rules
    assert rules.index("@doh4") < rules.index("@allow4") < rules.index("@handed4")
    assert "meta l4proto tcp reject with tcp reset" in rules


SERVER = """
tunnel:
  private-key: wOnjbB2bKRKdhMiNylKJUF0uldStVCIRY9KNut+ltF8=
  address: [100.64.0.1/24]
  listen-port: 51820
  peers:
    - public-key: oGZVcBpQbKPe+ohLAPxFJtPEzuNPBcSJnCutuqMAyGU=
      allowed-ips: [100.64.0.2/32]
      group: kids
    - public-key: 4Q2mCtAjNcCcfZ8C7Jw2qZ0lP+aZcJwQe6nU0oRbhVs=
      allowed-ips: [100.64.0.3/32, fd00::3/128]
groups:
  kids: {}
firewall:
  enabled: true
"""


@pytest.mark.parametrize(
    ("groups", "sources"),
    [
        ("[all]", None),
        ("[kids]", "ip saddr { 100.64.0.2/32 }"),
        ("[default]", "ip saddr { 100.64.0.3/32 }"),
    ],
)
def test_a_server_filters_what_its_peers_send_in_whatever_they_leave_by(
    groups: str, sources: str | None
) -> None:
    config = filtering_config(load(SERVER + f"  groups: {groups}\n"), ["100.64.0.1:53"], True)
    rules = firewall_rules(config, "dgs0", [], server=True).ruleset()
    assert "chain output" not in rules and "meta mark" not in rules
    if sources is None:
        assert 'iifname "dgs0" ct state new jump check' in rules
    else:
        assert f'iifname "dgs0" {sources} ct state new jump check' in rules
    assert 'oifname "dgs0"' not in rules
    assert "100.64.0.0/24" in rules  # the tunnel's own prefix: peers reach the server and each other
    if groups == "[default]":
        assert "ip6 saddr { fd00::3/128 } ct state new jump check" in rules


def test_group_members_named_by_mac_are_filtered_by_their_ethernet_source() -> None:
    config = load(LAB.replace("clients: [192.0.2.10/32]", "clients: [192.0.2.10/32, AA-BB-CC-00-11-22]"))
    rules = firewall_rules(config, "dg0", [51820, 51821]).ruleset()
    assert (
        'iifname { "lan0" } oifname "dg0" ether saddr { aa:bb:cc:00:11:22 } ct state new jump check' in rules
    )
    assert "ip saddr { 192.0.2.10/32 } ct state new jump check" in rules


def test_learn_mode_only_counts() -> None:
    config = load(LAB.replace("groups: [kids]", "mode: learn"))
    rules = firewall_rules(config, "dg0", [1, 2]).ruleset()
    assert 'counter name "learned" return' in rules and "goto refuse" not in rules
    assert 'oifname "dg0" ct state new jump check' in rules


def test_the_shipped_doh_list_reads_and_names_well_known_resolvers() -> None:
    endpoints = doh_endpoints(load("firewall:\n  enabled: true\n"))
    assert "1.1.1.1/32" in endpoints and "2001:4860:4860::8888/128" in endpoints
    assert doh_endpoints(load("firewall:\n  refuse-doh: false\n")) == []
    assert read_address_list("# c\n192.0.2.1 # x\nnot-an-address\n2001:db8::/32\n") == [
        "192.0.2.1/32",
        "2001:db8::/32",
    ]


def test_explain_gives_the_reason_in_the_kernel_order() -> None:
    config = load(LAB)
    handed = HandedOut(grace=10)
    handed.add((A,), 20, now=0.0)
    doh = ["198.51.100.53/32"]

    def why(address: str, client: str | None = "192.0.2.10", now: float = 1.0) -> tuple[str, str]:
        try:
            expiry = handed.expiry_of(address, now)
        except ValueError:
            expiry = None
        left = None if expiry is None else expiry - now
        result = explain_address(config, address, client, left, doh, ["203.0.113.0/24"])
        return result["verdict"], result["reason"]

    assert why("198.51.100.80") == ("allowed", "handed out by a DNS answer")
    assert why("198.51.100.80", now=31.0)[0] == "refused"
    assert why("198.51.100.53") == ("refused", "known DoH endpoint")
    assert why("203.0.113.9") == ("allowed", "allowed prefix")
    assert why("198.51.100.99") == ("refused", "not handed out by any DNS answer within its TTL + grace")
    assert why("198.51.100.99", client="192.0.2.20") == ("allowed", "the client is in no filtered group")
    config.firewall.mode = "learn"
    assert why("198.51.100.99")[0] == "counted (learn mode)"
    with pytest.raises(ConfigError):
        why("nope")


def firewall_service(nft: FakeNftables) -> FirewallService:
    return FirewallService(load(LAB), "dg0", [51820, 51821], nft=nft)


def test_an_answer_with_a_new_address_waits_for_the_kernel_update_a_repeat_does_not() -> None:
    async def scenario() -> None:
        nft = FakeNftables()
        service = firewall_service(nft)
        await service.start()
        try:
            service.on_addresses((A,), 60)
            waiter = service.before_answer()
            assert waiter is not None
            await asyncio.wait_for(waiter, 5)  # the flush task sends it at once, not after 50 ms
            assert any("198.51.100.80 timeout 360s" in script for script in nft.scripts)
            service.on_addresses((A,), 60)  # known and within the slack: nothing to wait for
            assert service.before_answer() is None
            assert service.snapshot()["batches"] == 1
        finally:
            await service.close()

    asyncio.run(scenario())


def test_a_refused_update_releases_the_answer_and_the_address_is_sent_again() -> None:
    async def scenario() -> None:
        nft = FakeNftables()
        service = firewall_service(nft)
        await service.start()
        try:
            nft.fail = True
            service.on_addresses((A,), 60)
            waiter = service.before_answer()
            assert waiter is not None
            await asyncio.wait_for(waiter, 5)
            assert service.failures == 1
            nft.fail = False
            service.on_addresses((A,), 60)
            waiter = service.before_answer()
            assert waiter is not None
            await asyncio.wait_for(waiter, 5)
            assert any("add element" in script for script in nft.scripts)
        finally:
            await service.close()

    asyncio.run(scenario())


def test_close_waits_for_a_reloads_table_replacement_and_deletes_last() -> None:
    async def scenario() -> FakeNftables:
        nft = FakeNftables()
        service = FirewallService(load(LAB), "dg0", [51820, 51821], nft=nft)
        await service.start()
        service.reconfigure_soon(load(LAB.replace("groups: [kids]", "mode: learn")))  # a new table
        await service.close()  # at once, while the replacement is on its way
        return nft

    nft = asyncio.run(scenario())
    replaced = [i for i, script in enumerate(nft.scripts) if 'counter name "learned" return' in script]
    assert len(replaced) == 1  # the flush loop may read counters in between; nothing runs after the delete
    assert nft.scripts[-1] == "delete table inet dnsguard_fw\n"
    assert replaced[0] < len(nft.scripts) - 1


def test_close_lets_a_counter_read_in_its_worker_thread_finish_before_the_delete() -> None:
    class SlowCounters(FakeNftables):
        def __init__(self) -> None:
            super().__init__()
            self.reading = threading.Event()

        def run(self, script: str, json_output: bool = False) -> str:
            if script.startswith("list counters"):
                self.reading.set()
                time.sleep(0.3)  # a slow nft, still running when close starts
            return super().run(script, json_output)

    async def scenario() -> SlowCounters:
        nft = SlowCounters()
        service = firewall_service(nft)
        await service.start()
        await asyncio.to_thread(nft.reading.wait, 5)
        await service.close()
        return nft

    nft = asyncio.run(scenario())
    assert nft.scripts[-1] == "delete table inet dnsguard_fw\n"
    assert nft.scripts[-2].startswith("list counters")


def test_close_deletes_the_table_after_its_update_loop_died_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenCounters(FakeNftables):
        def run(self, script: str, json_output: bool = False) -> str:
            if script.startswith("list counters"):
                raise RuntimeError("unexpected nft failure")
            return super().run(script, json_output)

    async def scenario() -> BrokenCounters:
        nft = BrokenCounters()
        service = firewall_service(nft)
        await service.start()
        while service._task is not None and not service._task.done():
            await asyncio.sleep(0.01)
        await service.close()
        return nft

    nft = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert nft.scripts[-1] == "delete table inet dnsguard_fw\n"
    assert "its update loop had stopped: unexpected nft failure" in caplog.text
