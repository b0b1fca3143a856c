"""Which netlink messages count as a path change."""

from __future__ import annotations

from typing import Any

from dnsguard.net.monitor import is_relevant


class Message(dict[str, Any]):
    def get_attr(self, name: str) -> Any:
        return self.get(name)


def test_uplink_events_count() -> None:
    assert is_relevant(Message(event="RTM_NEWLINK", index=2, IFLA_IFNAME="eth0", state="down"), 5, 51820)
    assert is_relevant(Message(event="RTM_NEWADDR", index=2, scope=0, IFA_ADDRESS="198.18.1.3"), 5, 51820)
    assert is_relevant(Message(event="RTM_DELROUTE", RTA_TABLE=254, dst_len=0, RTA_OIF=2), 5, 51820)


def test_noise_is_ignored() -> None:
    assert is_relevant(Message(event="RTM_NEWLINK", index=5, IFLA_IFNAME="dg0", state="up"), 5, 51820) is None
    link_local = Message(event="RTM_NEWADDR", index=2, scope=253, IFA_ADDRESS="fe80::1")
    assert is_relevant(link_local, 5, 51820) is None
    assert is_relevant(Message(event="RTM_NEWROUTE", RTA_TABLE=51820, dst_len=0, RTA_OIF=5), 5, 51820) is None
    assert is_relevant(Message(event="RTM_NEWROUTE", RTA_TABLE=254, dst_len=24, RTA_OIF=2), 5, 51820) is None
    assert is_relevant(Message(event="RTM_NEWNEIGH"), 5, 51820) is None


def test_a_link_event_that_leaves_its_state_as_it_was_is_not_a_path_change() -> None:
    up = 0x1 | 0x40 | 0x10000
    links = {2: (up, "UP")}
    promiscuous = Message(
        event="RTM_NEWLINK", index=2, IFLA_IFNAME="eth0", flags=up | 0x100, IFLA_OPERSTATE="UP"
    )
    assert is_relevant(promiscuous, 5, 51820, links) is None  # tcpdump started on the uplink
    carrier_lost = Message(event="RTM_NEWLINK", index=2, IFLA_IFNAME="eth0", flags=0x1, IFLA_OPERSTATE="DOWN")
    assert is_relevant(carrier_lost, 5, 51820, links) == "link eth0 down"
    assert is_relevant(carrier_lost, 5, 51820, links) is None  # reported once
    new_link = Message(event="RTM_NEWLINK", index=7, IFLA_IFNAME="wlan0", flags=up, IFLA_OPERSTATE="UP")
    assert is_relevant(new_link, 5, 51820, links) == "link wlan0 up"
    assert is_relevant(Message(event="RTM_DELLINK", index=7, IFLA_IFNAME="wlan0"), 5, 51820, links)
    assert 7 not in links
