"""The lasting query log in the resolver service: hand-off, writer process, API, metrics, failures."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dnsguard.app import querylog as querylog_module
from dnsguard.app.api import Operations
from dnsguard.app.querylog import QueryLog
from dnsguard.app.querylog_writer import encode_batch
from dnsguard.app.resolve import ResolveDaemon, ResolverService
from dnsguard.dns.resolver import Forward
from dnsguard.errors import DnsguardError
from tests.unit.test_ops import query, samples, started_service, write_config

KID = "192.0.2.10"
ADULT = "192.0.2.99"


def logged_config(directory: Path, **querylog: Any) -> Path:
    settings = {"enabled": True, "path": str(directory / "querylog.sqlite"), **querylog}
    return write_config(
        directory,
        querylog=settings,
        clients={"laptop": {"addresses": [ADULT]}},
    )


def ask(service: ResolverService, name: str, client: str = ADULT, qtype: int = 1) -> bytes:
    resolver = service.resolver
    assert resolver is not None
    reply = resolver.answer_now(query(name, qtype), client)
    assert isinstance(reply, bytes), f"{name} needed an upstream"
    return reply


async def until_written(querylog: QueryLog, count: int) -> None:
    for _ in range(200):
        if querylog.counters.written >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"written {querylog.counters.written} of {count}: {querylog.status()}")


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not {what}")


async def answers_counted(service: ResolverService) -> int:
    """The sum of dnsguard_dns_answers_total over its labels, as /metrics gives it now."""
    _, metrics = await api_get(service, "/metrics")
    return sum(value for (name, _), value in metrics.items() if name == "dnsguard_dns_answers_total")


async def api_get(service: ResolverService, path: str, **params: str) -> tuple[int, Any]:
    app = Operations(ResolveDaemon("dnsguard.yaml", service))._app(api=True, metrics=True)
    async with TestClient(TestServer(app)) as client:
        response = await client.get(path, params=params)
        if path == "/metrics":
            return response.status, samples(await response.read())
        return response.status, await response.json()


async def test_a_restart_keeps_the_log_and_the_api_searches_it(tmp_path: Path) -> None:
    path = logged_config(tmp_path)
    service = await started_service(path)
    ask(service, "ads.example")
    ask(service, "tracker.example", client=KID, qtype=28)
    ask(service, "sub.ads.example")
    await service.close()

    again = await started_service(path)
    try:
        status, body = await api_get(again, "/api/queries")
        assert status == 200 and body["source"] == "querylog"
        assert [q["name"] for q in body["queries"]] == ["sub.ads.example", "tracker.example", "ads.example"]
        first = body["queries"][0]
        assert (first["client"], first["client_name"], first["result"], first["reason"]) == (
            ADULT,
            "laptop",
            "blocked",
            "ads",
        )
        _, by_name = await api_get(again, "/api/queries", client="laptop", qtype="A", limit="1")
        assert [q["name"] for q in by_name["queries"]] == ["sub.ads.example"]
        _, page2 = await api_get(again, "/api/queries", client="laptop", before=str(by_name["next"]))
        assert [q["name"] for q in page2["queries"]] == ["ads.example"] and page2["next"] is None
        _, aaaa = await api_get(again, "/api/queries", qtype="AAAA", list="ads", name="TRACK")
        assert [(q["name"], q["qtype_name"]) for q in aaaa["queries"]] == [("tracker.example", "AAAA")]
        assert (await api_get(again, "/api/queries", qtype="nope"))[0] == 400
        assert (await api_get(again, "/api/queries", since="soon"))[0] == 400

        status, stats = await api_get(again, "/api/stats", window="1h")
        assert status == 200 and (stats["total"], stats["blocked"]) == (3, 3)
        assert stats["top_clients"][0] == {"client": ADULT, "count": 2, "client_name": "laptop"}
        assert stats["top_blocked"][0] == {"name": "ads.example", "count": 1}
        assert stats["by_qtype"] == {"A": 2, "AAAA": 1}
        assert (await api_get(again, "/api/stats", window="2h"))[0] == 400
    finally:
        await again.close()


async def test_names_only_privacy_writes_no_client_address(tmp_path: Path) -> None:
    service = await started_service(logged_config(tmp_path, privacy="names-only"))
    try:
        ask(service, "ads.example")
        assert service.querylog is not None
        await until_written(service.querylog, 1)
        _, body = await api_get(service, "/api/queries")
        assert [(q["name"], q["client"]) for q in body["queries"]] == [("ads.example", "")]
    finally:
        await service.close()


async def test_a_corrupt_database_is_reported_and_the_resolver_keeps_answering(tmp_path: Path) -> None:
    (tmp_path / "querylog.sqlite").write_bytes(b"not a database at all" * 400)
    service = await started_service(logged_config(tmp_path))
    querylog = service.querylog
    assert querylog is not None
    try:
        for _ in range(200):
            if querylog.state == "error":
                break
            await asyncio.sleep(0.05)
        assert querylog.state == "error" and "file is not a database" in querylog.error
        for _ in range(3):
            assert ask(service, "ads.example")
        resolver = service.resolver
        assert resolver is not None
        assert isinstance(resolver.answer_now(query("www.example.org"), ADULT), Forward)
        await until(lambda: querylog.counters.dropped >= 3, "counted as lost at a hand-off")
        status, body = await api_get(service, "/api/queries")
        assert status == 503 and "querylog.sqlite: file is not a database" in body["error"]
        # The writer is started again after RESTART_DELAYS, and fails again on the same file.
        await until(lambda: querylog.state == "error", "in error again")
        _, status_body = await api_get(service, "/api/status")
        assert status_body["querylog"]["state"] == "error"
        _, metrics = await api_get(service, "/metrics")
        assert metrics[("dnsguard_querylog_dropped_total", ())] >= 3
        assert metrics[("dnsguard_querylog_written_total", ())] == 0
    finally:
        await service.close()


async def test_a_full_sink_counts_drops_and_never_grows(tmp_path: Path) -> None:
    service = await started_service(logged_config(tmp_path, queue=1000))
    querylog = service.querylog
    resolver = service.resolver
    assert querylog is not None and resolver is not None
    try:
        # No await: the hand-off cannot run in between. 1500 distinct queries: 1000 fit, 500 are lost;
        # then 300 repeats of one that is held, which fold into its count and are not lost.
        for i in range(1500):
            ask(service, f"n{i}.ads.example")
        for _ in range(300):
            ask(service, "n7.ads.example")
        assert resolver.log_sink is not None and resolver.log_sink.size == 1000
        assert resolver.log_sink.lost == {(1, 0): 500}
        assert querylog.status()["waiting"] == 1300
        await until_written(querylog, 1300)
        assert querylog.counters.dropped == 500
        _, metrics = await api_get(service, "/metrics")
        assert metrics[("dnsguard_querylog_written_total", ())] == 1300
        answers = {
            labels: value for (name, labels), value in metrics.items() if name == "dnsguard_dns_answers_total"
        }
        # The 500 lost at the sink are counted as dropped and as answered.
        assert sum(answers.values()) == 1800
        assert all(dict(labels)["qtype"] == "A" for labels in answers)
    finally:
        await service.close()


async def test_a_large_hand_off_lets_queries_be_answered_between_its_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []

    def encode(rows: list[Any]) -> bytes:
        encoded.append(len(rows))
        return encode_batch(rows)

    monkeypatch.setattr(querylog_module, "encode_batch", encode)
    service = await started_service(logged_config(tmp_path))
    querylog = service.querylog
    assert querylog is not None
    try:
        await until(lambda: querylog.state == "ready", "ready")
        count = querylog_module.HANDOFF_SLICE * 2 + 100
        for i in range(count):
            ask(service, f"n{i}.ads.example")
        # A query comes while the hand-off is under way: it is answered between two slices, with only
        # part of the rows made yet.
        seen: list[int] = []

        def query_meanwhile() -> None:
            ask(service, "meanwhile.ads.example")
            seen.append(len(querylog._held))

        asyncio.get_running_loop().call_soon(query_meanwhile)
        await querylog._flush()
        assert seen == [querylog_module.HANDOFF_SLICE]
        await until_written(querylog, count)
        # The writer got the rows in slices, each a message it answers: all written, none dropped.
        assert querylog.counters.written >= count and querylog.counters.dropped == 0
        assert encoded[:3] == [querylog_module.HANDOFF_SLICE] * 2 + [100]
        await until_written(querylog, count + 1)  # the query answered meanwhile, in a later hand-off
    finally:
        await service.close()


async def test_a_hand_off_cancelled_between_slices_keeps_every_row_it_took(tmp_path: Path) -> None:
    service = await started_service(logged_config(tmp_path))
    querylog = service.querylog
    assert querylog is not None
    try:
        await until(lambda: querylog.state == "ready", "ready")
        count = querylog_module.HANDOFF_SLICE * 3
        for i in range(count):
            ask(service, f"n{i}.ads.example")
        flush = asyncio.get_running_loop().create_task(querylog._flush())
        await asyncio.sleep(0)  # the first slice is held, the task waits for its next turn
        assert 0 < len(querylog._held) < count
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        assert sum(row[9] for row in querylog._held) == count  # the rest of the sink, held at once
    finally:
        await service.close()
    assert querylog.counters.written == count  # and written at stop


async def test_a_writer_that_dies_is_started_again_and_the_queries_meanwhile_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(querylog_module, "RESTART_DELAYS", (0.2, 0.4))
    service = await started_service(logged_config(tmp_path))
    querylog = service.querylog
    assert querylog is not None
    try:
        ask(service, "ads.example")
        await until_written(querylog, 1)
        process = querylog._process
        assert process is not None and process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.join, 5)
        ask(service, "lost.ads.example")  # taken at the next hand-off, while the writer is gone
        for _ in range(100):
            if querylog.counters.restarts:
                break
            await asyncio.sleep(0.05)
        assert querylog.counters.restarts == 1 and querylog.counters.dropped == 1
        _, metrics = await api_get(service, "/metrics")
        assert metrics[("dnsguard_querylog_writer_restarts_total", ())] == 1
        ask(service, "again.ads.example")
        await until_written(querylog, 2)
        assert querylog.status()["state"] == "ready"
        _, body = await api_get(service, "/api/queries")
        assert [q["name"] for q in body["queries"]] == ["again.ads.example", "ads.example"]
        assert await answers_counted(service) == 3  # the lost one too
    finally:
        await service.close()


async def test_without_the_lasting_log_the_memory_log_is_searched_and_stats_say_so(tmp_path: Path) -> None:
    service = await started_service(write_config(tmp_path))
    try:
        ask(service, "ads.example")
        ask(service, "tracker.example", qtype=28)
        _, body = await api_get(service, "/api/queries", qtype="AAAA")
        assert body["source"] == "memory"
        assert [q["name"] for q in body["queries"]] == ["tracker.example"]
        status, stats = await api_get(service, "/api/stats")
        assert status == 404 and "querylog.enabled" in stats["error"]
        assert not (tmp_path / "querylog.sqlite").exists()
    finally:
        await service.close()


async def test_without_the_lasting_log_a_query_leaves_nothing_for_the_garbage_collector(
    tmp_path: Path,
) -> None:
    # Every object a query leaves alive until the next collection is walked by it, and by the older
    # generations' collections when it lives on: at ten thousand queries a second those pauses are the
    # latency tail. With the log off, answering thousands of distinct names allocates nothing that
    # outlives its answer, and the answers metric still counts every one.
    service = await started_service(write_config(tmp_path))
    try:
        names = [f"n{i}.ads.example" for i in range(2000)]
        for name in names * 2:
            ask(service, name)
        querylog = service.querylog
        assert querylog is not None
        gc.collect()
        gc.disable()
        try:
            before = grown = gc.get_count()[0]
            for _ in range(5):
                for name in names:
                    ask(service, name)
                    grown = max(grown, gc.get_count()[0])
                querylog._take()  # what the hand-off does every FLUSH_INTERVAL
            grown -= before
        finally:
            gc.enable()
        assert grown < 100, f"up to {grown} tracked objects outlived their answers"
        counted = 0
        for _ in range(40):  # the answers metric is counted every FLUSH_INTERVAL
            counted = await answers_counted(service)
            if counted == 14000:
                break
            await asyncio.sleep(0.1)
        assert counted == 14000
    finally:
        await service.close()


async def test_a_reload_that_turns_the_log_off_and_on_keeps_counting_answers(tmp_path: Path) -> None:
    path = logged_config(tmp_path)
    service = await started_service(path)
    querylog, resolver = service.querylog, service.resolver
    assert querylog is not None and resolver is not None
    try:
        ask(service, "ads.example")
        daemon = ResolveDaemon(str(write_config(tmp_path)), service)
        assert await daemon.reload()
        await until(lambda: querylog.settings is None, "off")  # the writer stops in the background
        assert resolver.log_sink is None and querylog.status()["state"] == "off"
        ask(service, "tracker.example")
        daemon = ResolveDaemon(str(logged_config(tmp_path)), service)
        assert await daemon.reload()
        await until(lambda: querylog.settings is not None, "on again")
        assert resolver.log_sink is not None and resolver.log_sink.size == 0
        ask(service, "again.ads.example")
        await until_written(querylog, 2)
        assert await answers_counted(service) == 3
    finally:
        await service.close()


async def test_a_reload_that_moves_the_database_writes_to_the_new_file(tmp_path: Path) -> None:
    path = logged_config(tmp_path)
    service = await started_service(path)
    querylog = service.querylog
    assert querylog is not None
    try:
        ask(service, "ads.example")
        await until_written(querylog, 1)
        moved = logged_config(tmp_path, path=str(tmp_path / "moved.sqlite"))
        daemon = ResolveDaemon(str(moved), service)
        assert await daemon.reload()
        for _ in range(100):
            if querylog.path and querylog.path.endswith("moved.sqlite") and querylog.state == "ready":
                break
            await asyncio.sleep(0.05)
        ask(service, "tracker.example")
        await until_written(querylog, 2)
        _, body = await api_get(service, "/api/queries")
        assert [q["name"] for q in body["queries"]] == ["tracker.example"]
    finally:
        await service.close()


def test_dnsguard_top_and_queries_print_what_the_api_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dnsguard.app import querylog_tools

    asked: list[str] = []
    stats = {
        "total": 4,
        "blocked": 1,
        "top_names": [{"name": "a.example", "count": 3}],
        "top_blocked": [{"name": "ads.example", "count": 1}],
        "top_clients": [{"client": ADULT, "client_name": "laptop", "count": 4}],
        "by_qtype": {"A": 3, "AAAA": 1},
        "by_rcode": {"NOERROR": 4},
    }
    row = {
        "time": 0.0,
        "client": ADULT,
        "client_name": "laptop",
        "name": "a.example",
        "qtype": 28,
        "qtype_name": "AAAA",
        "result": "cached",
        "group": "default",
        "reason": "",
        "elapsed_ms": 0.25,
        "count": 3,
    }

    def api_request(config: str | None, method: str, path: str) -> dict[str, Any]:
        asked.append(path)
        return stats if path.startswith("/api/stats") else {"queries": [row], "next": 17}

    monkeypatch.setattr(querylog_tools, "api_request", api_request)
    assert querylog_tools.run_top(None, "7d") == 0
    out = capsys.readouterr().out
    assert out.startswith("last 7d: 4 queries, 1 blocked (25.0 %)")
    assert "        4  laptop (192.0.2.99)" in out and "        1  AAAA" in out
    assert querylog_tools.run_queries(None, {"qtype": "AAAA", "list": None, "limit": 5}, since="2h") == 0
    line, more = capsys.readouterr().out.splitlines()
    assert "laptop (192.0.2.99)" in line and "AAAA  a.example x3 (default: -, 0.2 ms)" in line
    assert more == "# older: --before 17"
    assert asked[0] == "/api/stats?window=7d"
    assert asked[1].startswith("/api/queries?qtype=AAAA&limit=5&since=")
    with pytest.raises(DnsguardError, match="--since 'soon' is not a duration"):
        querylog_tools.run_queries(None, {}, since="soon")
