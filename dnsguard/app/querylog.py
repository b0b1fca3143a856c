"""The lasting query log in the daemon: records taken from the resolver in batches, handed to the writer.

The serving path pays a dict update per answered query: while the log is on, the resolver's bounded
sink (`Resolver.log_sink`, dnsguard/dns/log_sink.py) folds a repeated query into its entry's count,
and a full sink counts a new one as dropped. Every FLUSH_INTERVAL this module takes the sink whole, a
row per entry with its count, and sends the batch to the writer process
(dnsguard/app/querylog_writer.py) from a worker thread, so that a full pipe never stalls the event
loop. Rows are made and encoded a slice at a time (HANDOFF_SLICE), with a turn of the loop between
slices, so that a hand-off of many distinct queries does not hold the answers back either. While one
batch is on its way, the next ones wait here, up to `querylog.queue` rows. A writer that cannot open
or write its database is reported (status, log line, the `dropped` counter) and the resolver keeps
answering.

The API reads the database through connections of its own, in worker threads (search, stats).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from dnsguard.app.querylog_store import QueryLogError, QueryStore, Search, qtype_name, rcode_name
from dnsguard.app.querylog_writer import WriterSettings, count_answers, encode_batch, writer_main

if TYPE_CHECKING:
    from dnsguard.config import Config
    from dnsguard.dns.log_sink import LogRow
    from dnsguard.dns.resolver import Resolver

log = logging.getLogger("dnsguard.querylog")

FLUSH_INTERVAL = 1.0
"""Seconds between hand-offs of the resolver's records to the writer: a query asked again and again
is one row a second (the sink folds its repeats until the hand-off)."""
HANDOFF_SLICE = 500
"""Rows made from the sink, and rows encoded for the writer, between two turns of the event loop. A
second of a flood of new names (20,000 distinct queries) made and encoded at once held the loop
about 30 ms (21 ms to make the rows, 10 ms to encode them), and every query that came meanwhile
waited; a slice takes well under a millisecond."""
STOP_TIMEOUT = 5.0
"""Seconds the writer has to write the last batches at stop before it is killed."""
RESTART_DELAYS = (1.0, 5.0, 30.0, 60.0)
"""Seconds before a writer that died (killed, out of memory, a database it cannot open) is started
again: the first delay after a writer that had written, then each next one while it keeps dying."""


def settings_of(config: Config) -> WriterSettings | None:
    """The writer's settings under `config`; None when nothing is to be written."""
    querylog = config.querylog
    if not querylog.enabled or querylog.privacy == "off":
        return None
    retention = querylog.retention
    return WriterSettings(
        os.path.join(config.base_dir, querylog.path),
        querylog.privacy,
        float(retention.max_age),
        retention.max_rows,
        int(retention.max_size),
    )


@dataclass
class QueryLogCounters:
    written: int = 0
    dropped: int = 0
    """Queries lost: the resolver's sink full, the queue here full, the writer down or failing."""
    restarts: int = 0
    """Writers started again after one died."""
    answers: Counter[tuple[int, int]] = field(default_factory=Counter)
    """(qtype, rcode) -> answered queries, counted by the writer from what it receives, or here when there
    is none (the metrics fold them into bounded families); a record lost on the way is in `dropped` only."""


