"""The network-namespace lab used by tests, benchmarks and `dnsguard demo`."""

from dnsguard.lab.netns import (
    ADDRESSES,
    Addresses,
    Lab,
    cleanup_leftovers,
    dig_answers,
    dig_status,
    lab_session,
)
from dnsguard.net.capabilities import have_net_admin

__all__ = [
    "ADDRESSES",
    "Addresses",
    "Lab",
    "cleanup_leftovers",
    "dig_answers",
    "dig_status",
    "have_net_admin",
    "lab_session",
]
