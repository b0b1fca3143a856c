"""The replay window accepts each counter once, within 8128 of the newest, and none at or above the limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.wireguard.constants import REJECT_AFTER_MESSAGES
from dnsguard.wireguard.replay import WINDOW_SIZE, ReplayWindow


class ModelWindow:
    """The specification, trivially: remember everything, accept what is new and not too old."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[int] = set()
        self.newest = 0

    def accept(self, counter: int) -> bool:
        if counter >= self.limit or counter in self.seen or self.newest - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.newest = max(self.newest, counter)
        return True


def test_the_window_is_127_blocks_of_64_bits() -> None:
    assert WINDOW_SIZE == 8128


def test_each_counter_is_accepted_once() -> None:
    window = ReplayWindow()
    assert [window.accept(counter) for counter in (0, 1, 2, 1, 0, 2)] == [True] * 3 + [False] * 3


def test_reordered_counters_inside_the_window_are_accepted() -> None:
    window = ReplayWindow()
    assert window.accept(10_000)
    assert window.accept(10_000 - WINDOW_SIZE)
    assert not window.accept(10_000 - WINDOW_SIZE - 1)
    assert window.accept(9_999)


def test_a_jump_beyond_the_whole_ring_forgets_everything_older() -> None:
    window = ReplayWindow()
    assert window.accept(5)
    assert window.accept(1_000_000)
    assert not window.accept(5)
    assert window.accept(1_000_000 - 1)


def test_counters_at_or_above_the_limit_are_rejected() -> None:
    window = ReplayWindow()
    assert not window.accept(REJECT_AFTER_MESSAGES)
    assert not window.accept(2**64 - 1)
    assert window.accept(REJECT_AFTER_MESSAGES - 1)


def _counters(limit: int) -> st.SearchStrategy[list[int]]:
    near = st.integers(min_value=0, max_value=3 * WINDOW_SIZE)
    jumps = st.integers(min_value=0, max_value=limit + 5)
    return st.lists(st.one_of(near, near, near, jumps), max_size=300)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_ring_agrees_with_the_model_on_any_sequence(data: st.DataObject) -> None:
    limit = data.draw(st.sampled_from([40 * WINDOW_SIZE, REJECT_AFTER_MESSAGES]))
    counters = data.draw(_counters(limit))
    window, model = ReplayWindow(limit), ModelWindow(limit)
    for counter in counters:
        assert window.accept(counter) == model.accept(counter), counter


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=2**40), st.lists(st.integers(-9000, 200), max_size=400))
def test_the_ring_agrees_with_the_model_on_jittered_streams(start: int, offsets: list[int]) -> None:
    window, model = ReplayWindow(), ModelWindow(REJECT_AFTER_MESSAGES)
    for position, offset in enumerate(offsets):
        counter = max(0, start + position * 50 + offset)
        assert window.accept(counter) == model.accept(counter), counter
