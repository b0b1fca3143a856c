"""The query log's writer process: batches of records in over a pipe, transactions out to SQLite.

A process rather than a thread: sqlite3 takes the GIL back for every row it binds, so a writer thread
inserting 25,000 rows every half second would wait on the resolver's event loop for each of them (and
slow it with every switch); a process has a GIL of its own and runs on the other core. The daemon's
only cost per batch is `encode_batch`: the records as columns (arrays of numbers, the strings joined),
about 0.4 us a record against 0.9 us to pickle the tuples (measured with 25,000 records).

Messages, daemon -> writer: an encoded batch of dnsguard.dns.resolver.LogRecord; b"" to finish.
Writer -> daemon: ("ready", rows), ("written", n), ("failed", n, error), ("error", error), ("retention",
deleted). The writer ignores SIGINT and SIGTERM (systemd signals the whole cgroup; Ctrl-C the whole
process group): it ends when the daemon closes the pipe, after writing what the daemon still sent.
It changes no scheduling priority: the shipped units' SystemCallFilter=~@resources forbids
setpriority and sched_setscheduler.
"""

from __future__ import annotations

import pickle
import signal
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dnsguard.app.querylog_store import QueryLogError, QueryStore

RETENTION_INTERVAL = 60.0
"""Seconds between retention passes (the first runs at start)."""


STRING_COLUMNS = 5
"""client, name, result, group, reason: sent as one NUL-separated text."""


def encode_batch(records: Sequence[Sequence[Any]]) -> bytes:
    """Records as columns: times, answer times, query types, rcodes as arrays; the strings joined by NUL.

    A batch in which a string holds a NUL itself (a name read from a hostile query could) is sent as
    pickled rows instead: slower, and still whole.
    """
    times, clients, names, qtypes, results, groups, reasons, elapsed, rcodes = zip(*records, strict=True)
    text = "\0".join(clients + names + results + groups + reasons)
    if text.count("\0") != STRING_COLUMNS * len(records) - 1:
        return pickle.dumps(("rows", list(records)), protocol=pickle.HIGHEST_PROTOCOL)
    columns = (
        "columns",
        array("d", times).tobytes(),
        array("d", elapsed).tobytes(),
        array("H", qtypes).tobytes(),
        array("B", rcodes).tobytes(),
        text.encode("utf-8", "surrogatepass"),
    )
    return pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL)


def decode_batch(data: bytes) -> list[tuple[Any, ...]]:
    """The records `encode_batch` encoded, as tuples in their order."""
    message = pickle.loads(data)
    if message[0] == "rows":
        return [tuple(record) for record in message[1]]
    _, times_data, elapsed_data, qtypes_data, rcodes_data, text = message
    times, elapsed, qtypes, rcodes = array("d"), array("d"), array("H"), array("B")
    times.frombytes(times_data)
    elapsed.frombytes(elapsed_data)
    qtypes.frombytes(qtypes_data)
    rcodes.frombytes(rcodes_data)
    n = len(times)
    strings = text.decode("utf-8", "surrogatepass").split("\0")
    clients, names, results, groups, reasons = (strings[i * n : (i + 1) * n] for i in range(STRING_COLUMNS))
    return list(zip(times, clients, names, qtypes, results, groups, reasons, elapsed, rcodes, strict=True))


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
                records = decode_batch(data)
                try:
                    conn.send(("written", store.append(records, settings.privacy)))
                except QueryLogError as exc:
                    conn.send(("failed", len(records), str(exc)))
            if time.monotonic() >= next_retention:
                next_retention = time.monotonic() + RETENTION_INTERVAL
                try:
                    deleted = store.enforce(
                        time.time(), settings.max_age, settings.max_rows, settings.max_size
                    )
                    conn.send(("retention", deleted))
                except QueryLogError as exc:
                    conn.send(("failed", 0, str(exc)))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone; what it sent is written
    finally:
        store.close()
