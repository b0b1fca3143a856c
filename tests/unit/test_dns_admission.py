"""Client admission: allow list, token buckets per client or per prefix, per-client caps (fake clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.dns.admission import (
    ADMIT,
    MAX_BUCKETS,
    OUTSIDE,
    RATE_LIMITED,
    AdmissionSettings,
    ClientAdmission,
)

LAN = "192.0.2.0/24"


def admission(**settings: float) -> ClientAdmission:
    return ClientAdmission(
        AdmissionSettings(**settings),  # type: ignore[arg-type]
        local=["127.0.0.0/8", LAN, "fd00::/8"],
        remote=["198.51.100.0/24", "2001:db8::/32"],
        exempt=["127.0.0.0/8"],
    )


def test_a_client_outside_every_allowed_network_gets_nothing() -> None:
    gate = admission()
    assert gate.verdict("203.0.113.9", 0.0) == OUTSIDE
    assert gate.verdict("2001:db9::1", 0.0) == OUTSIDE
    assert gate.verdict("not an address", 0.0) == OUTSIDE
    assert gate.stats.outside == 3


def test_a_burst_is_admitted_then_the_rate_holds() -> None:
    gate = admission(queries_per_second=10, burst=50)
    assert all(gate.verdict("192.0.2.7", 0.0) == ADMIT for _ in range(50))
    assert gate.verdict("192.0.2.7", 0.0) == RATE_LIMITED
    # One second later the bucket holds ten more.
    assert [gate.verdict("192.0.2.7", 1.0) for _ in range(11)].count(ADMIT) == 10
    assert gate.stats.rate_limited == 2


def test_local_clients_have_a_bucket_each_remote_ones_share_their_prefix() -> None:
    gate = admission(queries_per_second=1, burst=2)
    for address in ("192.0.2.7", "192.0.2.8"):
        assert [gate.verdict(address, 0.0) for _ in range(3)] == [ADMIT, ADMIT, RATE_LIMITED]
    # 198.51.100.7 and .8 are one /24: together they get one burst.
    assert [gate.verdict(a, 0.0) for a in ("198.51.100.7", "198.51.100.8", "198.51.100.9")] == [
        ADMIT,
        ADMIT,
        RATE_LIMITED,
    ]
    # IPv6 remote clients share a /56.
    assert gate.key_of("2001:db8:0:ff::1") == gate.key_of("2001:db8:0:1::2") == "2001:db8::/56"
    assert gate.key_of("2001:db8:0:100::1") == "2001:db8:0:100::/56"


def test_exempt_clients_are_never_limited_and_ipv4_mapped_sources_count_as_ipv4() -> None:
    gate = admission(queries_per_second=1, burst=1)
    assert all(gate.verdict("127.0.0.1", 0.0) == ADMIT for _ in range(1000))
    assert gate.key_of("::ffff:192.0.2.7") == "192.0.2.7"


def test_a_rate_of_zero_turns_the_limit_off() -> None:
    gate = admission(queries_per_second=0, burst=1)
    assert all(gate.verdict("192.0.2.7", 0.0) == ADMIT for _ in range(100))


def test_upstream_slots_are_capped_per_client() -> None:
    gate = admission(max_upstream_per_client=3)
    key = gate.admit("192.0.2.7", 0.0)
    assert key is not None
    assert [gate.begin_upstream(key) for _ in range(4)] == [True, True, True, False]
    other = gate.admit("192.0.2.8", 0.0)
    assert other is not None and gate.begin_upstream(other)
    gate.end_upstream(key)
    assert gate.begin_upstream(key)
    assert gate.stats.upstream_limit == 1
    assert gate.upstream_in_flight == 4


def test_tcp_connections_are_capped_per_client() -> None:
    gate = admission(max_tcp_per_client=2)
    key = gate.key_of("192.0.2.7")
    assert key is not None
    assert [gate.open_tcp(key) for _ in range(3)] == [True, True, False]
    gate.close_tcp(key)
    assert gate.open_tcp(key) and gate.tcp_open == 2 and gate.stats.tcp_limit == 1


def test_new_networks_take_effect_at_once() -> None:
    gate = admission()
    assert gate.verdict("203.0.113.9", 0.0) == OUTSIDE
    gate.set_networks(["203.0.113.0/24"])
    assert gate.verdict("203.0.113.9", 0.0) == ADMIT


def test_a_flood_of_sources_keeps_the_tables_bounded() -> None:
    gate = admission(queries_per_second=1, burst=1)
    for i in range(MAX_BUCKETS + 10):
        gate.admit(f"fd00::{i:x}", 0.0)
    assert len(gate._buckets) <= MAX_BUCKETS


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 1000),
    burst=st.integers(1, 100),
    gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=300),
)
def test_admitted_queries_never_exceed_burst_plus_rate_times_elapsed(
    rate: int, burst: int, gaps: list[float]
) -> None:
    gate = admission(queries_per_second=rate, burst=burst)
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += gate.admit("192.0.2.7", now) is not None
    assert admitted <= burst + rate * now + 1e-6
