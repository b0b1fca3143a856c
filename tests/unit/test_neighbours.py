"""Reading client MAC addresses from the kernel's ARP table."""

from __future__ import annotations

from pathlib import Path

from dnsguard.net.neighbours import mac_of

ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.0.2.10       0x1         0x2         02:00:5E:10:00:01     *        lan0
192.0.2.11       0x1         0x0         00:00:00:00:00:00     *        lan0
"""


def test_complete_entries_only(tmp_path: Path) -> None:
    table = tmp_path / "arp"
    table.write_text(ARP)
    assert mac_of("192.0.2.10", table) == "02:00:5e:10:00:01"
    assert mac_of("192.0.2.11", table) is None  # incomplete: no answer to ARP yet
    assert mac_of("192.0.2.12", table) is None
    assert mac_of("192.0.2.10", tmp_path / "missing") is None
