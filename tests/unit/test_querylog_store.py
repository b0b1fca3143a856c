"""The query log's database: writing, privacy, retention, search, statistics, and the files it refuses."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dnsguard.app.querylog_store import (
    BUCKETS,
    QueryLogError,
    QueryStore,
    Search,
    private_client,
    qtype_name,
    qtype_number,
    rcode_name,
)
from dnsguard.app.querylog_writer import count_answers, decode_batch, encode_batch

T0 = 1_800_000_000.0


def record(
    at: float,
    name: str = "www.example.org",
    client: str = "192.0.2.10",
    result: str = "allowed",
    qtype: int = 1,
    reason: str = "",
    rcode: int = 0,
    count: int = 1,
) -> tuple[float, str, str, int, str, str, str, float, int, int]:
    return (at, client, name, qtype, result, "default", reason, 1.5, rcode, count)


@pytest.fixture
def store(tmp_path: Path) -> QueryStore:
    return QueryStore(str(tmp_path / "querylog.sqlite"))


def test_records_written_in_one_batch_come_back_newest_first(store: QueryStore) -> None:
    assert store.append([record(T0, "a.example"), record(T0 + 1, "b.example")]) == 2
    rows = store.search(Search())
    assert [row["name"] for row in rows] == ["b.example", "a.example"]
    assert rows[0] | {"id": 0} == {
        "id": 0,
        "time": T0 + 1,
        "client": "192.0.2.10",
        "name": "b.example",
        "qtype": 1,
        "result": "allowed",
        "group": "default",
        "reason": "",
        "elapsed_ms": 1.5,
        "rcode": 0,
        "count": 1,
    }


def test_the_database_is_in_wal_mode_and_survives_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    first = QueryStore(path)
    first.append([record(T0, "kept.example")])
    first.close()
    again = QueryStore(path)
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [row["name"] for row in again.search(Search())] == ["kept.example"]
    reader = QueryStore(path, readonly=True)
    assert reader.count() == 1


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        (Search(client="192.0.2.20"), ["ads.example"]),
        (Search(name="EXAMPLE.ORG"), ["www.example.org"]),
        (Search(name="ads"), ["ads.example"]),
        (Search(result="blocked"), ["ads.example"]),
        (Search(qtype=28), ["v6.example.net"]),
        (Search(list_name="ads"), ["ads.example"]),
        (Search(since=T0 + 1, until=T0 + 2), ["ads.example"]),
        (Search(since=T0 + 5), []),
        (Search(name="%"), []),
    ],
)
def test_filters_select_the_queries_they_name(store: QueryStore, search: Search, expected: list[str]) -> None:
    store.append(
        [
            record(T0, "www.example.org"),
            record(T0 + 1, "ads.example", client="192.0.2.20", result="blocked", reason="ads", rcode=3),
            record(T0 + 2, "v6.example.net", qtype=28),
        ]
    )
    assert [row["name"] for row in store.search(search)] == expected


def test_pages_follow_each_other_without_gaps_or_repeats(store: QueryStore) -> None:
    store.append([record(T0 + i, f"n{i}.example") for i in range(25)])
    seen: list[str] = []
    before = None
    while True:
        page = store.search(Search(limit=10, before_id=before))
        seen += [row["name"] for row in page]
        if len(page) < 10:
            break
        before = page[-1]["id"]
    assert seen == [f"n{i}.example" for i in reversed(range(25))]


@pytest.mark.parametrize(
    ("privacy", "address", "kept"),
    [
        ("full", "192.0.2.77", "192.0.2.77"),
        ("names-only", "192.0.2.77", ""),
        ("anonymised", "192.0.2.77", "192.0.2.0"),
        ("anonymised", "2001:db8:1234:5678::9", "2001:db8:1234::"),
        ("anonymised", "not-an-address", ""),
    ],
)
def test_privacy_keeps_the_client_as_configured(
    store: QueryStore, privacy: str, address: str, kept: str
) -> None:
    assert private_client(address, privacy) == kept
    store.append([record(T0, client=address)], privacy)
    assert store.search(Search())[0]["client"] == kept


def test_retention_by_age_deletes_what_is_older(store: QueryStore) -> None:
    store.append([record(T0 - 3 * 86400, "old.example"), record(T0 - 60, "new.example")])
    assert store.enforce(T0, max_age=86400, max_rows=10**6, max_size=10**9) == 1
    assert [row["name"] for row in store.search(Search())] == ["new.example"]


def test_retention_by_rows_keeps_the_newest(store: QueryStore) -> None:
    store.append([record(T0 + i, f"n{i}.example") for i in range(100)])
    assert store.enforce(T0 + 100, max_age=86400, max_rows=30, max_size=10**9) == 70
    rows = store.search(Search(limit=1000))
    assert len(rows) == 30 and rows[-1]["name"] == "n70.example"


def test_retention_by_size_brings_the_pages_in_use_under_the_limit(store: QueryStore) -> None:
    store.append([record(T0 + i, f"{'x' * 40}-{i}.example") for i in range(20_000)])
    before = store.size()
    limit = before // 2
    deleted = store.enforce(T0 + 20_000, max_age=86400, max_rows=10**6, max_size=limit)
    assert deleted >= 10_000 and store.size() <= limit
    assert store.search(Search(limit=1))[0]["name"].endswith("-19999.example")


def test_statistics_count_over_time_and_name_the_top(store: QueryStore) -> None:
    now = T0 + 86400
    store.append(
        [
            record(now - 100, "a.example"),
            record(now - 90, "a.example", client="192.0.2.11"),
            record(now - 80, "ads.example", result="blocked", reason="ads", rcode=3),
            record(now - 7200, "b.example", qtype=65),
            record(now - 2 * 86400, "outside.example"),
        ]
    )
    stats = store.stats("24h", now)
    assert (stats["total"], stats["blocked"]) == (4, 1)
    assert len(stats["buckets"]) == BUCKETS
    assert sum(b["queries"] for b in stats["buckets"]) == 4
    assert stats["buckets"][-1] == {"time": now, "queries": 3, "blocked": 1}
    assert stats["top_names"][0] == {"name": "a.example", "count": 2}
    assert stats["top_blocked"] == [{"name": "ads.example", "count": 1}]
    assert stats["top_clients"][0] == {"client": "192.0.2.10", "count": 3}
    assert stats["by_qtype"] == {"A": 3, "HTTPS": 1}
    assert stats["by_rcode"] == {"NOERROR": 3, "NXDOMAIN": 1}
    assert store.stats("1h", now)["total"] == 3


def test_query_types_and_rcodes_fall_into_bounded_families() -> None:
    assert [qtype_name(t) for t in (1, 28, 65, 99, 4242)] == ["A", "AAAA", "HTTPS", "other", "other"]
    assert [rcode_name(r) for r in (0, 3, 5, 9)] == ["NOERROR", "NXDOMAIN", "REFUSED", "other"]
    assert qtype_number("aaaa") == 28 and qtype_number("99") == 99
    with pytest.raises(ValueError):
        qtype_number("70000")


def test_a_file_that_is_not_a_database_is_named_in_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "querylog.sqlite"
    path.write_bytes(b"this is not SQLite" * 512)
    with pytest.raises(QueryLogError, match=r"querylog\.sqlite: file is not a database.*move it aside"):
        QueryStore(str(path))


def test_a_missing_directory_is_named_in_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QueryLogError, match=r"querylog\.sqlite: unable to open database file"):
        QueryStore(str(tmp_path / "missing" / "querylog.sqlite"))


def test_a_database_another_program_locks_fails_the_batch_with_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    store = QueryStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        store.db.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(QueryLogError, match="locked: another program holds the database"):
            store.append([record(T0)])
    finally:
        other.execute("ROLLBACK")
    assert store.append([record(T0)]) == 1


def test_rows_are_written_as_the_resolver_folded_them_under_full_privacy(store: QueryStore) -> None:
    rows = [
        (T0 + 0.7, "192.0.2.10", "a.example", 1, "cached", "default", "", 2.5, 0, 4),
        (T0 + 0.9, "192.0.2.11", "a.example", 1, "cached", "default", "", 0.5, 0, 1),
    ]
    assert store.append(rows) == 5 and store.count() == 2
    assert sorted(row["count"] for row in store.search(Search())) == [1, 4]


@pytest.mark.parametrize("privacy", ["names-only", "anonymised"])
def test_clients_the_privacy_merges_fold_into_one_row_a_second_with_their_counts(
    store: QueryStore, privacy: str
) -> None:
    written = store.append(
        [
            (T0 + 0.7, "192.0.2.10", "a.example", 1, "cached", "default", "", 2.5, 0, 1),
            (T0 + 0.1, "192.0.2.11", "a.example", 1, "cached", "default", "", 0.5, 0, 3),
            (T0 + 0.8, "192.0.2.10", "a.example", 28, "cached", "default", "", 0.1, 0, 1),
            (T0 + 1.2, "192.0.2.12", "a.example", 1, "cached", "default", "", 0.1, 0, 1),
        ],
        privacy,
    )
    assert written == 6 and store.count() == 3
    oldest = store.search(Search())[-1]
    assert (oldest["time"], oldest["count"], oldest["elapsed_ms"]) == (T0 + 0.1, 4, 2.5)
    assert oldest["client"] == ("" if privacy == "names-only" else "192.0.2.0")
    assert store.stats("1h", T0 + 10)["total"] == 6


@pytest.mark.parametrize("hostile", [False, True])
def test_batches_cross_the_pipe_whole_and_in_order(hostile: bool) -> None:
    records = [record(T0 + i / 7, f"n{i}.example", qtype=65535 - i, rcode=i % 16) for i in range(50)]
    if hostile:
        records[3] = record(T0, "nul\0inside.example")
    assert decode_batch(encode_batch(records)) == records


def test_the_writer_counts_answers_by_type_and_rcode_with_each_rows_count() -> None:
    rows = [
        record(T0, "a.example", qtype=1, rcode=0, count=3),
        record(T0, "b.example", qtype=1, rcode=0, count=2),
        record(T0, "c.example", qtype=65535, rcode=15, count=1),
        record(T0, "d.example", qtype=28, rcode=3, count=4),
    ]
    assert count_answers(rows) == {(1, 0): 5, (65535, 15): 1, (28, 3): 4}
