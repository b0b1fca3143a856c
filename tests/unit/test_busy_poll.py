"""Busy polling: when the event loop polls instead of sleeping, and how a reload changes it."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from dnsguard.app.common import apply_busy_poll, run_daemon
from dnsguard.app.metrics import registry_for, render
from dnsguard.app.resolve import ResolveDaemon
from dnsguard.net.busy_poll import BusyPollSelector, new_event_loop, selector_of
from tests.unit.test_ops import started_service, write_config
from tests.unit.test_reload import set_config

WINDOW = 300e-6


class Clock:
    """Time that moves only when told, or by `step` at each reading."""

    def __init__(self) -> None:
        self.now = 100.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Recorded(BusyPollSelector):
    """A selector whose epoll waits are recorded, and answered from `pending` (ready after n polls)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(WINDOW, clock)
        self.waits: list[float | None] = []
        self.pending: list[int] = []
        """Per coming event, how many more polls find nothing before it is ready."""
        self.key = object()

    def _poll(self, timeout: float | None) -> list:  # type: ignore[override]
        self.waits.append(timeout)
        assert len(self.waits) < 10_000, "polled without end"
        if self.pending and self.pending[0] == 0:
            self.pending.pop(0)
            return [(self.key, 1)]
        if self.pending:
            self.pending[0] -= 1
        return []


def events(selector: Recorded, clock: Clock, gaps: list[float]) -> None:
    """Wake-ups that each find an event, `gaps` seconds apart (the first after gaps[0])."""
    for gap in gaps:
        clock.now += gap
        selector.pending = [0]
        assert selector.select(1.0)
    selector.waits.clear()
    selector.polled = selector.slept = 0


def test_a_lone_event_leaves_the_next_wait_blocking() -> None:
    clock = Clock()
    selector = Recorded(clock)
    events(selector, clock, [1.0])
    clock.now += 50e-6
    assert selector.select(1.0) == []
    assert selector.waits == [1.0]
    assert selector.polled == 0


def test_dense_events_make_the_next_wait_poll_until_one_comes() -> None:
    clock = Clock()
    selector = Recorded(clock)
    events(selector, clock, [1.0] + [100e-6] * 10)  # 10,000 a second
    clock.now += 10e-6
    selector.pending = [3]
    assert selector.select(1.0)
    assert selector.waits == [0, 0, 0, 0]  # polled, never slept
    assert (selector.polled, selector.slept) == (1, 0)


def test_a_poll_that_finds_nothing_sleeps_out_the_rest_of_the_timeout() -> None:
    clock = Clock()
    selector = Recorded(clock)
    events(selector, clock, [1.0] + [100e-6] * 10)
    clock.step = 100e-6  # each reading of the clock: 100 us later
    assert selector.select(1.0) == []
    polls, last = selector.waits[:-1], selector.waits[-1]
    assert polls and all(wait == 0 for wait in polls)
    assert len(polls) <= WINDOW / clock.step + 1  # the window closes
    assert last is not None and 1.0 - 0.001 < last < 1.0  # and the loop's timeout still holds
    assert (selector.polled, selector.slept) == (0, 0)  # no event came
    selector.pending = [0]
    clock.step = 0.0
    assert selector.select(1.0)  # one comes while the loop sleeps
    assert (selector.polled, selector.slept) == (0, 1)


def test_sparse_events_do_not_poll_even_in_pairs() -> None:
    clock = Clock()
    selector = Recorded(clock)
    # A thousand a second, in pairs 20 us apart: every other gap is short, the average is not.
    events(selector, clock, [1.0] + [20e-6, 1980e-6] * 20 + [20e-6])
    selector.select(0.5)
    assert selector.waits == [0.5]


def test_polling_comes_back_after_an_idle_spell() -> None:
    clock = Clock()
    selector = Recorded(clock)
    events(selector, clock, [1.0] + [100e-6] * 10 + [30.0])  # busy, then idle for 30 s
    selector.select(0.5)
    assert selector.waits == [0.5]
    events(selector, clock, [50e-6] * 5)
    selector.pending = [1]
    assert selector.select(0.5)
    assert selector.waits == [0, 0]


def test_a_timer_due_now_or_a_closed_window_never_polls() -> None:
    clock = Clock()
    selector = Recorded(clock)
    events(selector, clock, [1.0] + [10e-6] * 5)
    selector.select(0)  # the loop has callbacks ready: one look, no polling
    assert selector.waits == [0]
    clock.now += WINDOW  # the window has passed since the last event
    selector.waits.clear()
    selector.select(None)
    assert selector.waits == [None]


