"""Busy polling for the event loop: while events come densely, poll a while before sleeping.

A daemon that sleeps in epoll_wait between queries pays for it on the next one: on a virtual machine
its vCPU halts, and what the query's path needs (the interpreter's code and data, the branch
predictors) is gone by the time it wakes. The tunnel's device send (bench/cold_packet.py's code, one
process) took 5.5-5.8 us after 50-200 us of polling, 11.8-20.5 us after as long asleep; at 10,000
DNS queries a second every query meets a daemon that has just gone to sleep. Polling through the
short gaps meets each one warm, the way Linux's own busy polling (SO_BUSY_POLL, net.core.busy_poll)
does for a socket, at the price of CPU: the gaps are spent polling instead of asleep.

BusyPollSelector is an epoll selector for asyncio's SelectorEventLoop. When the loop would sleep, the
last event came less than `window` seconds ago and events have been coming less than `window` apart on
average (a moving average of the gaps between them, each counted as at most GAP_CAP windows), it polls
epoll without blocking until an event comes or the window closes, then sleeps as before. Sparse traffic
does not poll (with a 300 us window: a ping's reply a millisecond later, a thousand queries a second
even when they come in pairs), nor does an idle daemon; a few close events after an idle spell start
it again. `window` 0 is a plain EpollSelector.
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref
from collections.abc import Callable

Ready = list[tuple[selectors.SelectorKey, int]]

GAP_CAP = 4
"""A gap between events counts in the average as at most this many windows: an idle spell does not
keep polling off for long once events come densely again (after one, five events in quick succession
bring it back)."""
GAP_WEIGHT = 0.25
"""The weight of the newest gap in the moving average."""


class BusyPollSelector(selectors.EpollSelector):
    """An EpollSelector that polls for up to `window` seconds after an event while events come densely."""

    def __init__(self, window: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._last_event = float("-inf")
        self._gap = float("inf")
        """Moving average of the seconds between events."""
        self.polled = 0
        """Wake-ups with events that polling found (they came while the window was open)."""
        self.slept = 0
        """Wake-ups with events from a blocking wait (the window had closed, or was not open)."""

    def select(self, timeout: float | None = None) -> Ready:
        if self.window <= 0:
            return self._poll(timeout)
        if timeout is not None and timeout <= 0:
            return self._found(self._poll(0))
        now = started = self._clock()
        closes = self._last_event + self.window
        if self._gap < self.window and now < closes:
            until = closes if timeout is None else min(closes, now + timeout)
            while True:
                ready = self._poll(0)
                if ready:
                    self.polled += 1
                    return self._found(ready)
                now = self._clock()
                if now >= until:
                    break
            if timeout is not None:
                timeout = max(0.0, timeout - (now - started))
        ready = self._poll(timeout)
        if ready:
            self.slept += 1
        return self._found(ready)

    def _poll(self, timeout: float | None) -> Ready:
        return super().select(timeout)

    def _found(self, ready: Ready) -> Ready:
        if ready:
            now = self._clock()
            gap = min(now - self._last_event, GAP_CAP * self.window)
            self._gap = gap if self._gap == float("inf") else self._gap + GAP_WEIGHT * (gap - self._gap)
            self._last_event = now
        return ready


_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BusyPollSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop(window: float) -> asyncio.AbstractEventLoop:
    """An asyncio loop on a BusyPollSelector with `window` (selector_of(loop).window changes it later)."""
    selector = BusyPollSelector(window)
    loop = asyncio.SelectorEventLoop(selector)
    _selectors[loop] = selector
    return loop


def selector_of(loop: asyncio.AbstractEventLoop) -> BusyPollSelector | None:
    """The BusyPollSelector of a loop made by new_event_loop (None for any other loop, uvloop's say)."""
    return _selectors.get(loop)
