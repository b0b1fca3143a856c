"""The lasting query log's database: one SQLite file in WAL mode, written in batches, searched and summed.

The writer (dnsguard/app/querylog.py runs it in a process of its own) is the only connection that
writes; the API reads through connections of its own, which WAL lets run beside the writer. Every
sqlite3 error is mapped to QueryLogError here, naming the file, so that a corrupt, locked or unwritable
database is said in one sentence and never reaches the resolver.

This module imports nothing but the standard library and dnsguard.errors: the writer process loads it
alone, without the daemon's packages.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dnsguard.errors import DnsguardError

SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    client TEXT NOT NULL,
    name TEXT NOT NULL,
    qtype INTEGER NOT NULL,
    result TEXT NOT NULL,
    grp TEXT NOT NULL,
    reason TEXT NOT NULL,
    elapsed_ms REAL NOT NULL,
    rcode INTEGER NOT NULL,
    count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_by_time ON queries (time);
"""
BUSY_TIMEOUT_MS = 2000
"""How long a statement waits for another connection's lock before it fails as locked."""
DELETE_CHUNK = 50_000
"""Rows deleted per statement by retention, so that a reader never waits long behind it."""
WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
BUCKETS = 24
"""Buckets of the over-time figures in any window (1h: 150 s each; 24h: an hour; 7d: 7 hours)."""
TOP = 10
PRIVACY_MODES = ("full", "names-only", "anonymised", "off")
QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV"}
QTYPE_NAMES |= {64: "SVCB", 65: "HTTPS", 255: "ANY"}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class QueryLogError(DnsguardError):
    """The query log's database cannot be opened, written or read (the message names the file)."""


def qtype_name(qtype: int) -> str:
    """The mnemonic of a query type dnsguard names, else "other" (a bounded set: metric labels)."""
    return QTYPE_NAMES.get(qtype, "other")


def rcode_name(rcode: int) -> str:
    """The mnemonic of a common response code, else "other"."""
    return RCODE_NAMES.get(rcode, "other")


def qtype_number(text: str) -> int:
    """A query type given as a mnemonic (AAAA) or a number (28); ValueError otherwise."""
    upper = text.strip().upper()
    for number, name in QTYPE_NAMES.items():
        if name == upper:
            return number
    value = int(upper)
    if not 0 <= value <= 65535:
        raise ValueError(text)
    return value


def private_client(address: str, privacy: str) -> str:
    """The client as the privacy setting keeps it: whole, empty (names-only), or its network (anonymised:
    IPv4 /24 and IPv6 /48, the prefixes that name a household's network rather than a device)."""
    if privacy == "full":
        return address
    if privacy != "anonymised":
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


@dataclass(frozen=True)
class Search:
    """What /api/queries asks for: every field None is no filter. Newest first, `limit` rows."""

    since: float | None = None
    until: float | None = None
    client: str | None = None
    name: str | None = None
    """A substring of the name."""
    result: str | None = None
    qtype: int | None = None
    list_name: str | None = None
    """The list (or built-in rule) that blocked: the decision's reason."""
    before_id: int | None = None
    """Paging: rows older than this id (the `next` of the previous page)."""
    limit: int = 100


ROW_FIELDS = (
    "id",
    "time",
    "client",
    "name",
    "qtype",
    "result",
    "group",
    "reason",
    "elapsed_ms",
    "rcode",
    "count",
)