class QueryLog:
    """Takes the resolver's records and keeps a writer process for them (when the config asks for one)."""

    def __init__(self, resolver: Resolver, config: Config) -> None:
        self.resolver = resolver
        self.counters = QueryLogCounters()
        self.settings = settings_of(config)
        self.queue_max = config.querylog.queue
        self.state = "off"
        """off, starting, ready, or error (see `error`)."""
        self.error = ""
        self._held: list[LogRow] = []
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self._sending: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._restart_at: float | None = None
        self._deaths = 0
        """Writers that died since one last wrote: picks the next RESTART_DELAYS entry."""
        self._replacing = False
        """A reload or stop is replacing the writer: no restart meanwhile."""
        self._attach()

    @property
    def path(self) -> str | None:
        """The database while the log is on (whether or not its writer runs)."""
        return self.settings.path if self.settings is not None else None

    def _attach(self) -> None:
        """Give the resolver a sink while the log is on; without one it only counts answers by type and
        rcode (Resolver.answer_counts), and a query leaves nothing behind for the garbage collector."""
        resolver = self.resolver
        if self.settings is None:
            self._count(self._take())
            resolver.log_sink = None
        elif resolver.log_sink is None:
            resolver.log_sink = resolver.new_log_sink(self.queue_max)

    def start(self) -> None:
        self._start_writer()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _start_writer(self) -> None:
        if self.settings is None:
            self.state = "off"
            return
        # spawn: a fresh interpreter that loads only the writer's modules, not a fork of the daemon's heap.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(
            target=writer_main, args=(child, self.settings), name="dnsguard-querylog", daemon=True
        )
        try:
            process.start()
        except OSError as exc:
            self._fail(f"query log writer did not start: {exc}")
            return
        child.close()
        self._conn, self._process = parent, process
        self.state, self.error = "starting", ""

    def _fail(self, error: str) -> None:
        if self.state != "error" or self.error != error:
            log.error("%s; queries are answered but not logged", error)
        self.state, self.error = "error", error

    async def reconfigure(self, config: Config) -> None:
        """Follow a reload: a new path, privacy or retention restarts the writer once it wrote its batches."""
        self.queue_max = config.querylog.queue
        if self.resolver.log_sink is not None:
            self.resolver.log_sink.max_entries = self.queue_max
        settings = settings_of(config)
        if settings == self.settings:
            return
        self._replacing = True
        try:
            await self._flush()
            await self._stop_writer()
            self.settings = settings
            self._attach()
            self._restart_at, self._deaths = None, 0
            self._start_writer()
        finally:
            self._replacing = False

    # -- the hand-off loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self._flush(wait=False)
                self._restart_if_gone(time.monotonic())
            except Exception as exc:  # a bug here must not end the hand-offs
                log.exception("query log hand-off failed: %s", exc)

    def _restart_if_gone(self, now: float) -> None:
        """Start the writer again once its delay has passed, if it died; the queries meanwhile are
        counted as dropped (the resolver never waits for the log)."""
        if self.settings is None or self._conn is not None or self._replacing or self._sending is not None:
            self._restart_at = None
            return
        if self._restart_at is None:
            self._restart_at = now + RESTART_DELAYS[min(self._deaths, len(RESTART_DELAYS) - 1)]
            return
        if now < self._restart_at:
            return
        self._restart_at = None
        self._deaths += 1
        gone, self._process = self._process, None
        if gone is not None:
            gone.join(0)  # reap it
            log.info("query log writer ended (exit code %s): starting it again", gone.exitcode)
        self.counters.restarts += 1
        self._start_writer()

    def _take(self) -> list[LogRow]:
        return list(self._take_stream())

    def _take_stream(self) -> Iterator[LogRow]:
        resolver = self.resolver
        self.counters.answers.update(resolver.take_answer_counts())
        sink = resolver.log_sink
        if sink is not None and sink.lost:
            # Answered all the same: counted by type and rcode, and as dropped.
            lost, sink.lost = sink.lost, {}
            self.counters.answers.update(lost)
            self.counters.dropped += sum(lost.values())
        return resolver.take_log_stream()

    def _count(self, rows: list[LogRow]) -> None:
        """Count rows by type and rcode here: a writer counts what it receives, off this core."""
        self.counters.answers.update(count_answers(rows))

    def _lose(self, rows: list[LogRow]) -> None:
        """Rows the log will not write: answered all the same, and dropped."""
        self._count(rows)
        self.counters.dropped += sum(row[9] for row in rows)

    async def _flush(self, wait: bool = True) -> None:
        """Take the resolver's records and send what waits when no send is under way (`wait`: finish it).

        The rows are made HANDOFF_SLICE at a time, with a turn of the event loop between slices."""
        stream = self._take_stream()
        self._read_replies()
        try:
            while records := list(itertools.islice(stream, HANDOFF_SLICE)):
                self._hold(records)
                await asyncio.sleep(0)  # queries that came meanwhile are answered before the next slice
        except asyncio.CancelledError:
            self._hold(list(stream))  # stopped between slices: the rest was taken, so keep it now
            raise
        if self.settings is None or self._conn is None:
            self._hold([])  # without a writer, what was held is lost too
            return
        if self._sending is not None:
            if not wait:
                return
            await self._sending
        if self._held:
            batch, self._held = self._held, []
            self._sending = asyncio.get_running_loop().create_task(self._send(batch))
            if wait:
                await self._sending

    def _hold(self, records: list[LogRow]) -> None:
        """Keep rows taken from the sink for the next send, as far as the queue has room (the rest are
        lost), or count them where no writer will take them."""
        if self.settings is None:
            self._count(records)  # rows of a sink the log had before a reload turned it off
            return
        if self._conn is None:
            self._lose(records + self._held)
            self._held = []
            return
        room = max(0, self.queue_max - len(self._held))
        if len(records) > room:
            self._lose(records[room:])
            records = records[:room]
        self._held.extend(records)

    async def _send(self, batch: list[LogRow]) -> None:
        """Encode and send the batch HANDOFF_SLICE rows at a time, each slice one message to the writer
        (written in a transaction of its own), from a worker thread."""
        conn = self._conn
        sent = 0
        try:
            if conn is None:
                raise OSError("no writer")
            while sent < len(batch):
                data = encode_batch(batch[sent : sent + HANDOFF_SLICE])
                await asyncio.to_thread(conn.send_bytes, data)
                sent += HANDOFF_SLICE
        except (OSError, ValueError) as exc:
            self._lose(batch[sent:])
            self._fail(f"query log writer is gone: {exc}")
        finally:
            self._sending = None

    def _read_replies(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            while conn.poll(0):
                self._reply(conn.recv())
        except (EOFError, OSError) as exc:
            self._fail(self.error or f"query log writer is gone: {exc or 'exited'}")
            self._conn = None

    def _reply(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self.state = "ready"
            log.info("query log %s: %d queries kept", self.path, message[1])
        elif kind == "written":
            self._deaths = 0
            self.counters.written += message[1]
            self.counters.answers.update(message[2])
            if self.state == "error":
                log.info("query log %s: writing again", self.path)
            self.state, self.error = "ready", ""
        elif kind == "failed":
            self.counters.dropped += message[1]
            self.counters.answers.update(message[3])
            self._fail(message[2])
        elif kind == "error":
            self._fail(message[1])
        elif kind == "retention" and message[1]:
            log.info("query log %s: %d old queries deleted", self.path, message[1])

    # -- stopping -------------------------------------------------------------------------------

    async def _stop_writer(self) -> None:
        conn, process = self._conn, self._process
        self._conn, self._process = None, None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send_bytes(b"")
        if process is not None:
            await asyncio.to_thread(process.join, STOP_TIMEOUT)
            if process.is_alive():
                log.warning("query log writer did not finish in %.0f s: killed", STOP_TIMEOUT)
                process.kill()
                await asyncio.to_thread(process.join, 1.0)
        if conn is not None:
            with contextlib.suppress(EOFError, OSError):
                while conn.poll(0):
                    self._reply(conn.recv())
            conn.close()

    async def close(self) -> None:
        """Write what is still waiting, then end the writer."""
        self._replacing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sending is not None:
            with contextlib.suppress(Exception):
                await self._sending
        if self._conn is not None:
            await self._flush()
        await self._stop_writer()
        self.resolver.log_sink = None

    # -- reading (API) --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "error": self.error or None,
            "path": self.path,
            "privacy": self.settings.privacy if self.settings is not None else "off",
            "written": self.counters.written,
            "dropped": self.counters.dropped,
            "restarts": self.counters.restarts,
            "waiting": sum(row[9] for row in self._held)
            + (self.resolver.log_sink.waiting() if self.resolver.log_sink is not None else 0),
        }

    async def search(self, search: Search) -> list[dict[str, Any]]:
        return await asyncio.to_thread(_read, self._path_or_raise(), lambda store: store.search(search))

    async def stats(self, window: str) -> dict[str, Any]:
        now = time.time()
        return await asyncio.to_thread(_read, self._path_or_raise(), lambda store: store.stats(window, now))

    def _path_or_raise(self) -> str:
        if self.settings is None:
            raise QueryLogError("the lasting query log is off (querylog.enabled, querylog.privacy)")
        return self.settings.path


def _read(path: str, reader: Any) -> Any:
    store = QueryStore(path, readonly=True)
    try:
        return reader(store)
    finally:
        store.close()


def answers_by_family(counters: QueryLogCounters) -> dict[tuple[str, str], int]:
    """Answered queries by (qtype family, rcode family): bounded label sets for the metrics."""
    families: dict[tuple[str, str], int] = {}
    for (qtype, rcode), count in counters.answers.items():
        key = (qtype_name(qtype), rcode_name(rcode))
        families[key] = families.get(key, 0) + count
    return families
