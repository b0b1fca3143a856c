"""The query log's writer process: batches of records in over a pipe, transactions out to SQLite.

A process rather than a thread: sqlite3 takes the GIL back for every row it binds, so a writer thread
inserting 25,000 rows every second would wait on the resolver's event loop for each of them (and
slow it with every switch); a process has a GIL of its own and runs on the other core. The daemon's
only cost per batch is `encode_batch`: marshal, 0.23 us a row (25,000 rows: marshal 5.8 ms, pickle
6.9 ms, columns of arrays and joined strings 14 ms; best of five here), paid once per distinct query
of the second, since the resolver's sink folds repeats.

Messages, daemon -> writer: an encoded batch of dnsguard.dns.log_sink.LogRow; b"" to finish.
Writer -> daemon: ("ready", rows), ("written", n, answers), ("failed", n, error, answers), ("error",
error), ("retention", deleted); `answers` counts the batch by (qtype, rcode) for the metrics, a count the
daemon would otherwise pay for on its own core. The writer ignores SIGINT and SIGTERM (systemd signals
the whole cgroup; Ctrl-C the whole process group): it ends when the daemon closes the pipe, after
writing what the daemon still sent. It changes no scheduling priority: the shipped units'
SystemCallFilter=~@resources forbids setpriority and sched_setscheduler.
"""

from __future__ import annotations

import marshal
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dnsguard.app.querylog_store import QueryLogError, QueryStore

RETENTION_INTERVAL = 60.0
"""Seconds between retention passes (the first runs at start)."""


MARSHAL_VERSION = 4


def encode_batch(rows: Sequence[tuple[Any, ...]]) -> bytes:
    """Rows for the pipe: marshal, which the writer (the same interpreter, spawned by the daemon)
    reads back; only the daemon writes to that pipe."""
    return marshal.dumps(list(rows), MARSHAL_VERSION)


def decode_batch(data: bytes) -> list[tuple[Any, ...]]:
    """The rows `encode_batch` encoded, in their order (marshal keeps tuples tuples)."""
    rows = marshal.loads(data)
    if not isinstance(rows, list):
        raise ValueError("a query log batch is a list of rows")
    return rows


def count_answers(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[int, int], int]:
    """(qtype, rcode) -> queries the rows stand for (LogRow: qtype, rcode and count at 3, 8 and 9; the
    rcode is the header's four bits)."""
    counts: dict[int, int] = {}
    for row in rows:
        key = row[3] << 4 | row[8]  # an int key: a tuple per row would cost twice as much
        counts[key] = counts.get(key, 0) + row[9]
    return {(key >> 4, key & 15): count for key, count in counts.items()}


@dataclass(frozen=True)
class WriterSettings:
    path: str
    privacy: str
    max_age: float
    max_rows: int
    max_size: int


def writer_main(conn: Connection, settings: WriterSettings) -> None:
    """The writer process's body (multiprocessing target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        store = QueryStore(settings.path)
    except QueryLogError as exc:
        conn.send(("error", str(exc)))
        return
    try:
        conn.send(("ready", store.count()))
        next_retention = 0.0
        while True:
            if conn.poll(max(0.0, next_retention - time.monotonic())):
                try:
                    data = conn.recv_bytes()
                except EOFError:
                    break
                if not data:
                    break
                rows = decode_batch(data)
                answers = count_answers(rows)
                try:
                    conn.send(("written", store.append(rows, settings.privacy), answers))
                except QueryLogError as exc:
                    conn.send(("failed", sum(answers.values()), str(exc), answers))
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_INTERVAL
                try:
                    deleted = store.enforce(
                        time.time(), settings.max_age, settings.max_rows, settings.max_size
                    )
                    conn.send(("retention", deleted))
                except QueryLogError as exc:
                    conn.send(("failed", 0, str(exc), {}))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone; what it sent is written
    finally:
        store.close()
