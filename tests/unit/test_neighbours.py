"""Groups by MAC follow the neighbour table: netlink messages in, a map in memory out."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pyroute2.netlink import NLMSG_DONE
from pyroute2.netlink.rtnl import RTM_DELNEIGH, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from dnsguard.app.lists import build_sync
from dnsguard.config.model import Config, GroupConfig
from dnsguard.net.neighbours import NeighbourMonitor, NeighbourTable, neighbour_update
from dnsguard.policy.engine import Policy

NUD_REACHABLE, NUD_STALE, NUD_FAILED, NUD_INCOMPLETE = 0x02, 0x04, 0x20, 0x01
TABLET, LAPTOP = "02:00:5e:10:00:01", "02:00:5e:10:00:02"


def wire_message(kind: int, family: int, address: str, mac: str | None, state: int, index: int = 3) -> bytes:
    """A neighbour message as the kernel sends it (encoded by pyroute2, the same code parses it)."""
    message = ndmsg()
    message["header"]["type"] = kind
    message["family"] = family
    message["ifindex"] = index
    message["state"] = state
    attrs: list[list[str]] = [["NDA_DST", address]]
    if mac is not None:
        attrs.append(["NDA_LLADDR", mac])
    message["attrs"] = attrs
    message.encode()
    return bytes(message.data)


def parsed(*chunks: bytes) -> list[Any]:
    return list(MarshalRtnl().parse(b"".join(chunks)))


def done(sequence: int) -> bytes:
    return struct.pack("=LHHLLi", 20, NLMSG_DONE, 2, sequence, 0, 0)


def test_a_kernel_message_gives_the_address_and_its_mac() -> None:
    [v4, v6, failed, deleted] = parsed(
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.10", TABLET.upper(), NUD_REACHABLE),
        wire_message(RTM_NEWNEIGH, socket.AF_INET6, "2001:db8::10", LAPTOP, NUD_STALE, index=4),
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.11", None, NUD_FAILED),
        wire_message(RTM_DELNEIGH, socket.AF_INET, "192.0.2.12", TABLET, NUD_STALE),
    )
    assert neighbour_update(v4) == ("192.0.2.10", TABLET, 3)
    assert neighbour_update(v6) == ("2001:db8::10", LAPTOP, 4)  # a stale entry still names the host
    assert neighbour_update(failed) == ("192.0.2.11", None, 3)
    assert neighbour_update(deleted) == ("192.0.2.12", None, 3)


def test_incomplete_and_failed_entries_are_not_a_mac() -> None:
    [incomplete, failed_with_old_mac] = parsed(
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.10", None, NUD_INCOMPLETE),
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.10", TABLET, NUD_FAILED),
    )
    assert neighbour_update(incomplete) == ("192.0.2.10", None, 3)
    assert neighbour_update(failed_with_old_mac) == ("192.0.2.10", None, 3)


def test_table_reports_only_real_changes() -> None:
    changed: list[str] = []
    table = NeighbourTable(changed.append)
    assert table.learn("192.0.2.10", TABLET, 3)
    assert not table.learn("192.0.2.10", TABLET.upper(), 3)  # REACHABLE -> STALE -> REACHABLE: same host
    assert table.learn("192.0.2.10", LAPTOP, 3)
    assert not table.forget("192.0.2.10", interface=4)  # an entry on another interface is not this one
    assert table.mac_of("192.0.2.10") == LAPTOP
    table.learn("fe80::10", TABLET, 3)
    assert table.mac_of("fe80::10%lan0") == TABLET  # how recvfrom names a link-local client
    assert table.forget("192.0.2.10", interface=3)
    assert table.mac_of("192.0.2.10") is None
    assert changed == ["192.0.2.10", "192.0.2.10", "fe80::10", "192.0.2.10"]


class FakeMonitor(NeighbourMonitor):
    """The netlink edge without a socket: the test hands it what the kernel would send."""

    def __init__(self, table: NeighbourTable) -> None:
        super().__init__(table)
        self.dump_requests = 0

    def _request_dump(self) -> None:
        self.dump_requests += 1
        self._sequence += 1
        self._dumping = set()

    def kernel_sends(self, *chunks: bytes) -> None:
        self.handle(parsed(*chunks))


def test_a_new_dump_drops_entries_the_kernel_no_longer_has() -> None:
    table = NeighbourTable()
    monitor = FakeMonitor(table)
    monitor._request_dump()
    monitor.kernel_sends(
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.10", TABLET, NUD_REACHABLE),
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.11", LAPTOP, NUD_REACHABLE),
        done(monitor._sequence),
    )
    assert len(table) == 2
    # Events were lost (ENOBUFS): the table is read again; 192.0.2.11 went away meanwhile, and an
    # event that arrives during the dump counts as seen.
    monitor._request_dump()
    monitor.kernel_sends(
        wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.10", TABLET, NUD_STALE),
        wire_message(RTM_NEWNEIGH, socket.AF_INET6, "2001:db8::7", LAPTOP, NUD_REACHABLE),
        done(monitor._sequence - 1),  # the end of an older dump ends nothing
    )
    assert table.mac_of("192.0.2.11") == LAPTOP
    monitor.kernel_sends(done(monitor._sequence))
    assert sorted(table.addresses()) == ["192.0.2.10", "2001:db8::7"]


def mac_policy(table: NeighbourTable) -> Policy:
    config = Config()
    config.groups = {
        "kids": GroupConfig(clients=[TABLET], block=[]),
        "parents": GroupConfig(clients=[LAPTOP], filtering=False),
    }
    for group in config.groups.values():
        group.validate()
    return Policy(config, build_sync(config).matcher, mac_lookup=table.mac_of)


def test_an_address_that_changes_mac_changes_group_at_once() -> None:
    moved: list[bool] = []
    table = NeighbourTable()
    policy = mac_policy(table)
    table.on_change = lambda address: moved.append(policy.client_moved(address))
    monitor = FakeMonitor(table)

    monitor.kernel_sends(wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.50", LAPTOP, NUD_REACHABLE))
    assert policy.group_for("192.0.2.50").name == "parents"
    # The laptop leaves; the DHCP server gives its address to the tablet.
    monitor.kernel_sends(wire_message(RTM_NEWNEIGH, socket.AF_INET, "192.0.2.50", TABLET, NUD_REACHABLE))
    assert policy.group_for("192.0.2.50").name == "kids"
    assert moved[-1] is True
    # IPv6 neighbours are learned the same way, without a subprocess.
    monitor.kernel_sends(wire_message(RTM_NEWNEIGH, socket.AF_INET6, "2001:db8::50", TABLET, NUD_STALE))
    assert policy.group_for("2001:db8::50").name == "kids"
    monitor.kernel_sends(wire_message(RTM_DELNEIGH, socket.AF_INET6, "2001:db8::50", TABLET, NUD_STALE))
    assert policy.group_for("2001:db8::50").name == "default"


def test_a_state_change_of_the_same_host_keeps_its_group_and_plans() -> None:
    table = NeighbourTable()
    policy = mac_policy(table)
    moved: list[bool] = []
    table.on_change = lambda address: moved.append(policy.client_moved(address))
    table.learn("192.0.2.60", TABLET)
    assert policy.group_for("192.0.2.60").name == "kids"
    table.learn("192.0.2.60", TABLET)  # REACHABLE -> STALE
    assert len(moved) == 1


def test_explain_evaluates_the_group_of_a_mac() -> None:
    policy = mac_policy(NeighbourTable())
    assert "(group kids)" in policy.explain("example.com", TABLET.upper().replace(":", "-"), 0.0)
    assert "(group parents)" in policy.explain("example.com", LAPTOP, 0.0)
    assert "(group default)" in policy.explain("example.com", "02:00:5e:10:00:99", 0.0)
