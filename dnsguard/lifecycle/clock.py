"""Suspend and stall detection from two clocks, with no D-Bus.

CLOCK_BOOTTIME counts time spent in suspend and CLOCK_MONOTONIC does not, so growth of their
difference between two readings is exactly the time slept. A process frozen by SIGSTOP (or a
VM paused) sees both clocks advance together but far more than its tick interval: that is a
stall, and a tunnel's timers are just as stale after one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME (the clock every core of dnsguard is fed)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True, slots=True)
class Wake:
    """The process did not run for `gap` seconds; `suspended` says whether the machine slept."""

    gap: float
    suspended: bool


class WakeDetector:
    """Feed it both clocks on every tick; it says when the process has been away."""

    def __init__(
        self, tick_interval: float, *, sleep_threshold: float = 1.0, stall_threshold: float = 3.0
    ) -> None:
        self.tick_interval = tick_interval
        self.sleep_threshold = sleep_threshold
        self.stall_threshold = stall_threshold
        self._last: tuple[float, float] | None = None

    def observe(self, boot: float, mono: float) -> Wake | None:
        """One reading of (CLOCK_BOOTTIME, CLOCK_MONOTONIC); returns a Wake when time went missing."""
        last, self._last = self._last, (boot, mono)
        if last is None:
            return None
        slept = (boot - mono) - (last[0] - last[1])
        if slept >= self.sleep_threshold:
            return Wake(gap=boot - last[0], suspended=True)
        if boot - last[0] >= self.tick_interval + self.stall_threshold:
            return Wake(gap=boot - last[0], suspended=False)
        return None
