"""Policy building blocks: schedules, safe search targets, client-to-group mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dnsguard.config.model import ScheduleConfig
from dnsguard.policy.clients import ClientGroups
from dnsguard.policy.safesearch import safe_search_target
from dnsguard.policy.schedule import Window

MON, TUE, FRI, SAT, SUN = 0, 1, 4, 5, 6


def window(start: str, end: str, days: list[str]) -> Window:
    return Window.from_config(ScheduleConfig(block=["x"], start=start, end=end, days=days))  # type: ignore[arg-type]


def test_school_hours_window() -> None:
    school = window("08:00", "17:00", ["mon", "tue", "wed", "thu", "fri"])
    assert school.active(MON, 8 * 60)
    assert school.active(FRI, 17 * 60 - 1)
    assert not school.active(FRI, 17 * 60)
    assert not school.active(MON, 7 * 60 + 59)
    assert not school.active(SAT, 12 * 60)


def test_overnight_window_belongs_to_the_evening_it_starts() -> None:
    school_nights = window("21:00", "06:00", ["sun", "mon", "tue", "wed", "thu"])
    assert school_nights.active(SUN, 22 * 60)
    assert school_nights.active(MON, 5 * 60)  # Sunday night, continued
    assert not school_nights.active(SAT, 5 * 60)  # Friday night is not a school night
    assert school_nights.active(FRI, 5 * 60)  # Thursday night, continued
    assert not school_nights.active(FRI, 22 * 60)
    assert not school_nights.active(TUE, 12 * 60)


@given(
    st.integers(0, 6), st.integers(0, 24 * 60 - 1), st.integers(0, 24 * 60 - 1), st.integers(0, 24 * 60 - 1)
)
def test_window_matches_a_minute_by_minute_model(weekday: int, minute: int, start: int, end: int) -> None:
    if start == end:
        return
    days = frozenset({MON, TUE, SAT})
    w = Window(days, start, end)
    # Model: walk back minute by minute to the most recent start; active if it happened on a
    # listed day and the end has not been reached since.
    elapsed = (minute - start) % (24 * 60)
    length = (end - start) % (24 * 60)
    start_day = weekday if minute >= start else (weekday - 1) % 7
    assert w.active(weekday, minute) == (elapsed < length and start_day in days)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("www.google.com", "forcesafesearch.google.com"),
        ("www.google.co.uk", "forcesafesearch.google.com"),
        ("google.de", "forcesafesearch.google.com"),
        ("www.bing.com", "strict.bing.com"),
        ("duckduckgo.com", "safe.duckduckgo.com"),
        ("www.youtube.com", "restrict.youtube.com"),
        ("youtubei.googleapis.com", "restrict.youtube.com"),
        ("mail.google.com", None),
        ("google.example", None),
        ("notgoogle.com", None),
    ],
)
def test_safe_search_targets(name: str, target: str | None) -> None:
    assert safe_search_target(name) == target


def test_longest_prefix_wins_and_default_takes_the_rest() -> None:
    groups = ClientGroups(
        {
            "kids": ["192.0.2.32/27"],
            "tablet": ["192.0.2.40/32"],
            "v6": ["2001:db8:100::/64"],
            "mac": ["02:00:5e:10:00:01"],
        },
        mac_lookup=lambda ip: "02:00:5e:10:00:01" if ip == "192.0.2.99" else None,
    )
    assert groups.group_of("192.0.2.33") == "kids"
    assert groups.group_of("192.0.2.40") == "tablet"
    assert groups.group_of("192.0.2.64") == "default"
    assert groups.group_of("2001:db8:100::10") == "v6"
    assert groups.group_of("192.0.2.99") == "mac"
    assert groups.group_of("not an address") == "default"


def test_no_default_group() -> None:
    assert ClientGroups({"kids": ["192.0.2.0/24"]}, default=None).group_of("198.51.100.1") is None
