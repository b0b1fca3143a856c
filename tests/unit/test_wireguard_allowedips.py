"""Cryptokey routing: the longest matching prefix decides which peer an address belongs to."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.errors import ConfigError
from dnsguard.wireguard.allowedips import AllowedIPs, Network, parse_network


def _table(routes: dict[str, str]) -> AllowedIPs[str]:
    table: AllowedIPs[str] = AllowedIPs()
    for prefix, owner in routes.items():
        table.insert(parse_network(prefix), owner)
    return table


def _lookup(table: AllowedIPs[str], address: str) -> str | None:
    return table.lookup(ipaddress.ip_address(address).packed)


def test_the_longest_prefix_wins_for_ipv4_and_ipv6() -> None:
    table = _table(
        {
            "0.0.0.0/0": "default",
            "100.64.0.0/10": "cgnat",
            "100.64.1.0/24": "lan",
            "100.64.1.7/32": "host",
            "fd00::/8": "ula",
            "fd00:1::/64": "site",
        }
    )
    assert _lookup(table, "100.64.1.7") == "host"
    assert _lookup(table, "100.64.1.8") == "lan"
    assert _lookup(table, "100.127.0.1") == "cgnat"
    assert _lookup(table, "198.18.0.1") == "default"
    assert _lookup(table, "fd00:1::5") == "site"
    assert _lookup(table, "fd12::1") == "ula"
    assert _lookup(table, "2001:db8::1") is None


def test_a_prefix_belongs_to_whoever_inserted_it_last() -> None:
    table = _table({"100.64.0.0/24": "first"})
    assert table.insert(parse_network("100.64.0.0/24"), "second") == "first"
    assert _lookup(table, "100.64.0.9") == "second"
    assert list(table.networks_of("first")) == []


def test_removing_a_value_removes_only_its_prefixes() -> None:
    table = _table({"100.64.0.0/24": "a", "100.64.0.5/32": "b", "fd00::/64": "a"})
    table.remove_value("a")
    assert _lookup(table, "100.64.0.9") is None
    assert _lookup(table, "100.64.0.5") == "b"
    assert _lookup(table, "fd00::1") is None


def test_host_bits_are_cleared_and_bare_addresses_are_host_routes() -> None:
    assert parse_network("100.64.1.9/24") == ipaddress.ip_network("100.64.1.0/24")
    assert parse_network("fd00::1") == ipaddress.ip_network("fd00::1/128")


def test_a_malformed_prefix_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an IP prefix"):
        parse_network("100.64.0.0/33")


def test_sole_owner_is_the_full_tunnel_case() -> None:
    assert _table({"0.0.0.0/0": "server"}).sole_owner(4) == "server"
    assert _table({"0.0.0.0/0": "server", "100.64.0.0/10": "x"}).sole_owner(4) is None
    assert _table({"0.0.0.0/0": "server"}).sole_owner(6) is None


prefixes_v4 = st.builds(
    lambda address, length: ipaddress.ip_network((address, length), strict=False),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=32),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(prefixes_v4, st.sampled_from("abcdef")), max_size=30),
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=30),
)
def test_lookup_agrees_with_a_linear_scan(routes: list[tuple[Network, str]], addresses: list[int]) -> None:
    table: AllowedIPs[str] = AllowedIPs()
    owners: dict[Network, str] = {}
    for network, owner in routes:
        table.insert(network, owner)
        owners[network] = owner
    for value in addresses:
        address = ipaddress.IPv4Address(value)
        matches = [network for network in owners if address in network]
        expected = owners[max(matches, key=lambda network: network.prefixlen)] if matches else None
        assert table.lookup(address.packed) == expected
