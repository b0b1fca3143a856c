"""The queries waiting for the lasting query log: folded per distinct query until the next hand-off.

The resolver adds every answered query here while the lasting log is on (dnsguard/app/querylog.py takes
the rows once a second and sends them to its writer). The same query again (same client, name, type,
result, group, reason and rcode) adds one to its row's count, so a repeat costs a dict update and the
hand-off carries each distinct query once (twice at most, see below).

Two tables, each entry a row at `take`:

- `records`, for the queries the resolver decided or completed: the whole query as a tuple key, its
  (first time, longest elapsed_ms, count) as the value;
- `planned`, for the repeats the resolver answered from a plan (a reply worked out once for an exact
  message, see dnsguard.dns.resolver._Plan), which are most queries of a busy resolver. They are keyed
  by client, then by the plan's serial number << 4 | rcode: an int, so that a repeat (counted inline by
  the resolver, `counts[key] = count + 1`) and a new entry alike leave nothing for the cyclic garbage
  collector to track. A tuple key and entry per new query kept young collections running every few
  hundred queries (bench/stall_probe.py counted them). The sink holds each plan it counts until the
  take, by serial; `fields(plan)` gives the plan's (qname, qtype, result, group, reason).

A query decided and then replayed within one interval (its first pass, then its repeats) is an entry
in each table, and two rows whose counts add up. At most `max_entries` entries wait; a new query
beyond that is counted in `lost` by (qtype, rcode) and answered all the same, and a repeat of one that
waits is still folded into its count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

LogRecord = tuple[float, str, str, int, str, str, str, float, int]
"""(time, client, name, qtype, result, group, reason, elapsed_ms, rcode): one answered query as the
resolver records it, a plain tuple because it is made for every query."""
LogKey = tuple[str, str, int, str, str, str, int]
"""(client, name, qtype, result, group, reason, rcode): what the sink folds repeats by."""
SinkEntry = tuple[float, float, int]
"""(first time, longest elapsed_ms, count) of a query folded in LogSink.records."""
LogRow = tuple[float, str, str, int, str, str, str, float, int, int]
"""A LogRecord and its count: the first time, the longest elapsed_ms, and how many queries it stands for."""
PlanFields = Callable[[Any], tuple[str, int, str, str, str]]
"""A plan's (qname, qtype, result, group, reason)."""


class LogSink:
    """Answered queries folded by query until `take` (see the module's docstring)."""

    __slots__ = ("fields", "first", "lost", "max_entries", "planned", "plans", "records", "size")

    def __init__(self, max_entries: int, fields: PlanFields) -> None:
        self.max_entries = max_entries
        self.fields = fields
        self.records: dict[LogKey, SinkEntry] = {}
        self.planned: dict[str, dict[int, int]] = {}
        """client -> plan serial << 4 | rcode -> count."""
        self.first: dict[str, dict[int, float]] = {}
        """client -> the same key -> the time of the first of those queries."""
        self.plans: dict[int, Any] = {}
        """Plan serial -> plan, for every plan counted in `planned`."""
        self.size = 0
        """Entries in both tables."""
        self.lost: dict[tuple[int, int], int] = {}
        """(qtype, rcode) -> queries a full sink could not take, until the query log takes them."""

    def add(self, record: LogRecord) -> None:
        """Fold one answered query (decided or completed, not replayed from a plan)."""
        at, client, qname, qtype, result, group, reason, elapsed_ms, rcode = record
        key = (client, qname, qtype, result, group, reason, rcode)
        entry = self.records.get(key)
        if entry is not None:
            longest = elapsed_ms if elapsed_ms > entry[1] else entry[1]
            self.records[key] = (entry[0], longest, entry[2] + 1)
        elif self.size < self.max_entries:
            self.records[key] = (at, elapsed_ms, 1)
            self.size += 1
        else:
            self.lost[qtype, rcode] = self.lost.get((qtype, rcode), 0) + 1

    def add_planned(self, client: str, key: int, plan: Any, at: float) -> None:
        """The first query of `client` under `plan` since the take (key: the plan's serial << 4 |
        rcode); the resolver counts the repeats in `planned` itself."""
        if self.size >= self.max_entries:
            qname, qtype, result, group, reason = self.fields(plan)
            rcode = key & 15
            held = (client, qname, qtype, result, group, reason, rcode)
            entry = self.records.get(held)
            if entry is not None:  # decided in this interval: a full sink still folds its repeats
                self.records[held] = (entry[0], entry[1], entry[2] + 1)
            else:
                self.lost[qtype, rcode] = self.lost.get((qtype, rcode), 0) + 1
            return
        counts = self.planned.get(client)
        if counts is None:
            counts = self.planned[client] = {}
            self.first[client] = {}
        counts[key] = 1
        self.first[client][key] = at
        self.plans[key >> 4] = plan
        self.size += 1

    def waiting(self) -> int:
        """Queries the entries stand for."""
        return sum(entry[2] for entry in self.records.values()) + sum(
            sum(counts.values()) for counts in self.planned.values()
        )

    def take_rows(self) -> Iterator[LogRow]:
        """The waiting queries, a row per entry with its count, made as they are read; the sink starts
        empty again at once (what it lost stays in `lost` for the caller), and a caller that reads a
        slice at a time (the query log's hand-off) can let queries be answered between slices."""
        records, planned, first, plans = self.records, self.planned, self.first, self.plans
        self.records, self.planned, self.first, self.plans, self.size = {}, {}, {}, {}, 0
        return _rows(records, planned, first, plans, self.fields)


def _rows(
    records: dict[LogKey, SinkEntry],
    planned: dict[str, dict[int, int]],
    first: dict[str, dict[int, float]],
    plans: dict[int, Any],
    fields: PlanFields,
) -> Iterator[LogRow]:
    for (client, qname, qtype, result, group, reason, rcode), (at, elapsed_ms, count) in records.items():
        yield (at, client, qname, qtype, result, group, reason, elapsed_ms, rcode, count)
    for client, counts in planned.items():
        times = first[client]
        for key, count in counts.items():
            yield (times[key], client, *fields(plans[key >> 4]), 0.0, key & 15, count)