def test_window_zero_is_a_plain_epoll_selector() -> None:
    clock = Clock()
    selector = Recorded(clock)
    selector.window = 0.0
    events(selector, clock, [1.0] + [10e-6] * 5)
    selector.select(1.0)
    assert selector.waits == [1.0]
    assert selector.polled == 0


def test_a_busy_poll_loop_serves_sockets_and_its_window_can_change() -> None:
    loop = new_event_loop(WINDOW)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        left.setblocking(False)
        right.setblocking(False)

        async def exchange() -> list[bytes]:
            got: list[bytes] = []
            ready = asyncio.Event()

            def readable() -> None:
                got.append(right.recv(100))
                if len(got) == 20:
                    ready.set()

            asyncio.get_running_loop().add_reader(right.fileno(), readable)
            for index in range(20):
                left.send(b"%d" % index)
                await asyncio.sleep(0)
            await asyncio.wait_for(ready.wait(), 5)
            apply_busy_poll(0.0)
            return got

        assert loop.run_until_complete(exchange()) == [b"%d" % index for index in range(20)]
        selector = selector_of(loop)
        assert selector is not None and selector.window == 0.0
    finally:
        left.close()
        right.close()
        loop.close()


def test_run_daemon_busy_polls_only_when_asked() -> None:
    uvloop = pytest.importorskip("uvloop")
    seen: list[asyncio.AbstractEventLoop] = []

    async def note_loop() -> None:
        seen.append(asyncio.get_running_loop())

    run_daemon(note_loop(), 0.0, uvloop=True)
    run_daemon(note_loop(), WINDOW, uvloop=True)
    run_daemon(note_loop(), WINDOW)
    run_daemon(note_loop(), 0.0)
    assert isinstance(seen[0], uvloop.Loop)
    assert not isinstance(seen[3], uvloop.Loop)
    assert [selector_of(loop) is not None for loop in seen] == [False, True, True, False]


async def test_apply_on_a_loop_without_busy_polling_says_a_restart_is_needed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        apply_busy_poll(0.0)
        assert not caplog.records
        apply_busy_poll(WINDOW)
    assert "takes effect after a restart" in caplog.text


def test_a_reload_changes_the_window_and_a_bad_one_keeps_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, performance={"busy-poll": "300us"})
    loop = new_event_loop(WINDOW)  # as run_daemon starts a daemon with busy polling on

    async def reloads() -> None:
        service = await started_service(path)
        daemon = ResolveDaemon(str(path), service)
        selector = selector_of(asyncio.get_running_loop())
        assert selector is not None
        try:
            set_config(path, performance={"busy-poll": "1ms"})
            assert await daemon.reload()
            assert selector.window == pytest.approx(0.001)
            set_config(path, performance={"busy-poll": "50ms"})  # over the 10 ms limit
            assert not await daemon.reload()
            assert "performance.busy-poll" in (service.reloads.last_error or "")
            assert selector.window == pytest.approx(0.001)
            set_config(path, performance={"busy-poll": 0})
            assert await daemon.reload()
            assert selector.window == 0
        finally:
            await service.close()

    try:
        loop.run_until_complete(reloads())
    finally:
        loop.close()


def test_the_metrics_say_how_the_loop_found_its_events(tmp_path: Path) -> None:
    path = write_config(tmp_path, performance={"busy-poll": "300us"})
    loop = new_event_loop(WINDOW)

    async def scrape() -> str:
        service = await started_service(path)
        try:
            selector = selector_of(asyncio.get_running_loop())
            assert selector is not None
            selector.polled, selector.slept = 7, 3
            return render(registry_for(ResolveDaemon(str(path), service))).decode()
        finally:
            await service.close()

    try:
        text = loop.run_until_complete(scrape())
    finally:
        loop.close()
    assert 'dnsguard_busy_poll_wakeups_total{how="polled"} 7.0' in text
    assert 'dnsguard_busy_poll_wakeups_total{how="slept"} 3.0' in text


async def test_a_loop_without_busy_polling_exports_no_wakeups(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    service = await started_service(path)
    try:
        text = render(registry_for(ResolveDaemon(str(path), service))).decode()
    finally:
        await service.close()
    assert "dnsguard_config_reload_total" in text
    assert "dnsguard_busy_poll_wakeups" not in text