class QueryStore:
    """One connection to the query log database."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                # A reader beside the writer (WAL is a property of the file); it never creates one.
                if not os.path.exists(path):
                    raise QueryLogError(f"query log {path}: no such file (nothing was logged yet)")
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                # NORMAL: a power cut may lose the last batches, never the file (WAL keeps it consistent).
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(SCHEMA)
            # Reads the header and the schema: a file that is not a database fails here, not later.
            self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise QueryLogError(f"query log {path}: {_reason(exc)}") from None

    def close(self) -> None:
        self.db.close()

    # -- writing ----------------------------------------------------------------------------------

    def append(self, rows: Sequence[Sequence[Any]], privacy: str = "full") -> int:
        """Insert resolver rows (dnsguard.dns.log_sink.LogRow: a query, its count, its first time and
        longest answer time) in one transaction; the queries written.

        The rows come folded: until each hand-off the resolver's sink adds a repeated query to its row's
        count, so under `full` privacy they are written as they come (their columns are the table's).
        Privacy that hides or shortens the client makes the rows of different clients equal: those
        equal within one second become one row with the sum of their counts, the first one's time and
        the longest answer time, and every count (search, statistics) stays exact.
        """
        inserted = rows if privacy == "full" else _folded(rows, privacy)
        written: int = sum(row[9] for row in inserted)
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO queries"
                    " (time, client, name, qtype, result, grp, reason, elapsed_ms, rcode, count)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    inserted,
                )
        except sqlite3.Error as exc:
            raise QueryLogError(f"query log {self.path}: {_reason(exc)}") from None
        return written

    def enforce(self, now: float, max_age: float, max_rows: int, max_size: int) -> int:
        """Delete the oldest queries beyond any retention limit; the number deleted."""
        deleted = 0
        try:
            deleted += self.db.execute("DELETE FROM queries WHERE time < ?", (now - max_age,)).rowcount
            rows = self.count()
            if rows > max_rows:
                deleted += self._delete_oldest(rows - max_rows)
            size = self.size()
            if size > max_size and rows:
                # Rows are about the same size: drop the share that is over, plus a tenth for headroom,
                # since freed pages are reused rather than returned (the file does not shrink).
                share = min(1.0, (size - max_size) / size + 0.1)
                deleted += self._delete_oldest(int(self.count() * share) + 1)
            if deleted:
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            raise QueryLogError(f"query log {self.path}: {_reason(exc)}") from None
        return deleted

    def _delete_oldest(self, count: int) -> int:
        deleted = 0
        while count > 0:
            chunk = min(count, DELETE_CHUNK)
            deleted += self.db.execute(
                "DELETE FROM queries WHERE id IN (SELECT id FROM queries ORDER BY id LIMIT ?)", (chunk,)
            ).rowcount
            count -= chunk
        return deleted

    def count(self) -> int:
        """Rows (a row holds one query or several folded ones: see `append`)."""
        return int(self.db.execute("SELECT count(*) FROM queries").fetchone()[0])

    def size(self) -> int:
        """Bytes in use by the database's pages (free pages excluded)."""
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(page_size * (pages - free))

    # -- reading ----------------------------------------------------------------------------------

    def search(self, search: Search) -> list[dict[str, Any]]:
        """The queries that match, newest first (by id, which follows the order they were answered)."""
        where, args = _conditions(search.since, search.until)
        for column, value in (
            ("client", search.client),
            ("result", search.result),
            ("qtype", search.qtype),
            ("reason", search.list_name),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if search.name:
            where.append("instr(name, ?) > 0")
            args.append(search.name.lower())
        if search.before_id is not None:
            where.append("id < ?")
            args.append(search.before_id)
        sql = (
            "SELECT id, time, client, name, qtype, result, grp, reason, elapsed_ms, rcode, count FROM queries"
            f" {_where(where)} ORDER BY id DESC LIMIT ?"
        )
        rows = self._read(sql, [*args, search.limit])
        return [dict(zip(ROW_FIELDS, row, strict=True)) for row in rows]

    def stats(self, window: str, now: float) -> dict[str, Any]:
        """Queries and blocks over time, the top names, blocked names and clients, by type and rcode."""
        seconds = WINDOWS[window]
        since = now - seconds
        size = seconds / BUCKETS
        where, args = _conditions(since, None)
        condition = _where(where)
        buckets = [{"time": since + (i + 1) * size, "queries": 0, "blocked": 0} for i in range(BUCKETS)]
        for index, queries, blocked in self._read(
            f"SELECT CAST((time - ?) / ? AS INTEGER) AS b, sum(count), sum((result = 'blocked') * count)"
            " FROM queries"
            f" {condition} GROUP BY b",
            [since, size, *args],
        ):
            bucket = buckets[min(BUCKETS - 1, max(0, int(index)))]
            bucket["queries"] += queries
            bucket["blocked"] += blocked or 0
        total = sum(int(b["queries"]) for b in buckets)
        blocked_total = sum(int(b["blocked"]) for b in buckets)

        def top(column: str, extra: str = "") -> list[tuple[Any, int]]:
            conditions = [*where, extra] if extra else where
            sql = (
                f"SELECT {column}, sum(count) AS n FROM queries {_where(conditions)}"
                f" GROUP BY {column} ORDER BY n DESC, {column} LIMIT {TOP}"
            )
            return [(value, int(n)) for value, n in self._read(sql, args)]

        by_qtype: dict[str, int] = {}
        for qtype, n in top("qtype"):
            by_qtype[qtype_name(qtype)] = by_qtype.get(qtype_name(qtype), 0) + n
        by_rcode: dict[str, int] = {}
        for rcode, n in top("rcode"):
            by_rcode[rcode_name(rcode)] = by_rcode.get(rcode_name(rcode), 0) + n
        return {
            "window": window,
            "since": since,
            "until": now,
            "bucket_seconds": size,
            "total": total,
            "blocked": blocked_total,
            "buckets": buckets,
            "top_names": [{"name": name, "count": n} for name, n in top("name")],
            "top_blocked": [{"name": name, "count": n} for name, n in top("name", "result = 'blocked'")],
            "top_clients": [{"client": client, "count": n} for client, n in top("client", "client != ''")],
            "by_qtype": by_qtype,
            "by_rcode": by_rcode,
        }

    def _read(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise QueryLogError(f"query log {self.path}: {_reason(exc)}") from None


def _conditions(since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if until is not None:
        where.append("time < ?")
        args.append(until)
    return where, args


def _where(conditions: list[str]) -> str:
    return "WHERE " + " AND ".join(conditions) if conditions else ""


def _folded(rows: Iterable[Sequence[Any]], privacy: str) -> list[tuple[Any, ...]]:
    """`rows` with each client as `privacy` keeps it, the rows then equal within one second folded."""
    folded: dict[tuple[Any, ...], list[Any]] = {}
    clients: dict[str, str] = {}
    for at, client, name, qtype, result, group, reason, elapsed, rcode, count in rows:
        kept = clients.get(client)
        if kept is None:
            kept = clients[client] = private_client(client, privacy)
        key = (int(at), kept, name, qtype, result, group, reason, rcode)
        row = folded.get(key)
        if row is None:
            folded[key] = [at, elapsed, count]
        else:
            row[2] += count
            if at < row[0]:
                row[0] = at
            if elapsed > row[1]:
                row[1] = elapsed
    return [(at, *key[1:7], elapsed, key[7], count) for key, (at, elapsed, count) in folded.items()]


def _reason(exc: sqlite3.Error) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"{text}: another program holds the database"
    if "not a database" in text or "malformed" in text:
        return f"{text}: the file is damaged; move it aside and dnsguard starts a new one"
    return text
