"""Weekly time windows: is a schedule active at a given moment (local wall-clock time)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dnsguard.config.model import WEEKDAYS, ScheduleConfig


@dataclass(frozen=True, slots=True)
class Window:
    """Active on `days` (0 = Monday) from `start` to `end` minutes after midnight.

    An end before the start crosses midnight: the window opens on one of `days` and closes the
    next morning, the way people write 'from 21:00 to 06:00 on school nights'.
    """

    days: frozenset[int]
    start: int
    end: int

    @classmethod
    def from_config(cls, schedule: ScheduleConfig) -> Window:
        start, end = schedule.window
        return cls(frozenset(WEEKDAYS.index(day) for day in schedule.days), start, end)

    def active(self, weekday: int, minute: int) -> bool:
        """True at `minute` after midnight on `weekday` (0 = Monday)."""
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return weekday in self.days
        return (weekday - 1) % 7 in self.days and minute < self.end


def local_weekday_minute(now: float) -> tuple[int, int]:
    """(weekday, minute of day) of an epoch time in the local time zone."""
    moment = time.localtime(now)
    return moment.tm_wday, moment.tm_hour * 60 + moment.tm_min
